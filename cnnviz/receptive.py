"""Receptive fields from the architecture: which input pixels one unit of each layer can see.

The standard recurrence over a chain of layers (Araujo, Norris & Sim 2019, "Computing Receptive Fields of
Convolutional Neural Networks", Distill): for a layer with kernel ``k`` (dilated: ``d(k - 1) + 1``), stride ``s`` and
padding ``p``,

    r_out = r_in + (k - 1) j_in,    j_out = j_in s,    start_out = start_in + ((k - 1) / 2 - p) j_in

from the input's ``r = 1, j = 1, start = 0`` (pixel ``i`` has its centre at coordinate ``i``).

Branching and residual networks (ResNet, GoogLeNet, MobileNet, a user's module) are followed through their forward
pass, as in the article's section on networks that are not chains: a copy of the model whose weights are ``meta``
tensors (shapes only: no memory, no arithmetic) runs once, and every operation on the way passes ``(r, j, start)``
from its inputs to its output. Where maps meet (a residual ``+``, a ``torch.cat`` of branches along channels, an
elementwise product) a unit sees what each input's unit at that place sees: the window is the union of the inputs'
windows, and the inputs' jumps must agree. Operations are seen through a ``TorchFunctionMode`` and leaf modules
through hooks on the copy, both private to the calling thread: unlike ``torch.fx`` tracing, which patches
``nn.Module.__call__`` for the whole process, this is safe while other threads run models (Streamlit serves every
session from threads of one process). Python control flow on shapes is fine; on pixel values it cannot be followed.

Two conventions, as in the article:

- A value with no map of its own (a global pool's ``1×1`` output, a flattened vector) that is broadcast over a map
  acts as a per-channel gate: squeeze-and-excitation (MobileNetV3) multiplies each channel by a number computed from
  the whole image. The gate is left out of the union, so the field is the main path's. Strictly every unit after such
  a gate depends on every pixel, which would make all later fields "the whole image" and tell nothing.
- Normalisation layers count as per-unit operations; their statistics (of a batch, a group or a layer) are context,
  not part of the window.

Nothing here reads or changes the model: its weights, training flags and hooks stay as they were.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from cnnviz import probe

# Layers that keep every unit where it is: same receptive field, same grid.
_SAME_GRID_KINDS = ("activation", "norm", "dropout")
_SAME_GRID_MODULES = (nn.Identity, nn.ReLU6, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.PReLU, nn.Mish, nn.SELU,
                      nn.CELU, nn.Softplus, nn.InstanceNorm2d, nn.LocalResponseNorm)
_WINDOWED = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)
_ADAPTIVE = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)

# Functions and methods that act on each unit alone (beside those torch tags "pointwise"), or only mix channels.
_SAME_GRID_OPS = frozenset({
    "dropout", "dropout2d", "alpha_dropout", "feature_alpha_dropout", "batch_norm", "group_norm", "layer_norm",
    "instance_norm", "local_response_norm", "hardswish", "hardswish_", "to", "float", "half", "double", "type",
    "type_as", "clone", "detach", "contiguous", "stochastic_depth",
})
# Python operators (``__add__``, ``__rmul__``, ``__iadd__``) by their aten name.
_OPERATORS = {"add": "add", "sub": "sub", "mul": "mul", "truediv": "div", "floordiv": "floor_divide", "pow": "pow",
              "mod": "remainder", "and": "bitwise_and", "or": "bitwise_or", "xor": "bitwise_xor"}
# Shape operations: they keep a map when its (H, W) stay the last two dims, and end it when they leave a vector.
_SHAPE_OPS = frozenset({"view", "reshape", "flatten", "unsqueeze", "squeeze", "expand", "expand_as", "broadcast_to",
                        "chunk", "split", "unbind", "getitem", "narrow"})
_AXIS_OPS = frozenset({"transpose", "permute", "movedim", "swapaxes", "swapdims"})
_REDUCTIONS = frozenset({"mean", "sum", "amax", "amin", "max", "min", "std", "var", "logsumexp", "prod"})
_CONCATS = frozenset({"cat", "concat", "concatenate", "stack"})
# Positional parameters of the windowed functions, after the input.
_WINDOW_ARGS = {
    "conv2d": ("weight", "bias", "stride", "padding", "dilation", "groups"),
    "max_pool2d": ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"),
    "avg_pool2d": ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"),
    "adaptive_avg_pool2d": ("output_size",),
    "adaptive_max_pool2d": ("output_size", "return_indices"),
}


@dataclass(frozen=True)
class RF:
    """The receptive field shared by all units of one layer, in input pixels (square)."""

    name: str
    size: int  # side of the input square one unit sees, before clipping to the image
    jump: int  # input pixels between the centres of neighbouring units
    start: float  # centre of unit (0, 0) in input coordinates; outside the image when padding pushes it there
    out_size: int  # the layer's output maps are out_size × out_size


@dataclass(frozen=True)
class _Field:
    """What each unit of a map sees: the state of a value that is a map of the input."""

    size: int
    jump: int
    start: float
    n: int  # side of the map


class _State:
    """What a value is, for a value that is not a map of the input."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


