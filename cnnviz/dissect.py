"""Network dissection: what kind of concept each unit of each conv layer detects, measured on the ``parts`` dataset.

Bau, Zhou, Khosla, Oliva and Torralba, "Network Dissection: Quantifying Interpretability of Deep Visual
Representations", CVPR 2017. For each unit (channel) of each conv layer:

1. its threshold ``T`` is the top ``quantile`` (0.5 %) of its activations over every place of every image;
2. its map of each image, upsampled to the image's size, is its *region* where it reaches ``T``;
3. its IoU with a concept is ``Σ |region ∩ concept| / Σ |region ∪ concept|``, summed over all images;
4. it *detects* its best concept when that IoU is at least ``iou_threshold`` (0.04, the paper's rule).

Concepts are the colours, textures, parts and objects of :mod:`cnnviz.parts`, whose masks every scene carries.
Counting each layer's detectors by category shows the hierarchy: colours in the first layer, parts and objects in
the last. Each unit's best concept, whatever its IoU, shows the same trend more softly.

A unit's activation is its conv layer's output, through the batchnorm right after it when there is one (a negative
scale would flip which values are high). The activation function after that keeps the order of values, so the top
quantile is the same places before or after it.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnviz import parts, probe
from cnnviz.data import info, normalize

QUANTILE = 0.005  # a unit's region: the top 0.5 % of its activations (the paper's)
IOU_THRESHOLD = 0.04  # a unit detects its best concept from this IoU on (the paper's)
IMAGES = 2000
SEED = 1  # parts' test stream: IMAGES scenes of it are data.load("parts", train=False), which no model trains on
TOP_IMAGES = 8  # images kept per unit to show where it fires
BATCH = 100  # images per forward pass: bounds the memory of the upsampled maps (batch × units × 64 × 64)
NONE = "none"  # the category of a unit whose region meets no concept at all


@dataclass
class Unit:
    """One unit's result: its best concept (``None`` when its region meets none) and their IoU, whether that makes
    it a detector, its ``top_images`` (indices into the dissected scenes, strongest first) and its ``regions`` there,
    bool ``(len(top_images), 64, 64)``."""

    unit: int
    concept: str | None
    category: str
    iou: float
    detector: bool
    top_images: list[int]
    regions: Tensor = field(repr=False)

    def to_json(self) -> dict:
        return {"unit": self.unit, "concept": self.concept, "category": self.category, "iou": round(self.iou, 4),
                "detector": self.detector, "top_images": self.top_images}


@dataclass
class Layer:
    """One conv layer's units, and every unit's IoU with every concept, ``iou`` ``(units, len(parts.CONCEPTS))``."""

    name: str
    units: list[Unit]
    iou: Tensor = field(repr=False)

    @property
    def detectors(self) -> dict[str, int]:
        """How many units detect a concept of each category by the paper's rule (IoU ≥ the threshold)."""
        return {c: len(self.units_in(c)) for c in parts.CATEGORIES}

    @property
    def best(self) -> dict[str, int]:
        """How many units have their best concept in each category, whatever its IoU; ``"none"``: no concept."""
        return self.counts(rule=False)

    def counts(self, *, rule: bool = True) -> dict[str, int]:
        """How many units are in each category and ``"none"``, by the rule or by best concept (see units_in)."""
        return {c: len(self.units_in(c, rule=rule)) for c in (*parts.CATEGORIES, NONE)}

    def units_in(self, category: str, *, rule: bool = True) -> list[Unit]:
        """The units of ``category``: with ``rule``, its detectors (``"none"``: every unit that detects nothing);
        otherwise the units whose best concept is in it (``"none"``: units whose region meets no concept)."""
        if category not in (*parts.CATEGORIES, NONE):
            raise ValueError(f"expected a category in {(*parts.CATEGORIES, NONE)}, got {category!r}")
        if rule and category == NONE:
            return [u for u in self.units if not u.detector]
        return [u for u in self.units if u.category == category and (u.detector or not rule)]

    def to_json(self) -> dict:
        return {"name": self.name, "units": len(self.units), "detectors": self.detectors,
                "unit_concepts": [u.to_json() for u in self.units]}


