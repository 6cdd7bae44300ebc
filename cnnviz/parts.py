"""The built-in ``parts`` dataset: 64×64 scenes of objects built from shared parts, with a mask for every concept.

A scene is one object of its class (a face, a house, a car, …) at a random place and size, drawn from parts that
several classes share (a face and a robot both have eyes and a mouth, a car and a bus both have a body, windows and
wheels, a flower and a balloon both stand on a stem), over a plain background with one or two textured patches
(stripes, checks, dots, noise, … in two colours each). Every surface takes a named colour; the main surface of some
classes often carries that class's texture (a house's walls are often brick checks), so texture helps a little
and a network has a reason to learn texture detectors. Classes differ in which parts they have and how they are
arranged, so telling them apart takes parts and their layout, not colours: the hierarchy network dissection
measures (Bau et al., "Network Dissection", CVPR 2017).

Each pixel has one concept of each category (colour, texture, part, object) or none, so the masks of a scene are
four small label maps: ``concepts[:, k]`` holds, for category ``CATEGORIES[k]``, the number of the pixel's concept
(its ``Concept.value``; 0 = none). Every concept covers under ~5 % of all pixels: a unit's region is its top 0.5 %
of activations, and a unit's IoU with a concept can never exceed their areas' ratio.

Drawing is tensor maths over whole batches: each surface is a region of the image (discs, boxes and triangles in
the object's own coordinates), painted into a map of surface numbers; colours, textures and labels are then looked
up per pixel from each image's table of surfaces. Edges are hard, so every mask is exactly the pixels drawn.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import Tensor

from cnnviz.models import ConvBlock, ModelSpec

SIZE = 64
CLASS_NAMES: tuple[str, ...] = (
    "face", "robot", "snowman", "house", "car", "bus", "flower", "tree", "balloon", "fish",
)
CATEGORIES: tuple[str, ...] = ("colour", "texture", "part", "object")

# Eight hues in three shades; a surface next to another always differs from it in hue (see _pick).
_PALETTE: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("maroon", (120, 20, 30)), ("red", (220, 40, 40)), ("pink", (250, 160, 175)),
    ("brown", (120, 70, 20)), ("orange", (240, 140, 30)), ("peach", (250, 205, 160)),
    ("olive", (115, 115, 20)), ("yellow", (235, 215, 40)), ("cream", (245, 240, 165)),
    ("dark green", (20, 100, 40)), ("green", (60, 180, 60)), ("light green", (170, 235, 150)),
    ("teal", (10, 100, 110)), ("cyan", (40, 200, 210)), ("light cyan", (175, 240, 240)),
    ("navy", (20, 30, 110)), ("blue", (40, 90, 220)), ("sky blue", (150, 190, 250)),
    ("plum", (80, 20, 100)), ("purple", (150, 60, 200)), ("lavender", (215, 180, 245)),
    ("black", (20, 20, 20)), ("grey", (128, 128, 128)), ("white", (240, 240, 240)),
)
_SHADES = 3
_HUES = len(_PALETTE) // _SHADES
COLOUR_NAMES: tuple[str, ...] = tuple(name for name, _ in _PALETTE)
TEXTURE_NAMES: tuple[str, ...] = (
    "horizontal stripes", "vertical stripes", "diagonal stripes", "checks", "dots", "grid", "zigzag", "noise",
)
PART_NAMES: tuple[str, ...] = (
    "head", "eye", "mouth", "antenna", "wall", "roof", "door", "window", "body", "wheel", "petal", "centre", "stem",
    "crown", "trunk", "tail",
)
# A class's own texture, worn by its main surface in SIGNATURE_RATE of its images.
SIGNATURE = {"house": "checks", "car": "horizontal stripes", "tree": "noise", "balloon": "vertical stripes",
             "fish": "zigzag"}
SIGNATURE_RATE = 0.5

# Per-channel statistics of generate(20_000, seed=0) scaled to [0, 1]; tests/test_parts.py re-measures them.
MEAN: tuple[float, float, float] = (0.5432, 0.5266, 0.4879)
STD: tuple[float, float, float] = (0.3304, 0.3022, 0.3245)

# How to train model_spec() on parts (train.TrainConfig): measured in benchmarks/dissection.py.
EPOCHS, BATCH_SIZE, LR = 2, 64, 0.01

NOISE = 0.05  # pixel noise over every image: uniform in ±NOISE (of [0, 1]), a standard deviation of 0.029
JITTER = 10  # each surface's colour varies up to this much (of 255) around its named colour, per channel
SCALE = (15.0, 21.0)  # half the object's size in pixels: objects are 30–42 pixels across
PATCH = (14, 34)  # sides of a textured background patch, in pixels
SECOND_PATCH = 0.6  # share of scenes with a second textured patch
PERIOD = (4.0, 7.0)  # the repeat of a texture, in pixels
_SURFACES = 16  # per image: the background, two patches and up to 13 parts of the object
_CHUNK = 1024  # images drawn at once: bounds the memory of the (chunk, H, W) temporaries


@dataclass(frozen=True)
class Concept:
    """One concept of the masks: its name, its category and its value in that category's label map (1, 2, …)."""

    name: str
    category: str
    value: int


