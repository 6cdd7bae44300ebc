"""Convolution and pooling one output cell at a time, for the step-by-step view.

Every step takes its numbers from one real forward pass (:func:`cnnviz.probe.run`, eval mode): the window is cut from
the input the layer actually received, and ``output`` is what the layer actually produced at that cell, so the page
can show that the sum of products *is* the layer's output.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.utils import _pair  # as torchvision.ops does

from cnnviz import probe

Box = tuple[int, int, int, int]  # (top, left, bottom, right) on the layer's input, bottom/right exclusive


@dataclass
class NormStep:
    """Eval-mode batch norm of one value with the running statistics (Ioffe & Szegedy 2015, "Batch Normalization").

    ``value = (x - mean) / sqrt(var + eps) * weight + bias``.
    """

    name: str
    mean: float
    var: float
    eps: float
    weight: float
    bias: float
    value: float


@dataclass
class ConvStep:
    """One output cell of a ``Conv2d``: window × kernel, summed, plus bias; then the norm and activation after it."""

    layer: str
    channel: int
    row: int
    col: int
    box: Box  # where the kernel lies on the layer's input; negative or past the edge where it covers padding
    patch: Tensor  # (C_in, kh, kw) the layer's input under the kernel, 0 in the padding (C_in per group)
    kernel: Tensor  # (C_in, kh, kw) the weights of this output channel
    products: Tensor  # (C_in, kh, kw) patch * kernel
    per_channel_sums: Tensor  # (C_in,)
    bias: float  # 0.0 for a conv without bias (one followed by batch norm)
    total: float  # products.sum() + bias
    output: float  # the layer's own output at (channel, row, col)
    norm: NormStep | None  # the BatchNorm2d right after the conv, if any
    activation_name: str | None  # the activation layer right after the conv (or its norm), if any
    activated: float | None  # that activation applied to after_norm (or total)

    @property
    def after_norm(self) -> float | None:
        """The total after the batch norm; None without one."""
        return None if self.norm is None else self.norm.value


@dataclass
class PoolStep:
    """One output cell of a ``MaxPool2d`` or ``AvgPool2d``."""

    layer: str
    channel: int
    row: int
    col: int
    kind: str  # "max" or "avg"
    box: Box
    window: Tensor  # (kh, kw) the pool's input under the window; padding holds what the pool pads with (-inf / 0)
    winner: tuple[int, int] | None  # max: (i, j) in the window of the largest value
    divisor: int | None  # avg: the number of cells the window's sum is divided by
    value: float  # the window's max, or its sum / divisor
    output: float  # the layer's own output at (channel, row, col)


def conv_step(model: nn.Module, x: Tensor, layer: str, channel: int, row: int, col: int,
              records: dict[str, probe.Record] | None = None) -> ConvStep:
    """How the ``Conv2d`` ``layer`` computes output cell ``(channel, row, col)`` for one image ``x`` (1, C, H, W).

    Zero padding only; stride, dilation and groups as the layer has them. Out-of-range indices, an unknown layer or
    one that is not a ``Conv2d`` raise ``ValueError`` with the valid choices. ``records``: ``probe.run(model, x)``
    if the caller has it already (a page's cached inspection), so a slider move needs no forward pass.
    """
    records = records if records is not None else _run(model, x)
    record = _record(records, layer, ("Conv2d",))
    _check_cell(record, channel, row, col)
    conv = probe.get_module(model, layer)
    if isinstance(conv.padding, str) or conv.padding_mode != "zeros":
        raise ValueError(f"layer {layer!r}: only numeric zero padding can be stepped through, got "
                         f"padding={conv.padding!r}, padding_mode={conv.padding_mode!r}")
    # With groups, output channel c only reads its own group's slice of the input channels.
    group = channel // (conv.out_channels // conv.groups)
    per_group = conv.in_channels // conv.groups
    plane = record.input[0, group * per_group:(group + 1) * per_group]  # (C_in, H, W)
    top, left = row * conv.stride[0] - conv.padding[0], col * conv.stride[1] - conv.padding[1]
    patch, box = _window(plane, top, left, conv.kernel_size, conv.dilation, fill=0.0)
    kernel = conv.weight[channel].detach()
    products = patch * kernel
    per_channel_sums = products.sum(dim=(1, 2))
    bias = 0.0 if conv.bias is None else float(conv.bias.detach()[channel])
    total = float(per_channel_sums.sum()) + bias
    norm, activation_name, activated = _after(model, records, layer, channel, total)
    return ConvStep(
        layer=layer, channel=channel, row=row, col=col, box=box, patch=patch, kernel=kernel, products=products,
        per_channel_sums=per_channel_sums, bias=bias, total=total, output=float(record.output[0, channel, row, col]),
        norm=norm, activation_name=activation_name, activated=activated,
    )


def conv_sweep(model: nn.Module, x: Tensor, layer: str, channel: int) -> Tensor:
    """The whole output map ``(H_out, W_out)`` of one channel of a ``Conv2d`` for ``x`` (1, C, H, W).

    Filling it cell by cell in :func:`sweep_order` gives exactly the layer's output, so this is that output.
    """
    record = _record(_run(model, x), layer, ("Conv2d",))
    _check_cell(record, channel, 0, 0)
    return record.output[0, channel]


def sweep_order(h: int, w: int) -> list[tuple[int, int]]:
    """The cells of an ``h × w`` map in the order a kernel visits them: row by row, left to right."""
    return [(row, col) for row in range(h) for col in range(w)]


def pool_step(model: nn.Module, x: Tensor, layer: str, channel: int, row: int, col: int,
              records: dict[str, probe.Record] | None = None) -> PoolStep:
    """How the pooling ``layer`` (max or average) computes output cell ``(channel, row, col)`` for ``x`` (1, C, H, W).

    Out-of-range indices, an unknown layer or one of another type raise ``ValueError`` with the valid choices.
    ``records`` as in :func:`conv_step`.
    """
    records = records if records is not None else _run(model, x)
    record = _record(records, layer, ("MaxPool2d", "AvgPool2d"))
    _check_cell(record, channel, row, col)
    pool = probe.get_module(model, layer)
    kernel, stride, padding = (_pair(v) for v in (pool.kernel_size, pool.stride, pool.padding))
    dilation = _pair(getattr(pool, "dilation", 1))
    is_max = isinstance(pool, nn.MaxPool2d)
    plane = record.input[0, channel:channel + 1]  # (1, H, W)
    top, left = row * stride[0] - padding[0], col * stride[1] - padding[1]
    # Max pooling never picks a padding cell (torch pads it with -inf); average pooling pads with zeros.
    window, box = _window(plane, top, left, kernel, dilation, fill=float("-inf") if is_max else 0.0)
    window = window[0]
    winner = divisor = None
    if is_max:
        winner = divmod(int(window.argmax()), kernel[1])
        value = float(window.max())
    else:
        divisor = _avg_divisor(pool, tuple(plane.shape[-2:]), (top, left), kernel, padding)
        value = float(window.sum()) / divisor
    return PoolStep(
        layer=layer, channel=channel, row=row, col=col, kind="max" if is_max else "avg", box=box, window=window,
        winner=winner, divisor=divisor, value=value, output=float(record.output[0, channel, row, col]),
    )


def _run(model: nn.Module, x: Tensor) -> dict[str, probe.Record]:
    if not isinstance(x, Tensor) or x.ndim != 4 or x.shape[0] != 1 or not x.is_floating_point():
        got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"expected one float image (1, C, H, W), got {got}")
    return probe.run(model, x)


def _record(records: dict[str, probe.Record], layer: str, module_types: tuple[str, ...]) -> probe.Record:
    """The record of ``layer``, which must be one of ``module_types``; else an error listing those that are."""
    valid = [name for name, record in records.items() if record.module_type in module_types]
    if layer not in valid:
        raise probe.UnknownLayerError(
            f"no {' or '.join(module_types)} layer named {layer!r}; choose one of: {', '.join(valid) or 'none'}"
        )
    return records[layer]


def _check_cell(record: probe.Record, channel: int, row: int, col: int) -> None:
    _, channels, h, w = record.output.shape
    for what, index, n in (("channel", channel, channels), ("row", row, h), ("col", col, w)):
        if not 0 <= index < n:
            raise ValueError(f"layer {record.name!r}: {what} must be in [0, {n}), got {index}")


def _window(plane: Tensor, top: int, left: int, kernel: tuple[int, int], dilation: tuple[int, int],
            fill: float) -> tuple[Tensor, Box]:
    """The cells of ``plane`` (C, H, W) under a kernel whose first cell is at ``(top, left)``: (C, kh, kw), ``fill``
    where the kernel hangs over the edge; and the box it spans."""
    (kh, kw), (dh, dw) = kernel, dilation
    h, w = plane.shape[-2:]
    bottom, right = top + dh * (kh - 1) + 1, left + dw * (kw - 1) + 1
    pad_top, pad_left = max(0, -top), max(0, -left)
    padded = F.pad(plane, (pad_left, max(0, right - w), pad_top, max(0, bottom - h)), value=fill)
    cells = padded[:, top + pad_top:bottom + pad_top:dh, left + pad_left:right + pad_left:dw]
    return cells, (top, left, bottom, right)


def _avg_divisor(pool: nn.AvgPool2d, size: tuple[int, int], origin: tuple[int, int], kernel: tuple[int, int],
                 padding: tuple[int, int]) -> int:
    """What ``AvgPool2d`` divides a window's sum by: its cells inside the padded input (or the real input only,
    without ``count_include_pad``); a ``ceil_mode`` window is cut off at the padded input's far edge."""
    if pool.divisor_override:
        return pool.divisor_override
    count = 1
    for start, k, p, n in zip(origin, kernel, padding, size):
        low, high = (-p, n + p) if pool.count_include_pad else (0, n)
        count *= min(start + k, high) - max(start, low)
    return count


