"""Architectures as data: a JSON-friendly :class:`ModelSpec` becomes an ``nn.Sequential`` with readable layer names.

``build(spec)`` names each layer for what it is and which block it belongs to (``conv1, bn1, relu1, pool1, drop1,
conv2, …, flatten, fc``) so the names a student sees in the app are the names ``print(model)`` shows.
"""

from __future__ import annotations

from collections import OrderedDict
import math
from dataclasses import asdict, dataclass, field, fields

import torch
from torch import nn


class SpecError(ValueError):
    """An architecture that cannot work; the message names the layer and the reason."""


ACTIVATIONS = {"relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}
POOLS = ("max", "avg", "none")


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


def block_from_row(row: dict, number: int) -> ConvBlock:
    """A :class:`ConvBlock` from a table row (values may be numpy scalars or floats); raise :class:`SpecError`
    naming the row and field that is empty or of the wrong kind."""
    values = {}
    for f in fields(ConvBlock):
        v = row.get(f.name)
        if v is None or (isinstance(v, float) and math.isnan(v)):
            raise SpecError(f"block {number}: '{f.name}' is empty")
        v = v.item() if hasattr(v, "item") else v
        try:
            values[f.name] = {"int": int, "float": float, "bool": bool, "str": str}[f.type](v)
        except (KeyError, TypeError, ValueError):
            raise SpecError(f"block {number}: '{f.name}' must be a {f.type}, got {v!r}") from None
    return ConvBlock(**values)


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
    def from_dict(cls, d: dict) -> "ModelSpec":
        d = dict(d)
        d["blocks"] = [ConvBlock(**b) for b in d.get("blocks", [])]
        return cls(**d)


@dataclass(frozen=True)
class LayerInfo:
    """One row of the architecture table."""

    name: str
    kind: str
    output_shape: tuple[int, ...]
    params: int


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


def layers(spec: ModelSpec) -> list[tuple[str, nn.Module]]:
    """The named layers of ``spec`` in order; raises :class:`SpecError` naming the first layer that cannot work."""
    if spec.in_channels < 1 or spec.image_size < 1 or spec.num_classes < 2:
        raise SpecError("the input needs ≥ 1 channel and ≥ 1 pixel, and there must be at least 2 classes")
    if not spec.blocks:
        raise SpecError("a CNN needs at least one conv block; add a row to the table")
    out: list[tuple[str, nn.Module]] = []
    c, s = spec.in_channels, spec.image_size
    for i, b in enumerate(spec.blocks, start=1):
        if b.channels < 1 or b.kernel < 1 or b.stride < 1 or b.padding < 0:
            raise SpecError(f"conv{i}: channels, kernel and stride must be ≥ 1 and padding ≥ 0")
        s_conv = (s + 2 * b.padding - b.kernel) // b.stride + 1
        if s_conv < 1:
            raise SpecError(
                f"conv{i}: a {b.kernel}×{b.kernel} kernel does not fit the {s}×{s} maps it gets "
                f"(padding {b.padding}); use a smaller kernel, more padding or fewer pooling layers before it"
            )
        out.append((f"conv{i}", nn.Conv2d(c, b.channels, b.kernel, b.stride, b.padding, bias=not b.batchnorm)))
        c, s = b.channels, s_conv
        if b.batchnorm:
            out.append((f"bn{i}", nn.BatchNorm2d(c)))
        if b.activation not in ACTIVATIONS:
            raise SpecError(f"relu{i}: unknown activation {b.activation!r}; choose one of {', '.join(ACTIVATIONS)}")
        out.append((f"{'relu' if b.activation == 'relu' else 'act'}{i}", ACTIVATIONS[b.activation]()))
        if b.pool not in POOLS:
            raise SpecError(f"pool{i}: unknown pooling {b.pool!r}; choose one of {', '.join(POOLS)}")
        if b.pool != "none":
            if s // b.pool_size < 1:
                raise SpecError(
                    f"pool{i}: {b.pool_size}×{b.pool_size} pooling would shrink the {s}×{s} maps to nothing; "
                    f"remove this pooling layer or a block"
                )
            pool_cls = nn.MaxPool2d if b.pool == "max" else nn.AvgPool2d
            out.append((f"pool{i}", pool_cls(b.pool_size)))
            s //= b.pool_size
        if not 0 <= b.dropout < 1:
            raise SpecError(f"drop{i}: dropout must be in [0, 1), got {b.dropout}")
        if b.dropout > 0:
            out.append((f"drop{i}", nn.Dropout2d(b.dropout)))
    if spec.global_pool:
        out.append(("gap", nn.AdaptiveAvgPool2d(1)))
        s = 1
    out.append(("flatten", nn.Flatten()))
    features = c * s * s
    if spec.hidden > 0:
        out += [("fc1", nn.Linear(features, spec.hidden)), ("relu_fc", nn.ReLU())]
        features = spec.hidden
    if spec.head_dropout > 0:
        out.append(("drop_fc", nn.Dropout(spec.head_dropout)))
    out.append(("fc", nn.Linear(features, spec.num_classes)))
    return out


def build(spec: ModelSpec, seed: int | None = None) -> nn.Sequential:
    """An ``nn.Sequential`` for ``spec``: input ``(N, C, S, S)`` normalised, output logits ``(N, num_classes)``."""
    named = layers(spec)
    if seed is not None:
        # Rebuild under a fixed RNG so the same seed always gives the same initial weights.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            named = layers(spec)
    return nn.Sequential(OrderedDict(named))


def summary(spec: ModelSpec) -> list[LayerInfo]:
    """Per-layer output shapes (without batch) and parameter counts, by running a zero batch through the model."""
    model = build(spec)
    x = torch.zeros(1, spec.in_channels, spec.image_size, spec.image_size)
    rows = [LayerInfo("input", "input", tuple(x.shape[1:]), 0)]
    with torch.no_grad():
        model.eval()
        for name, layer in model.named_children():
            x = layer(x)
            kind = type(layer).__name__
            rows.append(LayerInfo(name, kind, tuple(x.shape[1:]), sum(p.numel() for p in layer.parameters())))
    return rows


def count_params(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
