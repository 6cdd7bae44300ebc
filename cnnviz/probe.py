"""One forward pass with hooks: what every layer of a model received and produced.

Layer names are module paths from ``named_modules()`` (``"layer1.0.conv1"``), so they match ``print(model)``, as
in torchvision's ``create_feature_extractor``. A module called more than once in one forward pass (torchvision's
ResNet ``BasicBlock`` reuses ``self.relu``) gets one record per call: ``"layer1.0.relu"``, ``"layer1.0.relu#2"``.

The graph blocks of a spec-built model (:mod:`cnnviz.models`) are read back from the records of their layers:
:func:`residual` gives a residual block's x, F(x) and x + F(x), :func:`branches` an Inception block's branches.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

KINDS = ("conv", "activation", "pool", "norm", "linear", "dropout", "flatten", "other")

# Checked in order; the first match wins.
_KIND_TYPES: tuple[tuple[str, tuple[type[nn.Module], ...]], ...] = (
    ("conv", (nn.Conv2d,)),
    ("activation", (nn.ReLU, nn.GELU, nn.SiLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.ELU)),
    ("pool", (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)),
    ("norm", (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.LayerNorm)),
    ("linear", (nn.Linear,)),
    ("dropout", (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)),
    ("flatten", (nn.Flatten,)),
)

# Hyperparameters worth showing (and needed to redo a pooling step); kept as plain values so records pickle small.
_PARAM_NAMES = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "output_size")

CALL_SEPARATOR = "#"


@dataclass
class Record:
    """What one call of one leaf module saw: tensors are detached copies with the batch dim kept."""

    name: str  # module path, with "#2", "#3", ... for repeated calls of the same module
    kind: str  # one of KINDS
    module_type: str  # class name, e.g. "Conv2d"
    input: Tensor | None  # first positional tensor argument, (N, ...); None if the module got no tensor positionally
    output: Tensor  # (N, ...); the first tensor if the module returned a tuple
    params: dict[str, Any] = field(default_factory=dict)  # kernel_size, stride, ... for conv and pool layers

    @property
    def shape(self) -> tuple[int, ...]:
        """Output shape without the batch dim, e.g. ``(16, 14, 14)``."""
        return tuple(self.output.shape[1:])


@dataclass
class PoolPair:
    """One pooling step for the first image: ``input`` (C, H, W) → ``output`` (C, h, w)."""

    name: str
    input: Tensor
    output: Tensor
    # Max pooling only: (C, h, w) int64, for each output cell the flat index into the input's H*W plane of the winner.
    argmax: Tensor | None


@dataclass
class ResidualView:
    """One residual block's sum, for every image of a probe: each tensor ``(N, C, H, W)``.

    ``sum == shortcut + fx`` (up to float rounding) and ``output == relu(sum)``."""

    block: str  # module path, e.g. "block2"
    x: Tensor  # the block's input
    shortcut: Tensor  # x as the shortcut brings it to the sum: x itself, or its 1×1 projection (then projection=True)
    fx: Tensor  # F(x): what the block's two convolutions make of x
    sum: Tensor  # x + F(x), the output of the block's ``add``
    output: Tensor  # ReLU(x + F(x)), the block's output
    projection: bool


@dataclass
class BranchView:
    """One Inception block's branches side by side, for every image of a probe."""

    block: str  # module path, e.g. "inc3"
    input: Tensor  # (N, C_in, H, W), what every branch gets
    branches: dict[str, Tensor]  # branch path ("inc3.branch3x3") → its output (N, C_k, H, W), in concatenation order
    output: Tensor  # (N, sum of C_k, H, W): the branches' maps stacked, the output of the block's ``concat``


class UnknownLayerError(KeyError, ValueError):
    """A layer name that the model does not have; the message lists the valid ones."""

    def __str__(self) -> str:
        # KeyError would show the message as a quoted repr.
        return str(self.args[0])


