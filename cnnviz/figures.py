"""Tensors → labelled figures: matplotlib for static pictures (filter grids, pooling, overlays); charts are in
charts.py, and the feature-map grid every upload redraws is drawn straight into pixels in pictures.py.

Matplotlib is used only through its object API (a ``Figure`` on its own Agg canvas), never ``pyplot``: pyplot keeps
global state, and Streamlit serves every session from threads of one process. Letters are at least 10 pt so a
figure can be read on a classroom projector. Grids are one ``imshow`` of a ``torchvision.utils.make_grid`` mosaic
plus text labels, so a layer with hundreds of channels draws as fast as one with four.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
import matplotlib
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.collections import PatchCollection
from matplotlib.colors import Colormap, Normalize
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.patches import Rectangle
from PIL import Image
from torch import Tensor
from torchvision.utils import make_grid

from cnnviz import text
from cnnviz.data import DatasetInfo, denormalize
from cnnviz.probe import PoolPair

# Titles and labels carry outside text (class names from a file, upload names): a "$" in them is a dollar sign,
# never the start of mathematics (which would also raise on unbalanced dollars).
matplotlib.rcParams["text.parse_math"] = False

FONT = 10  # the smallest letters we draw, in points
TITLE_FONT = 13
LINE_IN = 0.22  # height of one line of FONT-sized text, in inches, with a little air
PAD_PX = 1  # gap between the tiles of a mosaic, in pixels of the tiles
NUMBERS_UP_TO = 7  # filter_image writes the weights into kernels up to this size
MAX_KERNEL_PANELS = 8  # filter_image shows this many input channels of a filter at most
DIVERGING = "RdBu_r"  # red = positive, blue = negative, white = 0
CHAR_IN = 0.085  # width of one FONT-sized letter, in inches, generously (DejaVu Sans averages ~0.08)
# zlib's fastest level: a 64-map grid of ResNet-18's conv1 took 350 ms to compress at PNG's default (6) and 60 ms at
# 1, for a file 24 % bigger (877 against 707 kB), on a server that draws for a whole class.
PNG_LEVEL = 1
MAX_ENLARGED = 480  # web_image enlarges a small image until its longer side would pass this many pixels
NAME_CHARS = 28  # a class name longer than this is cut, with "…", where a figure gives names a fixed space
BAR_COLOUR = "#1f77b4"  # the bars of channel_bars (mean) and topk_bars


def filter_grid(weights: Tensor, *, title: str = "", rgb: bool | None = None,
                channels: Sequence[int] | None = None) -> Figure:
    """Conv filters ``(O, I, kh, kw)``: in colour for RGB inputs, else each filter's mean over its inputs.

    ``channels`` gives each tile's filter number when ``weights`` is a selection (a page of a big layer).

    RGB (``I == 3`` unless ``rgb=False``): each filter is scaled symmetrically by its own largest ``|weight|`` so
    that 0 is grey, and a colour means the filter responds to that colour. Other layers: the mean over the input
    channels on one diverging scale centred on 0 (red positive, blue negative), with a "weight" colour bar.
    """
    weights = _as_float(weights, "(O, I, kh, kw)", 4)
    o, i, kh, kw = weights.shape
    numbers = _numbers(channels, o)
    if rgb is None:
        rgb = i == 3
    elif rgb and i != 3:
        raise ValueError(f"rgb=True needs filters with 3 input channels, got {i}")
    cols = _columns(o, None)
    tile_in = _tile_inches(cols, smallest=0.45, largest=0.9)
    # Enlarged, so that the one-pixel gaps and the label bands are thin beside a 3×3 kernel.
    zoom = max(1, 12 // max(kh, kw))
    weights = weights.repeat_interleave(zoom, dim=2).repeat_interleave(zoom, dim=3)
    if rgb:
        # Per filter, symmetric around 0: [-m, m] → [0, 1], so a zero weight is mid-grey in every colour.
        m = weights.abs().amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12)
        fig, ax, corners = _mosaic_figure(weights / (2 * m) + 0.5, cols, tile_in, pad_value=1.0, extra_w=0.4,
                                          extra_h=0.9 + 0.3 * bool(title))
        detail = (f"{o} filters of {kh}×{kw} on the red, green and blue inputs, each scaled on its own\n"
                  "grey = weight 0; a colour = the filter looks for that colour")
    else:
        mean = weights.mean(dim=1, keepdim=True)  # (O, 1, kh, kw)
        m = float(mean.abs().max()) or 1.0
        fig, ax, corners = _mosaic_figure(
            mean, cols, tile_in, pad_value=float("nan"), extra_w=1.4, extra_h=0.9 + 0.3 * bool(title),
            cmap=_cmap(DIVERGING, bad="white"), vmin=-m, vmax=m,
        )
        fig.colorbar(ax.images[0], ax=ax, shrink=_bar_shrink(fig)).set_label("weight", fontsize=FONT)
        averaged = f"averaged over its {i} input channels" if i > 1 else "on its single input channel"
        detail = f"{o} filters of {kh}×{kw}, each {averaged}\nred = positive, blue = negative weights"
    # Frames: a kernel's near-zero (white) edge would otherwise melt into the white background.
    frames = [Rectangle((x - 0.5, y - 0.5), kw * zoom, kh * zoom) for x, y in corners]
    ax.add_collection(PatchCollection(frames, facecolor="none", edgecolor="0.6", linewidth=0.8))
    _label_tiles(ax, corners, numbers=numbers)
    _titles(fig, ax, title, detail)
    return fig


def channel_bars(mean: Tensor, peak: Tensor, *, highlight: int | None = None, title: str = "") -> Figure:
    """Each channel's mean and max activation ``(C,)`` as bars against the channel number, ``highlight`` in red."""
    mean, peak = _as_float(mean, "(C,)", 1), _as_float(peak, "(C,)", 1)
    if mean.shape != peak.shape:
        raise ValueError(f"expected two (C,) tensors of one shape, got {tuple(mean.shape)} and {tuple(peak.shape)}")
    c = len(mean)
    fig, ax = _fixed_axes(9, 2.6 + 0.3 * bool(title), left=0.8, right=0.15, bottom=0.5, top=0.15 + 0.3 * bool(title))
    width = 1.0 if c > 64 else 0.8
    _bars(ax, peak.numpy(), width, "#9ecae1", "max")
    _bars(ax, mean.numpy(), width, BAR_COLOUR, "mean")
    if highlight is not None:
        _check_index(highlight, c, "highlight")
        ax.axvline(highlight, color="red", linewidth=1.5, label=f"#{highlight}")
    ax.set_xlim(-0.5, c - 0.5)
    ax.set_xlabel("channel", fontsize=FONT)
    ax.set_ylabel("activation", fontsize=FONT)
    ax.legend(fontsize=FONT, loc="upper right", ncols=3)
    if title:
        ax.set_title(title, fontsize=TITLE_FONT)
    return fig


