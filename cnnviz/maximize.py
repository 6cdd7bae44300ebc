"""What excites a channel: the dataset patches that drive it hardest, and inputs optimised to drive it harder.

Two classic answers to "what does this unit look for?": the top-k image patches from real data (Zeiler & Fergus
2014, "Visualizing and Understanding Convolutional Networks", Fig. 2; Girshick et al. 2014, "Rich feature
hierarchies", Fig. 4), and activation maximisation by gradient ascent on the input (Erhan et al. 2009, "Visualizing
Higher-Layer Features of a Deep Network"; Olah et al. 2017, "Feature Visualization", Distill).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.transforms.v2.functional import gaussian_blur

from cnnviz import data, probe
from cnnviz.receptive import receptive_fields, window

# Blur applied every few steps: a 3×3 Gaussian removes the high frequencies the ascent likes to invent
# (Yosinski et al. 2015, "Understanding Neural Networks Through Deep Visualization", sec. 3).
_BLUR_KERNEL = [3, 3]
_BLUR_SIGMA = [0.5, 0.5]
# Starting noise, in normalised units (the data's std is 1): small enough to be overwritten, yet large enough that a
# ReLU channel that is off everywhere on a flat grey image is on somewhere, so its gradient is not zero from the start.
_INIT_STD = 0.5


@dataclass
class Patch:
    """One image's strongest response of a channel, and the input pixels that unit sees."""

    image_index: int  # index into the split
    value: float  # the channel's largest activation over this image's map
    row: int  # where on the layer's map
    col: int
    box: tuple[int, int, int, int]  # receptive field of (row, col) on the image: (top, left, bottom, right), clipped
    pixels: Tensor  # uint8 (C, bottom - top, right - left), cut from the split's image


@dataclass
class MaxResult:
    """An input optimised to excite one channel of a layer (or one class, at a linear layer)."""

    channel: int
    image: Tensor  # (C, H, W) in normalised input space, on the model's device
    activation: float  # the objective for the final image, without jitter: the channel's mean activation or logit
    history: list[float]  # the objective at each step, on the jittered image


def top_patches(
    model: nn.Sequential, split: data.Split, layer: str, k: int = 9, batch_size: int = 500, limit: int | None = 2000,
) -> dict[int, list[Patch]]:
    """For every channel of ``layer``, the ``k`` images of ``split`` in which it fires hardest, one patch each.

    Each image counts once, by the channel's largest value anywhere on its map; the patch is the receptive field
    (:mod:`cnnviz.receptive`) of that cell. Only the first ``limit`` images are searched (all for ``None``).

    Args:
        model: an ``nn.Sequential`` classifier taking normalised images; its mode and hooks are left as they were.
        split: uint8 images ``(N, C, S, S)``, normalised here with ``split.info``.
        layer: a layer before the flatten, whose output is a ``(N, C, h, w)`` map.

    Returns:
        ``{channel: [Patch, ...]}`` with ``min(k, N)`` patches per channel, strongest first.
    """
    if k < 1 or batch_size < 1:
        raise ValueError(f"expected k >= 1 and batch_size >= 1, got k={k}, batch_size={batch_size}")
    size = split.x.shape[-1]
    fields = {rf.name: rf for rf in receptive_fields(model, size)}
    if layer not in fields:
        raise probe.UnknownLayerError(f"no layer named {layer!r} with a receptive field; choose one of: "
                                      f"{', '.join(fields)}")
    images = split.x if limit is None else split.x[:limit]
    device = probe.device_of(model)
    maxima, positions = [], []
    # Each forward pass leaves the max over each (h, w) map in ``best``: (B, C) values and flat positions.
    with (
        _capture(model, layer, lambda out: out.flatten(2).max(dim=2)) as best,
        probe.evaluating(model),
        torch.no_grad(),
    ):
        for batch in images.split(batch_size):
            model(data.normalize(batch.to(device), split.info))
            batch_max, batch_position = best.pop()
            maxima.append(batch_max)
            positions.append(batch_position)
    maxima, positions = torch.cat(maxima).cpu(), torch.cat(positions).cpu()  # (N, C)
    values, indices = maxima.topk(min(k, len(maxima)), dim=0)  # (k, C), strongest first
    rf = fields[layer]
    patches: dict[int, list[Patch]] = {}
    for channel in range(maxima.shape[1]):
        patches[channel] = []
        for value, index in zip(values[:, channel].tolist(), indices[:, channel].tolist()):
            row, col = divmod(int(positions[index, channel]), rf.out_size)
            top, left, bottom, right = box = window(rf, row, col, size)
            pixels = split.x[index, :, top:bottom, left:right].clone()
            patches[channel].append(Patch(index, value, row, col, box, pixels))
    return patches


