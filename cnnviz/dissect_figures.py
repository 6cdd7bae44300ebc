"""Figures of a network dissection: what kind of concept each layer detects, and where one unit fires.

The per-layer bars are a plotly chart like those of :mod:`cnnviz.charts` (a page can let a student choose a bar);
:func:`hierarchy_chart` draws the same bars as one static picture (trained beside untrained, by either rule) for a
lesson and for the README; a unit's top images are a static matplotlib picture like those of :mod:`cnnviz.figures`.
"""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
from matplotlib.figure import Figure

from cnnviz import parts, text
from cnnviz.charts import PLOTLY_FONT
from cnnviz.dissect import NONE, Dissection
from cnnviz.figures import FONT, TITLE_FONT, _figure, _no_ticks

# One colour per category, the same in every figure; "none" in grey.
CATEGORY_COLOURS = {"colour": "#f58518", "texture": "#b279a2", "part": "#54a24b", "object": "#4c78a8",
                    NONE: "#cfcfcf"}
REGION_COLOUR = "yellow"  # the outline of a unit's region
DIM = 0.35  # brightness of an image outside the unit's region


def layer_bars(dissection: Dissection, *, rule: bool = True) -> go.Figure:
    """Per layer (input to output), the share of its units (%) in each category as stacked bars: at the paper's
    rule (``rule=True``: detectors only, the other units are "none") or by each unit's best concept whatever its IoU.

    Each bar's ``customdata`` is ``[layer name, category]``, so a page that lets the user choose a bar
    (``st.plotly_chart(on_select=...)``) knows which units to show.
    """
    names = [layer.name for layer in dissection.layers]
    counts = [layer.counts(rule=rule) for layer in dissection.layers]
    fig = go.Figure()
    for category in (*parts.CATEGORIES, NONE):
        share = [100 * c[category] / max(1, sum(c.values())) for c in counts]
        fig.add_bar(
            x=[text.plotly(n) for n in names], y=share, name=category, marker_color=CATEGORY_COLOURS[category],
            customdata=[[n, category] for n in names], text=[str(c[category]) if c[category] else "" for c in counts],
            textposition="inside",
            hovertemplate=f"%{{x}}: %{{text}} units (%{{y:.0f}} %), {category}<extra></extra>",
        )
    how = (f"detectors: IoU ≥ {dissection.iou_threshold:g} with their best concept" if rule
           else "each unit's best concept, whatever its IoU")
    fig.update_xaxes(title_text="layer (input → output)", type="category")
    fig.update_yaxes(title_text="units (%)", range=[0, 100])
    fig.update_layout(barmode="stack", height=420, font_size=PLOTLY_FONT, margin=dict(l=10, r=10, t=40, b=10),
                      title=dict(text=how, font_size=PLOTLY_FONT), legend_traceorder="normal")
    return fig


def hierarchy_chart(trained: Dissection, control: Dissection) -> Figure:
    """The share of each layer's units (%) in each category, stacked, input to output: ``trained`` (left) beside
    ``control`` (right; the same architecture untrained), counted at the paper's rule (top row: detectors only, the
    rest "none") and by each unit's best concept whatever its IoU (bottom row)."""
    rows = ((True, f"detectors (IoU ≥ {trained.iou_threshold:g})"), (False, "each unit's best concept"))
    fig = _figure(11, 7.2)
    axes = fig.subplots(2, 2, sharey=True, squeeze=False)
    for r, (rule, how) in enumerate(rows):
        for c, (d, who) in enumerate(((trained, "trained"), (control, "untrained control"))):
            ax = axes[r][c]
            names = [layer.name for layer in d.layers]
            counts = [layer.counts(rule=rule) for layer in d.layers]
            bottom = np.zeros(len(names))
            for category in (*parts.CATEGORIES, NONE):
                share = np.array([100 * n[category] / max(1, sum(n.values())) for n in counts])
                ax.bar(range(len(names)), share, bottom=bottom, color=CATEGORY_COLOURS[category], label=category,
                       width=0.7)
                bottom += share
            ax.set_xticks(range(len(names)), [text.mpl(n) for n in names], fontsize=FONT)
            ax.set_ylim(0, 100)
            ax.set_title(f"{who}: {how}", fontsize=FONT + 1)
            if c == 0:
                ax.set_ylabel("units (%)", fontsize=FONT)
            if r == 1:
                ax.set_xlabel("layer (input → output)", fontsize=FONT)
            ax.tick_params(labelsize=FONT)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", fontsize=FONT, title="kind of concept",
               title_fontsize=FONT)
    fig.suptitle("What each layer detects, measured by network dissection", fontsize=TITLE_FONT)
    return fig


def unit_images(dissection: Dissection, layer: str, unit: int, *, count: int | None = None, cols: int = 4,
                title: str = "") -> Figure:
    """The images where ``unit`` of ``layer`` fires most, strongest first, each dimmed outside the unit's region
    (its top-quantile area) and the region outlined; the title names its best concept and their IoU."""
    found = dissection.layer(layer)
    if not 0 <= unit < len(found.units):
        raise ValueError(f"expected a unit of {layer} in [0, {len(found.units)}), got {unit}")
    u = found.units[unit]
    n = len(u.top_images) if count is None else min(count, len(u.top_images))
    if n < 1 or cols < 1:
        raise ValueError(f"expected at least one image and one column, got count={count}, cols={cols}")
    cols = min(cols, n)
    rows = math.ceil(n / cols)
    fig = _figure(1.9 * cols, 1.9 * rows + 0.6 + 0.3 * bool(title))
    axes = fig.subplots(rows, cols, squeeze=False)
    for k, ax in enumerate(axes.flat):
        _no_ticks(ax)
        if k >= n:
            ax.set_axis_off()
            continue
        index = u.top_images[k]
        image = dissection.scenes.images[index].permute(1, 2, 0).numpy() / 255  # (H, W, 3)
        region = u.regions[k].numpy()
        ax.imshow(np.where(region[..., None], image, DIM * image), interpolation="nearest")
        if region.any() and not region.all():
            ax.contour(region.astype(float), levels=[0.5], colors=REGION_COLOUR, linewidths=1.5)
        ax.set_title(parts.CLASS_NAMES[int(dissection.scenes.labels[index])], fontsize=FONT)
    if u.concept is None:
        what = "its region meets no concept"
    else:
        what = (f"{u.concept} ({u.category}), IoU {u.iou:.3f}: "
                + ("a detector" if u.detector else f"below {dissection.iou_threshold:g}, not a detector"))
    fig.suptitle(f"{title}\n" * bool(title) + f"{text.mpl(layer)} unit {unit}: {what}", fontsize=TITLE_FONT)
    return fig