def topk_bars(probs: Tensor, class_names: Sequence[str], k: int = 5) -> Figure:
    """The ``k`` most probable classes of ``probs`` (K,) in [0, 1] as horizontal bars, highest on top, in %.

    A picture, not an interactive chart: thirty browsers drawing a PNG cost a fraction of thirty drawing Plotly.
    """
    probs = _as_float(probs, "(K,)", 1)
    if len(class_names) != len(probs):
        raise ValueError(f"expected {len(probs)} class names, got {len(class_names)}")
    if k < 1:
        raise ValueError(f"expected k >= 1, got {k}")
    top = probs.topk(min(k, len(probs)))
    names = [text.mpl(_short(class_names[i], NAME_CHARS)) for i in top.indices.tolist()]
    percent = [100 * p for p in top.values.tolist()]
    # Narrow: stretched to its column, the letters grow. The class names get the width their letters need.
    left = 0.2 + CHAR_IN * max(len(n) for n in names)
    fig, ax = _fixed_axes(max(4.5, left + 3), 0.75 + 0.36 * len(names), left=left, right=0.3, bottom=0.55, top=0.1)
    y = np.arange(len(names))
    ax.barh(y, percent, color=BAR_COLOUR, height=0.7)
    for row, p in zip(y, percent):  # inside a long bar in white, after a short one in grey
        inside = p >= 15
        ax.text(p - 1 if inside else p + 1, row, f"{p:.1f} %", va="center", ha="right" if inside else "left",
                color="white" if inside else "#555555", fontsize=FONT)
    ax.set_yticks(y, names, fontsize=FONT)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("probability (%)", fontsize=FONT)
    ax.tick_params(axis="x", labelsize=FONT)
    ax.spines[["top", "right"]].set_visible(False)
    return fig


