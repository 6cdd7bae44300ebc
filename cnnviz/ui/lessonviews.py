"""The views of the Learn page "Backpropagation and architectures": cached calls into ``cnnviz.backprop``,
``cnnviz.gradients`` and ``cnnviz.architectures``, the charts that show their results, and the sentences that say
what they measured.

Every number a chart or sentence shows is read from the result object it is given (a ``Chain``, an ``SGDStep``, a
``ResidualLesson``, ``FieldRow``s, a ``BranchTable``), never typed in.
The residual lesson trains two deep networks (tens of seconds): it is computed once per server, from fixed seeds, and
shared read-only by every session (:func:`residual`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots
from torch import nn

from cnnviz import architectures as arch
from cnnviz import backprop, data, gradients, models, probe, text, train
from cnnviz.data import Split
from cnnviz.text import md
from cnnviz.ui import cache, links, state
from cnnviz.ui.state import SessionModel

PLOTLY_FONT = 14  # as cnnviz.charts
BAR, HIGHLIGHT, SECOND = "#1f77b4", "#d62728", "#ff7f0e"
MARGIN = dict(l=10, r=10, t=40, b=10)

# --- shareable settings ----------------------------------------------------------------------------------------------

VIEWS = ("Backpropagation", "Residual connections", "VGG", "Inception")
LRS = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)  # one weight's gradient is small: big steps are needed to see a change
VGG_MODELS = ("your model", "mini-vgg")
MAX_IMAGE = 99_999  # above any test set the app holds (MNIST's 10,000); the page checks the real size
# Every key this page restores from a link, with its widget's type and range, by the lesson that shows its widget.
# They join links.SPECS when this module is imported, so parse() and the link tests know them like every other key.
SECTION_LINKS: dict[str, dict[str, links.Spec]] = {
    "Backpropagation": {"bp_image": links.Int(0, MAX_IMAGE), "bp_layer": links.LAYER, "bp_out": links.INDEX,
                        "bp_in": links.INDEX, "bp_ky": links.INDEX, "bp_kx": links.INDEX, "bp_lr": links.Choice(LRS),
                        "bp_all": links.Flag()},
    "Residual connections": {},
    "VGG": {"vgg_model": links.Choice(VGG_MODELS)},
    "Inception": {"inc_block": links.LAYER},
}
LINKS: dict[str, links.Spec] = {"arch_view": links.Choice(VIEWS),
                                **{k: v for keys in SECTION_LINKS.values() for k, v in keys.items()}}
links.SPECS.update(LINKS)


def keep() -> None:
    """Keep this page's widget values while another of its lessons is shown (Streamlit forgets the value of a widget
    a run does not draw); as ``links.keep`` does across pages."""
    for key in LINKS:
        if key in st.session_state:
            st.session_state[key] = st.session_state[key]


# --- 1. backpropagation for one weight -----------------------------------------------------------------------------

_chains = cache.BytesCache(32 * cache.MB)  # a Chain of our models is a few kB; a zoo network's a few MB


def chain(sm: SessionModel, split: Split, index: int, weight: backprop.Weight) -> backprop.Chain:
    """The chain rule for ``weight`` on test image ``index`` with its true label, once per model, image and weight
    (shared by sessions looking at the same weights; read-only). Raises ``ValueError`` when the model cannot be
    followed (the message says why)."""
    label = int(split.y[index])

    def compute() -> backprop.Chain:
        return backprop.chain(sm.model, data.normalize(split.x[index], split.info), label, weight)

    return _chains.get_or_compute((sm.model_id, split.info.name, index, weight), compute)


def sgd_step(sm: SessionModel, split: Split, index: int, weight: backprop.Weight, lr: float,
             everything: bool) -> backprop.SGDStep:
    """One SGD step on a copy of the model (the session's model is not changed)."""
    return backprop.sgd_step(sm.model, data.normalize(split.x[index], split.info), int(split.y[index]), weight, lr,
                             everything=everything)


def logits_figure(c: backprop.Chain, class_names: Sequence[str]) -> go.Figure:
    """The softmax's probabilities (%) and ∂L/∂logits per class, the true class in red."""
    names = [text.plotly(n) for n in class_names]
    colours = [HIGHLIGHT if i == c.label else BAR for i in range(len(names))]
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.12, subplot_titles=(
        "softmax: p = probability of each class", "∂L/∂logit = p − (1 for the true class)"))
    probs, grads = [100 * p for p in c.probs.tolist()], c.grad_logits.tolist()
    fig.add_bar(x=names, y=probs, marker_color=colours, text=[f"{p:.1f} %" for p in probs], textposition="auto",
                hovertemplate="%{x}: p = %{y:.2f} %<extra></extra>", row=1, col=1)
    fig.add_bar(x=names, y=grads, marker_color=colours, text=[f"{g:+.3f}" for g in grads], textposition="auto",
                hovertemplate="%{x}: ∂L/∂logit = %{y:.4f}<extra></extra>", row=1, col=2)
    fig.update_xaxes(type="category", title_text="class (red: the true one)")
    fig.update_yaxes(title_text="probability (%)", range=[0, 100], row=1, col=1)
    fig.update_yaxes(title_text="∂L/∂logit", row=1, col=2)
    fig.update_layout(height=380, showlegend=False, font_size=PLOTLY_FONT, margin=MARGIN)
    return fig


