"""The architecture as a diagram: blocks, branches and skip connections, each with its output shape and parameters.

:func:`graph` works from the spec alone (through :func:`cnnviz.models.summary`, so nothing is built and a spec the
limits refuse raises the same :class:`cnnviz.models.SpecError`); :func:`figure` draws it top to bottom with
matplotlib, in the style of :mod:`cnnviz.figures`. A node stands for one or more of the model's layers (``layers``,
module paths), so its shape and parameters are those of the built model.
"""

from __future__ import annotations

from dataclasses import dataclass

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

from cnnviz import text
from cnnviz.figures import FONT, TITLE_FONT
from cnnviz.models import ConvBlock, InceptionBlock, LayerInfo, ModelSpec, ResidualBlock, summary

KINDS = ("input", "conv", "residual", "shortcut", "add", "branch", "concat", "pool", "head")


@dataclass(frozen=True)
class Node:
    """One box of the diagram."""

    id: str  # "conv1", "block2" (F(x)), "block2.shortcut", "block2.add", "inc3.branch3x3", "inc3.concat", "fc"
    kind: str  # one of KINDS
    label: str  # what it does, in short: "3×3 conv, 16 · bn · relu · max pool 2×2"
    shape: tuple[int, ...]  # its output, without the batch dim: (C, H, W) or (features,)
    params: int
    layers: tuple[str, ...]  # the model's layers it stands for, in the order they run
    level: int  # 0 for the input, growing along the flow; a block's side paths share its level
    lane: int  # 0 on the main path; a shortcut 1; an Inception block's branches 0, 1, 2, 3


@dataclass(frozen=True)
class Edge:
    """Data flowing from one node's output into another node."""

    source: str
    target: str
    skip: bool = False  # a residual shortcut, carrying x past the convolutions


@dataclass(frozen=True)
class Graph:
    nodes: tuple[Node, ...]  # in the order they run
    edges: tuple[Edge, ...]

    def node(self, id: str) -> Node:
        return next(n for n in self.nodes if n.id == id)


def graph(spec: ModelSpec) -> Graph:
    """The nodes and edges of ``spec``'s architecture, from the spec alone."""
    rows = {r.name: r for r in summary(spec)}
    nodes: list[Node] = []
    edges: list[Edge] = []
    last = "input"

    def add(id: str, kind: str, label: str, layers: list[str], level: int, lane: int = 0,
            inputs: tuple[str, ...] = (), skip: bool = False) -> str:
        layers = [n for n in layers if n in rows]
        nodes.append(Node(id, kind, label, rows[layers[-1]].output_shape, sum(rows[n].params for n in layers),
                          tuple(layers), level, lane))
        edges.extend(Edge(source, id, skip) for source in inputs)
        return id

    nodes.append(Node("input", "input", "the image", rows["input"].output_shape, 0, (), 0, 0))
    level = 1
    for i, b in enumerate(spec.blocks, start=1):
        if isinstance(b, ConvBlock):
            act = "relu" if b.activation == "relu" else "act"
            last = add(f"conv{i}", "conv", _conv_label(b), [f"conv{i}", f"bn{i}", f"{act}{i}", f"pool{i}",
                                                              f"drop{i}"], level, inputs=(last,))
            level += 1
            continue
        if isinstance(b, ResidualBlock):
            p = f"block{i}"
            norm = " · bn" if b.batchnorm else ""
            stride = f", stride {b.stride}" if b.stride > 1 else ""
            fx = add(p, "residual", f"3×3 conv, {b.channels}{stride}{norm} · relu · 3×3 conv, "
                                    f"{b.channels}{norm}", [f"{p}.{n}" for n in ("conv1", "bn1", "relu1", "conv2",
                                                                                 "bn2")], level, inputs=(last,))
            projection = f"{p}.shortcut.conv" in rows
            shortcut = add(f"{p}.shortcut", "shortcut",
                           f"1×1 conv, {b.channels}{stride}{norm}" if projection else "identity: x as it is",
                           [f"{p}.shortcut", f"{p}.shortcut.conv", f"{p}.shortcut.bn"], level, lane=1,
                           inputs=(last,), skip=True)
            last = add(f"{p}.add", "add", "x + F(x) · relu", [f"{p}.add", f"{p}.relu"], level + 1, inputs=(fx,))
            edges.append(Edge(shortcut, last, skip=True))
        else:
            p = f"inc{i}"
            branches = [
                add(f"{p}.{name}", "branch", label, _under(rows, f"{p}.{name}"), level, lane=lane, inputs=(last,))
                for lane, (name, label) in enumerate(_branch_labels(b))]
            last = add(f"{p}.concat", "concat", f"stack the {len(branches)} branches' maps", [f"{p}.concat"],
                       level + 1, inputs=tuple(branches))
        level += 2
        if b.pool != "none" or b.dropout > 0:
            last = add(f"pool{i}" if b.pool != "none" else f"drop{i}", "pool", _after_label(b),
                       [f"pool{i}", f"drop{i}"], level, inputs=(last,))
            level += 1
    if spec.global_pool:
        last = add("gap", "pool", "global average pool: one number per map", ["gap"], level, inputs=(last,))
        level += 1
    if spec.hidden:
        last = add("fc1", "head", f"flatten → dense, {spec.hidden} · relu", ["flatten", "fc1", "relu_fc"], level,
                   inputs=(last,))
        level += 1
    into = ("" if spec.hidden else "flatten → ") + (f"dropout {spec.head_dropout:g} → " if spec.head_dropout else "")
    add("fc", "head", f"{into}dense, {spec.num_classes}: one score per class", ["flatten", "drop_fc", "fc"]
        if not spec.hidden else ["drop_fc", "fc"], level, inputs=(last,))
    return Graph(tuple(nodes), tuple(edges))


