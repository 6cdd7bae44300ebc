"""Every training run of a session, kept to compare: a table of what each cost and scored, and their curves overlaid.

A :class:`Run` is plain numbers: the architecture's name, its trainable parameters, the FLOPs of one image's
forward pass (counted by ``torch.utils.flop_counter.FlopCounterMode``: 2 per multiply-add of convolutions and matrix
products), the training seconds, the test accuracy and the curves, thinned to what a chart draws. :class:`Runs`
keeps a session's runs, at most :data:`MAX_RUNS` and :data:`MAX_BYTES` of them, dropping the oldest first.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.colors import qualitative
from plotly.subplots import make_subplots
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from cnnviz import charts, models, probe, text
from cnnviz.train import History

MAX_RUNS = 20  # runs a session keeps: a lesson compares a handful
MAX_BYTES = 1 << 20  # their JSON size together; one run's thinned curves take ~40 KB
COLOURS = qualitative.Plotly  # one colour per run, in the order they were added


def flops_per_image(model: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """FLOPs of one forward pass of one image ``(C, H, W)`` through ``model`` in eval mode (its mode is kept)."""
    if len(input_shape) != 3 or any(type(d) is not int or d < 1 for d in input_shape):
        raise ValueError(f"expected an input shape (C, H, W) of positive whole numbers, got {input_shape!r}")
    with probe.evaluating(model), torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, *input_shape, device=probe.device_of(model)))
    return counter.get_total_flops()


@dataclass(frozen=True)
class Run:
    """One finished run of a session, as plain numbers (JSON-friendly)."""

    id: int  # 1, 2, … in the order of the session
    architecture: str  # the preset's name, or what the student called it
    dataset: str
    params: int
    flops: int  # per image, forward pass
    seconds: float  # the training loop's
    test_accuracy: float | None  # None: not tested
    history: dict = field(repr=False)  # History.to_dict(), curves thinned to charts.MAX_POINTS points
    config: dict = field(default_factory=dict)  # the training settings (TrainConfig as a dict)
    created: float = 0.0  # time.time() when it was added

    @property
    def label(self) -> str:
        return f"{self.architecture} #{self.id}"

    def to_dict(self) -> dict:
        return asdict(self)

    def row(self) -> dict:
        """The run's row of the comparison table."""
        return {"run": self.label, "architecture": self.architecture, "dataset": self.dataset,
                "parameters": self.params, "MFLOPs per image": self.flops / 1e6,
                "training (s)": round(self.seconds, 1), "steps": len(self.history.get("steps", [])),
                "test accuracy (%)": None if self.test_accuracy is None else round(100 * self.test_accuracy, 2),
                "status": self.history.get("status", "")}


class Runs:
    """A session's runs, oldest first, bounded by count and bytes; safe to use from several threads."""

    def __init__(self, max_runs: int = MAX_RUNS, max_bytes: int = MAX_BYTES) -> None:
        if max_runs < 1 or max_bytes < 1:
            raise ValueError(f"expected room for at least one run, got max_runs={max_runs}, max_bytes={max_bytes}")
        self.max_runs, self.max_bytes = max_runs, max_bytes
        self._runs: list[tuple[Run, int]] = []  # with each run's size in bytes
        self._next_id = 1
        self._lock = threading.Lock()

    def add(self, model: nn.Module, architecture: str, dataset: str, input_shape: tuple[int, int, int],
            history: History | dict, test_accuracy: float | None, config: dict | None = None) -> Run:
        """Measure ``model`` (parameters, FLOPs) and keep its run; the oldest runs go when there are too many or
        they take too many bytes. A run larger than ``max_bytes`` alone is refused with ``ValueError``."""
        history = history.to_dict() if isinstance(history, History) else dict(history)
        if test_accuracy is not None and not 0 <= test_accuracy <= 1:
            raise ValueError(f"expected a test accuracy in [0, 1], got {test_accuracy}")
        run_fields = dict(architecture=str(architecture), dataset=str(dataset), params=models.count_params(model),
                          flops=flops_per_image(model, tuple(input_shape)),
                          seconds=float(history.get("seconds", 0.0)), test_accuracy=test_accuracy,
                          history=_thin(history), config=dict(config or {}), created=time.time())
        with self._lock:
            run = Run(id=self._next_id, **run_fields)
            size = len(json.dumps(run.to_dict()))
            if size > self.max_bytes:
                raise ValueError(f"this run takes {size:,} bytes, more than the {self.max_bytes:,} kept for all runs")
            self._next_id += 1
            self._runs.append((run, size))
            while len(self._runs) > self.max_runs or sum(s for _, s in self._runs) > self.max_bytes:
                self._runs.pop(0)
        return run

    def remove(self, run_id: int) -> None:
        with self._lock:
            self._runs = [(r, s) for r, s in self._runs if r.id != run_id]

    def clear(self) -> None:
        with self._lock:
            self._runs = []

    def __iter__(self) -> Iterator[Run]:
        with self._lock:
            return iter([r for r, _ in self._runs])

    def __len__(self) -> int:
        return len(self._runs)

    @property
    def nbytes(self) -> int:
        """The JSON size of the runs kept."""
        with self._lock:
            return sum(s for _, s in self._runs)

    def table(self) -> list[dict]:
        """One row per run, oldest first (a list of dicts: ``st.dataframe`` shows it as is)."""
        return [run.row() for run in self]


