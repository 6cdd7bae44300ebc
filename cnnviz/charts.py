"""Interactive charts (plotly): prediction bars, training curves, confusion matrix, per-class accuracy.

The static pictures (grids, pooling, overlays) are in :mod:`cnnviz.figures`.
"""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots
from torch import Tensor

from cnnviz.figures import _as_float, _describe
from cnnviz.train import History

PLOTLY_FONT = 14
TRAIN_COLOUR, VAL_COLOUR = "#1f77b4", "#ff7f0e"


def topk_bars(probs: Tensor, class_names: Sequence[str], k: int = 5) -> go.Figure:
    """The ``k`` most probable classes of ``probs`` (K,) in [0, 1] as horizontal bars, highest on top, in %."""
    probs = _as_float(probs, "(K,)", 1)
    if len(class_names) != len(probs):
        raise ValueError(f"expected {len(probs)} class names, got {len(class_names)}")
    if k < 1:
        raise ValueError(f"expected k >= 1, got {k}")
    top = probs.topk(min(k, len(probs)))
    names = [class_names[i] for i in top.indices.tolist()]
    percent = [100 * p for p in top.values.tolist()]
    fig = go.Figure(go.Bar(
        x=percent, y=names, orientation="h", text=[f"{p:.1f} %" for p in percent], textposition="auto",
        marker_color=TRAIN_COLOUR, hovertemplate="%{y}: %{x:.1f} %<extra></extra>",
    ))
    # Category axis: class names such as "3" would otherwise be placed as numbers.
    fig.update_yaxes(type="category", autorange="reversed")
    fig.update_xaxes(title_text="probability (%)", range=[0, 100])
    fig.update_layout(height=80 + 45 * len(names), margin=dict(l=10, r=10, t=10, b=10), font_size=PLOTLY_FONT)
    return fig


def training_curves(history: History | dict, *, smoothing: float = 0.9) -> go.Figure:
    """Loss and accuracy (%) against step: training per step (raw, faint, and smoothed) and validation per epoch.

    ``smoothing`` is the factor of a bias-corrected exponential moving average (0 = none). ``uirevision`` is set,
    so redrawing with a longer history keeps the user's zoom.
    """
    if not 0 <= smoothing < 1:
        raise ValueError(f"expected smoothing in [0, 1), got {smoothing}")
    steps = history.steps if isinstance(history, History) else history.get("steps", [])
    epochs = history.epochs if isinstance(history, History) else history.get("epochs", [])
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Loss (lower is better)", "Accuracy (higher is better)"),
                        horizontal_spacing=0.12)
    x = [s["step"] for s in steps]
    val_x = [e["step"] for e in epochs]
    for col, key, val_key, scale, unit in ((1, "loss", "val_loss", 1, ""), (2, "acc", "val_acc", 100, " %")):
        raw = [s[key] * scale for s in steps]
        first = col == 1  # one legend entry per kind of line; legendgroup toggles both panels together
        fig.add_scatter(x=x, y=raw, mode="lines", name="training (each batch)", legendgroup="raw",
                        showlegend=first, line=dict(color=TRAIN_COLOUR, width=1), opacity=0.3,
                        hovertemplate=f"step %{{x}}: %{{y:.3g}}{unit}<extra>batch</extra>", row=1, col=col)
        fig.add_scatter(x=x, y=_ema(raw, smoothing), mode="lines", name="training (smoothed)", legendgroup="train",
                        showlegend=first, line=dict(color=TRAIN_COLOUR, width=2.5),
                        hovertemplate=f"step %{{x}}: %{{y:.3g}}{unit}<extra>smoothed</extra>", row=1, col=col)
        fig.add_scatter(x=val_x, y=[e[val_key] * scale for e in epochs], mode="lines+markers",
                        name="validation (end of each epoch)", legendgroup="val", showlegend=first,
                        line=dict(color=VAL_COLOUR, width=2.5), marker=dict(size=9),
                        hovertemplate=f"step %{{x}}: %{{y:.3g}}{unit}<extra>validation</extra>", row=1, col=col)
    fig.update_xaxes(title_text="training step", rangemode="tozero")
    fig.update_yaxes(title_text="loss", rangemode="tozero", row=1, col=1)
    fig.update_yaxes(title_text="accuracy (%)", range=[0, 100], row=1, col=2)
    fig.update_layout(uirevision="training", font_size=PLOTLY_FONT, height=420,
                      legend=dict(orientation="h", yanchor="top", y=-0.22, xanchor="center", x=0.5),
                      margin=dict(l=10, r=10, t=40, b=10))
    if not steps:
        fig.add_annotation(text="No training steps yet", xref="paper", yref="paper", x=0.5, y=0.5,
                           showarrow=False, font_size=PLOTLY_FONT + 2)
    return fig


def confusion_matrix(confusion: Tensor, class_names: Sequence[str]) -> go.Figure:
    """Counts ``(K, K)`` (rows = true class, columns = predicted) as a heatmap with the counts written in."""
    if not isinstance(confusion, Tensor) or confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"expected a (K, K) tensor, got {_describe(confusion)}")
    if len(class_names) != len(confusion):
        raise ValueError(f"expected {len(confusion)} class names, got {len(class_names)}")
    names = list(class_names)
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
        x=list(class_names), y=percent, text=[f"{p:.0f} %" for p in percent], textposition="auto",
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