@dataclass
class Dissection:
    """The layers in the order the forward pass reaches them, the scenes dissected and how long it took."""

    layers: list[Layer]
    # The scenes are parts.cached's, shared by every dissection: caches do not count them as this one's bytes.
    scenes: parts.Scenes = field(repr=False, metadata={"shared": True})
    seconds: float
    quantile: float = QUANTILE
    iou_threshold: float = IOU_THRESHOLD

    def layer(self, name: str) -> Layer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"no layer named {name!r} was dissected; these were: {', '.join(self.names)}")

    @property
    def names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    def to_json(self) -> dict:
        """``{"layers": [{"name", "units", "detectors": {category: count}, "unit_concepts": [...]}, ...],
        "images": N, "seconds": s}``: plain numbers and strings, ready for ``json.dumps``."""
        return {"layers": [layer.to_json() for layer in self.layers], "images": len(self.scenes),
                "seconds": round(self.seconds, 2)}


def conv_layers(model: nn.Module) -> list[str]:
    """The dotted names of every ``nn.Conv2d`` in ``model``, in registration order."""
    return [name for name, module in model.named_modules() if isinstance(module, nn.Conv2d)]


def untrained(model: nn.Module, seed: int = 0) -> nn.Module:
    """A copy of ``model`` with fresh random weights (every module's own initialisation, from ``seed``): the same
    architecture before any learning, the control a dissection is compared with. ``model`` is left as it was."""
    fresh = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in fresh.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
    return fresh.eval()


def upsampler(size: int, to: int) -> Tensor:
    """The matrix ``(to, size)`` that resizes a signal of ``size`` values to ``to`` by linear interpolation, as
    ``F.interpolate(mode="linear", align_corners=False)`` does: ``A @ m @ B.T`` resizes a map ``m`` ``(h, w)``
    exactly as bilinear ``F.interpolate`` would, with ``A = upsampler(h, H)`` and ``B = upsampler(w, W)``."""
    return F.interpolate(torch.eye(size)[None], size=to, mode="linear", align_corners=False)[0].T.contiguous()


def dissect(
    model: nn.Module,
    layers: list[str] | None = None,
    images: int | parts.Scenes = IMAGES,
    quantile: float = QUANTILE,
    iou_threshold: float = IOU_THRESHOLD,
    progress: Callable[[float], None] | None = None,
    seed: int = SEED,
) -> Dissection:
    """Dissect the conv ``layers`` of ``model`` (default: every ``nn.Conv2d``), a model trained on ``parts``.

    ``images``: how many scenes of :func:`parts.cached` (from ``seed``) to use, or the :class:`parts.Scenes`
    themselves. Images are normalised with parts' mean and std. ``progress(fraction)`` is called after each batch
    (two passes over the images: thresholds, then overlaps). The model runs in eval mode without gradients, on its
    own device; its hooks are removed and its modes restored afterwards.
    """
    if not 0 < quantile < 1:
        raise ValueError(f"expected a quantile between 0 and 1, got {quantile}")
    if not 0 < iou_threshold <= 1:
        raise ValueError(f"expected an IoU threshold in (0, 1], got {iou_threshold}")
    start = time.perf_counter()
    scenes = parts.cached(images, seed) if isinstance(images, int) else images
    n, _, h, w = scenes.images.shape
    if n == 0 or scenes.concepts.shape != (n, len(parts.CATEGORIES), h, w):
        raise ValueError(f"expected at least one scene, with label maps (N, {len(parts.CATEGORIES)}, H, W) beside "
                         f"images (N, 3, H, W); got {n} scenes, maps {tuple(scenes.concepts.shape)}")
    names = list(dict.fromkeys(conv_layers(model) if layers is None else layers))
    if not names:
        raise ValueError("this model has no conv layers (nn.Conv2d) to dissect")
    targets = {name: _unit_module(model, name) for name in names}
    batches = range(0, n, BATCH)
    done = 0

    def report() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done / (2 * len(batches)))

    with _Activations(model, targets) as acts:
        tallies = _thresholds(acts, scenes, batches, quantile, report)
        concept_area = _overlaps(acts, scenes, batches, tallies, report)
    result = []
    for name, t in tallies.items():
        union = t.area[:, None] + concept_area[None, :] - t.overlap
        iou = (t.overlap / union.clamp(min=1)).float()  # (U, concepts)
        result.append(Layer(name, _units(iou, t.strongest, t.regions, iou_threshold), iou))
    return Dissection(result, scenes, time.perf_counter() - start, quantile, iou_threshold)


