"""What excites a channel: the dataset patches that drive it hardest, and inputs optimised to drive it harder.

Two classic answers to "what does this unit look for?": the top-k image patches from real data (Zeiler & Fergus
2014, "Visualizing and Understanding Convolutional Networks", Fig. 2; Girshick et al. 2014, "Rich feature
hierarchies", Fig. 4), and activation maximisation by gradient ascent on the input (Erhan et al. 2009, "Visualizing
Higher-Layer Features of a Deep Network"; Olah et al. 2017, "Feature Visualization", Distill).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
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

# Lucid's color_correlation_svd_sqrt (lucid/optvis/param/color.py): the square root of ImageNet's RGB covariance,
# normalised so that its largest column has norm 1.
_COLOR_CORRELATION_SVD_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
COLOR_CORRELATION = _COLOR_CORRELATION_SVD_SQRT / _COLOR_CORRELATION_SVD_SQRT.norm(dim=0).max()
STYLES = ("pixels", "lucid")
_LR = {"pixels": 0.1, "lucid": 0.05}  # Lucid's Adam step
# Lucid's canvas (its param.image(128)): big enough for ImageNet features, small enough for 128 steps of ResNet-18
# in ~15 s on one busy CPU core; the result is upsampled to the input's size.
LUCID_SIZE = 128
_SPECTRUM_STD = 0.01  # Lucid's initial spectrum
_PAD = 12
_SCALES = [1 + (i - 5) / 50 for i in range(11)]
_ANGLES = list(range(-10, 11)) + [0] * 5


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
    model: nn.Module, split: data.Split, layer: str, k: int = 9, batch_size: int = 500, limit: int | None = 2000,
) -> dict[int, list[Patch]]:
    """For every channel of ``layer``, the ``k`` images of ``split`` in which it fires hardest, one patch each.

    Each image counts once, by the channel's largest value anywhere on its map; the patch is the receptive field
    (:mod:`cnnviz.receptive`) of that cell. Only the first ``limit`` images are searched (all for ``None``).

    Args:
        model: a classifier taking normalised images whose receptive fields :mod:`cnnviz.receptive` can compute
            (a chain, or any ``torch.fx``-traceable network); its mode and hooks are left as they were.
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
    device = probe.device_of(model)
    images = (split.x if limit is None else split.x[:limit]).to(device)  # moved once, uint8, not batch by batch
    maxima, positions = [], []
    # Each forward pass leaves the max over each (h, w) map in ``best``: (B, C) values and flat positions, and stops.
    with (
        _capture(model, layer, lambda out: out.flatten(2).max(dim=2), stop=True) as best,
        probe.evaluating(model),
        torch.no_grad(),
    ):
        for batch in images.split(batch_size):
            _forward(model, data.normalize(batch, split.info))
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
    style: str = "pixels", info: data.DatasetInfo | None = None, steps: int = 128, lr: float | None = None,
    jitter: int = 2, blur_every: int = 4, tv_weight: float = 0.05, l2_weight: float = 0.3, seed: int = 0,
    on_step: Callable[[int, int], None] | None = None,
) -> MaxResult:
    """An input ``(C, H, W)`` that excites one channel of ``layer`` (or one logit of a linear layer).

    Gradient ascent from random noise (Erhan et al. 2009) with Adam on the channel's mean activation, in one of two
    styles (:data:`STYLES`):

    - ``"pixels"``, for small models: the pixels are the parameters, regularised as in Olah et al. 2017: a random
      shift each step (``torch.roll`` by up to ``jitter`` pixels), a Gaussian blur every ``blur_every`` steps
      (0: never), and the penalties ``tv_weight`` × total variation (Mahendran & Vedaldi 2015, "Understanding Deep
      Image Representations by Inverting Them") + ``l2_weight`` × mean squared value (Simonyan et al. 2014, "Deep
      Inside Convolutional Networks"), both per-pixel means so the weights do not depend on the image size.
    - ``"lucid"``, for RGB ImageNet models, as Lucid renders features (Olah et al. 2017, "Feature Visualization",
      Distill, sections "Preconditioning and Parameterization" and "Transformation robustness"): the parameters are
      a Fourier spectrum scaled by 1 / frequency (:func:`fourier_image`), its colours decorrelated with ImageNet's
      colour correlation (:func:`decorrelate_colors`) and squashed into [0, 1] by a sigmoid; every step sees it
      padded, jittered, scaled and rotated at random (:func:`robust_view`). No penalties, no blur: ``jitter``,
      ``blur_every``, ``tv_weight`` and ``l2_weight`` are not used. ``info`` gives the mean and std that turn the
      RGB image into the model's input; the canvas is :data:`LUCID_SIZE` pixels square (at most the input's size),
      upsampled to the input's size for the result.

    ``lr`` defaults to the style's (0.1 for pixels, Lucid's 0.05). ``on_step(step, steps)`` is called after each
    step. The model is left as it was: mode, ``requires_grad``, no parameter gradients, no hooks (also when something
    raises). See :func:`maximize_layer`.
    """
    return maximize_layer(
        model, layer, input_shape, [channel], style=style, info=info, steps=steps, lr=lr, jitter=jitter,
        blur_every=blur_every, tv_weight=tv_weight, l2_weight=l2_weight, seed=seed, on_step=on_step,
    )[0]


