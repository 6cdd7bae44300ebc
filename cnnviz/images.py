"""Any uploaded file → a checked PIL image → the model's input tensor, keeping every step to show.

:func:`load` turns bytes, a path or a file object into a fully decoded ``L`` or ``RGB`` image, or refuses it with an
:class:`ImageError` whose message can be shown to a person as it is. :func:`prepare` turns that image into the
tensor a model trained on a dataset expects, and keeps each intermediate picture so the app can show the journey.
"""

from __future__ import annotations

import io
import logging
import math
import os
from dataclasses import dataclass
from typing import BinaryIO, Literal

import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from cnnviz import files
from cnnviz.data import DatasetInfo, denormalize, normalize

log = logging.getLogger(__name__)

MB = 1024 * 1024
MAX_BYTES = 20 * MB
MAX_PIXELS = 40_000_000
# Decoders we let near uploads; Image.open would otherwise try every plugin Pillow has (PSD, EPS, FITS, …).
# Multi-picture JPEGs from phones (MPO) open through the JPEG plugin.
FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")
RESIZE_POLICIES = ("squash", "crop", "pad")
# Pillow's filters antialias when they shrink; bilinear is torchvision's default too.
RESAMPLE = Image.Resampling.BILINEAR
# The "Original" step is only shown, in a strip a few hundred pixels wide: keeping a 12-megapixel upload at full size
# would cost ~48 MB per cached inspection for nothing.
SHOWN_MAX = 512

NOT_AN_IMAGE = "This file is not an image (or not a format we can read: PNG, JPEG, GIF, BMP, TIFF, WebP)."
DAMAGED = "This image could not be read: the file looks damaged or incomplete."


class ImageError(ValueError):
    """An upload that cannot be used; the message says why in words a person understands."""


@dataclass
class Step:
    """One picture on the way from the upload to the model input, with a short title."""

    title: str
    image: Image.Image


@dataclass
class Prepared:
    """The model input ``tensor`` float32 ``(1, C, S, S)``, normalised like the training data, and how it was made."""

    tensor: torch.Tensor
    steps: list[Step]  # "Original" first, "What the network sees" last
    inverted: bool  # whether dark-on-light was turned into light-on-dark

    @property
    def display(self) -> Image.Image:
        """What the network sees: the denormalised input as an ``S×S`` ``L`` or ``RGB`` image."""
        return self.steps[-1].image


def load(source: bytes | str | os.PathLike | BinaryIO) -> Image.Image:
    """Read and fully decode an image file into an ``L`` (greyscale sources) or ``RGB`` image.

    Applies the EXIF orientation, takes the first frame of an animation, puts transparent pixels on white and
    stretches 16-bit, 32-bit and float greyscale to 0–255 by the values present. A large JPEG is decoded at a
    reduced scale that keeps at least :data:`SHOWN_MAX` pixels a side. ``info["cnnviz_mode"]``,
    ``info["cnnviz_format"]`` and ``info["cnnviz_size"]`` keep the file's own mode (e.g. ``"P"``, ``"I;16"``), format
    (e.g. ``"PNG"``) and size in pixels (upright).
    Raises :class:`ImageError` for anything unusable: empty, too big, not an image, damaged.
    """
    data = _read(source)
    if not data:
        raise ImageError("The file is empty.")
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as im:
            # The header alone gives the size: refuse a decompression bomb before decoding a single pixel.
            width, height = im.size
            if width * height > MAX_PIXELS:
                raise ImageError(_too_many_pixels(f"{width}×{height} pixels"))
            # A JPEG decodes at 1/2, 1/4 or 1/8 scale straight from its DCT blocks (Pillow's draft mode), never
            # below SHOWN_MAX a side: a phone's 12-megapixel photo decodes ~5× faster, and no view or network
            # needs more (the largest network input is 224 px, after a 256 px resize).
            im.draft(im.mode, (SHOWN_MAX, SHOWN_MAX))
            im.load()
            mode, fmt = im.mode, im.format
            upright = ImageOps.exif_transpose(im)
            if upright.size != im.size:  # turned a quarter by its EXIF orientation
                width, height = height, width
            flat = _flatten(upright)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(NOT_AN_IMAGE) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # Pillow's own, larger limit tripped inside Image.open, before we could read the size.
        raise ImageError(_too_many_pixels("too large")) from None
    except Exception:  # decoders fail in many types (OSError, SyntaxError, struct.error, ValueError, …)
        log.debug("could not decode an uploaded image", exc_info=True)
        raise ImageError(DAMAGED) from None
    flat.info["cnnviz_mode"] = mode
    flat.info["cnnviz_format"] = fmt
    flat.info["cnnviz_size"] = (width, height)  # the file's own size, upright, whatever scale it was decoded at
    return flat


