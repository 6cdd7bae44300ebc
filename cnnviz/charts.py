"""Interactive charts (plotly): prediction bars, training curves, confusion matrix, per-class accuracy.

The static pictures (grids, pooling, overlays) are in :mod:`cnnviz.figures`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots
from torch import Tensor

from cnnviz import text
from cnnviz.figures import _describe
from cnnviz.train import History

PLOTLY_FONT = 14
TRAIN_COLOUR, VAL_COLOUR = "#1f77b4", "#ff7f0e"


MAX_POINTS = 300  # points per curve sent to the browser, however long the run: the live chart stays cheap
EMPTY = "No training steps yet"


def training_curves(history: History | dict, *, smoothing: float = 0.9) -> go.Figure:
    """Loss and accuracy (%) against step: training per step (raw, faint, and smoothed) and validation on held-out
    training images; each curve downsampled to at most :data:`MAX_POINTS` points, keeping the last.

    ``smoothing`` is the factor of a bias-corrected exponential moving average (0 = none). ``uirevision`` is set,
    so redrawing with a longer history keeps the user's zoom. A live page builds this once and then calls
    :func:`update_training_curves` (building the layout costs ~10× more than updating the data).
    """
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Loss (lower is better)", "Accuracy (higher is better)"),
                        horizontal_spacing=0.12)
    for col, unit in ((1, ""), (2, " %")):
        first = col == 1  # one legend entry per kind of line; legendgroup toggles both panels together
        fig.add_scatter(x=[], y=[], mode="lines", name="training (each batch)", legendgroup="raw",
                        showlegend=first, line=dict(color=TRAIN_COLOUR, width=1), opacity=0.3,
                        hovertemplate=f"step %{{x}}: %{{y:.3g}}{unit}<extra>batch</extra>", row=1, col=col)
        fig.add_scatter(x=[], y=[], mode="lines", name="training (smoothed)", legendgroup="train",
                        showlegend=first, line=dict(color=TRAIN_COLOUR, width=2.5),
                        hovertemplate=f"step %{{x}}: %{{y:.3g}}{unit}<extra>smoothed</extra>", row=1, col=col)
        fig.add_scatter(x=[], y=[], mode="lines+markers", name="validation (held-out training images)",
                        legendgroup="val", showlegend=first, line=dict(color=VAL_COLOUR, width=2.5),
                        marker=dict(size=9),
                        hovertemplate=f"step %{{x}}: %{{y:.3g}}{unit}<extra>validation</extra>", row=1, col=col)
    fig.update_xaxes(title_text="training step", rangemode="tozero")
    fig.update_yaxes(title_text="loss", rangemode="tozero", row=1, col=1)
    fig.update_yaxes(title_text="accuracy (%)", range=[0, 100], row=1, col=2)
    fig.update_layout(uirevision="training", font_size=PLOTLY_FONT, height=420,
                      legend=dict(orientation="h", yanchor="top", y=-0.22, xanchor="center", x=0.5),
                      margin=dict(l=10, r=10, t=40, b=10))
    return update_training_curves(fig, history, smoothing=smoothing)


def update_training_curves(fig: go.Figure, history: History | dict, *, smoothing: float = 0.9) -> go.Figure:
    """Put ``history``'s points into a figure made by :func:`training_curves`, in place; returns ``fig``."""
    if not 0 <= smoothing < 1:
        raise ValueError(f"expected smoothing in [0, 1), got {smoothing}")
    steps = history.steps if isinstance(history, History) else history.get("steps", [])
    epochs = history.epochs if isinstance(history, History) else history.get("epochs", [])
    x = np.array([s["step"] for s in steps], dtype=np.int64)
    val_x = np.array([e["step"] for e in epochs], dtype=np.int64)
    keep, val_keep = downsample(len(x)), downsample(len(val_x))
    with fig.batch_update():
        for i, (key, val_key, scale) in enumerate((("loss", "val_loss", 1), ("acc", "val_acc", 100))):
            raw = [s[key] * scale for s in steps]
            raw_line, smooth_line, val_line = fig.data[3 * i: 3 * i + 3]
            raw_line.x = smooth_line.x = x[keep]
            raw_line.y = np.array(raw, dtype=np.float64)[keep]
            smooth_line.y = np.array(_ema(raw, smoothing), dtype=np.float64)[keep]  # smoothed before thinning
            val_line.x = val_x[val_keep]
            val_line.y = np.array([e[val_key] * scale for e in epochs], dtype=np.float64)[val_keep]
        titles = [a for a in fig.layout.annotations if a.name != EMPTY]  # the panels' titles are annotations too
        fig.layout.annotations = titles if steps else [*titles, go.layout.Annotation(
            text=EMPTY, name=EMPTY, xref="paper", yref="paper", x=0.5, y=0.5, showarrow=False,
            font_size=PLOTLY_FONT + 2)]
    return fig