def _thin(history: dict) -> dict:
    """The history with its per-step records cut to at most charts.MAX_POINTS, evenly spread, first and last kept,
    and each curve smoothed before thinning (the ``smooth_loss``/``smooth_acc`` keys) so the chart needs no more."""
    steps = list(history.get("steps", []))
    keep = charts.downsample(len(steps)).tolist()
    smooth = {key: charts._ema([s[key] for s in steps], 0.9) for key in ("loss", "acc")}
    thinned = [{**steps[i], "smooth_loss": smooth["loss"][i], "smooth_acc": smooth["acc"][i]} for i in keep]
    return {**history, "steps": thinned}


def curves(runs: Runs | list[Run]) -> go.Figure:
    """Training loss and accuracy (%) of every run against the training step, overlaid, one colour per run:
    the smoothed training curves as lines, and the validation accuracy, where measured, as dotted lines."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Training loss (lower is better)",
                                                        "Accuracy (higher is better)"), horizontal_spacing=0.12)
    shown = list(runs)
    for n, run in enumerate(shown):
        colour, name = COLOURS[n % len(COLOURS)], text.plotly(run.label)
        steps, evals = run.history.get("steps", []), run.history.get("epochs", [])
        x = np.array([s["step"] for s in steps], dtype=np.int64)
        for col, key, scale, unit in ((1, "smooth_loss", 1, ""), (2, "smooth_acc", 100, " %")):
            fig.add_scatter(x=x, y=np.array([s[key] * scale for s in steps], dtype=np.float64), mode="lines",
                            name=name, legendgroup=str(run.id), showlegend=col == 1,
                            line=dict(color=colour, width=2.5),
                            hovertemplate=f"step %{{x}}: %{{y:.3g}}{unit}<extra>{name}, training</extra>",
                            row=1, col=col)
        if evals:
            fig.add_scatter(x=[e["step"] for e in evals], y=[100 * e["val_acc"] for e in evals], mode="lines+markers",
                            name=f"{name}, validation", legendgroup=str(run.id), showlegend=False,
                            line=dict(color=colour, width=2, dash="dot"), marker=dict(size=7),
                            hovertemplate=f"step %{{x}}: %{{y:.3g}} %<extra>{name}, validation</extra>", row=1, col=2)
    fig.update_xaxes(title_text="training step", rangemode="tozero")
    fig.update_yaxes(title_text="loss", rangemode="tozero", row=1, col=1)
    fig.update_yaxes(title_text="accuracy (%)", range=[0, 100], row=1, col=2)
    fig.update_layout(font_size=charts.PLOTLY_FONT, height=440, margin=dict(l=10, r=10, t=40, b=10),
                      legend=dict(orientation="h", yanchor="top", y=-0.22, xanchor="center", x=0.5))
    if not shown:
        fig.add_annotation(text="No runs yet: train a model to compare it here", xref="paper", yref="paper",
                           x=0.5, y=0.5, showarrow=False, font_size=charts.PLOTLY_FONT + 2)
    return fig