CONCEPTS: tuple[Concept, ...] = tuple(
    Concept(name, category, value)
    for category, names in zip(CATEGORIES, (COLOUR_NAMES, TEXTURE_NAMES, PART_NAMES, CLASS_NAMES))
    for value, name in enumerate(names, start=1)
)


@dataclass
class Scenes:
    """Generated scenes: ``images`` uint8 ``(N, 3, 64, 64)``, ``labels`` int64 ``(N,)`` and ``concepts`` uint8
    ``(N, 4, 64, 64)``: per category (``CATEGORIES``) the ``Concept.value`` of each pixel's concept, 0 for none."""

    images: Tensor
    labels: Tensor
    concepts: Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def mask(self, concept: Concept) -> Tensor:
        """Bool ``(N, 64, 64)``: where ``concept`` is."""
        return self.concepts[:, CATEGORIES.index(concept.category)] == concept.value

    @property
    def objects(self) -> Tensor:
        """Bool ``(N, 64, 64)``: where the object is (all its parts), whatever its class."""
        return self.concepts[:, CATEGORIES.index("object")] > 0


def concept(name: str, category: str | None = None) -> Concept:
    """The concept named ``name`` (in ``category``, for a name that two categories share); ``KeyError`` if none."""
    found = [c for c in CONCEPTS if c.name == name and category in (None, c.category)]
    if len(found) != 1:
        raise KeyError(f"no single concept named {name!r}{f' in {category}' if category else ''}")
    return found[0]


def model_spec(num_classes: int = len(CLASS_NAMES)) -> ModelSpec:
    """The default architecture for parts: four conv blocks (8/16/32/64 channels, batchnorm, 2×2 max pooling)
    into global average pooling, so the last block's 8×8 maps see whole objects (a 38-pixel receptive field).

    Twice the channels (16/32/64/128) cost 3.4× more per image on a CPU, too slow to train in a minute."""
    return ModelSpec(3, SIZE, num_classes, [ConvBlock(c, batchnorm=True) for c in (8, 16, 32, 64)],
                     global_pool=True)


def generate(n: int, seed: int = 0) -> Scenes:
    """``n`` scenes, the same for the same ``seed``; classes balanced and shuffled. Leaves torch's global RNG alone."""
    if n < 0:
        raise ValueError(f"expected n >= 0 scenes, got {n}")
    g = torch.Generator().manual_seed(seed)
    labels = (torch.arange(n) % len(CLASS_NAMES))[torch.randperm(n, generator=g)]
    images = torch.empty(n, 3, SIZE, SIZE, dtype=torch.uint8)
    concepts = torch.empty(n, len(CATEGORIES), SIZE, SIZE, dtype=torch.uint8)
    for i in range(0, n, _CHUNK):
        _draw(labels[i:i + _CHUNK], g, images[i:i + _CHUNK], concepts[i:i + _CHUNK])
    return Scenes(images, labels, concepts)


@functools.lru_cache(maxsize=4)
def cached(n: int, seed: int) -> Scenes:
    """:func:`generate`, made once per process for each ``(n, seed)``: shared, so never change its tensors."""
    return generate(n, seed)