_CONST = _State("CONST")  # does not depend on the input: parameters, numbers, shapes
_GLOBAL = _State("GLOBAL")  # depends on the input with no map of its own: a flattened vector, a pooled summary


def receptive_fields(model: nn.Module, input_size: int) -> list[RF]:
    """One :class:`RF` per call of each leaf module whose output is a map, for square inputs of that size.

    Names and order are those of :func:`cnnviz.probe.run` (module paths, ``path#2`` for a module's second call, in
    execution order); the list ends where the maps do, at the first flatten or global pool. ``model`` is any network
    (a ``Sequential`` chain, torchvision's ResNet, VGG, AlexNet, GoogLeNet, MobileNetV3, a user's module) built from
    convolutions, max/average pooling (adaptive pooling whose output size divides its input's), per-unit layers
    (activations, norms, dropout), elementwise merges (``+``, ``*``), channel concatenation, and reshapes that keep
    ``(H, W)`` last or leave a vector. Kernel, stride, padding and dilation may be ints or tuples with equal entries.
    The input's channels are the first ``Conv2d``'s ``in_channels``.

    Raises:
        ValueError: for a layer or operation whose receptive field is unknown (upsampling, a non-square kernel, a
            merge of maps with different jumps), a forward pass that depends on pixel values, or an input too
            small; the message names the layer or the operation and the module it is in.
    """
    if input_size < 1:
        raise ValueError(f"expected input_size >= 1, got {input_size}")
    shadow = _shadow(model)
    channels = next((m.in_channels for m in shadow.modules() if isinstance(m, nn.Conv2d)), 1)
    x = torch.empty(1, channels, input_size, input_size, device="meta")
    follower = _Follower(input_size)
    follower.set(x, _Field(1, 1, 0.0, input_size))
    for path, module in shadow.named_modules():
        module.register_forward_pre_hook(follower.enter(path, module))
        module.register_forward_hook(follower.exit(path, module))
    try:
        with follower, torch.no_grad():
            shadow(x)
    except ValueError:
        raise
    except Exception as e:  # .item() or bool() on a meta tensor, a shape error for this size, a wrong channel count
        raise ValueError(
            f"the forward pass of {type(model).__name__} could not be followed on a {input_size}×{input_size} input"
            f"{follower.inside()} ({type(e).__name__}: {e}); receptive fields need a forward pass that does not "
            f"depend on the pixels' values"
        ) from None
    return follower.layers


def window(rf: RF, row: int, col: int, input_size: int) -> tuple[int, int, int, int]:
    """Input pixels seen by unit ``(row, col)``: ``(top, left, bottom, right)`` clipped to the image.

    Bottom and right are exclusive, as in slices: ``image[..., top:bottom, left:right]`` is the patch. A unit that
    sees only padding gets an empty box.
    """
    for axis, index in (("row", row), ("col", col)):
        if not 0 <= index < rf.out_size:
            raise ValueError(f"layer {rf.name!r}: {axis} must be in [0, {rf.out_size}), got {index}")
    # start - (size - 1) / 2 is always a whole number: minus the sum of each layer's padding times its input jump.
    first = round(rf.start - (rf.size - 1) / 2)
    top, left = first + row * rf.jump, first + col * rf.jump

    def clip(v: int) -> int:
        return min(max(v, 0), input_size)

    return clip(top), clip(left), clip(top + rf.size), clip(left + rf.size)


