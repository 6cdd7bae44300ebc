"""Architectures as data: a JSON-friendly :class:`ModelSpec` becomes an ``nn.Sequential`` with readable layer names.

A spec is a list of blocks and a classifier head. A block is a plain conv block (VGG-style stacks are several of
them), a residual block (He et al. 2016) or an Inception block (Szegedy et al. 2015); each is a small dataclass with a
``type`` ("conv", "residual", "inception"), so a spec stays JSON a student can read and edit.

``build(spec)`` names each layer for what it is and which block it belongs to, so the names a student sees in the
app are the names ``print(model)`` shows. Block ``i`` of the spec gives:

- a conv block: ``conv{i}, bn{i}, relu{i}`` (``act{i}`` for another activation) at the top level, as always, so every
  model saved before graph blocks existed still loads;
- a residual block: ``block{i}`` with ``conv1, bn1, relu1, conv2, bn2, shortcut, add, relu`` inside; ``bn2``'s
  output is F(x), ``shortcut``'s is x (or its 1×1 projection: ``shortcut.conv, shortcut.bn``), ``add``'s is
  x + F(x);
- an Inception block: ``inc{i}`` with ``branch1x1, branch3x3, branch5x5, branchpool`` and ``concat`` inside;

and then, for any block, ``pool{i}`` and ``drop{i}`` at the top level. The head is ``gap`` (global average pooling),
``flatten``, ``fc1, relu_fc`` (a hidden dense layer), ``drop_fc`` and ``fc``.

Every spec is checked against the limits below by :func:`check` before anything is built: a spec comes from a table
a student edits or from a file anyone can upload, and one server trains and shows models for a whole class.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from functools import partial
from typing import Callable, ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from cnnviz import text


class SpecError(ValueError):
    """An architecture that cannot work; the message names the layer and the reason."""


ACTIVATIONS = {"relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}
POOLS = ("max", "avg", "none")

# Limits of what one classroom server (2 cores, a few GB shared by ~30 students) builds and trains. The Train page's
# table offers the same ranges. On a 3×32×32 dataset the largest presets have ~0.36 M parameters ("deep"), need
# ~0.39 GiB for a step at the largest batch ("mini-inception") and ~11 M multiply-adds per image ("deep"), so every
# preset passes with room.
MAX_BLOCKS = 24  # "plain-20" has 19 conv blocks; 24 blocks of a spec are still checked in microseconds
MAX_CHANNELS = 256  # of a block's output (an Inception block's branches together)
MAX_KERNEL = 11
MAX_PADDING = 5
MAX_STRIDE = 4
RESIDUAL_STRIDES = (1, 2)  # a residual block keeps its maps' size or halves it, as in ResNet
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

    type: ClassVar[str] = "conv"
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
class ResidualBlock:
    """ReLU(x + F(x)) → (pool) → (dropout), where F is 3×3 conv → batchnorm → ReLU → 3×3 conv → batchnorm (He et al.
    2016, "Deep Residual Learning for Image Recognition"). The shortcut carries x unchanged (identity) when the block
    keeps the channels and the maps' size; otherwise a 1×1 conv with the block's stride and a batchnorm make x the
    shape of F(x) (a projection, the paper's option B). Without ``batchnorm`` the convs have biases instead, and the
    second conv starts at zero, so that each block starts as ReLU(x) and a deep stack of them passes its input and
    its gradient through (the initialisation of Fixup, Zhang et al. 2019; torchvision's ``zero_init_residual`` does
    the same through the last batchnorm). A plain net and a residual one without normalisation show how differently
    the gradient reaches their first layers."""

    type: ClassVar[str] = "residual"
    channels: int
    stride: int = 1  # of the first conv and the projection: 2 halves the maps
    batchnorm: bool = True
    pool: str = "none"
    pool_size: int = 2
    dropout: float = 0.0


@dataclass
class InceptionBlock:
    """Four branches look at the same input, and their maps are stacked (concatenated along channels) → (pool) →
    (dropout) (Szegedy et al. 2015, "Going Deeper with Convolutions", GoogLeNet; field names as torchvision's
    ``Inception``): a 1×1 conv; a 1×1 conv that reduces the channels, then a 3×3 conv; the same with a 5×5 conv; a
    3×3 max pool (stride 1), then a 1×1 conv. Every conv is followed by batchnorm and ReLU. The maps keep their
    size, so the block's output has ``ch1x1 + ch3x3 + ch5x5 + pool_proj`` channels."""

    type: ClassVar[str] = "inception"
    ch1x1: int
    ch3x3red: int
    ch3x3: int
    ch5x5red: int
    ch5x5: int
    pool_proj: int
    pool: str = "none"
    pool_size: int = 2
    dropout: float = 0.0

    @property
    def channels(self) -> int:
        """Channels of the block's output: the branches' together."""
        return self.ch1x1 + self.ch3x3 + self.ch5x5 + self.pool_proj


Block = ConvBlock | ResidualBlock | InceptionBlock
BLOCKS: dict[str, type] = {cls.type: cls for cls in (ConvBlock, ResidualBlock, InceptionBlock)}
BLOCK_TYPES = tuple(BLOCKS)


@dataclass
class ModelSpec:
    """A small CNN: input shape, blocks and a classifier head."""

    in_channels: int
    image_size: int
    num_classes: int
    blocks: list[Block] = field(default_factory=list)
    hidden: int = 0  # units of an extra fully connected layer before the output; 0 = none
    head_dropout: float = 0.0
    global_pool: bool = False  # average each last feature map to one number before the head (keeps fc small)

    def to_dict(self) -> dict:
        """Plain data for JSON and checkpoints; each block says its ``type``."""
        return {**asdict(self), "blocks": [{"type": b.type, **asdict(b)} for b in self.blocks]}

    @classmethod
    def from_dict(cls, d: object) -> "ModelSpec":
        """A checked spec from plain data (JSON, a checkpoint); :class:`SpecError` names the first field that is
        unknown, missing, of the wrong type or beyond the limits. A block without a ``type`` is a conv block (files
        from before graph blocks)."""
        if not isinstance(d, dict):
            raise SpecError(f"a model spec must be a mapping of fields, got {text.brief(d)}")
        blocks = d.get("blocks", [])
        if not isinstance(blocks, list):
            raise SpecError(f"'blocks' must be a list of blocks, got {text.brief(blocks)}")
        if len(blocks) > MAX_BLOCKS:  # before looking at each one: the list may be long
            raise SpecError(f"a model may have at most {MAX_BLOCKS} blocks, got {len(blocks)}")
        spec = cls(**_values(cls, {k: v for k, v in d.items() if k != "blocks"}, _SPEC_RULES, ""),
                   blocks=[_block_from_dict(b, i) for i, b in enumerate(blocks, start=1)])
        check(spec)
        return spec


@dataclass(frozen=True)
class LayerInfo:
    """One row of the architecture table: a layer (a leaf module) by its module path, in the order layers run."""

    name: str  # "conv1", "block2.conv1", "inc3.branch3x3.conv2"
    kind: str  # the module's class name
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


_AFTER_RULES = {  # what follows any block
    "pool": _Rule(str, options=POOLS),
    "pool_size": _Rule(int, *POOL_SIZES),
    "dropout": _Rule(float, 0, 1, below_high=True),
}
_CHANNELS = _Rule(int, 1, MAX_CHANNELS)
_BLOCK_RULES = {
    "channels": _CHANNELS,
    "kernel": _Rule(int, 1, MAX_KERNEL),
    "padding": _Rule(int, 0, MAX_PADDING),
    "stride": _Rule(int, 1, MAX_STRIDE),
    "activation": _Rule(str, options=tuple(ACTIVATIONS)),
    "pool": _AFTER_RULES["pool"],
    "pool_size": _AFTER_RULES["pool_size"],
    "batchnorm": _Rule(bool),
    "dropout": _AFTER_RULES["dropout"],
}
_RULES: dict[type, dict[str, _Rule]] = {
    ConvBlock: _BLOCK_RULES,
    ResidualBlock: {"channels": _CHANNELS, "stride": _Rule(int, options=RESIDUAL_STRIDES), "batchnorm": _Rule(bool),
                    **_AFTER_RULES},
    InceptionBlock: {**{name: _CHANNELS for name in ("ch1x1", "ch3x3red", "ch3x3", "ch5x5red", "ch5x5",
                                                      "pool_proj")}, **_AFTER_RULES},
}
BLOCK_COLUMNS = ("type", *dict.fromkeys(name for rules in _RULES.values() for name in rules))  # of a table of blocks
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


def _block_type(kind: object, where: str) -> type:
    if type(kind) is not str or kind not in BLOCKS:
        raise SpecError(f"{where}'type' must be {' or '.join(map(repr, BLOCKS))}, got {text.brief(kind)}")
    return BLOCKS[kind]


def _block_from_dict(d: object, number: int) -> Block:
    where = f"block {number}: "
    if not isinstance(d, dict):
        raise SpecError(f"{where}expected a mapping of fields, got {text.brief(d)}")
    cls = _block_type(d.get("type", "conv"), where)  # no type: a conv block, as every file before graph blocks
    return cls(**_values(cls, {k: v for k, v in d.items() if k != "type"}, _RULES[cls], where))


def _check_block(b: object, number: int) -> None:
    rules = _RULES.get(type(b))
    if rules is None:
        raise SpecError(f"block {number}: expected a conv, residual or inception block, got {text.brief(b)}")
    for name, rule in rules.items():
        _require(rule, getattr(b, name), f"block {number}: '{name}'")
    if isinstance(b, InceptionBlock) and b.channels > MAX_CHANNELS:
        raise SpecError(f"block {number}: the Inception block's branches give {b.channels} channels together; "
                        f"the limit is {MAX_CHANNELS}")


def block_from_row(row: object, number: int) -> Block:
    """A checked block from a table row (cells may be numpy scalars, and whole numbers may come as floats); raise
    :class:`SpecError` naming the row and the field that is empty, unknown or wrong.

    The row's ``type`` column (none: "conv") says which fields it needs; a table of several block types has a column
    for every field, and the cells of the fields another type has are ignored."""
    if not isinstance(row, dict):
        raise SpecError(f"block {number}: expected a row of values, got {text.brief(row)}")
    for k in row:
        if k not in BLOCK_COLUMNS:
            raise SpecError(f"block {number}: unknown column {text.brief(k)}")
    cls = _block_type(_cell(row.get("type", "conv")), f"block {number}: ")
    values = {}
    for name, rule in _RULES[cls].items():
        v = _cell(row.get(name))
        if v is None or (type(v) is float and math.isnan(v)):
            raise SpecError(f"block {number}: '{name}' is empty")
        if rule.kind is int and type(v) is float and v.is_integer():  # a number column with an empty cell is float
            v = int(v)
        values[name] = v
    block = cls(**values)
    _check_block(block, number)
    return block


def block_rows(blocks: list[Block]) -> list[dict]:
    """The blocks as table rows: ``type`` and a column for every field of the types present (None where a block's
    type has no such field), the inverse of :func:`block_from_row`. A table that lets a student add a block of any
    type has all of :data:`BLOCK_COLUMNS`."""
    columns = [c for c in BLOCK_COLUMNS if c == "type" or any(c in _RULES[type(b)] for b in blocks)]
    return [{c: b.type if c == "type" else getattr(b, c) if c in _RULES[type(b)] else None for c in columns}
            for b in blocks]


def _cell(v: object) -> object:
    """A table cell as a plain value; pandas' missing values (NA, NaT) as None."""
    if type(v).__module__ == "numpy":  # pandas hands cells over as numpy scalars
        v = v.item()
    return None if type(v).__name__ in ("NAType", "NaTType") else v


# --- the modules of graph blocks -----------------------------------------------------------------------------------

class Add(nn.Module):
    """The sum of a residual connection, ``x + F(x)``, both (N, C, H, W): a module of its own so that hooks (the
    probe, Grad-CAM) see the sum."""

    def forward(self, x: Tensor, fx: Tensor) -> Tensor:
        return x + fx


class Concat(nn.Module):
    """Branch outputs (N, C_k, H, W) stacked along channels: (N, sum of C_k, H, W)."""

    def forward(self, *maps: Tensor) -> Tensor:
        return torch.cat(maps, dim=1)


class Residual(nn.Module):
    """A residual block (see :class:`ResidualBlock`): (N, C_in, H, W) → (N, C, H', W'), H' = ceil(H / stride).

    Layers: ``conv1, bn1, relu1, conv2, bn2, shortcut, add, relu``, in the order they run; without batchnorm there
    is no ``bn1``, ``bn2`` or ``shortcut.bn``. F(x) is the output of ``bn2`` (``conv2`` without batchnorm)."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1, batchnorm: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=not batchnorm)
        self.bn1 = nn.BatchNorm2d(channels) if batchnorm else None
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=not batchnorm)
        self.bn2 = nn.BatchNorm2d(channels) if batchnorm else None
        if in_channels == channels and stride == 1:
            self.shortcut: nn.Module = nn.Identity()
        else:
            projection = [("conv", nn.Conv2d(in_channels, channels, 1, stride, bias=not batchnorm))]
            self.shortcut = nn.Sequential(OrderedDict(projection + ([("bn", nn.BatchNorm2d(channels))]
                                                                    if batchnorm else [])))
        self.add = Add()
        self.relu = nn.ReLU()
        if not batchnorm:  # nothing rescales F(x): start each block as the identity (see ResidualBlock)
            nn.init.zeros_(self.conv2.weight)
            nn.init.zeros_(self.conv2.bias)

    def forward(self, x: Tensor) -> Tensor:
        fx = self.conv1(x)
        if self.bn1 is not None:
            fx = self.bn1(fx)
        fx = self.conv2(self.relu1(fx))
        if self.bn2 is not None:
            fx = self.bn2(fx)  # F(x)
        # The shortcut runs after F, so the layers run in the order they are listed (and probed).
        return self.relu(self.add(self.shortcut(x), fx))


def _conv_bn_relu(in_channels: int, channels: int, kernel: int, n: int = 1) -> list[tuple[str, nn.Module]]:
    return [(f"conv{n}", nn.Conv2d(in_channels, channels, kernel, padding=kernel // 2, bias=False)),
            (f"bn{n}", nn.BatchNorm2d(channels)), (f"relu{n}", nn.ReLU())]


class Inception(nn.Module):
    """An Inception block (see :class:`InceptionBlock`): (N, C_in, H, W) → (N, ch1x1 + ch3x3 + ch5x5 + pool_proj,
    H, W). Inside each branch the layers are ``conv1, bn1, relu1`` (and ``conv2, bn2, relu2`` after a reduce)."""

    def __init__(self, in_channels: int, ch1x1: int, ch3x3red: int, ch3x3: int, ch5x5red: int, ch5x5: int,
                 pool_proj: int) -> None:
        super().__init__()
        self.branch1x1 = nn.Sequential(OrderedDict(_conv_bn_relu(in_channels, ch1x1, 1)))
        self.branch3x3 = nn.Sequential(OrderedDict(_conv_bn_relu(in_channels, ch3x3red, 1)
                                                   + _conv_bn_relu(ch3x3red, ch3x3, 3, 2)))
        self.branch5x5 = nn.Sequential(OrderedDict(_conv_bn_relu(in_channels, ch5x5red, 1)
                                                   + _conv_bn_relu(ch5x5red, ch5x5, 5, 2)))
        self.branchpool = nn.Sequential(OrderedDict([("pool", nn.MaxPool2d(3, stride=1, padding=1)),
                                                     *_conv_bn_relu(in_channels, pool_proj, 1)]))
        self.concat = Concat()

    def forward(self, x: Tensor) -> Tensor:
        return self.concat(self.branch1x1(x), self.branch3x3(x), self.branch5x5(x), self.branchpool(x))


# --- presets -------------------------------------------------------------------------------------------------------

def _plain_and_residual(residual: bool) -> list[Block]:
    """A stem (3×3 conv, 2×2 max pool) and three stages of three two-conv units at 8/16/32 channels (the second and
    third halve the maps): 19 convolutions and the classifier, the CIFAR ResNet-20 of He et al. (2016) at half its
    width, with a pooled stem so that it trains in about a minute on a CPU. Plain: the same convolutions without the
    shortcuts. Both with batchnorm, as in the paper's comparison. (Measured on 5,000 shapes images, 160 steps of 64:
    with :func:`without_batchnorm` the plain net's first conv gets 4e-8 of its last conv's gradient and it stays at
    chance, 11.6 %, while the residual one's gets 0.89 and it reaches 29.6 %: the residual lesson's second choice.)"""
    blocks: list[Block] = [ConvBlock(8, batchnorm=True)]
    for stage, channels in enumerate((8, 16, 32)):
        for unit in range(3):
            stride = 2 if stage > 0 and unit == 0 else 1
            if residual:
                blocks.append(ResidualBlock(channels, stride=stride))
            else:
                blocks += [ConvBlock(channels, stride=stride, pool="none", batchnorm=True),
                           ConvBlock(channels, pool="none", batchnorm=True)]
    return blocks


# Presets take the dataset's input shape and class count; the blocks are what distinguishes them.
PRESETS: dict[str, dict] = {
    "gap": dict(
        description="Four conv layers, one pooling, then global average pooling (GAP) instead of a dense layer, as "
                    "in CAM (Zhou et al. 2016): Grad-CAM points right at the object. The default for shapes.",
        blocks=[ConvBlock(16, batchnorm=True), ConvBlock(24, batchnorm=True, pool="none"),
                ConvBlock(32, batchnorm=True, pool="none"), ConvBlock(48, batchnorm=True, pool="none", dropout=0.2)],
        global_pool=True,
    ),
    "photos": dict(
        description="Three conv blocks of 16/32/64 channels with batchnorm, then global average pooling: the "
                    "default for your own photos.",
        blocks=[ConvBlock(16, batchnorm=True), ConvBlock(32, batchnorm=True), ConvBlock(64, batchnorm=True)],
        global_pool=True,
    ),
    "parts": dict(
        description="Four conv blocks of 8/16/32/64 channels with batchnorm and 2×2 pooling, then global average "
                    "pooling: the last block sees whole objects. The default for parts.",
        blocks=[ConvBlock(8, batchnorm=True), ConvBlock(16, batchnorm=True), ConvBlock(32, batchnorm=True),
                ConvBlock(64, batchnorm=True)],
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
    "mini-vgg": dict(
        description="VGG in small (Simonyan & Zisserman 2015): stages of two 3×3 convolutions and a 2×2 max pool, "
                    "16 then 32 channels, and a dense layer. Two 3×3 convolutions see as far as one 5×5 with fewer "
                    "weights.",
        blocks=[ConvBlock(16, batchnorm=True, pool="none"), ConvBlock(16, batchnorm=True),
                ConvBlock(32, batchnorm=True, pool="none"), ConvBlock(32, batchnorm=True)],
        hidden=64,
        head_dropout=0.25,
    ),
    "mini-resnet": dict(
        description="ResNet in small (He et al. 2016): a conv stem, then two residual blocks that add what their "
                    "two 3×3 convolutions compute, F(x), to their input x (the second through a 1×1 projection to "
                    "32 channels); global average pooling into the classifier.",
        blocks=[ConvBlock(16, batchnorm=True), ResidualBlock(16), ResidualBlock(32, dropout=0.2)],
        global_pool=True,
    ),
    "mini-inception": dict(
        description="Inception in small (Szegedy et al. 2015, GoogLeNet): a conv stem, then blocks that look with "
                    "1×1, 3×3 and 5×5 convolutions and a pooling at once and stack what each branch finds; global "
                    "average pooling into the classifier.",
        blocks=[ConvBlock(16, batchnorm=True),
                InceptionBlock(8, 8, 16, 4, 8, 8),
                InceptionBlock(12, 12, 24, 4, 12, 8, dropout=0.2)],
        global_pool=True,
    ),
    "plain-20": dict(
        description="A deep plain net: 19 conv layers (8/16/32 channels, batchnorm) and the classifier, with no "
                    "shortcuts. The same as resnet-20 without its skips, to see why residual connections matter.",
        blocks=_plain_and_residual(residual=False),
        global_pool=True,
    ),
    "resnet-20": dict(
        description="The same 19 conv layers as plain-20, in residual blocks: every two layers a shortcut carries "
                    "the input past them and adds it back (He et al. 2016's ResNet-20 for CIFAR, at half width).",
        blocks=_plain_and_residual(residual=True),
        global_pool=True,
    ),
}


def without_batchnorm(spec: ModelSpec) -> ModelSpec:
    """``spec`` with no batchnorm in its conv and residual blocks (Inception blocks always normalise)."""
    return replace(spec, blocks=[replace(b, batchnorm=False) if hasattr(b, "batchnorm") else b for b in spec.blocks])


def preset(name: str, in_channels: int, image_size: int, num_classes: int) -> ModelSpec:
    """The spec of a named preset for a dataset's input shape ``(in_channels, image_size, image_size)``."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    p = PRESETS[name]
    blocks = [type(b)(**asdict(b)) for b in p["blocks"]]  # copies: callers may edit them
    return ModelSpec(in_channels, image_size, num_classes, blocks, p.get("hidden", 0), p.get("head_dropout", 0.0),
                     p.get("global_pool", False))