def chain_rows(c: backprop.Chain) -> list[dict]:
    """One table row per vector-Jacobian product of the chain, from the logits back to the chosen layer."""
    return [{"step": i, "layer": s.layer, "type": s.module_type, "gradient handed back to": s.wrt,
             "gradient arriving (shape)": " × ".join(map(str, s.output_shape)),
             "‖gradient arriving‖": s.grad_output_norm,
             "gradient leaving (shape)": " × ".join(map(str, s.input_shape)), "‖gradient leaving‖": s.grad_input_norm}
            for i, s in enumerate(c.steps, start=1)]


def chain_norms_figure(c: backprop.Chain) -> go.Figure:
    """The size of the gradient at each point of the chain, from the logits back to the chosen layer's output."""
    where = ["the logits", *(s.wrt for s in c.steps)]
    norms = [c.grad_logits.norm().item(), *(s.grad_input_norm for s in c.steps)]
    fig = go.Figure(go.Scatter(
        x=list(range(len(where))), y=norms, mode="lines+markers" + ("+text" if len(norms) <= 8 else ""),
        text=[f"{n:.3g}" for n in norms],
        textposition="top center", customdata=[text.plotly(w) for w in where], line=dict(color=BAR, width=2.5),
        hovertemplate="‖∂L/∂ %{customdata}‖ = %{y:.4g}<extra></extra>"))
    fig.update_xaxes(title_text="backwards from the loss →", tickmode="array", tickvals=list(range(len(where))),
                     ticktext=[text.plotly(w.removeprefix("the ")) for w in where])
    if min(norms) > 0:  # a gradient of exactly 0 (a dead ReLU everywhere) has no logarithm
        fig.update_yaxes(title_text="‖gradient‖ (log scale)", type="log", dtick=1)
    else:
        fig.update_yaxes(title_text="‖gradient‖")
    fig.update_layout(height=360, font_size=PLOTLY_FONT, margin=MARGIN)
    return fig


def terms_figure(c: backprop.Chain) -> go.Figure:
    """The weight's gradient as a sum over output positions: the gradient arriving there × the input value the
    weight multiplied there = the terms, each ``(H_out, W_out)``, on diverging scales centred on 0."""
    o, i, ky, kx = c.weight.out_channel, c.weight.in_channel, c.weight.ky, c.weight.kx
    panels = ((f"∂L/∂out[{o}] at each position", c.upstream), (f"input value w[{o},{i},{ky},{kx}] multiplied there",
                                                               c.inputs),
              ("their product: one term of the sum", c.terms))
    fig = make_subplots(rows=1, cols=3, subplot_titles=[p[0] for p in panels], horizontal_spacing=0.1)
    for col, (name, t) in enumerate(panels, start=1):
        limit = float(t.abs().max()) or 1.0
        right = fig.layout[f"xaxis{col if col > 1 else ''}"].domain[1]  # each panel's own scale, at its right
        fig.add_heatmap(z=t.tolist(), zmin=-limit, zmax=limit, zmid=0, colorscale="RdBu", reversescale=True,
                        colorbar=dict(x=right + 0.005, xanchor="left", len=0.85, thickness=10, tickfont_size=11),
                        hovertemplate="row %{y}, column %{x}: %{z:.4g}<extra></extra>", row=1, col=col)
        fig.update_yaxes(autorange="reversed", title_text="row" if col == 1 else None, row=1, col=col)
        fig.update_xaxes(title_text="column", row=1, col=col)
    fig.update_annotations(font_size=PLOTLY_FONT - 1)
    fig.update_layout(height=380, font_size=PLOTLY_FONT, margin=MARGIN)
    return fig