def _after(model: nn.Module, records: dict[str, probe.Record], layer: str, channel: int,
           value: float) -> tuple[NormStep | None, str | None, float | None]:
    """The batch norm and activation that directly follow ``layer`` in the forward pass, applied to one value."""
    names = list(records)
    following = [records[name] for name in names[names.index(layer) + 1:names.index(layer) + 3]]
    norm = None
    if following and following[0].module_type == "BatchNorm2d":
        bn = probe.get_module(model, following[0].name)
        if bn.running_mean is None:
            # Normalised with the batch's own statistics: no formula per cell to show.
            return None, None, None
        weight = 1.0 if bn.weight is None else float(bn.weight.detach()[channel])
        bias = 0.0 if bn.bias is None else float(bn.bias.detach()[channel])
        mean, var = float(bn.running_mean[channel]), float(bn.running_var[channel])
        value = (value - mean) / (var + bn.eps) ** 0.5 * weight + bias
        norm = NormStep(following[0].name, mean, var, bn.eps, weight, bias, value)
        following = following[1:]
    if following and following[0].kind == "activation":
        activation = probe.get_module(model, following[0].name)
        with torch.no_grad():
            # Activations are elementwise: the module itself on one number gives that number's activation.
            activated = float(activation(torch.tensor(value, device=probe.device_of(model))))
        return norm, following[0].name, activated
    return norm, None, None