# Geometry of a scene, in the object's own coordinates: (u, v) = (x - cx, y - cy) / s, with y down, so every object
# fits the square [-1, 1]². u is (m, 1, W) and v is (m, S, 1): a region costs one or two (m, S, W) operations.

def _disc(u: Tensor, v: Tensor, u0, v0, r) -> Tensor:
    return (u - u0) ** 2 + (v - v0) ** 2 < r * r


def _ellipse(u: Tensor, v: Tensor, u0, v0, a, b) -> Tensor:
    return ((u - u0) / a) ** 2 + ((v - v0) / b) ** 2 < 1


def _box(u: Tensor, v: Tensor, u0, v0, a, b) -> Tensor:
    """A box with centre ``(u0, v0)`` and half-sides ``(a, b)``."""
    return ((u - u0).abs() < a) & ((v - v0).abs() < b)


def _roof(u: Tensor, v: Tensor, top, base, a) -> Tensor:
    """A triangle pointing up: apex at ``(0, top)``, base from ``(-a, base)`` to ``(a, base)``."""
    return (v < base) & (v - top > (base - top) * u.abs() / a)


def _tail(u: Tensor, v: Tensor, joint, end, h) -> Tensor:
    """A triangle pointing right: apex at ``(joint, 0)``, its base of half-height ``h`` at ``u = end < joint``."""
    return (u > end) & ((v.abs() < h * (joint - u) / (joint - end)))


class _Sketch:
    """The object of ``m`` scenes of one class being drawn: their coordinates, surface map and surface tables."""

    def __init__(self, u: Tensor, v: Tensor, surfaces: Tensor, colours: Tensor, g: torch.Generator) -> None:
        self.u, self.v, self.g = u, v, g
        self.surfaces = surfaces  # (m, S, W) uint8: which surface each pixel shows
        self.colours = colours  # (m, _SURFACES, 2) palette index of each surface's two colours (one if plain)
        self.parts = torch.zeros(len(u), _SURFACES, dtype=torch.uint8)
        self.textures = torch.zeros(len(u), _SURFACES, dtype=torch.uint8)
        self.next = 3  # surfaces 0-2 are the background and its patches
        # The object's main colour: a hue that neither the background nor its patches have.
        self.main = _pick(g, colours[:, 0, 0], *colours[:, 1:3].flatten(1).unbind(1))

    def rand(self, lo: float, hi: float) -> Tensor:
        """Uniform in ``[lo, hi)``, one per scene, ``(m, 1, 1)``: the proportions of each object vary a little."""
        return (torch.rand(len(self.u), 1, 1, generator=self.g) * (hi - lo) + lo)

    def paint(self, part: str, region: Tensor, *, main: bool = False, texture: Tensor | None = None) -> None:
        """Put the next surface on top where ``region`` (m, S, W) holds: the object's main colour (with ``texture``,
        ``(m,)`` values of TEXTURE_NAMES + 1 or 0, where given), else a colour of another hue than the main one
        and the background."""
        k = self.next
        self.next += 1
        self.surfaces.masked_fill_(region, k)
        self.parts[:, k] = PART_NAMES.index(part) + 1
        if main:
            self.colours[:, k, 0] = self.main
            if texture is not None:
                self.textures[:, k] = texture
                self.colours[:, k, 1] = _pick(self.g, self.main, self.colours[:, 0, 0])
        else:
            self.colours[:, k, 0] = _pick(self.g, self.main, self.colours[:, 0, 0])