def filter_image(weight: Tensor) -> Figure:
    """One filter ``(I, kh, kw)`` or kernel ``(kh, kw)`` enlarged, its weights written in the cells (up to 7×7).

    Shows each input channel's kernel (the first 8 when there are more) on one diverging scale centred on 0.
    """
    weight = _as_float(weight, "(I, kh, kw) or (kh, kw)", (2, 3))
    kernels = weight[None] if weight.ndim == 2 else weight
    n_in, kh, kw = kernels.shape
    shown = kernels[:MAX_KERNEL_PANELS]
    cols = min(len(shown), 4)
    rows = math.ceil(len(shown) / cols)
    panel_in = max(2.6, 0.45 * max(kh, kw))
    fig = _figure(cols * panel_in + 1.2, rows * panel_in + 0.9)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    m = float(shown.abs().max()) or 1.0
    decimals = max(2, 1 - math.floor(math.log10(m)))  # enough digits that the largest weight is not "0.00"
    for n, ax in enumerate(axes):
        if n >= len(shown):
            ax.set_visible(False)
            continue
        image = ax.imshow(shown[n].numpy(), cmap=DIVERGING, vmin=-m, vmax=m, interpolation="nearest")
        _no_ticks(ax)
        if weight.ndim == 3:
            ax.set_title(f"input channel {n}", fontsize=FONT + 1)
        if max(kh, kw) <= NUMBERS_UP_TO:
            for (r, c), v in np.ndenumerate(shown[n].numpy()):
                text = f"{v:.{decimals}f}"
                ax.text(c, r, text if float(text) else f"{0:.{decimals}f}", ha="center", va="center", fontsize=FONT,
                        color="white" if abs(v) > 0.55 * m else "black")  # white only on the dark ends
    fig.colorbar(image, ax=axes[: len(shown)].tolist(), shrink=0.8).set_label("weight", fontsize=FONT)
    if weight.ndim == 2:
        heading = f"Kernel {kh}×{kw}"
    else:
        heading = f"Filter: {n_in} input channel{'s' * (n_in > 1)} × {kh}×{kw} = {n_in * kh * kw} weights"
        if n_in > len(shown):
            heading += f" (first {len(shown)} shown)"
    fig.suptitle(heading, fontsize=TITLE_FONT)
    return fig


def pooling_pair(pair: PoolPair, channel: int, *, title: str = "") -> Figure:
    """One channel of a pooling step: input (left, with its windows and max-pool winners) and output (right).

    Both on one colour scale. Windows are drawn every ``stride`` cells, with the stride inferred from the sizes.
    """
    _check_index(channel, pair.input.shape[0], "channel")
    # Fixed margins (inches), drawn once (see _fixed_axes): two 4-inch panels under two lines of heading and two of
    # panel titles, the colour bar right of them.
    width, height, panel, bottom = 9.6, 5.3, 4.0, 0.15
    fig = _fixed_figure(width, height)
    ax_in = fig.add_axes((0.25 / width, bottom / height, panel / width, panel / height))
    ax_out = fig.add_axes((4.55 / width, bottom / height, panel / width, panel / height))
    image = _draw_pooling(ax_in, ax_out, pair, channel, panel_in=panel)
    cax = fig.add_axes((8.8 / width, (bottom + 0.1 * panel) / height, 0.18 / width, 0.8 * panel / height))
    fig.colorbar(image, cax=cax).set_label("activation value", fontsize=FONT)
    heading = title or f"{pair.name}, channel #{channel}"
    fig.suptitle(f"{heading}\n{_reduction(pair)}", fontsize=TITLE_FONT, y=1 - 0.08 / height, va="top")
    return fig


def pooling_pairs_grid(pair: PoolPair, channels: Sequence[int], *, title: str = "") -> Figure:
    """Several channels of one pooling step, one row (input, output) per channel, each row on its own scale."""
    if not channels:
        raise ValueError("expected at least one channel")
    for channel in channels:
        _check_index(channel, pair.input.shape[0], "channel")
    fig = _figure(8.0, 3.2 * len(channels) + 0.8)
    for row, channel in zip(fig.subplots(len(channels), 2, squeeze=False), channels):
        image = _draw_pooling(row[0], row[1], pair, channel, panel_in=3.0, label=f"#{channel} ")
        fig.colorbar(image, ax=row.tolist(), shrink=0.8).set_label("activation", fontsize=FONT)
    fig.suptitle(f"{title or pair.name}\n{_reduction(pair)}", fontsize=TITLE_FONT)
    return fig