def prepare(
    image: Image.Image,
    dataset: DatasetInfo,
    *,
    resize: Literal["squash", "crop", "pad"] = "squash",
    invert: bool | None = None,
) -> Prepared:
    """Turn an image from :func:`load` into the model input ``(1, C, S, S)`` for ``dataset``, keeping every step.

    ``resize``: ``"squash"`` stretches to a square, ``"crop"`` keeps the centre square, ``"pad"`` fits the whole
    image and fills the sides with its border colour. The first step keeps the original at most :data:`SHOWN_MAX`
    pixels a side (its title gives the original size); the tensor is made from the full image. ``invert=None`` inverts only for datasets of light strokes on
    a dark background (MNIST) and only when the image's border is light; ``True``/``False`` decide outright.
    """
    # Imported here: any torchvision import costs ~2 s (its package imports its models, whose ops import
    # torch._dynamo), which `cnnviz train` and `import cnnviz` need not pay (`make bench BENCH=startup`).
    from torchvision.transforms.v2 import functional as TF

    if image.mode not in ("L", "RGB"):
        raise ValueError(f"expected an 'L' or 'RGB' image from images.load, got mode {image.mode!r}")
    if resize not in RESIZE_POLICIES:
        raise ValueError(f"resize must be one of {', '.join(RESIZE_POLICIES)}, got {resize!r}")
    size = dataset.size
    width, height = image.info.get("cnnviz_size", image.size)
    steps = [Step(f"Original ({width}×{height})", _shown(image))]

    if dataset.resize_to and resize == "crop":
        # How ImageNet models are evaluated (torchvision's weights.transforms()): shorter side to resize_to, then
        # the centre square; torchvision does both on PIL images with the same antialiasing.
        if min(image.size) != dataset.resize_to:
            image = TF.resize(image, dataset.resize_to, interpolation=TF.InterpolationMode.BILINEAR)
            steps.append(Step(f"Shorter side resized to {dataset.resize_to} ({image.width}×{image.height})", image))
        image = TF.center_crop(image, [size, size])
        steps.append(Step(f"Centre {size}×{size} cut out", image))
    elif image.size != (size, size):
        image = to_square(image, size, resize)
        steps.append(Step(f"Resized to {size}×{size} ({resize})", image))

    if dataset.channels == 1 and image.mode == "RGB":
        image = image.convert("L")
        steps.append(Step("Greyscale", image))
    elif dataset.channels == 3 and image.mode == "L":
        image = image.convert("RGB")
        steps.append(Step("Grey copied to red, green and blue", image))

    if invert is None:
        invert = dataset.invert and _border_colour(image.convert("L"))[0] > 127
    if invert:
        image = ImageOps.invert(image)
        steps.append(Step(f"Inverted (light on dark, like {dataset.title})", image))

    x = normalize(TF.pil_to_tensor(image).unsqueeze(0), dataset)  # (1, C, S, S)
    seen = TF.to_pil_image(TF.to_dtype(denormalize(x, dataset)[0], torch.uint8, scale=True))
    steps.append(Step("What the network sees", seen))
    return Prepared(x, steps, invert)