def activation_maximization(
    model: nn.Module, layer: str, channel: int, input_shape: tuple[int, int, int], *,
    steps: int = 128, lr: float = 0.1, jitter: int = 2, blur_every: int = 4, tv_weight: float = 0.05,
    l2_weight: float = 0.3, seed: int = 0, on_step: Callable[[int, int], None] | None = None,
) -> MaxResult:
    """An input ``(C, H, W)`` that excites one channel of ``layer`` (or one logit of a linear layer).

    Gradient ascent from random noise (Erhan et al. 2009) with Adam on the channel's mean activation, regularised as
    in Olah et al. 2017: a random shift each step (``torch.roll`` by up to ``jitter`` pixels), a Gaussian blur every
    ``blur_every`` steps (0: never), and the penalties ``tv_weight`` × total variation (Mahendran & Vedaldi 2015,
    "Understanding Deep Image Representations by Inverting Them") + ``l2_weight`` × mean squared value (Simonyan et
    al. 2014, "Deep Inside Convolutional Networks"), both per-pixel means so the weights do not depend on the image
    size. ``on_step(step, steps)`` is called after each step. The model is left as it was: mode, ``requires_grad``,
    no parameter gradients, no hooks (also when something raises). See :func:`maximize_layer`.
    """
    return maximize_layer(
        model, layer, input_shape, [channel], steps=steps, lr=lr, jitter=jitter, blur_every=blur_every,
        tv_weight=tv_weight, l2_weight=l2_weight, seed=seed, on_step=on_step,
    )[0]


def maximize_layer(
    model: nn.Module, layer: str, input_shape: tuple[int, int, int], channels: list[int] | None = None, *,
    steps: int = 128, lr: float = 0.1, jitter: int = 2, blur_every: int = 4, tv_weight: float = 0.05,
    l2_weight: float = 0.3, seed: int = 0, on_step: Callable[[int, int], None] | None = None,
) -> list[MaxResult]:
    """:func:`activation_maximization` for many channels of ``layer`` at once (all of them for ``None``).

    One optimisation over a batch of images, image ``b`` for channel ``channels[b]``: the loss is the sum over the
    batch of each image's own objective and penalties. The model runs in eval mode and Adam works per value, so the
    images never interact: each is optimised as in a run of its own (only the random draws differ), for about the
    cost of one run.

    Args:
        layer: a module path whose output is a map ``(N, C, h, w)`` (objective: the channel's mean) or a vector
            ``(N, K)`` (objective: entry ``channel``, e.g. a class logit at the last linear layer).
        input_shape: ``(C, H, W)`` of the model's input.

    Returns:
        One :class:`MaxResult` per channel, in the order asked for.
    """
    if len(input_shape) != 3 or min(input_shape) < 1:
        raise ValueError(f"expected input_shape (C, H, W) of positive sizes, got {tuple(input_shape)}")
    if steps < 1 or jitter < 0 or blur_every < 0:
        raise ValueError(f"expected steps >= 1, jitter >= 0, blur_every >= 0, got {steps}, {jitter}, {blur_every}")
    device = probe.device_of(model)
    width = _width(model, layer, input_shape)
    channels = list(range(width)) if channels is None else list(channels)
    bad = [c for c in channels if not 0 <= c < width]
    if not channels or bad:
        raise ValueError(f"layer {layer!r}: channels must be in [0, {width}), got {channels}")
    picked = torch.tensor(channels, device=device)

    generator = torch.Generator().manual_seed(seed)  # on the CPU: the same images on any device
    image = (torch.randn(len(channels), *input_shape, generator=generator) * _INIT_STD).to(device)
    image.requires_grad_(True)
    optimizer = torch.optim.Adam([image], lr=lr)
    history = []
    # Each forward pass leaves each image's score (B,) in ``scores``.
    with (
        _capture(model, layer, lambda out: _objective(out, picked, layer)) as scores,
        probe.evaluating(model),
        torch.enable_grad(),
    ):
        for step in range(1, steps + 1):
            shift = torch.randint(-jitter, jitter + 1, (2,), generator=generator).tolist()
            model(torch.roll(image, shift, dims=(2, 3)))
            objective = scores.pop()
            penalty = tv_weight * _total_variation(image) + l2_weight * image.pow(2).mean(dim=(1, 2, 3))
            # Ask autograd for the image's gradient only: parameters get no .grad and their gradients are not
            # even computed.
            (image.grad,) = torch.autograd.grad((penalty - objective).sum(), image)
            optimizer.step()
            if blur_every and step % blur_every == 0:
                with torch.no_grad():
                    image.copy_(gaussian_blur(image, _BLUR_KERNEL, _BLUR_SIGMA))
            history.append(objective.detach())
            if on_step is not None:
                on_step(step, steps)
        with torch.no_grad():
            model(image)
            final = scores.pop().tolist()
    history_per_channel = torch.stack(history, dim=1).tolist()  # (B, steps)
    return [
        MaxResult(channel, image[b].detach(), final[b], history_per_channel[b]) for b, channel in enumerate(channels)
    ]