def maximize_layer(
    model: nn.Module, layer: str, input_shape: tuple[int, int, int], channels: list[int] | None = None, *,
    style: str = "pixels", info: data.DatasetInfo | None = None, steps: int = 128, lr: float | None = None,
    jitter: int = 2, blur_every: int = 4, tv_weight: float = 0.05, l2_weight: float = 0.3, seed: int = 0,
    on_step: Callable[[int, int], None] | None = None,
) -> list[MaxResult]:
    """:func:`activation_maximization` for many channels of ``layer`` at once (all of them for ``None``).

    One optimisation over a batch of images, image ``b`` for channel ``channels[b]``: the loss is the sum over the
    batch of each image's own objective and penalties. The model runs in eval mode and Adam works per value, so the
    images never interact: each is optimised as in a run of its own (only the random draws differ), for about the
    cost of one run. The forward pass stops at ``layer``: nothing after it is computed.

    Args:
        layer: a module path whose output is a map ``(N, C, h, w)`` (objective: the channel's mean) or a vector
            ``(N, K)`` (objective: entry ``channel``, e.g. a class logit at the last linear layer).
        input_shape: ``(C, H, W)`` of the model's input; ``C`` must be 3 for the ``"lucid"`` style.
        info: the data's mean and std (``info.mean``, ``info.std``), needed by the ``"lucid"`` style only.

    Returns:
        One :class:`MaxResult` per channel, in the order asked for; each image ``(C, H, W)`` is in the model's
        normalised input space, as :func:`cnnviz.data.normalize` makes them.
    """
    if style not in STYLES:
        raise ValueError(f"expected style in {STYLES}, got {style!r}")
    if len(input_shape) != 3 or min(input_shape) < 1:
        raise ValueError(f"expected input_shape (C, H, W) of positive sizes, got {tuple(input_shape)}")
    if steps < 1 or jitter < 0 or blur_every < 0:
        raise ValueError(f"expected steps >= 1, jitter >= 0, blur_every >= 0, got {steps}, {jitter}, {blur_every}")
    if style == "lucid" and (input_shape[0] != 3 or info is None or len(info.mean) != 3):
        raise ValueError(f"the lucid style makes RGB images: expected input_shape (3, H, W) and the data's info "
                         f"with 3 means and stds, got {tuple(input_shape)} and "
                         f"{'no info' if info is None else f'{len(info.mean)} means'}")
    device = probe.device_of(model)
    width = _width(model, layer, input_shape)
    channels = list(range(width)) if channels is None else list(channels)
    bad = [c for c in channels if not 0 <= c < width]
    if not channels or bad:
        raise ValueError(f"layer {layer!r}: channels must be in [0, {width}), got {channels}")
    picked = torch.tensor(channels, device=device)

    generator = torch.Generator().manual_seed(seed)  # on the CPU: the same images on any device
    if style == "lucid":
        canvas: _Canvas = _LucidCanvas(len(channels), input_shape, info, generator, device)
    else:
        canvas = _PixelCanvas(len(channels), input_shape, jitter, blur_every, tv_weight, l2_weight, generator, device)
    optimizer = torch.optim.Adam(canvas.parameters, lr=_LR[style] if lr is None else lr)
    history = []
    # Each forward pass leaves each image's score (B,) in ``scores`` and stops there.
    with (
        _capture(model, layer, lambda out: _objective(out, picked, layer), stop=True) as scores,
        probe.evaluating(model),
        torch.enable_grad(),
    ):
        for step in range(1, steps + 1):
            _forward(model, canvas.view())
            objective = scores.pop()
            # Ask autograd for the canvas's gradients only: parameters get no .grad and their gradients are not
            # even computed.
            grads = torch.autograd.grad((canvas.penalty() - objective).sum(), canvas.parameters)
            for parameter, grad in zip(canvas.parameters, grads):
                parameter.grad = grad
            optimizer.step()
            canvas.after_step(step)
            history.append(objective.detach())
            if on_step is not None:
                on_step(step, steps)
        with torch.no_grad():
            image = canvas.image()
            _forward(model, image)
            final = scores.pop().tolist()
    history_per_channel = torch.stack(history, dim=1).tolist()  # (B, steps)
    return [
        MaxResult(channel, image[b].detach(), final[b], history_per_channel[b]) for b, channel in enumerate(channels)
    ]