@dataclass
class _Tally:
    """One layer's units while a dissection runs: where each is on, and what it has met there so far."""

    cut: Tensor  # (U,): a unit is on where its activation reaches this
    strongest: Tensor  # (U, TOP_IMAGES): the images where it peaks highest, strongest first
    overlap: Tensor  # (U, concepts) int64: pixels on that hold each concept
    area: Tensor  # (U,) int64: pixels on
    regions: Tensor  # (U, TOP_IMAGES, H, W) bool: where it is on in its strongest images


def _thresholds(acts: "_Activations", scenes: parts.Scenes, batches: range, quantile: float,
                report: Callable[[], None]) -> dict[str, _Tally]:
    """Pass 1: each unit's cut (the lowest of its top ``quantile`` activations over all images and places) and
    strongest images, per layer in the order the forward pass reaches them."""
    top: dict[str, Tensor] = {}
    low: dict[str, Tensor] = {}
    peaks: dict[str, list[Tensor]] = {}
    for i in batches:
        for name, a in acts.run(scenes.images[i:i + BATCH]).items():  # a: (B, U, h, w)
            flat = a.transpose(0, 1).flatten(1)  # (U, B*h*w)
            k = max(1, round(quantile * len(scenes) * a.shape[2] * a.shape[3]))
            kept = torch.cat([top[name], flat], 1) if name in top else flat
            top[name] = kept.topk(min(k, kept.shape[1]), sorted=False).values
            low[name] = torch.minimum(low[name], flat.amin(1)) if name in low else flat.amin(1)
            peaks.setdefault(name, []).append(a.amax((2, 3)))
        report()
    size = scenes.images.shape[-2:]
    tallies = {}
    for name in acts.order:
        strongest = torch.cat(peaks[name]).topk(min(TOP_IMAGES, len(scenes)), dim=0).indices.T
        u = len(strongest)
        # Ties at the threshold count as on, but a unit's lowest value never does (a unit that never changes has
        # no region): where the threshold is the lowest value, the cut is just above it.
        threshold = top[name].amin(1)
        cut = torch.where(threshold > low[name], threshold, torch.nextafter(low[name], torch.tensor(float("inf"))))
        tallies[name] = _Tally(cut, strongest, torch.zeros(u, len(parts.CONCEPTS), dtype=torch.long),
                               torch.zeros(u, dtype=torch.long), torch.zeros(*strongest.shape, *size, dtype=torch.bool))
    return tallies


def _overlaps(acts: "_Activations", scenes: parts.Scenes, batches: range, tallies: dict[str, _Tally],
              report: Callable[[], None]) -> Tensor:
    """Pass 2: each unit's region in every image against every concept, into ``tallies``; returns each concept's
    area in pixels ``(concepts,)``."""
    n_concepts = len(parts.CONCEPTS)
    concept_area = torch.zeros(n_concepts, dtype=torch.long)
    for i in batches:
        labels = _concept_numbers(scenes.concepts[i:i + BATCH])  # (B, 4, H*W)
        concept_area += torch.bincount(labels[labels >= 0], minlength=n_concepts)
        for name, a in acts.run(scenes.images[i:i + BATCH]).items():
            t, u = tallies[name], a.shape[1]
            # Upsampling takes convex combinations, so a map whose peak is below the cut has no region: only the
            # few maps that reach it are upsampled (a unit is on in 0.5 % of places).
            image, unit = (a.amax((2, 3)) >= t.cut).nonzero().unbind(1)
            on = _upsample(a[image, unit], scenes.images.shape[-2:]) >= t.cut[unit, None, None]  # (maps, H, W)
            which, pixel = on.flatten(1).nonzero().unbind(1)
            image, unit = image[which], unit[which]  # of every pixel on
            t.area += torch.bincount(unit, minlength=u)
            hit = labels[image, :, pixel]  # (pixels on, 4): each one's concept of each category, or -1
            column = (unit[:, None] * n_concepts + hit)[hit >= 0]
            t.overlap += torch.bincount(column, minlength=u * n_concepts).view(u, n_concepts)
            unit, rank = ((t.strongest >= i) & (t.strongest < i + len(labels))).nonzero().unbind(1)
            maps = a[t.strongest[unit, rank] - i, unit]
            t.regions[unit, rank] = _upsample(maps, scenes.images.shape[-2:]) >= t.cut[unit, None, None]
        report()
    return concept_area