def _shadow(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode with ``meta`` tensors for its weights and buffers, and no hooks."""
    memo: dict[int, Any] = {}
    for module in model.modules():
        tensors = [*module._parameters.values(), *module._buffers.values(), *vars(module).values()]
        for t in tensors:
            if isinstance(t, Tensor) and id(t) not in memo:
                meta = torch.empty_like(t, device="meta")
                memo[id(t)] = nn.Parameter(meta, requires_grad=False) if isinstance(t, nn.Parameter) else meta
    try:
        shadow = copy.deepcopy(model, memo)
    except Exception as e:
        raise ValueError(f"{type(model).__name__} cannot be copied to follow its forward pass "
                         f"({type(e).__name__}: {e})") from None
    for module in shadow.modules():
        for hooks in (module._forward_pre_hooks, module._forward_hooks, module._backward_hooks,
                      module._backward_pre_hooks):
            hooks.clear()  # someone else's hooks (another session probing the model) must not see this pass
    return shadow.eval()


class _Follower(TorchFunctionMode):
    """Gives every tensor of one forward pass a state: a :class:`_Field`, ``_GLOBAL`` or ``_CONST``.

    Leaf modules with a known rule (convolutions, pools, per-unit layers) are handled whole by their hooks; inside
    any other module, each torch operation is."""

    def __init__(self, input_size: int) -> None:
        super().__init__()
        self.input_size = input_size
        self.states: dict[int, tuple[Tensor, Any]] = {}  # id(tensor) → (the tensor, kept alive; its state)
        self.calls: dict[str, int] = {}
        self.layers: list[RF] = []
        self.modules: list[str] = []  # the module path being run, outermost first
        self.leaves: list[tuple[str, str, Any]] = []  # (name, label, state or None: follow the operations inside)

    def state(self, value: Any) -> Any:
        """A tensor's state; tensors this pass did not make (weights, constants) are constants."""
        entry = self.states.get(id(value)) if isinstance(value, Tensor) else None
        return entry[1] if entry is not None and entry[0] is value else _CONST

    def set(self, value: Any, state: Any) -> None:
        for t in _tensors(value):
            self.states[id(t)] = (t, state)

    def inside(self) -> str:
        """`` in 'layer1.0'``: where the pass is, for messages."""
        path = next((p for p in reversed(self.modules) if p), "")
        return f" in {path!r}" if path else ""

    def enter(self, path: str, module: nn.Module) -> Callable:
        def hook(_: nn.Module, args: tuple) -> None:
            self.modules.append(path)
            if next(module.children(), None) is not None:
                return
            self.calls[path] = self.calls.get(path, 0) + 1
            name = path if self.calls[path] == 1 else f"{path}{probe.CALL_SEPARATOR}{self.calls[path]}"
            label = f"layer {name!r} ({type(module).__name__})"
            self.leaves.append((name, label, self._module_state(module, args, label)))

        return hook

    def exit(self, path: str, module: nn.Module) -> Callable:
        def hook(_: nn.Module, args: tuple, output: Any) -> None:
            self.modules.pop()
            if next(module.children(), None) is not None:
                return
            name, _, state = self.leaves.pop()
            if state is None:
                state = self.state(_tensors(output)[0]) if _tensors(output) else _CONST
            else:
                if isinstance(state, _Field):
                    _check_map(state, output, name)
                self.set(output, state)
            if isinstance(state, _Field):
                self.layers.append(RF(name, state.size, state.jump, state.start, state.n))

        return hook

    def _module_state(self, module: nn.Module, args: tuple, label: str) -> Any:
        """The output's state for a leaf module with a known rule; None to follow the operations inside it."""
        known = isinstance(module, (*_WINDOWED, *_ADAPTIVE, *_SAME_GRID_MODULES))
        if not known and probe.kind_of(module) not in _SAME_GRID_KINDS:
            return None
        states = [self.state(a) for a in _tensors(args)]
        if not any(isinstance(s, _Field) for s in states):
            return _GLOBAL if _GLOBAL in states else _CONST
        source = self.state(args[0]) if args else None
        if not isinstance(source, _Field) or len(states) != 1:
            raise ValueError(f"{label}: expected one input, a map of the image")
        if isinstance(module, _ADAPTIVE):
            return _adaptive(source, _square(label, module.output_size, "output_size"), label)
        if isinstance(module, _WINDOWED):
            return _windowed(source, label, kernel=_square(label, module.kernel_size, "kernel_size"),
                             stride=_square(label, module.stride, "stride"), padding=module.padding,
                             dilation=_square(label, getattr(module, "dilation", 1), "dilation"),
                             ceil_mode=getattr(module, "ceil_mode", False), input_size=self.input_size)
        return source

    def __torch_function__(self, func: Callable, types: tuple, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if self.leaves and self.leaves[-1][2] is not None:
            return func(*args, **kwargs)  # inside a layer handled whole
        op = _op_name(func)
        states = [self.state(t) for t in _tensors((args, kwargs))]
        try:
            if not any(isinstance(s, _Field) for s in states):
                # A function of constants and of global summaries is one too.
                out = func(*args, **kwargs)
                self.set(out, _GLOBAL if _GLOBAL in states else _CONST)
                return out
            where = f"operation {op!r}{self.inside()}"
            windowed = self._window_state(op, args, kwargs, where) if op in _WINDOW_ARGS else None
            out = func(*args, **kwargs)
            if windowed is not None:
                _check_map(windowed, out, where)
            state = windowed or self._state(op, args, kwargs, out, where)
        except ValueError as e:
            if self.leaves:
                raise ValueError(f"{self.leaves[-1][1]} is not a conv, pooling, activation, norm or dropout layer, "
                                 f"and inside it: {e}") from None
            raise
        self.set(out, state)
        return out

    def _window_state(self, op: str, args: tuple, kwargs: dict, where: str) -> _Field:
        """The field after a functional convolution or pooling."""
        source = self.state(args[0]) if args else None
        if not isinstance(source, _Field) or sum(isinstance(self.state(t), _Field)
                                                 for t in _tensors((args, kwargs))) != 1:
            raise ValueError(f"{where}: expected its first argument to be the only map of the image")
        given = dict(zip(_WINDOW_ARGS[op], args[1:])) | kwargs
        if op.startswith("adaptive"):
            return _adaptive(source, _square(where, given["output_size"], "output_size"), where)
        kernel = _square(where, given["weight"].shape[-2:] if op == "conv2d" else given["kernel_size"], "kernel_size")
        # The pools' stride defaults to the kernel (given as None or []), conv2d's to 1.
        stride = given.get("stride", 1) if op == "conv2d" else given.get("stride") or kernel
        return _windowed(source, where, kernel=kernel, stride=_square(where, stride, "stride"),
                         padding=given.get("padding", 0), dilation=_square(where, given.get("dilation", 1), "dilation"),
                         ceil_mode=given.get("ceil_mode", False), input_size=self.input_size)

    def _state(self, op: str, args: tuple, kwargs: dict, out: Any, where: str) -> Any:
        """The output's state for any other operation that sees a map."""
        if not _tensors(out):  # sizes, dims, dtypes: facts about the input's shape, not its pixels
            return _CONST
        source = self.state(args[0]) if args else None
        if op in _SHAPE_OPS or op in _AXIS_OPS or op in _REDUCTIONS and not _binary(args):
            if not isinstance(source, _Field):
                raise ValueError(f"{where}: expected its first argument to be a map of the image")
            return _reshaped(op, source, args, kwargs, out, where)
        inputs = [self.state(t) for t in _tensors((args, kwargs))]
        if op in _CONCATS or op in _SAME_GRID_OPS or _pointwise(op):
            return _merge([s for s in inputs if isinstance(s, _Field) or s is _GLOBAL], out, where)
        raise ValueError(f"{where} is not an operation whose receptive field is known here (convolution, pooling, "
                         f"elementwise, concatenation along channels, reshape)")


def _reshaped(op: str, source: _Field, args: tuple, kwargs: dict, value: Any, where: str) -> Any:
    """The state after a shape operation or a reduction of a map ``source``."""
    before: Tensor = args[0]
    ndim, spatial = before.ndim, {before.ndim - 2, before.ndim - 1}
    if op in _REDUCTIONS:
        dims = args[1] if len(args) > 1 else kwargs.get("dim")
        dims = set(range(ndim)) if dims is None else {d % ndim for d in ((dims,) if isinstance(dims, int) else dims)}
        if not dims & spatial:
            return source  # across channels: each position on its own
        if dims >= spatial and all(t.ndim == ndim for t in _tensors(value)):
            return _adaptive(source, 1, where)  # a global pool that keeps its 1×1 map
        return _GLOBAL  # a vector, or a summary of rows or columns: no square map any more
    if op in _AXIS_OPS:
        out = _tensors(value)[0]
        if out.shape[-2:] == before.shape[-2:] and _keeps_spatial_axes(op, args, kwargs, ndim):
            return source
        raise ValueError(f"{where} moves the map's (H, W) dims; receptive fields need them last")
    if op == "getitem" and not _keeps_spatial_index(args[1], ndim):
        raise ValueError(f"{where} indexes or crops the map's (H, W) dims; its receptive field is unknown")
    outs = _tensors(value)
    if op in ("expand", "expand_as", "broadcast_to") and source.n == 1 and outs[0].shape[-2:] != (1, 1):
        return _GLOBAL  # a pooled 1×1 map spread over a bigger one: a gate (see the module's docstring)
    if all(t.ndim >= 2 and t.shape[-2:] == before.shape[-2:] for t in outs):
        return source
    if all(t.ndim <= 2 for t in outs):
        return _GLOBAL  # a flattened map: the spatial part of the network ends here
    raise ValueError(f"{where} reshapes the map so that (H, W) are no longer its last dims; its receptive "
                     f"field is unknown")


def _windowed(source: _Field, where: str, *, kernel: int, stride: int, padding: Any, dilation: int,
              ceil_mode: bool, input_size: int) -> _Field:
    """The recurrence for one window layer on a map ``source``."""
    kernel = dilation * (kernel - 1) + 1
    if isinstance(padding, str):
        if padding == "valid":
            left, n = 0, _out_size(source.n, kernel, stride, 0, False)
        elif padding == "same":
            # torch pads (kernel - 1) // 2 before and the rest after (more after, for even kernels).
            left, n = (kernel - 1) // 2, source.n
        else:
            raise ValueError(f"{where}: padding={padding!r} is not supported")
    else:
        left = _square(where, padding, "padding")
        n = _out_size(source.n, kernel, stride, left, ceil_mode)
    if n < 1:
        raise ValueError(f"{where} leaves no output for a {input_size}×{input_size} input")
    return _Field(source.size + (kernel - 1) * source.jump, source.jump * stride,
                  source.start + ((kernel - 1) / 2 - left) * source.jump, n)


def _adaptive(source: _Field, out: int | None, where: str) -> _Field:
    """Adaptive pooling to ``out × out`` (``None``: the input's size) as the plain pooling it equals."""
    n = source.n
    out = n if out is None else out
    if n % out:
        raise ValueError(
            f"{where}: adaptive pooling from {n}×{n} to {out}×{out} uses windows of varying size; "
            f"its receptive field is only defined when {out} divides {n}"
        )
    # An even split is plain pooling with kernel = stride = n / out.
    kernel = n // out
    return _Field(source.size + (kernel - 1) * source.jump, source.jump * kernel,
                  source.start + (kernel - 1) / 2 * source.jump, out)


def _merge(inputs: list[Any], value: Any, where: str) -> Any:
    """An elementwise op or a concatenation: each unit sees what the inputs' units at its place see together."""
    out = _tensors(value)[0]
    if out.ndim < 2 or out.shape[-1] != out.shape[-2]:
        raise ValueError(f"{where} gives {tuple(out.shape)}; expected maps (..., H, W) of the image")
    n = out.shape[-1]
    # A global value, or a 1×1 map broadcast over a bigger one, is a gate: left out (see the module's docstring).
    maps = [s for s in inputs if isinstance(s, _Field) and s.n == n]
    if not maps:
        raise ValueError(f"{where} makes a {n}×{n} map from no {n}×{n} map of the image")
    jumps = {s.jump for s in maps}
    if len(jumps) > 1:
        raise ValueError(f"{where} merges maps whose units are {sorted(jumps)} input pixels apart; a merged "
                         f"receptive field needs one jump")
    low = min(s.start - (s.size - 1) / 2 for s in maps)
    high = max(s.start + (s.size - 1) / 2 for s in maps)
    return _Field(round(high - low) + 1, maps[0].jump, (low + high) / 2, n)


def _check_map(field: _Field, value: Any, where: str) -> None:
    out = _tensors(value)[0]
    assert tuple(out.shape[-2:]) == (field.n, field.n), (where, tuple(out.shape), field)


def _op_name(func: Callable) -> str:
    """``add``, ``relu``, ``cat``, ``getitem``, ... for a torch function, a tensor method or a Python operator."""
    name = getattr(func, "__name__", "?")
    if name.startswith("__") and name.endswith("__"):  # __add__, __radd__, __iadd__, __getitem__
        core = name[2:-2]
        if core[1:] in _OPERATORS and core[0] in "ri":
            return _OPERATORS[core[1:]] + ("_" if core[0] == "i" else "")
        return _OPERATORS.get(core, core)
    return name


@functools.cache
def _pointwise(op: str) -> bool:
    """Whether torch tags the aten op of this name as pointwise (each output unit from the same unit of each input)."""
    packet = getattr(torch.ops.aten, op, None)
    if packet is None or not isinstance(packet, torch._ops.OpOverloadPacket):
        return False
    overloads = packet.overloads()
    return bool(overloads) and torch.Tag.pointwise in getattr(packet, overloads[0]).tags


def _keeps_spatial_axes(op: str, args: tuple, kwargs: dict, ndim: int) -> bool:
    """Whether a transpose/permute/movedim leaves the last two dims where they are."""
    rest = list(args[1:]) + list(kwargs.values())
    if op == "permute":
        order = rest[0] if len(rest) == 1 and isinstance(rest[0], (tuple, list)) else rest
        return {d % ndim for d in order[-2:]} == {ndim - 2, ndim - 1}  # swapping H and W keeps a square field
    moved = {d % ndim for item in rest for d in ((item,) if isinstance(item, int) else item)}
    return not moved & {ndim - 2, ndim - 1} or op in ("transpose", "swapaxes", "swapdims") and moved == {
        ndim - 2, ndim - 1}


def _keeps_spatial_index(index: Any, ndim: int) -> bool:
    """Whether ``tensor[index]`` takes every row and column of the last two dims and leaves them last."""
    items = list(index) if isinstance(index, tuple) else [index]
    if Ellipsis in items:
        at = items.index(Ellipsis)
        used = sum(item is not None for item in items) - 1
        items[at: at + 1] = [slice(None)] * (ndim - used)
    dim = 0  # dims of the tensor consumed so far; dims after the last item are taken whole
    for item in items:
        if item is None:
            if dim > ndim - 2:
                return False  # a new axis between or after H and W
            continue
        if dim >= ndim - 2 and not (isinstance(item, slice) and item == slice(None)):
            return False
        dim += 1
    return True


def _binary(args: tuple) -> bool:
    """``torch.max(a, b)``: elementwise, not a reduction."""
    return len(args) > 1 and isinstance(args[1], Tensor)


def _tensors(value: Any) -> list[Tensor]:
    """The tensors in a value, in order: a tensor, or tuples, lists and dicts of them (args, kwargs, outputs)."""
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in _tensors(item)]
    return []


def _square(where: str, value: Any, attr: str) -> int | None:
    """A kernel/stride/padding/dilation/output_size setting as one int."""
    if isinstance(value, str):
        raise ValueError(f"{where}: {attr}={value!r} is not supported; give it as numbers")
    if isinstance(value, (tuple, list, torch.Size)):
        if len(set(value)) != 1:
            raise ValueError(f"{where}: {attr}={tuple(value)} is not square; receptive fields are square here")
        value = value[0]
    return value


def _out_size(n: int, kernel: int, stride: int, padding: int, ceil_mode: bool) -> int:
    """Output side for an input of side ``n``, as ``nn.Conv2d``/``nn.MaxPool2d`` document it (kernel dilated)."""
    span = n + 2 * padding - kernel
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    # ceil_mode: a last window that would start in the right padding is dropped (as in torch's pooling_output_shape).
    if ceil_mode and (out - 1) * stride >= n + padding:
        out -= 1
    return out