def overlay_image(
    image: Tensor | Image.Image, heatmap: Tensor, alpha: float = 0.5, cmap: str = "jet"
) -> Image.Image:
    """RGB blend ``(1 - alpha) · image + alpha · cmap(heatmap)`` at the image's resolution.

    ``image``: ``(C, H, W)`` in [0, 1] (C = 1 or 3) or a PIL image; ``heatmap``: ``(h, w)`` in [0, 1], resized
    bilinearly to the image's size when it differs. Greyscale images stay grey under the heatmap.
    """
    if not 0 <= alpha <= 1:
        raise ValueError(f"expected alpha in [0, 1], got {alpha}")
    rgb = _rgb_array(image)  # (H, W, 3) in [0, 1]
    heat = _as_float(heatmap, "(H, W)", 2)
    if heat.shape != rgb.shape[:2]:
        heat = F.interpolate(heat[None, None], size=rgb.shape[:2], mode="bilinear", align_corners=False)[0, 0]
    coloured = colormaps[cmap](heat.clamp(0, 1).numpy())[..., :3]
    blend = (1 - alpha) * rgb + alpha * coloured
    return Image.fromarray(np.rint(blend * 255).astype(np.uint8))  # (H, W, 3) uint8 → an RGB image


def overlay(
    image: Tensor | Image.Image, heatmap: Tensor, *, alpha: float = 0.5, cmap: str = "jet", title: str = ""
) -> Figure:
    """The image with ``heatmap`` (H, W) in [0, 1] blended on top and an "importance" colour bar; see overlay_image."""
    blend = overlay_image(image, heatmap, alpha, cmap)
    # Fixed margins (see _fixed_axes): the picture in a 4.4-inch box, its colour bar and label to the right.
    side, top = 4.4, 0.15 + 0.35 * bool(title)
    width, height = side + 1.5, side + 0.2 + top
    fig, ax = _fixed_axes(width, height, left=0.1, right=1.4, bottom=0.1, top=top)
    ax.imshow(np.asarray(blend), interpolation="nearest")
    _no_ticks(ax)
    cax = fig.add_axes(((side + 0.3) / width, (0.1 + 0.075 * side) / height, 0.18 / width, 0.85 * side / height))
    bar = fig.colorbar(ScalarMappable(norm=Normalize(0, 1), cmap=cmap), cax=cax)
    bar.set_label("importance (0 = none, 1 = most)", fontsize=FONT)
    if title:
        ax.set_title(title, fontsize=TITLE_FONT)
    return fig