def kind_of(module: nn.Module) -> str:
    """The kind of a module (one of ``KINDS``), from its type."""
    for kind, types in _KIND_TYPES:
        if isinstance(module, types):
            return kind
    return "other"


def split_name(name: str) -> tuple[str, int]:
    """``"layer1.0.relu#2"`` → ``("layer1.0.relu", 2)``; a plain path is call 1."""
    path, sep, call = name.partition(CALL_SEPARATOR)
    if not sep:
        return path, 1
    if not call.isdigit() or int(call) < 1:
        raise UnknownLayerError(f"bad call number in layer name {name!r}: expected 'path#k' with k >= 1")
    return path, int(call)


def get_module(model: nn.Module, name: str) -> nn.Module:
    """The submodule at a module path (a record name's ``#k`` suffix is ignored); unknown → ``UnknownLayerError``."""
    path, _ = split_name(name)
    modules = dict(model.named_modules())
    if path not in modules:
        valid = ", ".join(layer_names(model))
        raise UnknownLayerError(f"no layer named {name!r}; valid layer names: {valid}")
    return modules[path]


def layer_names(model: nn.Module, kind: str | None = None) -> list[str]:
    """Paths of the leaf modules, in registration order, optionally only those of one kind."""
    if kind is not None and kind not in KINDS:
        raise ValueError(f"expected kind in {KINDS}, got {kind!r}")
    return [name for name, module in _leaves(model) if kind is None or kind_of(module) == kind]


def filters(model: nn.Module) -> dict[str, Tensor]:
    """Every ``Conv2d``'s weight, detached copies ``(out_channels, in_channels, kh, kw)``, keyed by module path."""
    return {
        name: module.weight.detach().clone()
        for name, module in model.named_modules()
        if isinstance(module, nn.Conv2d)
    }


def filter_drift(frames: list[tuple[int, Tensor]]) -> Tensor:
    """How far each filter has moved from where it started: ``||w_t - w_0|| / ||w_0||`` for every frame ``t`` and
    filter, ``(T, out_channels)``, from one layer's ``(step, weight (out_channels, in_channels, kh, kw))`` frames."""
    if not frames:
        raise ValueError("expected at least one (step, weight) frame, got none")
    shapes = {tuple(w.shape) for _, w in frames}
    if len(shapes) != 1 or len(next(iter(shapes))) != 4:
        raise ValueError(f"expected frames of one (out, in, kh, kw) shape, got {sorted(shapes)}")
    weights = torch.stack([w.detach().float().flatten(1) for _, w in frames])  # (T, out, in*kh*kw)
    start = weights[0].norm(dim=1).clamp(min=torch.finfo(torch.float32).tiny)  # (out,)
    return (weights - weights[0]).norm(dim=2) / start