def _under(rows: dict[str, LayerInfo], path: str) -> list[str]:
    return [n for n in rows if n.startswith(f"{path}.")]


def _conv_label(b: ConvBlock) -> str:
    parts = [f"{b.kernel}×{b.kernel} conv, {b.channels}" + (f", stride {b.stride}" if b.stride > 1 else "")
             + (f", padding {b.padding}" if b.padding != b.kernel // 2 else "")]
    parts += ["bn"] * b.batchnorm + [b.activation.replace("_", " ")]
    return " · ".join(parts + ([_after_label(b)] if b.pool != "none" or b.dropout > 0 else []))


def _after_label(b: ConvBlock | ResidualBlock | InceptionBlock) -> str:
    parts = [f"{b.pool} pool {b.pool_size}×{b.pool_size}"] * (b.pool != "none")
    return " · ".join(parts + [f"dropout {b.dropout:g}"] * (b.dropout > 0))


def _branch_labels(b: InceptionBlock) -> list[tuple[str, str]]:
    return [("branch1x1", f"1×1 conv, {b.ch1x1}"), ("branch3x3", f"1×1 conv, {b.ch3x3red} → 3×3 conv, {b.ch3x3}"),
            ("branch5x5", f"1×1 conv, {b.ch5x5red} → 5×5 conv, {b.ch5x5}"),
            ("branchpool", f"3×3 max pool → 1×1 conv, {b.pool_proj}")]


# --- drawing -------------------------------------------------------------------------------------------------------

WIDTH = 8.0  # inches: Streamlit scales a figure to the page, so a narrow one keeps its letters readable
LEVEL_IN = 1.0  # inches from one level to the next
BOX_IN = 0.74  # height of a box: three lines of FONT-sized text
_MAIN = (3.2, 4.8)  # centre and width of a main-path box
_SHORTCUT = (6.85, 2.1)
_BRANCH_W, _BRANCH_GAP = 1.9, 0.08
_COLOURS = {"input": "#eeeeee", "conv": "#d6e6f5", "residual": "#d6e6f5", "shortcut": "#fde3c8", "add": "#fde3c8",
            "branch": "#dcefd9", "concat": "#dcefd9", "pool": "#eeeeee", "head": "#e8dff0"}
SKIP_COLOUR = "#e6730f"


def _box(node: Node, n_branches: int) -> tuple[float, float]:
    """Centre and width of a node's box, in inches from the left."""
    if node.kind == "branch":
        row = n_branches * _BRANCH_W + (n_branches - 1) * _BRANCH_GAP
        left = (WIDTH - row) / 2
        return left + _BRANCH_W / 2 + node.lane * (_BRANCH_W + _BRANCH_GAP), _BRANCH_W
    return _SHORTCUT if node.lane else _MAIN


def _shape(shape: tuple[int, ...]) -> str:
    return "×".join(map(str, shape))


def figure(g: Graph, *, title: str = "") -> Figure:
    """``g`` drawn top to bottom: one box per node with its name, what it does, its output shape and parameters;
    arrows for the data flow, dashed orange ones for the shortcuts of residual blocks."""
    levels = max(n.level for n in g.nodes) + 1
    top = 0.45 if title else 0.1
    height = top + levels * LEVEL_IN
    fig = Figure(figsize=(WIDTH, height))
    FigureCanvasAgg(fig)  # its own Agg canvas: drawing never goes through pyplot's global backend
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, WIDTH)
    ax.set_ylim(height, 0)
    ax.axis("off")
    if title:
        ax.text(WIDTH / 2, 0.25, text.mpl(title), ha="center", va="center", fontsize=TITLE_FONT)
    branches = {}
    for n in g.nodes:
        if n.kind == "branch":
            block = n.id.partition(".")[0]
            branches[block] = branches.get(block, 0) + 1
    where = {}
    for n in g.nodes:
        x, w = _box(n, branches.get(n.id.partition(".")[0], 0))
        y = top + n.level * LEVEL_IN + (LEVEL_IN - BOX_IN) / 2
        where[n.id] = (x, y, w)
        ax.add_patch(FancyBboxPatch((x - w / 2, y), w, BOX_IN, boxstyle="round,pad=0,rounding_size=0.08",
                                    facecolor=_COLOURS[n.kind], edgecolor="#555555", linewidth=0.8))
        name = n.id + (" · F(x)" if n.kind == "residual" else "")
        size = FONT if n.kind != "branch" else FONT - 1  # four branches side by side: a point smaller, still legible
        params = f"{n.params:,} parameters" if n.kind != "branch" else f"{n.params:,} params"
        ax.text(x, y + BOX_IN / 2, f"{name}\n{n.label}\n{_shape(n.shape)} · {params}", ha="center", va="center",
                fontsize=size, linespacing=1.3)
    for e in g.edges:
        (x0, y0, _), (x1, y1, _) = where[e.source], where[e.target]
        ax.add_patch(FancyArrowPatch((x0, y0 + BOX_IN), (x1, y1), arrowstyle="-|>", mutation_scale=10,
                                     color=SKIP_COLOUR if e.skip else "#333333", linewidth=1.2,
                                     linestyle="--" if e.skip else "-", shrinkA=1, shrinkB=1))
    return fig