def _upsample(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Maps ``(..., h, w)`` resized to ``(..., H, W)`` = ``size``, bilinearly, as two matrix products."""
    h, w = maps.shape[-2:]
    if (h, w) == tuple(size):
        return maps
    return upsampler(h, size[0]) @ maps @ upsampler(w, size[1]).T


def _units(iou: Tensor, strongest: Tensor, regions: Tensor, iou_threshold: float) -> list[Unit]:
    """Each unit's best concept from its row of ``iou`` ``(U, concepts)``; a unit with IoU 0 everywhere has none."""
    units = []
    value, index = iou.max(1)
    for u, (v, c) in enumerate(zip(value.tolist(), index.tolist())):
        concept = parts.CONCEPTS[c] if v > 0 else None
        units.append(Unit(u, concept.name if concept else None, concept.category if concept else NONE, v,
                          v >= iou_threshold, strongest[u].tolist(), regions[u]))
    return units


def _concept_numbers(concepts: Tensor) -> Tensor:
    """Label maps uint8 ``(N, 4, H, W)`` → each pixel's index in ``parts.CONCEPTS`` per category, int64
    ``(N, 4, H*W)``; -1 where the pixel has no concept of that category."""
    first = [next(i for i, c in enumerate(parts.CONCEPTS) if c.category == cat) for cat in parts.CATEGORIES]
    offset = torch.tensor(first) - 1  # value v of category k is concept number first[k] + v - 1
    numbers = concepts.flatten(2).long() + offset[None, :, None]
    return torch.where(concepts.flatten(2) > 0, numbers, -1)


def _unit_module(model: nn.Module, name: str) -> nn.Module:
    """The module whose output is the units of conv layer ``name``: the ``BatchNorm2d`` registered right after it
    in the same parent (``conv1, bn1``: ModelSpec, ResNet, Inception blocks), else the conv itself."""
    conv = probe.get_module(model, name)
    if not isinstance(conv, nn.Conv2d):
        raise ValueError(f"{name!r} is a {type(conv).__name__}, not a conv layer; the conv layers are: "
                         f"{', '.join(conv_layers(model))}")
    parent = probe.get_module(model, name.rpartition(".")[0]) if "." in name else model
    siblings = list(parent.children())
    after = siblings[siblings.index(conv) + 1] if siblings.index(conv) + 1 < len(siblings) else None
    if isinstance(after, nn.BatchNorm2d) and after.num_features == conv.out_channels:
        return after
    return conv


class _Activations:
    """Forward hooks that keep what the units of each layer output during :meth:`run`; removed on exit, and the
    model's modes put back."""

    def __init__(self, model: nn.Module, targets: dict[str, nn.Module]) -> None:
        self.model, self.targets = model, targets
        self.order: list[str] = []  # layer names in the order the forward pass reached them
        self.outputs: dict[str, Tensor] = {}

    def __enter__(self) -> "_Activations":
        self.evaluating = probe.evaluating(self.model)
        self.evaluating.__enter__()
        self.handles = []
        try:
            for name, module in self.targets.items():
                self.handles.append(module.register_forward_hook(self._keep(name)))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()
        self.evaluating.__exit__(None, None, None)

    def _keep(self, name: str):
        def hook(module, inputs, output) -> None:
            if name not in self.outputs:  # a module called twice in one pass: its first call
                self.outputs[name] = output.detach().float().cpu().contiguous()
                if name not in self.order:
                    self.order.append(name)
        return hook

    @torch.no_grad()
    def run(self, images: Tensor) -> dict[str, Tensor]:
        """Each layer's units ``(B, U, h, w)`` for uint8 images ``(B, 3, H, W)``."""
        self.outputs = {}
        # Channels-last: oneDNN's preferred layout on a CPU (a third faster here), whatever the model's own.
        x = normalize(images, info("parts")).contiguous(memory_format=torch.channels_last)
        x = x.to(probe.device_of(self.model))
        self.model(x)
        missing = [name for name in self.targets if name not in self.outputs]
        if missing:
            raise ValueError(f"the forward pass never reached {', '.join(missing)}")
        return self.outputs