# --- the plan: every layer's shape, parameters and cost, from the numbers alone -------------------------------------

class _Part(NamedTuple):
    """One top-level module: its name, how to make it, its layers in the order they run, its multiply-adds."""

    name: str
    make: Callable[[], nn.Module]
    rows: tuple[LayerInfo, ...]
    macs: int


def _conv_row(name: str, c_in: int, c_out: int, kernel: int, s_out: int, bias: bool) -> tuple[LayerInfo, int]:
    """A conv layer's row and multiply-adds: each of its c_out × s_out² outputs sums c_in × kernel² products."""
    weights = c_in * c_out * kernel ** 2
    return LayerInfo(name, "Conv2d", (c_out, s_out, s_out), weights + (c_out if bias else 0)), weights * s_out ** 2


def _conv_bn_relu_rows(prefix: str, c_in: int, c_out: int, kernel: int, s: int, n: int = 1
                       ) -> tuple[list[LayerInfo], int]:
    conv, macs = _conv_row(f"{prefix}conv{n}", c_in, c_out, kernel, s, bias=False)
    return [conv, LayerInfo(f"{prefix}bn{n}", "BatchNorm2d", conv.output_shape, 2 * c_out),
            LayerInfo(f"{prefix}relu{n}", "ReLU", conv.output_shape, 0)], macs