def downsample(n: int, limit: int = MAX_POINTS) -> np.ndarray:
    """Indices of at most ``limit`` points spread evenly over ``n``, always with the first and the last."""
    if limit < 2:
        raise ValueError(f"expected limit >= 2, got {limit}")
    if n <= limit:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, limit).round().astype(np.int64))


def confusion_matrix(confusion: Tensor, class_names: Sequence[str]) -> go.Figure:
    """Counts ``(K, K)`` (rows = true class, columns = predicted) as a heatmap with the counts written in."""
    if not isinstance(confusion, Tensor) or confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"expected a (K, K) tensor, got {_describe(confusion)}")
    if len(class_names) != len(confusion):
        raise ValueError(f"expected {len(confusion)} class names, got {len(class_names)}")
    names = [text.plotly(n) for n in class_names]
    counts = confusion.detach().cpu().long().tolist()
    hover = [[f"true: {t}, predicted: {p}, {n} image{'s' * (n != 1)}" for p, n in zip(names, row)]
             for t, row in zip(names, counts)]
    fig = go.Figure(go.Heatmap(
        z=counts, x=names, y=names, text=hover, hovertemplate="%{text}<extra></extra>", texttemplate="%{z}",
        colorscale="Blues", colorbar=dict(title="images"),
    ))
    fig.update_xaxes(title_text="predicted class", type="category", side="top")
    fig.update_yaxes(title_text="true class", type="category", autorange="reversed")
    size = 200 + 45 * len(names)
    fig.update_layout(height=size, width=size + 120, font_size=PLOTLY_FONT, margin=dict(l=10, r=10, t=10, b=10))
    return fig


def per_class_bars(per_class: Sequence[float], class_names: Sequence[str]) -> go.Figure:
    """Accuracy of each class (fractions in [0, 1]) as bars in %, labelled with their values."""
    if len(per_class) != len(class_names):
        raise ValueError(f"expected one accuracy per class ({len(class_names)}), got {len(per_class)}")
    percent = [100 * float(a) for a in per_class]
    fig = go.Figure(go.Bar(
        x=[text.plotly(n) for n in class_names], y=percent, text=[f"{p:.0f} %" for p in percent], textposition="auto",
        marker_color=TRAIN_COLOUR, hovertemplate="%{x}: %{y:.1f} % correct<extra></extra>",
    ))
    fig.update_xaxes(title_text="true class", type="category")
    fig.update_yaxes(title_text="correct (%)", range=[0, 100])
    fig.update_layout(height=380, font_size=PLOTLY_FONT, margin=dict(l=10, r=10, t=10, b=10))
    return fig


def _ema(values: list[float], beta: float) -> list[float]:
    """Exponential moving average, bias-corrected (as in Adam) so the first points are not pulled towards 0."""
    out, avg = [], 0.0
    for t, v in enumerate(values, start=1):
        avg = beta * avg + (1 - beta) * v
        out.append(avg / (1 - beta**t))
    return out