def fourier_frequencies(height: int, width: int) -> Tensor:
    """Spatial frequency (cycles per pixel) of each entry of a real 2-D FFT ``(height, width // 2 + 1)``."""
    fy = torch.fft.fftfreq(height)[:, None]
    fx = torch.fft.rfftfreq(width)[None, :]
    return (fx * fx + fy * fy).sqrt()


def fourier_image(spectrum: Tensor, height: int, width: int) -> Tensor:
    """Images ``(..., height, width)`` from a spectrum ``(..., height, width // 2 + 1, 2)`` (real and imaginary parts).

    Lucid's ``fft_image`` (Olah et al. 2017, "Preconditioning and Parameterization"): each coefficient is scaled by
    ``1 / max(frequency, 1 / max(height, width))`` and by ``sqrt(height * width)`` before the inverse real FFT
    (normalised by ``1 / (height * width)``, as ``numpy.fft.irfft2``), and the image is divided by 4. Coefficients
    of equal size then make an image with the 1 / frequency amplitude spectrum of natural photos; the ascent, which
    moves every coefficient alike, builds coarse structure first instead of the high-frequency noise that ascent on
    pixels favours.
    """
    frequency = fourier_frequencies(height, width).to(spectrum.device).clamp(min=1 / max(height, width))
    scaled = torch.view_as_complex(spectrum) * (math.sqrt(height * width) / frequency)
    return torch.fft.irfft2(scaled, s=(height, width)) / 4


def decorrelate_colors(image: Tensor) -> Tensor:
    """Map images ``(..., 3, H, W)`` of uncorrelated channels to RGB with ImageNet's colour correlations.

    Multiplies each pixel's 3 values by Lucid's square root of ImageNet's RGB colour covariance
    (:data:`COLOR_CORRELATION`, its largest column scaled to norm 1): independent unit noise in, colours as
    correlated as in natural photos out, so the optimiser moves brightness and hue separately.
    """
    if image.shape[-3] != 3:
        raise ValueError(f"expected 3 colour channels at dim -3, got {tuple(image.shape)}")
    return torch.einsum("ij,...jhw->...ihw", COLOR_CORRELATION.to(image.device, image.dtype), image)