def terms_rows(c: backprop.Chain, k: int = 5) -> list[dict]:
    return [{"row": y, "column": x, "∂L/∂out there": up, "× input there": v, "= term": p}
            for y, x, up, v, p in c.top_terms(k)]


def sgd_figure(s: backprop.SGDStep) -> go.Figure:
    """The loss before the step, after it, and what the gradient predicted (first order)."""
    names = ["before", "after (measured)", "after (predicted: −lr·Σ g²)"]
    values = [s.loss_before, s.loss_after, s.loss_before + s.predicted_change]
    fig = go.Figure(go.Bar(x=names, y=values, marker_color=[BAR, HIGHLIGHT if s.change > 0 else "#2ca02c", SECOND],
                           text=[f"{v:.6g}" for v in values], textposition="auto",
                           hovertemplate="%{x}: loss %{y:.6f}<extra></extra>"))
    low, high = min(values), max(values)
    pad = max(high - low, 1e-6 * max(abs(high), 1e-12))
    fig.update_yaxes(title_text="loss of this image", range=[max(0.0, low - pad), high + 0.5 * pad])
    fig.update_layout(height=320, font_size=PLOTLY_FONT, margin=MARGIN)
    return fig


def chain_sentences(c: backprop.Chain, class_names: Sequence[str]) -> dict[str, str]:
    """The words under each part of the chain, with the chain's numbers (Markdown; outside names escaped)."""
    label = md(class_names[c.label])
    p = c.probs[c.label].item()
    layer = md(c.weight.layer)
    o = c.weight.out_channel
    h, w = c.terms.shape
    return {
        "loss": f"The image is a **{label}**. The network gives it probability p = {p:.4f}, so the loss is "
                f"L = −log p = **{c.loss:.4g}**. The gradient of the loss with respect to each logit is p − 1 for "
                f"the true class ({c.grad_logits[c.label].item():+.4f}) and p for every other class: raising the "
                f"true class's logit lowers the loss, raising any other raises it.",
        "steps": f"Each layer after {layer} hands the gradient at its output back to its input (a vector-Jacobian "
                 f"product): {len(c.steps)} step{'s' * (len(c.steps) != 1)} from the logits back to {layer}'s "
                 f"output. The chart shows the size of the gradient after each one.",
        "sum": f"The weight w[{o},{c.weight.in_channel},{c.weight.ky},{c.weight.kx}] (now {c.weight_value:+.4f}) "
               f"is used at every one of the {h * w} positions of output map {o}, so its gradient is the sum of "
               f"{h * w} terms: at each position, the gradient arriving there times the input value the weight "
               f"multiplied there.",
        "result": f"Σ of the {h * w} terms = **{c.gradient:.6g}**; autograd, backpropagating through the whole "
                  f"network at once, gives **{c.autograd:.6g}** (relative difference {c.relative_error:.1e}).",
    }


def sgd_sentence(s: backprop.SGDStep) -> str:
    moved = ("every weight of the network moved by −lr × its own gradient" if s.everything else
             f"only this weight moved: {s.weight_before:+.5f} − {s.lr:g} × {s.gradient:+.5g} = {s.weight_after:+.5f}")
    verdict = ("The loss went **down**" if s.change < 0 else "The loss went **up**: the step was too big, it jumped "
               "over the valley; try a smaller learning rate" if s.change > 0 else "The loss did not change")
    return (f"With learning rate {s.lr:g}, {moved}. {verdict}: {s.loss_before:.6g} → {s.loss_after:.6g} "
            f"({s.change:+.3g}; the gradient predicted {s.predicted_change:+.3g}). The probability of the true class "
            f"went from {s.prob_before:.4f} to {s.prob_after:.4f}.")