def _residual_part(b: ResidualBlock, i: int, c: int, s: int) -> _Part:
    p, ch, s_out, bn = f"block{i}.", b.channels, (s - 1) // b.stride + 1, b.batchnorm
    shape = (ch, s_out, s_out)

    def norm(name: str) -> list[LayerInfo]:
        return [LayerInfo(p + name, "BatchNorm2d", shape, 2 * ch)] if bn else []

    conv1, macs1 = _conv_row(p + "conv1", c, ch, 3, s_out, bias=not bn)
    conv2, macs2 = _conv_row(p + "conv2", ch, ch, 3, s_out, bias=not bn)
    rows = [conv1, *norm("bn1"), LayerInfo(p + "relu1", "ReLU", shape, 0), conv2, *norm("bn2")]
    if c == ch and b.stride == 1:
        rows.append(LayerInfo(p + "shortcut", "Identity", shape, 0))
        macs_shortcut = 0
    else:
        projection, macs_shortcut = _conv_row(p + "shortcut.conv", c, ch, 1, s_out, bias=not bn)
        rows += [projection, *norm("shortcut.bn")]
    rows += [LayerInfo(p + "add", "Add", shape, 0), LayerInfo(p + "relu", "ReLU", shape, 0)]
    return _Part(f"block{i}", partial(Residual, c, ch, b.stride, bn), tuple(rows), macs1 + macs2 + macs_shortcut)


