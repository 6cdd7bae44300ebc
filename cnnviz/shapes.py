"""The built-in ``shapes`` dataset: one simple object per image on a cluttered background, drawn with tensor maths.

Each image holds one object of its class at a random position, size, angle and colour, over a smooth colour
gradient with pixel noise and a few distractor strokes and dots that are no class's shape. Every shape is a signed
distance function of per-image rotated and scaled coordinates ``(u, v)``, so a whole batch is drawn at once, edges
are anti-aliased, and the mask of the object's own pixels comes for free (used to check where Grad-CAM points).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

CLASS_NAMES: tuple[str, ...] = (
    "circle", "square", "triangle", "cross", "star", "ring", "horizontal stripes", "vertical stripes",
)
DEFAULT_SIZE: int = 32
# Per-channel statistics of generate(20_000, seed=0) scaled to [0, 1]; tests/test_shapes.py re-measures them.
MEAN: tuple[float, float, float] = (0.5000, 0.5008, 0.5009)
STD: tuple[float, float, float] = (0.3047, 0.2999, 0.3078)

_LUMA = torch.tensor([0.299, 0.587, 0.114])
_CHUNK = 2048  # images drawn at once: bounds the memory of the many (chunk, H, W) temporaries
_DISTRACTORS = 5  # candidate strokes/dots per image; some are dropped (at random, or because they touch the object)


def _box(u: torch.Tensor, v: torch.Tensor, bu: float, bv: float) -> torch.Tensor:
    """Signed distance to an axis-aligned box with half-sides ``(bu, bv)``."""
    qu, qv = u.abs() - bu, v.abs() - bv
    return torch.hypot(qu.clamp(min=0), qv.clamp(min=0)) + torch.maximum(qu, qv).clamp(max=0)


def _circle(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return torch.hypot(u, v) - 0.9


def _square(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return _box(u, v, 0.7, 0.7)


def _triangle(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    # Max of the three edges' half-plane distances: exact inside and on the edge, which is all the mask needs.
    d = [u * math.cos(a) + v * math.sin(a) for a in (math.pi / 2, math.pi * 7 / 6, math.pi * 11 / 6)]
    return torch.maximum(torch.maximum(d[0], d[1]), d[2]) - 0.5


def _cross(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return torch.minimum(_box(u, v, 0.95, 0.3), _box(u, v, 0.3, 0.95))


def _star(u: torch.Tensor, v: torch.Tensor, points: int = 5, inner: float = 0.45) -> torch.Tensor:
    # Fold the plane into one half-spike (angle 0..pi/points), then measure to the edge from tip (1, 0) to valley.
    sector = math.pi / points
    a = (torch.atan2(v, u).remainder(2 * sector) - sector).abs()
    rho = torch.hypot(u, v)
    px, py = rho * torch.cos(a) - 1.0, rho * torch.sin(a)
    ex, ey = inner * math.cos(sector) - 1.0, inner * math.sin(sector)
    h = ((px * ex + py * ey) / (ex * ex + ey * ey)).clamp(0, 1)
    d = torch.hypot(px - ex * h, py - ey * h)
    return torch.where(ex * py - ey * px > 0, -d, d)


def _ring(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return (torch.hypot(u, v) - 0.7).abs() - 0.22


def _horizontal_stripes(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    # Three bars as tall as the two gaps between them (0.34 each), cut to a box; tall box so bars stay >= 2 px thick.
    bars = (v - 0.68 * torch.round(v / 0.68)).abs() - 0.17
    return torch.maximum(_box(u, v, 0.55, 0.85), bars)


def _vertical_stripes(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return _horizontal_stripes(v, u)


# Shapes in units of the object's radius: each fits the unit circle, so a radius-r object inside the image is whole.
_SDF: tuple[Callable[[torch.Tensor, torch.Tensor], torch.Tensor], ...] = (
    _circle, _square, _triangle, _cross, _star, _ring, _horizontal_stripes, _vertical_stripes,
)
_STRIPES = (CLASS_NAMES.index("horizontal stripes"), CLASS_NAMES.index("vertical stripes"))
# Where each object *is*, for its mask: its outline filled in. A ring's hole and the gaps between stripes belong to
# the object (Grad-CAM rightly points there); the solid shapes are their own region.
_REGION: dict[int, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    CLASS_NAMES.index("ring"): lambda u, v: torch.hypot(u, v) - 0.92,
    _STRIPES[0]: lambda u, v: _box(u, v, 0.55, 0.85),
    _STRIPES[1]: lambda u, v: _box(v, u, 0.55, 0.85),
}


def _uniform(shape: tuple[int, ...], lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return torch.rand(shape, generator=g) * (hi - lo) + lo


def _colours(light: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random colours ``(N, 3)`` whose brightness lies in the light band where ``light`` ``(N,)`` is set, else dark."""
    luma = torch.where(light, _uniform(light.shape, 0.62, 0.95, g), _uniform(light.shape, 0.05, 0.38, g))
    hue = torch.rand((len(light), 3), generator=g)
    chroma = _uniform((len(light), 1), 0.3, 1.2, g)
    return (luma[:, None] + chroma * (hue - (hue @ _LUMA)[:, None])).clamp(0, 1)