# --- 2. why residual connections ------------------------------------------------------------------------------------

PLAIN, RESIDUAL = "plain-20", "resnet-20"  # models.PRESETS: the same convolutions, without and with shortcuts
RESIDUAL_DATASET = "shapes"  # built in, no download
# The step budget keeps the lesson under a minute on the classroom server's 2 cores, measured in the app with both
# cores busy with other work (load ~6): 27 s for plain-20 and 22 s for resnet-20 at 160 steps of 64 images, plus
# ~8 s making the shared shapes training split if no one has yet; 57 s from the click to the result.
RESIDUAL_STEPS = 160
RESIDUAL_BATCH = 64
RESIDUAL_TRAIN = 5_000  # training images (of the shared shapes training split)
RESIDUAL_TEST = 500  # test images measured
RESIDUAL_SEED = 0


def depth(preset: str) -> int:
    """How many conv layers a preset has on its main path (shortcut projections aside)."""
    spec = models.preset(preset, 3, 32, 2)
    return sum(r.kind == "Conv2d" and ".shortcut" not in r.name for r in models.summary(spec))


def residual_key(batchnorm: bool = True) -> tuple:
    """Everything the residual lesson depends on: the cache key of :func:`residual`."""
    return (PLAIN, RESIDUAL, RESIDUAL_DATASET, RESIDUAL_STEPS, RESIDUAL_BATCH, RESIDUAL_TRAIN, RESIDUAL_TEST,
            RESIDUAL_SEED, batchnorm)


_finished: set[tuple] = set()  # keys of residual lessons this server has computed: shown without a click


@st.cache_resource(show_spinner=False, max_entries=4)
def residual(plain_name: str, residual_name: str, dataset: str, steps: int, batch: int, n_train: int, n_test: int,
             seed: int, batchnorm: bool = True) -> gradients.ResidualLesson:
    """The residual lesson, computed once per server for these settings and shared read-only by every session.
    Without ``batchnorm``, both presets lose it (:func:`cnnviz.models.without_batchnorm`): then nothing rescales the
    signal between layers, and what the shortcuts do for the gradient shows on its own. Both nets train for the
    whole budget, even one still at chance: the lesson compares them step for step.

    Streamlit computes one key once: sessions asking for it meanwhile wait for that computation (a class pressing
    the button together trains the two nets once). Every random draw comes from ``seed``, so the result is the same
    whoever asks.
    """
    tr = state.dataset(dataset, train=True).subset(n_train, seed=seed)
    te = state.dataset(dataset, train=False).subset(n_test, seed=seed)
    info = tr.info
    specs = [models.preset(name, info.channels, info.size, info.num_classes) for name in (plain_name, residual_name)]
    if not batchnorm:
        specs = [models.without_batchnorm(spec) for spec in specs]
    config = train.TrainConfig(batch_size=batch, seed=seed, stop_when_stuck=False)
    lesson = gradients.residual_lesson(*specs, tr, te, steps=steps, config=config)
    _finished.add((plain_name, residual_name, dataset, steps, batch, n_train, n_test, seed, batchnorm))
    return lesson


def residual_ready(batchnorm: bool = True) -> bool:
    """Whether this server has the residual lesson for the current settings already."""
    return residual_key(batchnorm) in _finished


def has_batchnorm(preset: str) -> bool:
    """Whether every block of a preset normalises its convolutions (Inception blocks always do)."""
    return all(getattr(b, "batchnorm", True) for b in models.PRESETS[preset]["blocks"])