def _inception_part(b: InceptionBlock, i: int, c: int, s: int) -> _Part:
    p = f"inc{i}."
    rows: list[LayerInfo] = []
    macs = 0
    for branch, steps in (("branch1x1", [(b.ch1x1, 1)]), ("branch3x3", [(b.ch3x3red, 1), (b.ch3x3, 3)]),
                          ("branch5x5", [(b.ch5x5red, 1), (b.ch5x5, 5)]), ("branchpool", [(b.pool_proj, 1)])):
        c_in = c
        if branch == "branchpool":
            rows.append(LayerInfo(f"{p}{branch}.pool", "MaxPool2d", (c, s, s), 0))
        for n, (channels, kernel) in enumerate(steps, start=1):
            more, m = _conv_bn_relu_rows(f"{p}{branch}.", c_in, channels, kernel, s, n)
            rows += more
            macs += m
            c_in = channels
    rows.append(LayerInfo(p + "concat", "Concat", (b.channels, s, s), 0))
    return _Part(f"inc{i}", partial(Inception, c, b.ch1x1, b.ch3x3red, b.ch3x3, b.ch5x5red, b.ch5x5, b.pool_proj),
                 tuple(rows), macs)


def _plan(spec: ModelSpec) -> tuple[list[_Part], SpecCost]:
    """Each top-level module of ``spec`` (its layers' rows of the architecture table and how to make it) and the
    spec's cost, worked out from the numbers alone: nothing is built, so a spec beyond the limits costs nothing to
    refuse."""
    if not isinstance(spec, ModelSpec):
        raise SpecError(f"expected a model spec, got {text.brief(spec)}")
    for name, rule in _SPEC_RULES.items():
        _require(rule, getattr(spec, name), f"'{name}'")
    if not isinstance(spec.blocks, list):
        raise SpecError(f"'blocks' must be a list of blocks, got {text.brief(spec.blocks)}")
    if not spec.blocks:
        raise SpecError("a CNN needs at least one block; add a row to the table")
    if len(spec.blocks) > MAX_BLOCKS:
        raise SpecError(f"a model may have at most {MAX_BLOCKS} blocks, got {len(spec.blocks)}")
    for i, b in enumerate(spec.blocks, start=1):
        _check_block(b, i)

    parts: list[_Part] = []

    def add(name: str, make: partial, shape: tuple[int, ...], params: int = 0, macs: int = 0) -> None:
        parts.append(_Part(name, make, (LayerInfo(name, make.func.__name__, shape, params),), macs))

    c, s = spec.in_channels, spec.image_size
    for i, b in enumerate(spec.blocks, start=1):
        if isinstance(b, ConvBlock):
            s_conv = (s + 2 * b.padding - b.kernel) // b.stride + 1
            if s_conv < 1:
                raise SpecError(
                    f"conv{i}: a {b.kernel}×{b.kernel} kernel does not fit the {s}×{s} maps it gets "
                    f"(padding {b.padding}); use a smaller kernel, more padding or fewer pooling layers before it"
                )
            row, macs = _conv_row(f"conv{i}", c, b.channels, b.kernel, s_conv, bias=not b.batchnorm)
            parts.append(_Part(row.name, partial(nn.Conv2d, c, b.channels, b.kernel, b.stride, b.padding,
                                                 bias=not b.batchnorm), (row,), macs))
            c, s = b.channels, s_conv
            if b.batchnorm:
                add(f"bn{i}", partial(nn.BatchNorm2d, c), (c, s, s), 2 * c)
            add(f"{'relu' if b.activation == 'relu' else 'act'}{i}", partial(ACTIVATIONS[b.activation]), (c, s, s))
        else:
            part = (_residual_part if isinstance(b, ResidualBlock) else _inception_part)(b, i, c, s)
            parts.append(part)
            c, s = part.rows[-1].output_shape[:2]
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

    rows = [row for part in parts for row in part.rows]
    params = sum(row.params for row in rows)
    if params > MAX_PARAMS:
        raise SpecError(f"this model would have {params:,} parameters; the limit is {MAX_PARAMS:,} (use fewer "
                        f"channels or hidden units, or pool more before the dense layers)")
    values = spec.in_channels * spec.image_size ** 2 + sum(math.prod(row.output_shape) for row in rows)
    train_bytes = 2 * 4 * TRAIN_BATCH * values + 16 * params
    if train_bytes > MAX_TRAIN_BYTES:
        raise SpecError(f"one training step on {TRAIN_BATCH} images would need about {train_bytes / 2**30:.1f} GB "
                        f"of memory; the limit is {MAX_TRAIN_BYTES / 2**30:g} GB (use fewer channels, a larger "
                        f"stride or pooling earlier)")
    macs = sum(part.macs for part in parts)
    if macs > MAX_MACS:
        raise SpecError(f"one image would take {macs / 1e6:,.0f} million multiply-adds; the limit is "
                        f"{MAX_MACS / 1e6:,.0f} million (use fewer channels, smaller kernels or pooling earlier)")
    return parts, SpecCost(params, train_bytes, macs)