def _read(source: bytes | str | os.PathLike | BinaryIO) -> bytes:
    """The bytes of ``source``, refusing more than :data:`MAX_BYTES` without reading them all into memory."""
    try:
        return files.read_capped(source, MAX_BYTES)
    except files.TooBig as e:
        raise ImageError(_too_big(e.size) if e.size is not None
                         else f"The file is larger than the limit of {MAX_BYTES / MB:g} MB.") from None
    except OSError as e:
        if isinstance(source, (str, os.PathLike)):
            raise ImageError(f"Could not open {os.fspath(source)}: {e.strerror or e}.") from None
        raise ImageError(f"Could not read the file: {e}.") from None


def _too_big(n_bytes: int) -> str:
    return f"The file is {n_bytes / MB:.1f} MB; the limit is {MAX_BYTES / MB:g} MB."


def _too_many_pixels(what: str) -> str:
    return f"The image is {what}; the limit is {MAX_PIXELS / 1e6:g} megapixels. Please use a smaller image."


def _flatten(im: Image.Image) -> Image.Image:
    """Any Pillow mode → ``L`` for greyscale sources or ``RGB``, transparent pixels composited on white."""
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        return _stretch(im)
    target = "L" if im.mode in ("1", "L", "LA", "La") else "RGB"
    bands = im.getbands()
    if "A" in bands or "a" in bands or "transparency" in im.info:
        im = Image.alpha_composite(Image.new("RGBA", im.size, "white"), im.convert("RGBA"))
    return im.convert(target)


def _stretch(im: Image.Image) -> Image.Image:
    """16-bit, 32-bit or float greyscale → ``L``, mapping the smallest value to 0 and the largest to 255."""
    im = im.convert("F")
    lo, hi = im.getextrema()
    # A constant (or non-finite) image has no range to stretch: it becomes black rather than a division by zero.
    scale = 255 / (hi - lo) if math.isfinite(hi - lo) and hi > lo else 0.0
    offset = -lo * scale if scale else 0.0
    return im.point(lambda v: v * scale + offset).convert("L")


def _shown(image: Image.Image) -> Image.Image:
    """``image`` itself if it fits in :data:`SHOWN_MAX`×:data:`SHOWN_MAX`, else a copy shrunk to fit, same aspect."""
    if max(image.size) <= SHOWN_MAX:
        return image
    scale = SHOWN_MAX / max(image.size)
    # A very thin image (1×2000) must keep at least one pixel across, as in to_square(). This copy is only looked at, so
    # Pillow may first shrink by whole factors (reducing_gap): three times faster on a 12-megapixel photo.
    return image.resize(tuple(max(1, round(side * scale)) for side in image.size), RESAMPLE, reducing_gap=2.0)


def to_square(image: Image.Image, size: int, policy: str) -> Image.Image:
    """``image`` resized to ``size×size`` by a policy of :data:`RESIZE_POLICIES`."""
    if policy == "squash":
        return image.resize((size, size), RESAMPLE)
    if policy == "crop":
        return ImageOps.fit(image, (size, size), RESAMPLE)
    # ImageOps.pad alone rounds a very thin side (a 1×2000 line) to zero pixels and loses it; keep at least one.
    scale = size / max(image.size)
    fitted = image.resize(tuple(max(1, round(side * scale)) for side in image.size), RESAMPLE)
    return ImageOps.pad(fitted, (size, size), RESAMPLE, color=_border_colour(image))


def _border_colour(image: Image.Image) -> tuple[int, ...]:
    """The median colour of the outermost pixels: the background, robust to a drawing that touches the edge."""
    from torchvision.transforms.v2 import functional as TF

    x = TF.pil_to_tensor(image)  # (C, H, W) uint8
    border = torch.cat([x[:, 0], x[:, -1], x[:, :, 0], x[:, :, -1]], dim=1)  # (C, 2W + 2H)
    return tuple(border.median(dim=1).values.tolist())