def residual_sentences(lesson: gradients.ResidualLesson, plain: str = PLAIN, residual_name: str = RESIDUAL,
                       batchnorm: bool = True) -> list[str]:
    """What the lesson measured, in words, every number read from ``lesson`` (``batchnorm``: whether its nets had
    it, as :func:`residual` trained them)."""
    p, r = lesson.plain, lesson.residual
    out = [f"Both nets trained for {lesson.steps} steps on the same {lesson.train_images:,} shapes images, with the "
           f"same batches and seed" + ("" if batchnorm else ", without batch norm")
           + f"; accuracy is measured on {lesson.test_images:,} test images."]
    for name, run in ((plain, p), (residual_name, r)):
        made = len(run.history["steps"])
        if run.history["status"] != "finished":
            out.append(f"{name} stopped after {made} of {lesson.steps} steps: {md(run.history['reason'])}")
    out.append(f"The first conv layer of the plain net ({md(p.first_layer)}) gets {p.first_over_last:.3g}× the "
               f"gradient of its last ({md(p.last_layer)}); with skips, {md(r.first_layer)} gets "
               f"{r.first_over_last:.3g}× that of {md(r.last_layer)} (medians over the run).")
    if not (math.isfinite(lesson.starving) and lesson.starving > 0):
        out.append("One of the two ratios could not be measured (a layer got no gradient at all).")
    elif lesson.starving >= 2:
        out.append(f"So the plain net's first layer is fed **{lesson.starving:.3g} times less** of the gradient "
                   f"than the residual net's: its early layers starve, because every layer in between shrinks the "
                   f"signal a little, and the shortcuts carry it back undiminished.")
    elif lesson.starving <= 0.5:
        out.append(f"Here the plain net's first layer gets {1 / lesson.starving:.3g} times *more* of the gradient "
                   f"than the residual net's: no starving was measured in this run.")
    else:
        bn = " Both use batch norm after every convolution, which keeps gradients in range on its own." if (
            batchnorm and has_batchnorm(plain) and has_batchnorm(residual_name)) else ""
        out.append(f"The two ratios are within a factor of {max(lesson.starving, 1 / lesson.starving):.2g}: the "
                   f"plain net's early layers are not starved here.{bn}")
    gap = 100 * lesson.accuracy_gap
    out.append(f"Test accuracy: plain **{p.test_accuracy:.1%}**, with skips **{r.test_accuracy:.1%}**: "
               + (f"the skips are worth **{gap:+.1f} points**." if abs(gap) >= 0.05 else "no difference.")
               + f" Guessing would get {1 / data.info(RESIDUAL_DATASET).num_classes:.1%}."
               + f" Training took {p.seconds:.0f} s and {r.seconds:.0f} s on this server.")
    if p.params == r.params:
        out.append(f"Both nets have the same {p.params:,} parameters: the shortcuts add none.")
    else:
        out.append(f"The plain net has {p.params:,} parameters, the residual one {r.params:,} (its projection "
                   f"shortcuts).")
    return out


# --- 3. VGG: stacked small kernels ----------------------------------------------------------------------------------

@st.cache_resource(max_entries=32, show_spinner=False)
def _growth(_model: nn.Module, model_id: str, size: int) -> tuple[arch.FieldRow, ...] | str:
    try:
        return tuple(arch.receptive_growth(_model, size))
    except ValueError as e:  # receptive fields cannot be read from this model's structure
        return str(e)


def growth(sm: SessionModel) -> list[arch.FieldRow] | str:
    """The current model's receptive-field rows (cached per model), or why they cannot be counted."""
    found = _growth(sm.model, sm.model_id, sm.info.size)
    return found if isinstance(found, str) else list(found)


@st.cache_resource(max_entries=8, show_spinner=False)
def _vgg_growth(channels: int, size: int, classes: int) -> tuple[models.ModelSpec, tuple[arch.FieldRow, ...]]:
    try:
        spec = models.preset("mini-vgg", channels, size, classes)
        models.check(spec)
    except models.SpecError:  # too big an input for the preset (an ImageNet model's 224 px): shapes' instead
        shapes = data.info("shapes")
        spec = models.preset("mini-vgg", shapes.channels, shapes.size, shapes.num_classes)
    return spec, tuple(arch.receptive_growth(spec))


def vgg_growth(info: data.DatasetInfo) -> tuple[models.ModelSpec, list[arch.FieldRow]]:
    """mini-vgg's spec for the model's input (shapes' when it is too big for it) and its rows."""
    spec, rows = _vgg_growth(info.channels, info.size, info.num_classes)
    return spec, list(rows)