@contextmanager
def _capture(model: nn.Module, layer: str, keep: Callable[[Tensor], Any] = lambda out: out) -> Iterator[list[Any]]:
    """Collect ``keep(output of layer)`` (``path#k``: its k-th call) on each forward pass; the hooks go on exit.

    ``keep`` runs inside the hook because a later in-place layer (``ReLU(inplace=True)``, as in torchvision's VGG)
    overwrites the output itself before the forward pass returns.
    """
    path, call = probe.split_name(layer)
    module = probe.get_module(model, path)
    outputs: list[Any] = []
    calls = 0

    def start(*_) -> None:
        nonlocal calls
        calls = 0

    def hook(hooked: nn.Module, args: tuple, output: Tensor) -> None:
        nonlocal calls
        calls += 1
        if calls == call:
            outputs.append(keep(output))

    handles = [model.register_forward_pre_hook(start), module.register_forward_hook(hook)]
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


def _width(model: nn.Module, layer: str, input_shape: tuple[int, int, int]) -> int:
    """How many channels (or entries) ``layer`` outputs, from one forward pass of a zero image."""
    with _capture(model, layer) as outputs, probe.evaluating(model), torch.no_grad():
        model(torch.zeros(1, *input_shape, device=probe.device_of(model)))
    if not outputs:
        raise ValueError(f"layer {layer!r} was not called in the forward pass")
    return outputs[0].shape[1]


def _objective(output: Tensor, channels: Tensor, layer: str) -> Tensor:
    """Each image's score ``(B,)``: its own channel's mean over the map ``(B, C, h, w)``, or its entry of ``(B, K)``."""
    if output.ndim not in (2, 4):
        raise ValueError(f"layer {layer!r} outputs {tuple(output.shape)}; expected (N, C, h, w) or (N, K)")
    own = output[torch.arange(len(channels), device=output.device), channels]  # (B, h, w) or (B,)
    return own.flatten(1).mean(dim=1) if own.ndim > 1 else own


def _total_variation(image: Tensor) -> Tensor:
    """Anisotropic total variation ``(B,)`` of images ``(B, C, H, W)``: mean absolute difference of neighbours."""
    down = (image[:, :, 1:] - image[:, :, :-1]).abs().mean(dim=(1, 2, 3))
    right = (image[..., 1:] - image[..., :-1]).abs().mean(dim=(1, 2, 3))
    return down + right