def image_strip(images: Sequence[tuple[str, Image.Image]]) -> Figure:
    """Titled PIL images side by side (e.g. preprocessing steps); tiny images are enlarged without blurring."""
    if not images:
        raise ValueError("expected at least one (title, image) pair")
    fig = _figure(2.8 * len(images), 3.4)
    for ax, (title, image) in zip(fig.subplots(1, len(images), squeeze=False)[0], images):
        if image.mode == "L":
            # A fixed 0–255 range: autoscaling would stretch a faint image and hide how faint it is.
            ax.imshow(np.asarray(image), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        else:
            ax.imshow(np.asarray(image.convert("RGB")), interpolation="nearest")
        _no_ticks(ax)
        ax.set_title(title, fontsize=FONT + 1, wrap=True)
    return fig


def map_image(feature_map: Tensor, cmap: str = "viridis") -> Image.Image:
    """One feature map ``(H, W)`` as an RGB image, stretched from its own min (dark) to its max (bright)."""
    m = _as_float(feature_map, "(H, W)", 2)
    lo, hi = m.min(), m.max()
    scaled = (m - lo) / (hi - lo) if hi > lo else torch.zeros_like(m)
    rgb = colormaps[cmap](scaled.numpy())[..., :3]
    return Image.fromarray(np.rint(rgb * 255).astype(np.uint8), mode="RGB")


def number_grid(panels: Sequence[tuple[str, Tensor]], *, title: str = "", cmap: str = DIVERGING) -> Figure:
    """Small 2-D tensors ``(h, w)`` side by side, each cell coloured and with its value written in.

    For the step-by-step convolution: the input patch, the kernel and their products. Each panel has its own
    colour scale, symmetric around 0 (white), so signs read at a glance.
    """
    if not panels:
        raise ValueError("expected at least one (title, tensor) panel")
    h, w = panels[0][1].shape
    side = max(1.6, 0.55 * max(h, w))
    fig = _figure(side * len(panels) + 0.4, side + 0.9 + 0.3 * bool(title))
    for ax, (name, t) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        t = _as_float(t, "(h, w)", 2)
        finite = t[torch.isfinite(t)]
        limit = float(finite.abs().max()) if finite.numel() else 1.0
        ax.imshow(t.numpy(), cmap=cmap, vmin=-limit or -1, vmax=limit or 1, interpolation="nearest")
        for (r, c), v in np.ndenumerate(t.numpy()):
            text = "pad" if not np.isfinite(v) else f"{v:.2f}".replace("-0.00", "0.00")
            ax.text(c, r, text, ha="center", va="center", fontsize=FONT if max(h, w) <= 5 else FONT - 2)
        _no_ticks(ax)
        ax.set_title(name, fontsize=FONT + 1)
    if title:
        fig.suptitle(title, fontsize=TITLE_FONT)
    return fig


def map_with_cell(feature_map: Tensor, cell: tuple[int, int] | None = None, *, revealed: int | None = None,
                  title: str = "", cmap: str = "viridis") -> Figure:
    """A feature map ``(H, W)`` with one cell framed in red; ``revealed`` shows only the first cells in reading
    order (a convolution sweeping over the image), the rest left blank."""
    m = _as_float(feature_map, "(H, W)", 2).clone()
    lo, hi = float(m.min()), float(m.max())
    if revealed is not None:
        m.view(-1)[revealed:] = float("nan")
    fig = _figure(4.6, 4.2 + 0.3 * bool(title))
    ax = fig.subplots()
    image = ax.imshow(m.numpy(), cmap=_cmap(cmap, bad="#f2f2f2"), vmin=lo, vmax=hi if hi > lo else lo + 1,
                      interpolation="nearest")
    if cell is not None:
        ax.add_patch(Rectangle((cell[1] - 0.5, cell[0] - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2.5))
    _no_ticks(ax)
    fig.colorbar(image, ax=ax, shrink=0.85).set_label("activation value", fontsize=FONT)
    if title:
        ax.set_title(title, fontsize=TITLE_FONT)
    return fig


def image_with_boxes(image: Tensor | Image.Image, boxes: Sequence[tuple[str, tuple[int, int, int, int]]], *,
                     title: str = "") -> Figure:
    """An image with labelled rectangles ``(top, left, bottom, right)`` (bottom/right exclusive), e.g. receptive
    fields of successive layers, each in its own colour with a legend."""
    rgb = _rgb_array(image)
    fig = _figure(6.4, 4.6 + 0.3 * bool(title))
    ax = fig.subplots()
    ax.imshow(rgb, interpolation="nearest")
    palette = colormaps["tab10"]
    for i, (label, (top, left, bottom, right)) in enumerate(boxes):
        ax.add_patch(Rectangle((left - 0.5, top - 0.5), right - left, bottom - top, fill=False,
                               edgecolor=palette(i % 10), linewidth=2.5, label=label))
    _no_ticks(ax)
    if boxes:
        ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=FONT, frameon=False)
    if title:
        ax.set_title(title, fontsize=TITLE_FONT)
    return fig


def patch_grid(rows: Sequence[tuple[str, Sequence[Tensor]]], *, size: int, title: str = "") -> Figure:
    """Rows of image patches uint8 ``(C, h, w)`` (e.g. each channel's top-k patches), each padded to ``size``×``size``
    and enlarged without blurring; the row's label on its left."""
    if not rows:
        raise ValueError("expected at least one row")
    k = max(len(p) for _, p in rows)
    fig = _figure(1.4 + 0.75 * k, 0.62 * len(rows) + 0.6 + 0.3 * bool(title))
    axes = fig.subplots(len(rows), k, squeeze=False)
    for (label, patches), axrow in zip(rows, axes):
        for j, ax in enumerate(axrow):
            _no_ticks(ax)
            ax.set_frame_on(False)
            if j < len(patches):
                p = patches[j]
                padded = F.pad(p, (0, size - p.shape[2], 0, size - p.shape[1]), value=255)
                ax.imshow(_rgb_array(padded.float() / 255), interpolation="nearest")
        axrow[0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=FONT)
    if title:
        fig.suptitle(title, fontsize=TITLE_FONT)
    return fig


def web_image(image: Image.Image, min_side: int = 160, max_side: int = 240) -> bytes:
    """``image`` as PNG bytes for a web page, to show as it is rather than drawn into a figure (a page's
    ``st.image(..., width="content")`` with a caption: no matplotlib, a few milliseconds). A small image is enlarged
    by a whole factor, without blurring, until its shorter side is at least ``min_side`` pixels (each pixel stays a
    crisp square; its longer side stays within :data:`MAX_ENLARGED`); one longer than ``max_side`` (a photo) is
    shrunk to fit it."""
    if image.mode not in ("L", "RGB"):
        image = image.convert("RGB")
    w, h = image.size
    if max(w, h) > max_side:
        image = image.copy()
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    else:
        factor = max(1, min(math.ceil(min_side / min(w, h)), MAX_ENLARGED // max(w, h)))
        if factor > 1:
            image = image.resize((w * factor, h * factor), Image.Resampling.NEAREST)
    return _png(image)


def _png(image: Image.Image) -> bytes:
    """``image`` as PNG bytes at :data:`PNG_LEVEL`."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=PNG_LEVEL)
    return buffer.getvalue()


def to_pil(image: Tensor) -> Image.Image:
    """An image ``(C, H, W)`` in [0, 1] (C = 1 or 3) as an 8-bit PIL image (L or RGB)."""
    image = _as_float(image, "(C, H, W)", 3)
    arr = np.rint(image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    return Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr, mode="L" if arr.shape[2] == 1 else "RGB")


def sample_grid(x: Tensor, labels: Sequence[str], *, cols: int = 8, title: str = "") -> Figure:
    """Images uint8 ``(N, C, H, W)`` in a grid, each with its label under it (labels may hold ``"\\n"``)."""
    if not isinstance(x, Tensor) or x.ndim != 4 or x.dtype != torch.uint8:
        raise ValueError(f"expected a uint8 (N, C, H, W) tensor, got {_describe(x)}")
    if len(labels) != len(x):
        raise ValueError(f"expected one label per image ({len(x)}), got {len(labels)}")
    if cols < 1:
        raise ValueError(f"expected cols >= 1, got {cols}")
    n, _, h, w = x.shape
    cols = min(cols, n)
    lines = max(label.count("\n") + 1 for label in labels)
    longest = max(len(line) for label in labels for line in label.split("\n"))
    # Wide enough for the longest label line (about 0.085 in per character at 10 pt), so neighbours never touch.
    tile_in = max(_tile_inches(cols, smallest=0.9, largest=1.5), 0.085 * longest + 0.15)
    fig, ax, corners = _mosaic_figure(x.detach().cpu(), cols, tile_in, pad_value=255, lines=lines, below=True,
                                      extra_w=0.3, extra_h=0.3 + 0.4 * bool(title))
    for (cx, cy), label in zip(corners, labels):
        ax.text(cx - 0.5 + w / 2, cy - 0.5 + h, label, ha="center", va="top", fontsize=FONT)
    if title:
        ax.set_title(title, fontsize=TITLE_FONT)
    return fig


def input_image(x: Tensor, info: DatasetInfo) -> Tensor:
    """A normalised model input ``(1, C, H, W)`` → the image ``(C, H, W)`` in [0, 1]."""
    if not isinstance(x, Tensor) or x.ndim != 4 or x.shape[0] != 1:
        raise ValueError(f"expected a (1, C, H, W) tensor, got {_describe(x)}")
    return denormalize(x.detach().cpu().float(), info)[0]


def to_png(fig: Figure | Image.Image, dpi: int = 120) -> bytes:
    """A matplotlib figure (tight bounding box) or a picture drawn in pixels (:mod:`cnnviz.pictures`, already at its
    size: ``dpi`` does not apply) as PNG bytes, e.g. for a download button."""
    if isinstance(fig, Image.Image):
        return _png(fig)
    if not isinstance(fig, Figure):
        # Plotly's PNG export needs kaleido, which we do not ship; its toolbar has a download button instead.
        raise TypeError(f"expected a matplotlib Figure, got {type(fig).__name__}")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches=None if getattr(fig, FIXED, False) else "tight",
                pil_kwargs={"compress_level": PNG_LEVEL})
    return buffer.getvalue()


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)  # its own Agg canvas: drawing never goes through pyplot's global backend
    return fig


FIXED = "cnnviz_fixed_layout"  # set on a figure whose margins are fixed: to_png draws it once, as it is


def _bars(ax: Axes, heights: np.ndarray, width: float, colour: str, label: str) -> None:
    """A bar of ``heights[i]`` at each x = i, ``width`` wide, as one filled step outline (``stairs``): one artist
    instead of a Rectangle per bar, which for a 512-channel layer is most of the drawing time."""
    x = np.arange(len(heights))
    edges = np.stack([x - width / 2, x + width / 2], axis=1).ravel()  # left and right edge of each bar
    steps = np.stack([heights, np.zeros_like(heights)], axis=1).ravel()[:-1]  # bar, gap, bar, …, bar
    ax.stairs(steps, edges, baseline=0, fill=True, color=colour, label=label)


def _fixed_figure(width: float, height: float) -> Figure:
    """A figure with no layout engine, marked so that to_png draws it once, as it is (see :func:`_fixed_axes`)."""
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    setattr(fig, FIXED, True)
    return fig


def _fixed_axes(width: float, height: float, *, left: float, right: float, bottom: float, top: float
                ) -> tuple[Figure, Axes]:
    """A figure with one axes at fixed margins (inches). No layout engine and no tight bounding box: the figure is
    drawn once instead of measured and drawn again, which halves its cost (measured: 146 → 65 ms for the top-5
    bars, 257 → 113 ms for the channel bars), for the figures every upload to Explore draws."""
    fig = _fixed_figure(width, height)
    ax = fig.add_axes((left / width, bottom / height, 1 - (left + right) / width, 1 - (bottom + top) / height))
    return fig, ax


def _mosaic_figure(
    tiles: Tensor,
    cols: int,
    tile_in: float,
    *,
    pad_value: float,
    extra_w: float,
    extra_h: float,
    lines: int = 1,
    below: bool = False,
    cmap: Colormap | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    fixed: bool = False,
) -> tuple[Figure, Axes, list[tuple[int, int]]]:
    """One imshow of tiles ``(N, C, h, w)`` (C = 1 with ``cmap``, else 3), with a band of ``lines`` label lines
    above (or below) each tile; returns the figure, its axes and each tile's top-left pixel (x, y).

    ``fixed``: no layout engine (see :func:`_fixed_axes`); the grid sits 0.1 inch above the bottom, centred with the
    ``extra_w`` to its right, and the ``extra_h`` above it holds the titles."""
    n, _, h, w = tiles.shape
    px_in = tile_in / (w + 2 * PAD_PX)
    band = math.ceil(lines * LINE_IN / px_in)
    above, under = (0, band) if below else (band, 0)
    # The label bands are padding of each tile, so make_grid (with padding 0) does all the tiling.
    framed = F.pad(tiles, (PAD_PX, PAD_PX, PAD_PX + above, PAD_PX + under), value=pad_value)
    grid = make_grid(framed, nrow=cols, padding=0, pad_value=pad_value)  # (3, H', W'): grey is repeated
    cell_w, cell_h = framed.shape[3], framed.shape[2]
    corners = [((k % cols) * cell_w + PAD_PX, (k // cols) * cell_h + PAD_PX + above) for k in range(n)]
    grid_w, grid_h = grid.shape[2] * px_in, grid.shape[1] * px_in
    width, height = max(grid_w + extra_w, 5.5), grid_h + extra_h
    if fixed:
        left = (width - grid_w - extra_w) / 2
        fig, ax = _fixed_axes(width, height, left=left, right=width - left - grid_w, bottom=0.1,
                              top=height - 0.1 - grid_h)
    else:
        fig = _figure(width, height)
        ax = fig.subplots()
    # Through the colour map only when one is given; otherwise RGB (make_grid repeats grey into all three).
    pixels = grid[0].numpy() if cmap is not None else grid.permute(1, 2, 0).numpy()
    ax.imshow(pixels, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_axis_off()
    return fig, ax, corners


def _label_tiles(ax: Axes, corners: list[tuple[int, int]], highlight: int | None = None,
                 numbers: Sequence[int] | None = None) -> None:
    """"#0", "#1", … (or the given channel numbers) in the band above each tile, just clear of its frame."""
    for i, (x, y) in enumerate(corners):
        label = ax.text(x - 0.5, y - 0.5 - PAD_PX, f"#{numbers[i] if numbers is not None else i}", ha="left", va="bottom", fontsize=FONT,
                        color="red" if i == highlight else "black", fontweight="bold" if i == highlight else "normal")
        # Inside the image anyway; measuring hundreds of labels for the layout would double the drawing time.
        label.set_in_layout(False)


def _numbers(channels: Sequence[int] | None, n: int) -> list[int]:
    """The channel number of each of ``n`` tiles: ``channels`` checked against ``n``, else ``0 … n-1``."""
    if channels is None:
        return list(range(n))
    numbers = [int(c) for c in channels]
    if len(numbers) != n:
        raise ValueError(f"expected one channel number per tile ({n}), got {len(numbers)}")
    return numbers


def _bar_shrink(fig: Figure) -> float:
    """A colour bar about 4 inches tall, however tall the grid beside it."""
    return min(0.8, 4 / fig.get_figheight())


def _draw_pooling(ax_in: Axes, ax_out: Axes, pair: PoolPair, channel: int, *, panel_in: float,
                  label: str = "") -> AxesImage:
    """Input with window grid and winners on ``ax_in``, output with its cells on ``ax_out``; one colour scale."""
    before = pair.input[channel].detach().cpu().float()  # (H, W)
    after = pair.output[channel].detach().cpu().float()  # (h, w)
    (big_h, big_w), (small_h, small_w) = before.shape, after.shape
    lo = min(float(before.min()), float(after.min()))
    hi = max(float(before.max()), float(after.max()))
    hi = hi if hi > lo else lo + 1
    ax_in.imshow(before.numpy(), vmin=lo, vmax=hi, interpolation="nearest")
    image = ax_out.imshow(after.numpy(), vmin=lo, vmax=hi, interpolation="nearest")
    # The record keeps no kernel or stride; with the usual kernel == stride, the ratio of sizes is the window.
    # A PoolPair keeps no kernel size or stride: for the usual pooling (kernel = stride, floor mode, no padding)
    # the stride is the ratio of the sizes.
    step_h, step_w = big_h // small_h, big_w // small_w
    _cell_lines(ax_in, range(step_h, big_h, step_h), range(step_w, big_w, step_w), big_h, big_w, line_pt=1.5)
    _cell_lines(ax_out, range(1, small_h), range(1, small_w), small_h, small_w, line_pt=0.8)
    operation = "average"
    if pair.argmax is not None:
        operation = "max"
        flat = pair.argmax[channel].detach().cpu().flatten()  # one winner per output cell
        cell_pt = panel_in * 72 / max(big_h, big_w)
        ax_in.scatter((flat % big_w).numpy(), (flat // big_w).numpy(), marker="s", s=(0.7 * cell_pt) ** 2,
                      facecolors="none", edgecolors="red", linewidths=1.5, label="winner")
    ax_in.set_title(f"{label}input {big_h}×{big_w}, windows of {step_h}×{step_w}"
                    + ("\nred: the largest value, kept" if operation == "max" else ""), fontsize=FONT + 1)
    ax_out.set_title(f"{label}output {small_h}×{small_w}: {operation} of each window", fontsize=FONT + 1)
    _no_ticks(ax_in)
    _no_ticks(ax_out)
    return image


def _cell_lines(ax: Axes, rows: range, cols: range, height: int, width: int, *, line_pt: float) -> None:
    """White lines before each index in ``rows``/``cols`` of an image of ``height`` × ``width`` pixels."""
    ax.hlines([r - 0.5 for r in rows], -0.5, width - 0.5, colors="white", linewidths=line_pt)
    ax.vlines([c - 0.5 for c in cols], -0.5, height - 0.5, colors="white", linewidths=line_pt)


def _reduction(pair: PoolPair) -> str:
    big, small = pair.input.shape[1:], pair.output.shape[1:]
    ratio = (big[0] * big[1]) / (small[0] * small[1])
    return f"{big[0]}×{big[1]} → {small[0]}×{small[1]}: {ratio:.3g}× fewer values"


def _rgb_array(image: Tensor | Image.Image) -> np.ndarray:
    """A PIL image or ``(C, H, W)`` tensor in [0, 1] → float ``(H, W, 3)`` in [0, 1]; grey copied to R, G, B."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float64) / 255
    image = _as_float(image, "(C, H, W)", 3)
    if image.shape[0] not in (1, 3):
        raise ValueError(f"expected 1 or 3 channels, got {image.shape[0]}")
    return image.clamp(0, 1).expand(3, -1, -1).permute(1, 2, 0).double().numpy()


def _titles(fig: Figure, ax: Axes, title: str, detail: str) -> None:
    ax.set_title(detail, fontsize=FONT + 1)
    if title:
        fig.suptitle(title, fontsize=TITLE_FONT)


def _cmap(name: str, *, bad: str) -> Colormap:
    # The NaN padding between tiles takes the "bad" colour.
    return colormaps[name].with_extremes(bad=bad)


def _columns(n: int, cols: int | None) -> int:
    if cols is None:
        return math.ceil(math.sqrt(n))
    if cols < 1:
        raise ValueError(f"expected cols >= 1, got {cols}")
    return min(cols, n)


def _tile_inches(cols: int, *, smallest: float, largest: float) -> float:
    """Inches per tile: a grid about 7.5 inches wide, within limits that keep labels legible and tiles modest.

    Streamlit scales a figure to the page's width, so a narrower figure shows its letters larger.
    """
    return min(largest, max(smallest, 7.5 / cols))


def _short(name: str, n: int) -> str:
    return name if len(name) <= n else name[: n - 1] + "…"


def _no_ticks(ax: Axes) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def _as_float(t: Tensor, shape: str, ndim: int | tuple[int, ...]) -> Tensor:
    dims = ndim if isinstance(ndim, tuple) else (ndim,)
    if not isinstance(t, Tensor) or t.ndim not in dims or t.numel() == 0:
        raise ValueError(f"expected a non-empty {shape} tensor, got {_describe(t)}")
    return t.detach().cpu().float()


def _check_index(index: int, size: int, what: str) -> None:
    if not 0 <= index < size:
        raise ValueError(f"expected {what} in [0, {size}), got {index}")


def _describe(t: object) -> str:
    return f"{tuple(t.shape)} {t.dtype}" if isinstance(t, Tensor) else type(t).__name__