def field_rows(rows: list[arch.FieldRow]) -> list[dict]:
    return [{"layer": r.layer, "kernel": f"{r.kernel}×{r.kernel}", "channels": r.channels, "convs so far": r.convs,
             "non-linearities before": r.activations, "sees (px)": f"{r.field}×{r.field}", "step (px)": r.jump,
             "its weights so far": r.weights, "one big kernel from the image instead": r.single_weights,
             "stack at this layer's channels": r.stack_weights_same,
             "one big kernel at this layer's channels": r.single_weights_same} for r in rows]


def field_figure(series: Sequence[tuple[str, list[arch.FieldRow]]]) -> go.Figure:
    """Receptive field (side, pixels) by conv layer, one line per model."""
    fig = go.Figure()
    for (name, rows), colour in zip(series, (BAR, SECOND, HIGHLIGHT)):
        layers = [text.plotly(r.layer) for r in rows]
        fig.add_scatter(x=[r.convs for r in rows], y=[r.field for r in rows], mode="lines+markers",
                        line=dict(color=colour, width=2.5), name=text.plotly(name), customdata=layers,
                        hovertemplate="%{customdata}: sees %{y}×%{y} px<extra>" + text.plotly(name) + "</extra>")
    fig.update_xaxes(title_text="conv layers from the input", dtick=1)
    fig.update_yaxes(title_text="one unit sees (pixels a side)", rangemode="tozero")
    fig.update_layout(height=380, font_size=PLOTLY_FONT, margin=MARGIN,
                      legend=dict(orientation="h", yanchor="bottom", y=1.02, xanchor="left", x=0))
    return fig


def weights_figure(rows: list[arch.FieldRow]) -> go.Figure:
    """Per conv layer: the weights of the stack so far against one kernel seeing as far, at that layer's channels."""
    names = [text.plotly(r.layer) for r in rows]
    fig = go.Figure()
    fig.add_bar(x=names, y=[r.stack_weights_same for r in rows], name="the stack of small kernels so far",
                marker_color=BAR, hovertemplate="%{x}: %{y:,} weights<extra>stack</extra>")
    fig.add_bar(x=names, y=[r.single_weights_same for r in rows], name="one kernel that sees as far",
                marker_color=HIGHLIGHT, hovertemplate="%{x}: %{y:,} weights<extra>one big kernel</extra>")
    fig.update_xaxes(type="category", title_text="conv layer")
    fig.update_yaxes(title_text="weights (log scale)", type="log", dtick=1)
    fig.update_layout(barmode="group", height=380, font_size=PLOTLY_FONT, margin=MARGIN,
                      legend=dict(orientation="h", yanchor="bottom", y=1.02, xanchor="left", x=0))
    return fig


def vgg_sentences(name: str, rows: list[arch.FieldRow], image_size: int) -> list[str]:
    """The stacked-kernel claims, counted on ``rows``: the deepest layer, and the first one that sees 5×5 with
    two 3×3 convolutions."""
    if not rows:
        return [f"{md(name)} has no conv layer to count."]
    out = []
    pair = next((r for r in rows if r.convs == 2 and r.kernel == 3 and rows[0].kernel == 3 and r.jump == 1), None)
    if pair is not None:
        out.append(f"In {md(name)}, {md(rows[0].layer)} and {md(pair.layer)} are two stacked 3×3 convolutions: one "
                   f"unit of {md(pair.layer)} sees {pair.field}×{pair.field} pixels, as one {pair.field}×{pair.field} "
                   f"kernel would, with a non-linearity in between.")
    last = rows[-1]
    more = last.single_weights_same / last.stack_weights_same if last.stack_weights_same else math.nan
    seen = (f"{last.field}×{last.field} pixels" + (f" (more than the {image_size}×{image_size} image: the units near "
                                                  f"the middle see all of it)" if last.field > image_size else ""))
    out.append(f"One unit of {md(last.layer)}, after {last.convs} convolutions and {last.activations} "
               f"non-linearities, sees {seen}. Its kernels so far, at {last.channels} channels all along, hold "
               f"{last.stack_weights_same:,} weights; one {last.field}×{last.field} kernel at {last.channels} "
               f"channels would hold {last.single_weights_same:,}: **{more:.1f}× as many**, with a single "
               f"non-linearity. The model's own kernels up to there hold {last.weights:,} weights.")
    return out