def device_of(model: nn.Module) -> torch.device:
    """Where the model's parameters (or buffers) live; CPU for a model with neither."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """Put every module in eval mode, and give each one back its own ``training`` flag afterwards."""
    # Per module, not model.train(flag): a model may hold frozen eval-mode parts inside a training one.
    flags = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for module, flag in flags.items():
            module.training = flag


def run(model: nn.Module, x: Tensor) -> dict[str, Record]:
    """Run ``x`` (N, C, H, W) through ``model`` once, in eval mode, recording every leaf module's call in order.

    Hooks are removed and each module's training flag restored afterwards, also when the forward pass raises.
    Records stay on the model's device.
    """
    _check_images(x)
    records: dict[str, Record] = {}
    calls: dict[str, int] = {}
    # A stack per module: the pre-hook's input copy waits there for the matching forward hook.
    inputs: dict[str, list[Tensor | None]] = {}
    # The copy last made of each live tensor, with the tensor's version then: a layer's input is usually the output
    # of the layer before, unchanged, and shares that copy instead of making another (VGG-16: 250 MB → 130 MB).
    # Weak references: the forward pass still frees each activation when it is done with it.
    copies: dict[int, tuple[weakref.ref, int, Tensor]] = {}

    def copy(tensor: Tensor) -> Tensor:
        held = copies.get(id(tensor))
        if held is not None and held[0]() is tensor and held[1] == tensor._version:
            return held[2]
        made = tensor.detach().clone()
        copies[id(tensor)] = (weakref.ref(tensor), tensor._version, made)
        return made

    def pre_hook(name: str) -> Callable[[nn.Module, tuple], None]:
        def hook(module: nn.Module, args: tuple) -> None:
            # Copy now: an in-place module (ReLU(inplace=True)) overwrites its input before the forward hook runs.
            tensor = _first_tensor(args)
            inputs[name].append(None if tensor is None else copy(tensor))

        return hook

    def forward_hook(name: str) -> Callable[[nn.Module, tuple, Any], None]:
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            module_input = inputs[name].pop()
            tensor = _first_tensor(output)
            if tensor is None:
                return
            calls[name] = calls.get(name, 0) + 1
            key = name if calls[name] == 1 else f"{name}{CALL_SEPARATOR}{calls[name]}"
            records[key] = Record(
                name=key,
                kind=kind_of(module),
                module_type=type(module).__name__,
                input=module_input,
                # Copy: a later in-place module would otherwise change this record after the fact.
                output=copy(tensor),
                params=_params(module),
            )

        return hook

    handles = []
    try:
        for name, module in _leaves(model):
            inputs[name] = []
            handles.append(module.register_forward_pre_hook(pre_hook(name)))
            handles.append(module.register_forward_hook(forward_hook(name)))
        with evaluating(model), torch.no_grad():
            # A copy, so that a first in-place layer cannot change the caller's tensor.
            model(x.to(device_of(model), copy=True))
    finally:
        for handle in handles:
            handle.remove()
    return records


def predict(model: nn.Module, x: Tensor) -> Tensor:
    """Softmax class probabilities ``(num_classes,)`` for the first image of ``x`` (N, C, H, W), in eval mode."""
    _check_images(x)
    with evaluating(model), torch.no_grad():
        logits = model(x[:1].to(device_of(model), copy=True))
    if logits.ndim != 2:
        raise ValueError(f"expected the model to return logits (N, num_classes), got {tuple(logits.shape)}")
    return logits[0].softmax(dim=0)


def pooling_pairs(records: dict[str, Record]) -> list[PoolPair]:
    """Input and output of every ``MaxPool2d`` / ``AvgPool2d`` record, for the first image, with max-pool winners."""
    pairs = []
    for record in records.values():
        if record.module_type not in ("MaxPool2d", "AvgPool2d") or record.input is None:
            continue
        image = record.input[0]  # (C, H, W)
        argmax = None
        if record.module_type == "MaxPool2d":
            p = record.params
            # The module's own settings, so the indices belong to the cells it actually picked.
            _, indices = F.max_pool2d(
                image[None], p["kernel_size"], p["stride"], p["padding"], p["dilation"], p["ceil_mode"],
                return_indices=True,
            )
            argmax = indices[0]  # (C, h, w), flat index into H*W
        pairs.append(PoolPair(name=record.name, input=image, output=record.output[0], argmax=argmax))
    return pairs


def graph_blocks(records: dict[str, Record]) -> dict[str, str]:
    """The residual and Inception blocks among the records of a spec-built model, in the order they ran:
    ``{"block2": "residual", "inc3": "inception"}``; empty for other models."""
    found = {}
    for name in records:
        path, dot, leaf = name.rpartition(".")
        if dot and leaf == "add" and f"{path}.conv1" in records:
            found[path] = "residual"
        elif dot and leaf == "concat" and any(n.startswith(f"{path}.branch") for n in records):
            found[path] = "inception"
    return found


def residual(records: dict[str, Record], block: str) -> ResidualView:
    """x, F(x) and x + F(x) of the residual block ``block`` from the records of one :func:`run`.

    F(x) is the output of ``{block}.bn2`` (``{block}.conv2`` for a block without batchnorm); the shortcut's is that
    of ``{block}.shortcut`` (identity) or of the last layer inside it (``shortcut.bn`` of a projection)."""
    _check_block(records, block, "residual")
    inside = _inside(records, f"{block}.shortcut")
    fx = records.get(f"{block}.bn2") or records[f"{block}.conv2"]
    return ResidualView(block=block, x=records[f"{block}.conv1"].input, shortcut=records[inside[-1]].output,
                        fx=fx.output, sum=records[f"{block}.add"].output, output=records[f"{block}.relu"].output,
                        projection=inside != [f"{block}.shortcut"])


def branches(records: dict[str, Record], block: str) -> BranchView:
    """The output of each branch of the Inception block ``block`` (the output of the last layer run inside it) and of
    the block, from the records of one :func:`run`."""
    _check_block(records, block, "inception")
    first: dict[str, str] = {}  # branch path → its first record
    for name in records:
        if name.startswith(f"{block}.branch"):
            first.setdefault(name[: name.index(".", len(block) + 1)], name)
    return BranchView(block=block, input=records[next(iter(first.values()))].input,
                      branches={path: records[_inside(records, path)[-1]].output for path in first},
                      output=records[f"{block}.concat"].output)


def _inside(records: dict[str, Record], path: str) -> list[str]:
    """Names of the records of the module at ``path`` or inside it, in the order they ran."""
    return [name for name in records if name == path or name.startswith(f"{path}.")]


def _check_block(records: dict[str, Record], block: str, kind: str) -> None:
    blocks = graph_blocks(records)
    if blocks.get(block) != kind:
        valid = [name for name, k in blocks.items() if k == kind]
        raise UnknownLayerError(f"no {kind} block named {block!r}; {kind} blocks: {', '.join(valid) or 'none'}")


def channel_stats(t: Tensor) -> dict[str, Tensor]:
    """Per-channel statistics of a feature map ``(C, H, W)``: each value is a ``(C,)`` tensor.

    Keys: ``mean``, ``max``, ``min``, ``std`` (population, so a 1×1 map gives 0, not NaN) and ``frac_active``
    (fraction of cells > 0).
    """
    if t.ndim != 3:
        raise ValueError(f"expected a (C, H, W) tensor, got {tuple(t.shape)}")
    flat = t.detach().flatten(1).float()  # (C, H*W)
    return {
        "mean": flat.mean(dim=1),
        "max": flat.amax(dim=1),
        "min": flat.amin(dim=1),
        "std": flat.std(dim=1, correction=0),
        "frac_active": (flat > 0).float().mean(dim=1),
    }


def busiest(maps: Tensor) -> Tensor:
    """Channel numbers of a feature map ``(C, H, W)``, most active (highest mean activation) first, ``(C,)``."""
    if maps.ndim != 3:
        raise ValueError(f"expected a (C, H, W) tensor, got {tuple(maps.shape)}")
    return maps.detach().float().flatten(1).mean(dim=1).argsort(descending=True, stable=True)


def _leaves(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    return ((name, module) for name, module in model.named_modules() if next(module.children(), None) is None)


def _first_tensor(value: Any) -> Tensor | None:
    if isinstance(value, Tensor):
        return value
    if isinstance(value, (tuple, list)):
        return next((item for item in value if isinstance(item, Tensor)), None)
    return None


def _params(module: nn.Module) -> dict[str, Any]:
    if kind_of(module) not in ("conv", "pool"):
        return {}
    return {name: getattr(module, name) for name in _PARAM_NAMES if hasattr(module, name)}


def _check_images(x: Tensor) -> None:
    if not isinstance(x, Tensor) or x.ndim != 4:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"expected a (N, C, H, W) tensor, got {got}")