def check(spec: ModelSpec) -> SpecCost:
    """Check every field's type and range and the layers' shapes against the limits above, and return what the
    model would cost; raise :class:`SpecError` naming the field or layer, what was expected and what was got."""
    return _plan(spec)[1]


def layers(spec: ModelSpec) -> list[tuple[str, nn.Module]]:
    """The named top-level modules of ``spec`` in order (a graph block is one, with its layers inside), made only
    once :func:`check` has passed."""
    return [(part.name, part.make()) for part in _plan(spec)[0]]


def build(spec: ModelSpec, seed: int | None = None) -> nn.Sequential:
    """An ``nn.Sequential`` for ``spec``: input ``(N, C, S, S)`` normalised, output logits ``(N, num_classes)``."""
    if seed is None:
        return nn.Sequential(OrderedDict(layers(spec)))
    # Under a fixed RNG so the same seed always gives the same initial weights.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(OrderedDict(layers(spec)))


def summary(spec: ModelSpec) -> list[LayerInfo]:
    """Every layer's output shape (without batch) and parameter count, computed from the spec (nothing is built),
    in the order the layers run; a graph block's layers by module path (``block2.conv1``, ``inc3.concat``)."""
    parts = _plan(spec)[0]
    return [LayerInfo("input", "input", (spec.in_channels, spec.image_size, spec.image_size), 0),
            *(row for part in parts for row in part.rows)]


def count_params(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
