"""Architectures as data: a JSON-friendly :class:`ModelSpec` becomes an ``nn.Sequential`` with readable layer names.

``build(spec)`` names each layer for what it is and which block it belongs to (``conv1, bn1, relu1, pool1, drop1,
conv2, …, flatten, fc``) so the names a student sees in the app are the names ``print(model)`` shows.

Every spec is checked against the limits below by :func:`check` before anything is built: a spec comes from a table
a student edits or from a file anyone can upload, and one server trains and shows models for a whole class.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import MISSING, asdict, dataclass, field, fields
from functools import partial
from typing import Callable

import torch
from torch import nn

from cnnviz import text


class SpecError(ValueError):
    """An architecture that cannot work; the message names the layer and the reason."""


ACTIVATIONS = {"relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}
POOLS = ("max", "avg", "none")

# Limits of what one classroom server (2 cores, a few GB shared by ~30 students) builds and trains. The Train page's
# table offers the same ranges; the largest preset on a 3×32×32 dataset ("deep") has ~0.36 M parameters, needs
# ~0.38 GiB for a step at the largest batch and ~11 M multiply-adds per image, so every preset passes with room.
MAX_BLOCKS = 8
MAX_CHANNELS = 256
MAX_KERNEL = 11
MAX_PADDING = 5
MAX_STRIDE = 4
POOL_SIZES = (2, 4)  # smallest and largest pooling window
MAX_HIDDEN = 4096
IN_CHANNELS = (1, 3)  # grey or RGB
IMAGE_SIZES = (8, 256)  # smallest and largest side of the square input
NUM_CLASSES = (2, 1000)
MAX_PARAMS = 4_000_000  # 16 MB of float32 weights; 64 MB with gradients and Adam's two moments
TRAIN_BATCH = 256  # the largest batch the Train page offers; memory is estimated for it
MAX_TRAIN_BYTES = 1 << 30  # one training step's memory (see :class:`SpecCost`): 1 GiB
MAX_MACS = 100_000_000  # multiply-adds of one image's forward pass: the presets need at most ~11 M


@dataclass
class ConvBlock:
    """conv → (batchnorm) → activation → (pool) → (dropout)."""

    channels: int
    kernel: int = 3
    padding: int = 1
    stride: int = 1
    activation: str = "relu"
    pool: str = "max"  # "max" | "avg" | "none"
    pool_size: int = 2
    batchnorm: bool = False
    dropout: float = 0.0


@dataclass
class ModelSpec:
    """A small CNN: input shape, conv blocks and a classifier head."""

    in_channels: int
    image_size: int
    num_classes: int
    blocks: list[ConvBlock] = field(default_factory=list)
    hidden: int = 0  # units of an extra fully connected layer before the output; 0 = none
    head_dropout: float = 0.0
    global_pool: bool = False  # average each last feature map to one number before the head (keeps fc small)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: object) -> "ModelSpec":
        """A checked spec from plain data (JSON, a checkpoint); :class:`SpecError` names the first field that is
        unknown, missing, of the wrong type or beyond the limits."""
        if not isinstance(d, dict):
            raise SpecError(f"a model spec must be a mapping of fields, got {text.brief(d)}")
        blocks = d.get("blocks", [])
        if not isinstance(blocks, list):
            raise SpecError(f"'blocks' must be a list of conv blocks, got {text.brief(blocks)}")
        if len(blocks) > MAX_BLOCKS:  # before looking at each one: the list may be long
            raise SpecError(f"a model may have at most {MAX_BLOCKS} conv blocks, got {len(blocks)}")
        spec = cls(**_values(cls, {k: v for k, v in d.items() if k != "blocks"}, _SPEC_RULES, ""),
                   blocks=[ConvBlock(**_values(ConvBlock, b, _BLOCK_RULES, f"block {i}: "))
                           for i, b in enumerate(blocks, start=1)])
        check(spec)
        return spec


@dataclass(frozen=True)
class LayerInfo:
    """One row of the architecture table."""

    name: str
    kind: str
    output_shape: tuple[int, ...]
    params: int


@dataclass(frozen=True)
class SpecCost:
    """What a spec takes: its trainable parameters, the bytes of one training step on :data:`TRAIN_BATCH` images and
    the multiply-adds of one image's forward pass (convolutions and dense layers; a training step costs ~3× that).

    ``train_bytes`` counts each layer's float32 output (input included) twice per image, once kept for the backward
    pass and once for its gradient, plus 16 bytes per parameter (weights, gradients and Adam's two moments). Measured
    peaks of one step of each preset (one thread, CPU) are 0.7–1.0× this estimate.
    """

    params: int
    train_bytes: int
    macs: int


@dataclass(frozen=True)
class _Rule:
    """What one field may hold: a kind (int, float, bool or str) and a range ``[low, high]`` or a list of options."""

    kind: type
    low: float | None = None
    high: float | None = None
    options: tuple = ()
    below_high: bool = False  # the range is [low, high)

    def accepts(self, v: object) -> bool:
        if self.kind is float:  # a whole number is a fine float; bools and nan/inf are not
            if not (type(v) is int or (type(v) is float and math.isfinite(v))):
                return False
        elif type(v) is not self.kind:  # `type is`, not isinstance: True is not the integer 1 here
            return False
        if self.options:
            return v in self.options
        if self.low is not None and v < self.low:
            return False
        return self.high is None or (v < self.high if self.below_high else v <= self.high)

    def __str__(self) -> str:
        if self.options:
            return " or ".join(repr(o) if isinstance(o, str) else str(o) for o in self.options)
        if self.kind is bool:
            return "true or false"
        if self.kind is int:
            return f"a whole number from {self.low} to {self.high}"
        return f"a number from {self.low} to {'below ' if self.below_high else ''}{self.high}"


_BLOCK_RULES = {
    "channels": _Rule(int, 1, MAX_CHANNELS),
    "kernel": _Rule(int, 1, MAX_KERNEL),
    "padding": _Rule(int, 0, MAX_PADDING),
    "stride": _Rule(int, 1, MAX_STRIDE),
    "activation": _Rule(str, options=tuple(ACTIVATIONS)),
    "pool": _Rule(str, options=POOLS),
    "pool_size": _Rule(int, *POOL_SIZES),
    "batchnorm": _Rule(bool),
    "dropout": _Rule(float, 0, 1, below_high=True),
}
_SPEC_RULES = {
    "in_channels": _Rule(int, options=IN_CHANNELS),
    "image_size": _Rule(int, *IMAGE_SIZES),
    "num_classes": _Rule(int, *NUM_CLASSES),
    "hidden": _Rule(int, 0, MAX_HIDDEN),
    "head_dropout": _Rule(float, 0, 1, below_high=True),
    "global_pool": _Rule(bool),
}


def _require(rule: _Rule, v: object, where: str) -> None:
    if not rule.accepts(v):
        raise SpecError(f"{where} must be {rule}, got {text.brief(v)}")


def _values(cls: type, d: object, rules: dict[str, _Rule], where: str) -> dict:
    """The keyword arguments of ``cls`` from the mapping ``d``, refusing unknown and missing fields (their values are
    checked by :func:`check`)."""
    if not isinstance(d, dict):
        raise SpecError(f"{where}expected a mapping of fields, got {text.brief(d)}")
    names = {f.name for f in fields(cls)}
    for k in d:
        if k not in names:
            raise SpecError(f"{where}unknown field {text.brief(k)}; the fields are {', '.join(sorted(names))}")
    for f in fields(cls):
        if f.name in rules and f.name not in d and f.default is MISSING and f.default_factory is MISSING:
            raise SpecError(f"{where}'{f.name}' is missing")
    return dict(d)


def _check_block(b: object, number: int) -> None:
    if not isinstance(b, ConvBlock):
        raise SpecError(f"block {number}: expected a conv block, got {text.brief(b)}")
    for name, rule in _BLOCK_RULES.items():
        _require(rule, getattr(b, name), f"block {number}: '{name}'")


def block_from_row(row: object, number: int) -> ConvBlock:
    """A checked :class:`ConvBlock` from a table row (cells may be numpy scalars, and whole numbers may come as
    floats); raise :class:`SpecError` naming the row and the field that is empty, unknown or wrong."""
    if not isinstance(row, dict):
        raise SpecError(f"block {number}: expected a row of values, got {text.brief(row)}")
    for k in row:
        if k not in _BLOCK_RULES:
            raise SpecError(f"block {number}: unknown column {text.brief(k)}")
    values = {}
    for name, rule in _BLOCK_RULES.items():
        v = row.get(name)
        if type(v).__module__ == "numpy":  # pandas hands cells over as numpy scalars
            v = v.item()
        if v is None or (type(v) is float and math.isnan(v)) or type(v).__name__ == "NAType":  # pandas' missing
            raise SpecError(f"block {number}: '{name}' is empty")
        if rule.kind is int and type(v) is float and v.is_integer():  # a number column with an empty cell is float
            v = int(v)
        values[name] = v
    block = ConvBlock(**values)
    _check_block(block, number)
    return block


# Presets take the dataset's input shape and class count; the blocks are what distinguishes them.
PRESETS: dict[str, dict] = {
    "gap": dict(
        description="Four conv layers, one pooling, then global average pooling (GAP) instead of a dense layer, as "
                    "in CAM (Zhou et al. 2016): Grad-CAM points right at the object. The default for shapes.",
        blocks=[ConvBlock(16, batchnorm=True), ConvBlock(24, batchnorm=True, pool="none"),
                ConvBlock(32, batchnorm=True, pool="none"), ConvBlock(48, batchnorm=True, pool="none", dropout=0.2)],
        global_pool=True,
    ),
    "tiny": dict(
        description="Two small conv blocks with batchnorm and a dense layer: trains in seconds. The default for "
                    "digits and photos.",
        blocks=[ConvBlock(16, batchnorm=True), ConvBlock(32, batchnorm=True)],
        hidden=64,
    ),
    "tinyvgg": dict(
        description="Tiny VGG from CNN Explainer: 2×[conv-relu-conv-relu-maxpool] with 10 channels.",
        blocks=[ConvBlock(10, pool="none"), ConvBlock(10), ConvBlock(10, pool="none"), ConvBlock(10)],
    ),
    "deep": dict(
        description="Three blocks of 32/64/128 channels with batchnorm: more layers, richer features, slower.",
        blocks=[ConvBlock(32, batchnorm=True), ConvBlock(64, batchnorm=True), ConvBlock(128, batchnorm=True)],
        hidden=128,
        head_dropout=0.25,
    ),
}


def preset(name: str, in_channels: int, image_size: int, num_classes: int) -> ModelSpec:
    """The spec of a named preset for a dataset's input shape ``(in_channels, image_size, image_size)``."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    p = PRESETS[name]
    blocks = [ConvBlock(**asdict(b)) for b in p["blocks"]]  # copies: callers may edit them
    return ModelSpec(in_channels, image_size, num_classes, blocks, p.get("hidden", 0), p.get("head_dropout", 0.0),
                     p.get("global_pool", False))


_Plan = list[tuple[LayerInfo, Callable[[], nn.Module], int]]  # (row, how to make the layer, its multiply-adds)


def _plan(spec: ModelSpec) -> tuple[_Plan, SpecCost]:
    """Each layer of ``spec`` (its row of the architecture table and how to make it) and the spec's cost, worked out
    from the numbers alone: nothing is built, so a spec beyond the limits costs nothing to refuse."""
    if not isinstance(spec, ModelSpec):
        raise SpecError(f"expected a model spec, got {text.brief(spec)}")
    for name, rule in _SPEC_RULES.items():
        _require(rule, getattr(spec, name), f"'{name}'")
    if not isinstance(spec.blocks, list):
        raise SpecError(f"'blocks' must be a list of conv blocks, got {text.brief(spec.blocks)}")
    if not spec.blocks:
        raise SpecError("a CNN needs at least one conv block; add a row to the table")
    if len(spec.blocks) > MAX_BLOCKS:
        raise SpecError(f"a model may have at most {MAX_BLOCKS} conv blocks, got {len(spec.blocks)}")
    for i, b in enumerate(spec.blocks, start=1):
        _check_block(b, i)

    plan: _Plan = []

    def add(name: str, make: partial, shape: tuple[int, ...], params: int = 0, macs: int = 0) -> None:
        plan.append((LayerInfo(name, make.func.__name__, shape, params), make, macs))

    c, s = spec.in_channels, spec.image_size
    for i, b in enumerate(spec.blocks, start=1):
        s_conv = (s + 2 * b.padding - b.kernel) // b.stride + 1
        if s_conv < 1:
            raise SpecError(
                f"conv{i}: a {b.kernel}×{b.kernel} kernel does not fit the {s}×{s} maps it gets "
                f"(padding {b.padding}); use a smaller kernel, more padding or fewer pooling layers before it"
            )
        add(f"conv{i}", partial(nn.Conv2d, c, b.channels, b.kernel, b.stride, b.padding, bias=not b.batchnorm),
            (b.channels, s_conv, s_conv), c * b.channels * b.kernel ** 2 + (0 if b.batchnorm else b.channels),
            c * b.channels * b.kernel ** 2 * s_conv ** 2)
        c, s = b.channels, s_conv
        if b.batchnorm:
            add(f"bn{i}", partial(nn.BatchNorm2d, c), (c, s, s), 2 * c)
        add(f"{'relu' if b.activation == 'relu' else 'act'}{i}", partial(ACTIVATIONS[b.activation]), (c, s, s))
        if b.pool != "none":
            if s // b.pool_size < 1:
                raise SpecError(
                    f"pool{i}: {b.pool_size}×{b.pool_size} pooling would shrink the {s}×{s} maps to nothing; "
                    f"remove this pooling layer or a block"
                )
            s //= b.pool_size
            add(f"pool{i}", partial(nn.MaxPool2d if b.pool == "max" else nn.AvgPool2d, b.pool_size), (c, s, s))
        if b.dropout > 0:
            add(f"drop{i}", partial(nn.Dropout2d, b.dropout), (c, s, s))
    if spec.global_pool:
        s = 1
        add("gap", partial(nn.AdaptiveAvgPool2d, 1), (c, s, s))
    features = c * s * s
    add("flatten", partial(nn.Flatten), (features,))
    if spec.hidden > 0:
        add("fc1", partial(nn.Linear, features, spec.hidden), (spec.hidden,), (features + 1) * spec.hidden,
            features * spec.hidden)
        add("relu_fc", partial(nn.ReLU), (spec.hidden,))
        features = spec.hidden
    if spec.head_dropout > 0:
        add("drop_fc", partial(nn.Dropout, spec.head_dropout), (features,))
    add("fc", partial(nn.Linear, features, spec.num_classes), (spec.num_classes,), (features + 1) * spec.num_classes,
        features * spec.num_classes)

    params = sum(info.params for info, _, _ in plan)
    if params > MAX_PARAMS:
        raise SpecError(f"this model would have {params:,} parameters; the limit is {MAX_PARAMS:,} (use fewer "
                        f"channels or hidden units, or pool more before the dense layers)")
    values = spec.in_channels * spec.image_size ** 2 + sum(math.prod(info.output_shape) for info, _, _ in plan)
    train_bytes = 2 * 4 * TRAIN_BATCH * values + 16 * params
    if train_bytes > MAX_TRAIN_BYTES:
        raise SpecError(f"one training step on {TRAIN_BATCH} images would need about {train_bytes / 2**30:.1f} GB "
                        f"of memory; the limit is {MAX_TRAIN_BYTES / 2**30:g} GB (use fewer channels, a larger "
                        f"stride or pooling earlier)")
    macs = sum(m for _, _, m in plan)
    if macs > MAX_MACS:
        raise SpecError(f"one image would take {macs / 1e6:,.0f} million multiply-adds; the limit is "
                        f"{MAX_MACS / 1e6:,.0f} million (use fewer channels, smaller kernels or pooling earlier)")
    return plan, SpecCost(params, train_bytes, macs)


def check(spec: ModelSpec) -> SpecCost:
    """Check every field's type and range and the layers' shapes against the limits above, and return what the
    model would cost; raise :class:`SpecError` naming the field or layer, what was expected and what was got."""
    return _plan(spec)[1]


def layers(spec: ModelSpec) -> list[tuple[str, nn.Module]]:
    """The named layers of ``spec`` in order, made only once :func:`check` has passed."""
    return [(info.name, make()) for info, make, _ in _plan(spec)[0]]


def build(spec: ModelSpec, seed: int | None = None) -> nn.Sequential:
    """An ``nn.Sequential`` for ``spec``: input ``(N, C, S, S)`` normalised, output logits ``(N, num_classes)``."""
    if seed is None:
        return nn.Sequential(OrderedDict(layers(spec)))
    # Under a fixed RNG so the same seed always gives the same initial weights.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(OrderedDict(layers(spec)))


def summary(spec: ModelSpec) -> list[LayerInfo]:
    """Per-layer output shapes (without batch) and parameter counts, computed from the spec (nothing is built)."""
    plan = _plan(spec)[0]
    return [LayerInfo("input", "input", (spec.in_channels, spec.image_size, spec.image_size), 0),
            *(info for info, _, _ in plan)]


def count_params(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
