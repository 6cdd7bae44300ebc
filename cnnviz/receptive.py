"""Receptive fields from the architecture: which input pixels one unit of each layer can see.

The standard recurrence over a chain of layers (Araujo, Norris & Sim 2019, "Computing Receptive Fields of
Convolutional Neural Networks", Distill): for a layer with kernel ``k`` (dilated: ``d(k - 1) + 1``), stride ``s`` and
padding ``p``,

    r_out = r_in + (k - 1) j_in,    j_out = j_in s,    start_out = start_in + ((k - 1) / 2 - p) j_in

from the input's ``r = 1, j = 1, start = 0`` (pixel ``i`` has its centre at coordinate ``i``). Only the architecture
is read; nothing runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from torch import nn

from cnnviz import probe

# Kinds of layer that keep every unit where it is: same receptive field, same grid.
_SAME_GRID = ("activation", "norm", "dropout")
_WINDOWED = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)
_ADAPTIVE = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


@dataclass(frozen=True)
class RF:
    """The receptive field shared by all units of one layer, in input pixels (square)."""

    name: str
    size: int  # side of the input square one unit sees, before clipping to the image
    jump: int  # input pixels between the centres of neighbouring units
    start: float  # centre of unit (0, 0) in input coordinates; outside the image when padding pushes it there
    out_size: int  # the layer's output maps are out_size × out_size


def receptive_fields(model: nn.Sequential, input_size: int) -> list[RF]:
    """One :class:`RF` per layer of ``model`` up to its first ``Flatten``/``Linear``, for square inputs of that size.

    ``model`` is an ``nn.Sequential`` (nested ones are followed, their layers named by module path) of ``Conv2d``,
    ``MaxPool2d``, ``AvgPool2d``, adaptive pools whose output size divides their input's, and shape-keeping
    activation, norm and dropout layers. Kernel, stride, padding and dilation may be ints or tuples with equal
    entries. Anything else raises ``ValueError`` naming the layer.
    """
    if not isinstance(model, nn.Sequential):
        raise ValueError(f"expected an nn.Sequential, got {type(model).__name__}")
    if input_size < 1:
        raise ValueError(f"expected input_size >= 1, got {input_size}")
    fields = []
    size, jump, start, n = 1, 1, 0.0, input_size
    for name, module in _chain(model):
        kind = probe.kind_of(module)
        if kind in ("flatten", "linear"):
            break
        if isinstance(module, _WINDOWED):
            kernel, stride, padding, dilation = (
                _square(name, module, attr) for attr in ("kernel_size", "stride", "padding", "dilation")
            )
            kernel = dilation * (kernel - 1) + 1
            n = _out_size(n, kernel, stride, padding, getattr(module, "ceil_mode", False))
        elif isinstance(module, _ADAPTIVE):
            out = _square(name, module, "output_size") or n  # None keeps the input's size
            if n % out:
                raise ValueError(
                    f"layer {name!r}: adaptive pooling from {n}×{n} to {out}×{out} uses windows of varying size; "
                    f"its receptive field is only defined when {out} divides {n}"
                )
            # An even split is plain pooling with kernel = stride = n / out.
            kernel, stride, padding, n = n // out, n // out, 0, out
        elif kind in _SAME_GRID:
            fields.append(RF(name, size, jump, start, n))
            continue
        else:
            raise ValueError(
                f"layer {name!r} ({type(module).__name__}) is not a conv, pooling, activation, norm or dropout "
                f"layer; its receptive field is unknown"
            )
        if n < 1:
            raise ValueError(f"layer {name!r} leaves no output for a {input_size}×{input_size} input")
        size, start, jump = size + (kernel - 1) * jump, start + ((kernel - 1) / 2 - padding) * jump, jump * stride
        fields.append(RF(name, size, jump, start, n))
    return fields


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


def _chain(model: nn.Sequential, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """The layers of a Sequential in execution order, descending into nested Sequentials."""
    for name, module in model.named_children():
        if isinstance(module, nn.Sequential):
            yield from _chain(module, f"{prefix}{name}.")
        else:
            yield prefix + name, module


def _square(name: str, module: nn.Module, attr: str) -> int | None:
    """A kernel/stride/padding/dilation/output_size setting as one int (1 for a missing dilation)."""
    value = getattr(module, attr, 1)
    if isinstance(value, str):
        raise ValueError(f"layer {name!r}: padding={value!r} is not supported; give padding as numbers")
    if isinstance(value, (tuple, list)):
        if len(set(value)) != 1:
            raise ValueError(f"layer {name!r}: {attr}={tuple(value)} is not square; receptive fields are square here")
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