def _sample(labels: torch.Tensor, size: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    """Every random choice of every image, as tensors with a leading ``N``."""
    n, k = len(labels), _DISTRACTORS
    px = size / DEFAULT_SIZE  # lengths below are chosen at 32x32 and scale with the image
    light_object = torch.rand(n, generator=g) < 0.5  # either polarity, so brightness alone says nothing
    radius = _uniform((n,), 0.22, 0.32, g) * size
    centre = radius[:, None] + 0.5 + torch.rand((n, 2), generator=g) * (size - 1 - 2 * radius[:, None])
    angle = torch.rand(n, generator=g) * 2 * math.pi
    stripes = (labels == _STRIPES[0]) | (labels == _STRIPES[1])
    # Stripes may only tilt a little, or horizontal and vertical would be the same class.
    angle = torch.where(stripes, (angle / math.pi - 1) * math.radians(20), angle)

    start = torch.rand((n, k, 2), generator=g) * size
    heading = torch.rand((n, k), generator=g) * 2 * math.pi
    is_dot = torch.rand((n, k), generator=g) < 0.4
    length = torch.where(is_dot, 0.0, _uniform((n, k), 3.0, 8.0, g) * px)
    width = torch.where(is_dot, _uniform((n, k), 0.9, 1.6, g), _uniform((n, k), 0.5, 0.9, g)) * px
    end = start + length[..., None] * torch.stack([heading.cos(), heading.sin()], -1)
    # A stroke touching the object would change its silhouette (and mislabel the mask's edge): drop those.
    clear = _segment_distance(centre[:, None, 0], centre[:, None, 1], start, end) > radius[:, None] + width + 1.0
    shown = clear & (torch.rand((n, k), generator=g) < 0.7)
    distractor_colour = _colours(torch.rand(n * k, generator=g) < 0.5, g).view(n, k, 3)
    return {
        "label": labels, "radius": radius, "centre": centre, "angle": angle,
        "object_colour": _colours(light_object, g),
        "background": torch.stack([_colours(~light_object, g), _colours(~light_object, g)], 1),  # (N, 2, 3)
        "gradient": torch.rand(n, generator=g) * 2 * math.pi,
        "noise": _uniform((n,), 0.02, 0.07, g),
        "start": start, "end": end, "width": width, "shown": shown, "distractor_colour": distractor_colour,
    }


def _segment_distance(px: torch.Tensor, py: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Distance from points ``(px, py)`` to segments ``a``–``b`` (``(..., 2)``), all broadcast together."""
    # Coordinates kept apart rather than stacked in a last dim: elementwise ops on (N, H, W) beat reductions over 2.
    ax, ay = a[..., 0], a[..., 1]
    bx, by = b[..., 0] - ax, b[..., 1] - ay
    dx, dy = px - ax, py - ay
    h = ((dx * bx + dy * by) / (bx * bx + by * by).clamp(min=1e-9)).clamp_(0, 1)
    return torch.hypot(dx - h * bx, dy - h * by)


def _draw(p: dict[str, torch.Tensor], size: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Render sampled images: float ``(N, 3, H, W)`` in [0, 1] and masks ``(N, H, W)`` bool."""
    n = len(p["label"])
    ys, xs = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")  # pixel centres

    # Background: a linear blend of two colours along a random direction, over the whole image.
    direction = torch.stack([p["gradient"].cos(), p["gradient"].sin()], -1)  # (N, 2)
    t = ((xs - size / 2) * direction[:, 0, None, None] + (ys - size / 2) * direction[:, 1, None, None]) / size
    t = (t + 0.5).clamp_(0, 1)[:, None]  # (N, 1, H, W)
    c0, c1 = (p["background"][:, i, :, None, None] for i in (0, 1))
    image = torch.lerp(c0, c1, t)

    for k in range(_DISTRACTORS):
        d = _segment_distance(xs, ys, p["start"][:, k, None, None], p["end"][:, k, None, None])  # (N, H, W)
        alpha = (p["width"][:, k, None, None] + 0.5 - d).clamp_(0, 1) * p["shown"][:, k, None, None]
        image.lerp_(p["distractor_colour"][:, k, :, None, None].expand_as(image), alpha[:, None])

    # Object: inverse rotation and scale take each pixel to the shape's own coordinates (u, v).
    dx, dy = xs - p["centre"][:, 0, None, None], ys - p["centre"][:, 1, None, None]  # (N, H, W) each
    cos, sin = (f(p["angle"])[:, None, None] for f in (torch.cos, torch.sin))
    r = p["radius"][:, None, None]
    u, v = (cos * dx + sin * dy) / r, (cos * dy - sin * dx) / r
    sdf = torch.empty(n, size, size)
    region = torch.empty(n, size, size)
    for label, shape in enumerate(_SDF):
        idx = (p["label"] == label).nonzero().squeeze(1)
        sdf[idx] = shape(u[idx], v[idx]) * r[idx]  # in pixels, so the soft edge below is one pixel wide
        region[idx] = _REGION[label](u[idx], v[idx]) * r[idx] if label in _REGION else sdf[idx]
    coverage = (0.5 - sdf).clamp(0, 1)
    image.lerp_(p["object_colour"][:, :, None, None].expand_as(image), coverage[:, None])

    image += torch.randn(image.shape, generator=g) * p["noise"][:, None, None, None]
    return image.clamp_(0, 1), region < 0


def generate(n: int, seed: int = 0, size: int = DEFAULT_SIZE) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n images (N, 3, size, size) uint8, labels (N,) int64, masks (N, size, size) bool of where the object is.

    A mask is the object's outline filled in: the ring's hole and the gaps between stripes are part of the object.
    """
    if n < 0:
        raise ValueError(f"expected n >= 0 images, got {n}")
    if size < 16:
        raise ValueError(f"expected size >= 16 pixels (smaller shapes are unrecognisable), got {size}")
    g = torch.Generator().manual_seed(seed)
    labels = (torch.arange(n) % len(CLASS_NAMES))[torch.randperm(n, generator=g)]
    params = _sample(labels, size, g)
    images, masks = [], []
    for i in range(0, n, _CHUNK):
        image, mask = _draw({key: value[i:i + _CHUNK] for key, value in params.items()}, size, g)
        images.append(image.mul_(255).round_().to(torch.uint8))
        masks.append(mask)
    if not images:
        return torch.empty(0, 3, size, size, dtype=torch.uint8), labels, torch.empty(0, size, size, dtype=torch.bool)
    return torch.cat(images), labels, torch.cat(masks)