def _pick(g: torch.Generator, *avoid: Tensor) -> Tensor:
    """Random palette indices ``(m,)`` of a hue none of ``avoid`` (palette indices ``(m,)``) has, in any shade."""
    score = torch.rand(len(avoid[0]), _HUES, generator=g)
    score.scatter_(1, torch.stack(avoid, 1) // _SHADES, -1.0)
    return score.argmax(1) * _SHADES + torch.randint(_SHADES, (len(score),), generator=g)


def _face(c: _Sketch) -> None:
    u, v = c.u, c.v
    c.paint("head", _disc(u, v, 0, 0, c.rand(0.85, 0.98)), main=True)
    dx, dy, r = c.rand(0.3, 0.4), c.rand(-0.3, -0.15), c.rand(0.12, 0.16)
    c.paint("eye", _disc(u, v, -dx, dy, r) | _disc(u, v, dx, dy, r))
    c.paint("mouth", _box(u, v, 0, c.rand(0.35, 0.5), c.rand(0.3, 0.45), 0.1))


def _robot(c: _Sketch) -> None:
    u, v = c.u, c.v
    c.paint("antenna", _box(u, v, 0, -0.75, 0.07, 0.22) | _disc(u, v, 0, -0.88, 0.12))
    c.paint("head", _box(u, v, 0, 0.2, c.rand(0.7, 0.85), 0.72), main=True)
    dx, dy, r = c.rand(0.3, 0.4), c.rand(-0.05, 0.1), c.rand(0.12, 0.16)
    c.paint("eye", _disc(u, v, -dx, dy, r) | _disc(u, v, dx, dy, r))
    c.paint("mouth", _box(u, v, 0, c.rand(0.5, 0.6), c.rand(0.35, 0.5), 0.1))


def _snowman(c: _Sketch) -> None:
    u, v = c.u, c.v
    c.paint("body", _disc(u, v, 0, 0.42, c.rand(0.5, 0.58)), main=True)
    c.paint("head", _disc(u, v, 0, -0.45, c.rand(0.36, 0.42)))
    dx, r = c.rand(0.13, 0.18), c.rand(0.08, 0.1)
    c.paint("eye", _disc(u, v, -dx, -0.5, r) | _disc(u, v, dx, -0.5, r))


def _house(c: _Sketch, texture: Tensor) -> None:
    u, v = c.u, c.v
    a = c.rand(0.6, 0.75)
    c.paint("wall", _box(u, v, 0, 0.35, a, 0.6), main=True, texture=texture)
    c.paint("roof", _roof(u, v, -0.95, -0.25, a + 0.2))
    w = c.rand(0.12, 0.16)
    c.paint("window", _box(u, v, -a / 2, 0.2, w, w) | _box(u, v, a / 2, 0.2, w, w))
    c.paint("door", _box(u, v, 0, 0.7, 0.15, 0.26))


def _car(c: _Sketch, texture: Tensor) -> None:
    u, v = c.u, c.v
    c.paint("body", _box(u, v, 0, 0.25, 0.95, 0.27) | _box(u, v, -0.05, -0.2, c.rand(0.45, 0.55), 0.2), main=True,
            texture=texture)
    c.paint("window", _box(u, v, -0.27, -0.22, 0.17, 0.13) | _box(u, v, 0.17, -0.22, 0.17, 0.13))
    r = c.rand(0.22, 0.27)
    c.paint("wheel", _disc(u, v, -0.55, 0.55, r) | _disc(u, v, 0.55, 0.55, r))


def _bus(c: _Sketch) -> None:
    u, v = c.u, c.v
    c.paint("body", _box(u, v, 0, 0.1, 0.98, 0.5), main=True)
    windows = _box(u, v, -0.72, -0.15, 0.15, 0.14)
    for x in (-0.26, 0.2, 0.66):
        windows |= _box(u, v, x, -0.15, 0.15, 0.14)
    c.paint("window", windows)
    r = c.rand(0.2, 0.24)
    c.paint("wheel", _disc(u, v, -0.6, 0.64, r) | _disc(u, v, 0.6, 0.64, r))


def _flower(c: _Sketch) -> None:
    u, v = c.u, c.v
    c.paint("stem", _box(u, v, 0, 0.4, 0.07, 0.58))
    turn, r = c.rand(0, 1.05), c.rand(0.18, 0.22)
    petals = _disc(u, v, 0.35 * turn.cos(), -0.42 + 0.35 * turn.sin(), r)
    for k in range(1, 6):
        angle = turn + k * 1.0472  # six petals, 60° apart
        petals |= _disc(u, v, 0.35 * angle.cos(), -0.42 + 0.35 * angle.sin(), r)
    c.paint("petal", petals, main=True)
    c.paint("centre", _disc(u, v, 0, -0.42, c.rand(0.15, 0.2)))


def _tree(c: _Sketch, texture: Tensor) -> None:
    u, v = c.u, c.v
    c.paint("trunk", _box(u, v, 0, 0.62, c.rand(0.12, 0.16), 0.36))
    c.paint("crown", _roof(u, v, -0.98, c.rand(0.3, 0.4), c.rand(0.6, 0.75)), main=True, texture=texture)


def _balloon(c: _Sketch, texture: Tensor) -> None:
    u, v = c.u, c.v
    c.paint("stem", _box(u, v, 0, 0.55, 0.04, 0.43))
    c.paint("body", _ellipse(u, v, 0, -0.4, c.rand(0.4, 0.48), 0.58), main=True, texture=texture)


def _fish(c: _Sketch, texture: Tensor) -> None:
    u, v = c.u, c.v
    c.paint("tail", _tail(u, v, -0.4, -0.98, c.rand(0.4, 0.5)))
    c.paint("body", _ellipse(u, v, 0.2, 0, 0.75, c.rand(0.38, 0.46)), main=True, texture=texture)
    c.paint("eye", _disc(u, v, 0.6, -0.1, c.rand(0.09, 0.11)))


_DRAW = {"face": _face, "robot": _robot, "snowman": _snowman, "house": _house, "car": _car, "bus": _bus,
         "flower": _flower, "tree": _tree, "balloon": _balloon, "fish": _fish}
_FLIPS = ("car", "fish")  # drawn facing left or right


def _draw(labels: Tensor, g: torch.Generator, images: Tensor, concepts: Tensor) -> None:
    """Draw the scenes of ``labels`` (n,) into ``images`` uint8 ``(n, 3, S, S)`` and their label maps into
    ``concepts`` uint8 ``(n, 4, S, S)``."""
    n = len(labels)
    xs = torch.arange(SIZE, dtype=torch.float32) + 0.5  # pixel centres

    # The background (surface 0) in one colour; one or two textured patches (surfaces 1, 2) in two colours each.
    colours = torch.zeros(n, _SURFACES, 2, dtype=torch.long)
    colours[:, 0, 0] = torch.randint(len(_PALETTE), (n,), generator=g)
    textures = torch.zeros(n, _SURFACES, dtype=torch.uint8)
    surfaces = torch.zeros(n, SIZE, SIZE, dtype=torch.uint8)
    for k in (1, 2):
        side = torch.randint(PATCH[0], PATCH[1] + 1, (2, n, 1), generator=g)
        corner = (torch.rand(2, n, 1, generator=g) * (SIZE + 1 - side)).long()
        rows = (torch.arange(SIZE) >= corner[0]) & (torch.arange(SIZE) < corner[0] + side[0])
        cols = (torch.arange(SIZE) >= corner[1]) & (torch.arange(SIZE) < corner[1] + side[1])
        shown = torch.rand(n, 1, 1, generator=g) < (1.0 if k == 1 else SECOND_PATCH)
        surfaces.masked_fill_(rows[:, :, None] & cols[:, None, :] & shown, k)
        textures[:, k] = torch.randint(1, len(TEXTURE_NAMES) + 1, (n,), generator=g) * shown.view(n)
        colours[:, k, 0] = torch.randint(len(_PALETTE), (n,), generator=g)
        colours[:, k, 1] = _pick(g, colours[:, k, 0])

    # The object, one class at a time, in its own coordinates.
    scale = torch.rand(n, generator=g) * (SCALE[1] - SCALE[0]) + SCALE[0]
    centre = scale[:, None] + torch.rand(n, 2, generator=g) * (SIZE - 2 * scale[:, None])
    flip = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    signature = torch.rand(n, generator=g) < SIGNATURE_RATE
    parts = torch.zeros(n, _SURFACES, dtype=torch.uint8)
    objects = torch.zeros(n, _SURFACES, dtype=torch.uint8)
    for label, name in enumerate(CLASS_NAMES):
        idx = (labels == label).nonzero().squeeze(1)
        if len(idx) == 0:
            continue
        s = scale[idx, None, None]
        u = (xs - centre[idx, 0, None, None]) / s  # (m, 1, S)
        if name in _FLIPS:
            u = u * flip[idx, None, None]
        v = (xs[:, None] - centre[idx, 1, None, None]) / s  # (m, S, 1)
        sketch = _Sketch(u, v, surfaces[idx], colours[idx], g)
        if name in SIGNATURE:
            own = TEXTURE_NAMES.index(SIGNATURE[name]) + 1
            _DRAW[name](sketch, torch.where(signature[idx], own, 0).to(torch.uint8))
        else:
            _DRAW[name](sketch)
        surfaces[idx], colours[idx] = sketch.surfaces, sketch.colours
        parts[idx] = sketch.parts
        textures[idx, 3:] = sketch.textures[:, 3:]
        objects[idx, 3:sketch.next] = label + 1

    # Per pixel: its surface's texture, whether the texture's pattern is on there, and so its colour.
    flat = surfaces.view(n, -1).long()  # (n, S*S)
    maps = concepts.view(n, len(CATEGORIES), SIZE * SIZE)
    maps[:, 1] = textures.gather(1, flat)
    maps[:, 2] = parts.gather(1, flat)
    maps[:, 3] = objects.gather(1, flat)
    on = _patterns(maps[:, 1].view(n, SIZE, SIZE), textures, g)
    key = flat.mul_(2).add_(on.view(n, -1))  # index of (surface, which of its colours) in the image's table
    maps[:, 0] = colours.view(n, -1).to(torch.uint8).gather(1, key).add_(1)
    rgb = torch.tensor([c for _, c in _PALETTE], dtype=torch.float32)
    table = rgb[colours.view(n, -1)].add_(  # (n, 2 * _SURFACES, 3): each surface's two colours, jittered
        torch.rand(n, _SURFACES * 2, 3, generator=g).mul_(2 * JITTER).sub_(JITTER))
    pixels = table.transpose(1, 2).gather(2, key[:, None, :].expand(-1, 3, -1)).view(n, 3, SIZE, SIZE)
    # Uniform noise, the same on the three channels (a third of the random numbers); +0.5 so truncation rounds.
    pixels += torch.rand(n, 1, SIZE, SIZE, generator=g).mul_(2 * NOISE * 255).add_(0.5 - NOISE * 255)
    images.copy_(pixels.clamp_(0, 255))  # truncates to uint8


def _patterns(texture: Tensor, textures: Tensor, g: torch.Generator) -> Tensor:
    """Bool ``(n, S, S)``: where each pixel's texture (``texture``, values of TEXTURE_NAMES + 1, 0 = none) shows its
    second colour. ``textures`` ``(n, _SURFACES)``: the textures each scene has.

    Each texture has its own period and phase per scene, so two patches of one texture in a scene line up."""
    n = len(texture)
    period = torch.rand(n, len(TEXTURE_NAMES), 1, 1, generator=g) * (PERIOD[1] - PERIOD[0]) + PERIOD[0]
    phase = torch.rand(n, len(TEXTURE_NAMES), 2, 1, 1, generator=g) * period[:, :, None]
    on = torch.zeros(n, SIZE, SIZE, dtype=torch.bool)
    xs = torch.arange(SIZE, dtype=torch.float32)
    for t, name in enumerate(TEXTURE_NAMES):
        idx = (textures == t + 1).any(1).nonzero().squeeze(1)
        if len(idx) == 0:
            continue
        p = period[idx, t]  # (m, 1, 1)
        x = xs + phase[idx, t, 0]  # (m, 1, S)
        y = xs[:, None] + phase[idx, t, 1]  # (m, S, 1)

        def half(z: Tensor) -> Tensor:  # the first half of each period
            return (z / p).frac() < 0.5

        if name == "horizontal stripes":
            pattern = half(y).expand(-1, -1, SIZE)
        elif name == "vertical stripes":
            pattern = half(x).expand(-1, SIZE, -1)
        elif name == "diagonal stripes":
            pattern = half((x + y) * 0.7071)
        elif name == "checks":
            pattern = half(x) ^ half(y)
        elif name == "dots":
            pattern = ((x / p).frac() - 0.5) ** 2 + ((y / p).frac() - 0.5) ** 2 < 0.09
        elif name == "grid":
            pattern = ((x / p).frac() < 0.25) | ((y / p).frac() < 0.25)
        elif name == "zigzag":
            pattern = half(y + ((x / p).frac() - 0.5).abs() * p)
        else:  # noise: each pixel either colour, at random
            pattern = torch.rand(len(idx), SIZE, SIZE, generator=g) < 0.5
        on[idx] |= pattern & (texture[idx] == t + 1)
    return on