# --- 4. Inception: which branch for which object size ------------------------------------------------------------

INCEPTION_IMAGES = 600  # sized shapes measured: 150 per size bin
INCEPTION_SEED = 0


def inception_blocks(model: nn.Module) -> list[str]:
    """The module paths of the model's Inception blocks (ours, and torchvision's GoogLeNet's)."""
    return [name for name, m in model.named_modules()
            if name and (isinstance(m, models.Inception) or type(m).__name__ == "Inception")]


@st.cache_resource(max_entries=4, show_spinner="Drawing shapes at three sizes…")
def sized_split(size: int, n: int = INCEPTION_IMAGES, seed: int = INCEPTION_SEED) -> Split:
    """Shapes test images whose objects come at three sizes, once per server (read-only)."""
    return arch.sized_shapes(n, size=size, seed=seed)


@st.cache_resource(max_entries=16, ttl=cache.TTL, show_spinner=f"Measuring each branch on {INCEPTION_IMAGES} images…")
def _branches(_model: nn.Module, model_id: str, block: str, size: int) -> arch.BranchTable:
    return arch.branch_response(_model, block, sized_split(size))


def branch_response(sm: SessionModel, block: str) -> arch.BranchTable:
    """Each branch's response per object-size bin for one block of the model (cached per model and block)."""
    return _branches(sm.model, sm.model_id, block, sm.info.size)


def branch_figure(table: arch.BranchTable) -> go.Figure:
    """Size bins × branches, coloured by the branch's response relative to its own average (1 = average)."""
    branches = [text.plotly(b.removeprefix(table.block + ".")) for b in table.branches]
    bins = [f"{lo:.1f}–{hi:.1f} px ({n} images)" for lo, hi, n in zip(table.edges, table.edges[1:], table.counts)]
    z = table.relative
    finite = [v for row in z for v in row if math.isfinite(v)]
    spread = max((abs(v - 1) for v in finite), default=0.0) or 0.01
    fig = go.Figure(go.Heatmap(
        z=z, x=branches, y=bins, zmid=1, zmin=1 - spread, zmax=1 + spread, colorscale="RdBu", reversescale=True,
        texttemplate="%{z:.2f}×", colorbar=dict(title="× its average"),
        hovertemplate="%{x} on objects of %{y}: %{z:.3f}× its average<extra></extra>"))
    fig.update_xaxes(title_text=f"branch of {text.plotly(table.block)}", type="category", side="top")
    fig.update_yaxes(title_text="object size (side of a square of the same area)", type="category",
                     autorange="reversed")
    fig.update_layout(height=160 + 60 * len(bins), font_size=PLOTLY_FONT, margin=MARGIN)
    return fig


def branch_sentences(table: arch.BranchTable) -> list[str]:
    """Per size bin, which branch fires most relative to its average; then whether that changes with size."""
    out = []
    for lo, hi, n, rel, best in zip(table.edges, table.edges[1:], table.counts, table.relative, table.strongest):
        if not n:
            continue
        j = table.branches.index(best)
        out.append(f"Objects of {lo:.1f}–{hi:.1f} px ({n} images): **{md(best)}** fires most, {rel[j]:.2f}× its "
                   f"average.")
    winners = [b for b, n in zip(table.strongest, table.counts) if n]
    if len(set(winners)) > 1:
        out.append(f"The branch that fires most changes with the size of the object: {len(set(winners))} different "
                   f"branches win across the {len(winners)} size bins.")
    elif winners:
        out.append(f"The same branch ({md(winners[0])}) fires most for every size here: in this model the "
                   f"branches did not split the sizes between them.")
    return out


def conv_layers(model: nn.Module) -> list[str]:
    """The conv layers whose single weights the backpropagation lesson can follow."""
    return probe.layer_names(model, "conv")
