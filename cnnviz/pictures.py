"""Pictures drawn straight into pixels (numpy and Pillow), for the views every upload redraws.

A matplotlib figure of ResNet-18's 64 conv1 maps took ~0.35 s to lay out, rasterise and encode (most of it drawing
73 texts and resampling a 1-megapixel image through Agg), on a server that draws for a whole class. Here the maps go
through the colour map's lookup table, are enlarged by a whole factor (or averaged down), and are pasted into a
white canvas with their labels: the same picture in ~0.04 s, and ~0.1 s with its PNG against ~0.33 s (medians of
three, measured side by side on this 2-core machine when the grid moved here; ``zoo-explore`` in ``make bench``
times the page that shows it).
Letters use matplotlib's own DejaVu Sans, so these pictures match the figures beside them.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps, font_manager
from matplotlib.ticker import MaxNLocator
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from cnnviz.figures import FONT, LINE_IN, TITLE_FONT, _as_float, _columns, _numbers, _tile_inches

DPI = 120  # pixels per inch, as figures.to_png draws: sizes below are the figures' points at this density
FONT_PX = round(FONT / 72 * DPI)
DETAIL_PX = round((FONT + 1) / 72 * DPI)  # the figures' axes titles
TITLE_PX = round(TITLE_FONT / 72 * DPI)
MARGIN = 12
GAP = 4  # white pixels between two tiles
BAND = round(LINE_IN * DPI)  # the line above each tile that holds its "#n" label
BAR_W, BAR_GAP, BAR_MAX_H = 18, 16, 480  # the colour bar: width, gap from the grid, tallest (4 inches)
TICK = 5
MAX_WIDTH = 1600  # a heading longer than this is cut with "…"
HIGHLIGHT = (214, 39, 40)  # the box and label of a highlighted channel
WHITE, BLACK = (255, 255, 255), (0, 0, 0)


def feature_grid(
    maps: Tensor,
    *,
    title: str = "",
    cmap: str = "viridis",
    shared_scale: bool = True,
    cols: int | None = None,
    highlight: int | None = None,
    channels: Sequence[int] | None = None,
    of: int | None = None,
) -> Image.Image:
    """Feature maps ``(C, H, W)`` as one labelled tile per channel ("#0", "#1", …) with a colour bar (RGB image).

    ``shared_scale`` puts every map on one colour scale (the layer's min to max, in activation values), so
    brightness can be compared across channels; otherwise each map is stretched to its own min–max, which shows
    patterns in weak channels. ``highlight`` draws a box around one channel. ``channels`` gives each tile's channel
    number when ``maps`` is a selection (a page of a 512-channel layer) out of ``of`` channels in all.
    Small maps are enlarged by a whole factor (each value a crisp square); maps larger than a tile are averaged down.
    """
    maps = _as_float(maps, "(C, H, W)", 3)
    c, h, w = maps.shape
    numbers = _numbers(channels, c)
    if highlight is not None and highlight not in numbers:
        raise ValueError(f"highlight must be one of the channels shown, got {highlight}")
    cols = _columns(c, cols)
    rows = math.ceil(c / cols)

    finite = maps.isfinite()
    clean = maps if bool(finite.all()) else maps.where(finite, maps[finite].min() if finite.any() else 0.0)
    if shared_scale:
        lo, hi = (float(v) for v in torch.aminmax(clean))
        vmin, vmax = lo, (hi if hi > lo else lo + 1)  # a constant layer still needs a range
        low, span = torch.tensor(vmin), torch.tensor(vmax - vmin)
        detail = "one colour scale for all maps"
    else:
        low, high = clean.amin(dim=(1, 2), keepdim=True), clean.amax(dim=(1, 2), keepdim=True)
        span, vmin, vmax = (high - low).clamp_min(1e-12), 0.0, 1.0
        detail = "each map on its own colour scale: compare patterns, not brightness"
    # (C, th, tw, 3)
    tiles = _tiles(clean, finite, low, span, cmap, target=round(_tile_inches(cols, smallest=0.5, largest=1.2) * DPI))
    th, tw = tiles.shape[1:3]

    shown = f"{c} feature maps" if of is None or of == c else f"{c} of its {of} feature maps"
    heading = ([(title, _font(TITLE_PX))] if title else []) + [
        (f"{shown} of {h}×{w}", _font(DETAIL_PX)), (detail, _font(DETAIL_PX))]
    head_h = sum(round(font.size * 1.35) for _, font in heading) + MARGIN // 2
    grid_w, grid_h = cols * tw + (cols - 1) * GAP, rows * (BAND + th) + (rows - 1) * GAP
    bar_h = min(BAR_MAX_H, grid_h)
    ticks = _ticks(vmin, vmax, shared_scale)
    label_font = _font(FONT_PX)
    tick_w = max(label_font.getbbox(text)[2] for _, text in ticks)
    bar_label = "activation value" if shared_scale else "activation (per map)"
    right = BAR_GAP + BAR_W + TICK + 4 + tick_w + 8 + FONT_PX + 4
    widest = max(font.getlength(text) for text, font in heading)
    width = max(MARGIN + grid_w + right + MARGIN, round(5.5 * DPI), min(math.ceil(widest) + 2 * MARGIN, MAX_WIDTH))
    height = MARGIN + head_h + grid_h + MARGIN
    canvas = Image.new("RGB", (width, height), WHITE)
    draw = ImageDraw.Draw(canvas)

    left = (width - grid_w - right) // 2
    y = MARGIN
    for text, font in heading:  # centred over the grid as far as the picture's edges allow; cut to its width
        text = _fit(text, font, width - 2 * MARGIN)
        half = font.getlength(text) / 2
        centre = min(max(left + grid_w / 2, MARGIN + half), width - MARGIN - half)
        draw.text((centre, y), text, fill=BLACK, font=font, anchor="ma")
        y += round(font.size * 1.35)
    top = MARGIN + head_h
    pixels = np.asarray(canvas).copy()
    corners = []
    for i in range(c):
        x0 = left + (i % cols) * (tw + GAP)
        y0 = top + (i // cols) * (BAND + th + GAP) + BAND
        pixels[y0: y0 + th, x0: x0 + tw] = tiles[i]
        corners.append((x0, y0))
    bar_x, bar_y = left + grid_w + BAR_GAP, top + (grid_h - bar_h) // 2
    ramp = np.linspace(1, 0, bar_h)[:, None].repeat(BAR_W, axis=1)
    pixels[bar_y: bar_y + bar_h, bar_x: bar_x + BAR_W] = colour_table(cmap)[np.clip((ramp * 256).astype(int), 0, 255)]
    canvas = Image.fromarray(pixels)
    draw = ImageDraw.Draw(canvas)

    for i, (x0, y0) in enumerate(corners):
        chosen = numbers[i] == highlight
        draw.text((x0, y0 - 3), f"#{numbers[i]}", fill=HIGHLIGHT if chosen else BLACK,
                  font=_font(FONT_PX, bold=chosen), anchor="ld")
        if chosen:  # 3 pixels wide, just outside the tile (in the gap between tiles)
            draw.rectangle((x0 - 3, y0 - 3, x0 + tw + 2, y0 + th + 2), outline=HIGHLIGHT, width=3)
    draw.rectangle((bar_x - 1, bar_y - 1, bar_x + BAR_W, bar_y + bar_h), outline=BLACK, width=1)
    for fraction, text in ticks:
        ty = bar_y + round((1 - fraction) * (bar_h - 1))
        draw.line((bar_x + BAR_W, ty, bar_x + BAR_W + TICK, ty), fill=BLACK, width=1)
        draw.text((bar_x + BAR_W + TICK + 4, ty), text, fill=BLACK, font=label_font, anchor="lm")
    label = _rotated(bar_label, label_font)
    canvas.paste(BLACK, (bar_x + BAR_W + TICK + 4 + tick_w + 8, bar_y + (bar_h - label.height) // 2), label)
    return canvas


def _tiles(maps: Tensor, finite: Tensor, low: Tensor, span: Tensor, cmap: str, *, target: int) -> np.ndarray:
    """Maps → coloured tiles ``(C, th, tw, 3)`` uint8 about ``target`` pixels on their longer side, each value
    scaled by ``(value - low) / span`` (broadcast per map) into the colour map; values not finite are white."""
    c, h, w = maps.shape
    if max(h, w) > target:  # averaged down by a whole factor: each pixel of the tile the mean of k × k values
        k = math.ceil(max(h, w) / target)
        maps = F.avg_pool2d(maps[:, None], k, ceil_mode=True)[:, 0]
        finite = F.avg_pool2d(finite.float()[:, None], k, ceil_mode=True)[:, 0] > 0.5
        h, w = maps.shape[1:]
    values = (maps - low) / span
    index = (values.clamp(0, 1) * 256).nan_to_num(0).long().clamp(0, 255).numpy()
    rgb = colour_table(cmap)[index]
    rgb[~finite.numpy()] = WHITE
    factor = max(1, target // max(h, w))
    if factor > 1:  # each value a crisp square of factor × factor pixels
        rgb = rgb.repeat(factor, axis=1).repeat(factor, axis=2)
    return rgb


@functools.lru_cache(maxsize=16)
def colour_table(cmap: str) -> np.ndarray:
    """matplotlib's colour map ``cmap`` as 256 RGB rows (uint8, read only): one lookup per value, far cheaper than
    calling the colour map."""
    lut = np.rint(colormaps[cmap](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)
    lut.setflags(write=False)
    return lut


def _ticks(vmin: float, vmax: float, shared_scale: bool) -> list[tuple[float, str]]:
    """(fraction of the bar from the bottom, label) for the colour bar's ticks."""
    if not shared_scale:
        return [(0.0, "its min"), (1.0, "its max")]
    values = [v for v in MaxNLocator(nbins=5).tick_values(vmin, vmax) if vmin - 1e-9 <= v <= vmax + 1e-9]
    return [((v - vmin) / (vmax - vmin), f"{v:.3g}") for v in values]


@functools.lru_cache(maxsize=8)
def _font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont:
    """matplotlib's DejaVu Sans (shipped with it, so always present) at ``size`` pixels."""
    path = font_manager.findfont(font_manager.FontProperties(family="DejaVu Sans", weight="bold" if bold else "normal"))
    return ImageFont.truetype(path, size)


def _fit(text: str, font: ImageFont.FreeTypeFont, width: int) -> str:
    """``text`` cut with "…" until it fits ``width`` pixels."""
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "…") > width:
        text = text[:-1]
    return text + "…"


def _rotated(text: str, font: ImageFont.FreeTypeFont) -> Image.Image:
    """A mask (mode L) of ``text`` turned a quarter left, to read upwards beside a colour bar."""
    x0, y0, x1, y1 = font.getbbox(text)
    mask = Image.new("L", (x1 - x0 + 2, y1 - y0 + 2), 0)
    ImageDraw.Draw(mask).text((1 - x0, 1 - y0), text, fill=255, font=font)
    return mask.rotate(90, expand=True)