def robust_view(image: Tensor, generator: torch.Generator) -> Tensor:
    """A randomly transformed view of RGB images ``(B, 3, H, W)`` in [0, 1], the same for the whole batch.

    Lucid's standard transforms (Olah et al. 2017, "Transformation robustness"): pad 12 pixels of grey, jitter by
    up to 8 pixels, scale by 0.9–1.1, rotate by -10°–10° (0° more often), jitter by up to 4 pixels. The view's size
    varies a little around ``(H + 12, W + 12)``; what the channel responds to must survive all of it.
    """
    view = F.pad(image, [_PAD] * 4, value=0.5)
    view = _jitter(view, 8, generator)
    scale = _SCALES[int(torch.randint(len(_SCALES), (), generator=generator))]
    angle = math.radians(_ANGLES[int(torch.randint(len(_ANGLES), (), generator=generator))])
    cos, sin = math.cos(angle), math.sin(angle)
    theta = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0]], device=image.device).expand(len(image), 2, 3)
    size = [len(image), 3, round(view.shape[-2] * scale), round(view.shape[-1] * scale)]
    # Sampling the same field of view on a grid scale times as fine resizes it; the rotation turns that grid.
    grid = F.affine_grid(theta, size, align_corners=False)
    view = F.grid_sample(view, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return _jitter(view, 4, generator)


class _Canvas:
    """What the ascent optimises: its parameters, the view the model sees each step, and the final image."""

    parameters: list[Tensor]

    def view(self) -> Tensor:
        """The model's input for this step ``(B, C, h, w)``, normalised, with the style's random transformation."""
        raise NotImplementedError

    def penalty(self) -> Tensor:
        """Each image's regularisation ``(B,)``, to subtract from its objective."""
        raise NotImplementedError

    def after_step(self, step: int) -> None:
        """Anything done to the parameters between steps."""

    def image(self) -> Tensor:
        """The result ``(B, C, H, W)`` at the input's size, normalised, without transformation."""
        raise NotImplementedError


class _PixelCanvas(_Canvas):
    def __init__(self, n: int, input_shape: tuple[int, int, int], jitter: int, blur_every: int, tv_weight: float,
                 l2_weight: float, generator: torch.Generator, device: torch.device) -> None:
        self.pixels = (torch.randn(n, *input_shape, generator=generator) * _INIT_STD).to(device).requires_grad_(True)
        self.parameters = [self.pixels]
        self.jitter, self.blur_every, self.generator = jitter, blur_every, generator
        self.tv_weight, self.l2_weight = tv_weight, l2_weight

    def view(self) -> Tensor:
        shift = torch.randint(-self.jitter, self.jitter + 1, (2,), generator=self.generator).tolist()
        return torch.roll(self.pixels, shift, dims=(2, 3))

    def penalty(self) -> Tensor:
        return self.tv_weight * _total_variation(self.pixels) + self.l2_weight * self.pixels.pow(2).mean(dim=(1, 2, 3))

    def after_step(self, step: int) -> None:
        if self.blur_every and step % self.blur_every == 0:
            with torch.no_grad():
                self.pixels.copy_(gaussian_blur(self.pixels, _BLUR_KERNEL, _BLUR_SIGMA))

    def image(self) -> Tensor:
        return self.pixels


class _LucidCanvas(_Canvas):
    def __init__(self, n: int, input_shape: tuple[int, int, int], info: data.DatasetInfo,
                 generator: torch.Generator, device: torch.device) -> None:
        _, self.height, self.width = input_shape
        self.side = min(LUCID_SIZE, self.height, self.width)
        spectrum = torch.randn(n, 3, self.side, self.side // 2 + 1, 2, generator=generator) * _SPECTRUM_STD
        self.spectrum = spectrum.to(device).requires_grad_(True)
        self.parameters = [self.spectrum]
        self.generator = generator
        self.mean = torch.tensor(info.mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(info.std, device=device).view(1, 3, 1, 1)

    def rgb(self) -> Tensor:
        """The canvas as RGB images ``(B, 3, side, side)`` in [0, 1]."""
        return torch.sigmoid(decorrelate_colors(fourier_image(self.spectrum, self.side, self.side)))

    def view(self) -> Tensor:
        return (robust_view(self.rgb(), self.generator) - self.mean) / self.std

    def penalty(self) -> Tensor:
        return torch.zeros(len(self.spectrum), device=self.spectrum.device)

    def image(self) -> Tensor:
        rgb = self.rgb()
        if rgb.shape[-2:] != (self.height, self.width):
            rgb = F.interpolate(rgb, size=(self.height, self.width), mode="bicubic", align_corners=False)
        return (rgb.clamp(0, 1) - self.mean) / self.std


class _Stop(Exception):
    """Raised by a capture hook to end a forward pass once the layer of interest has run."""


def _forward(model: nn.Module, x: Tensor) -> None:
    """Run ``x`` through ``model`` up to the captured layer (see :func:`_capture` with ``stop=True``)."""
    try:
        model(x)
    except _Stop:
        pass


def _jitter(image: Tensor, d: int, generator: torch.Generator) -> Tensor:
    """A random crop ``d`` pixels smaller in height and width (Lucid's ``jitter``)."""
    top, left = torch.randint(d + 1, (2,), generator=generator).tolist()
    return image[..., top: image.shape[-2] - d + top, left: image.shape[-1] - d + left]


@contextmanager
def _capture(model: nn.Module, layer: str, keep: Callable[[Tensor], Any] = lambda out: out,
             stop: bool = False) -> Iterator[list[Any]]:
    """Collect ``keep(output of layer)`` (``path#k``: its k-th call) on each forward pass; the hooks go on exit.

    ``keep`` runs inside the hook because a later in-place layer (``ReLU(inplace=True)``, as in torchvision's VGG)
    overwrites the output itself before the forward pass returns. With ``stop``, the hook then ends the forward pass
    by raising ``_Stop`` (run the model through :func:`_forward`).
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
            if stop:
                raise _Stop

    handles = [model.register_forward_pre_hook(start), module.register_forward_hook(hook)]
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


def _width(model: nn.Module, layer: str, input_shape: tuple[int, int, int]) -> int:
    """How many channels (or entries) ``layer`` outputs, from one forward pass of a zero image up to it."""
    with _capture(model, layer, stop=True) as outputs, probe.evaluating(model), torch.no_grad():
        _forward(model, torch.zeros(1, *input_shape, device=probe.device_of(model)))
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
