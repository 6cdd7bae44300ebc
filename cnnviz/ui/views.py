"""Views shared by the Learn pages and the lessons: each draws one figure for the session's model, with its words."""

from __future__ import annotations

import streamlit as st
import torch

from cnnviz import data, explain, figures, gradcam, maximize, pictures, probe, receptive
from cnnviz.data import DatasetError, Split
from cnnviz.text import md
from cnnviz.ui import cache, state
from cnnviz.ui.cache import figure_png
from cnnviz.ui.state import SessionModel


def test_split(sm: SessionModel, or_brought: bool = False) -> Split | None:
    """The model's test images; else, with ``or_brought``, the pictures the user brought to Explore; else None and
    a sentence saying why."""
    try:
        return state.test_split(sm.info)
    except DatasetError as e:
        mine = state.brought_split(sm.info) if or_brought else None
        if mine is not None:
            st.info(f"{md(e)} Shown here: the {len(mine)} pictures you brought to Explore (uploads and photos; the "
                    f"last {state.BROUGHT} are kept). Bring more to search more.", icon=":material/photo_library:")
            return mine
        st.info(md(e) + (" Upload pictures or take photos on Explore: this page then searches them."
                         if or_brought else ""), icon=":material/info:")
        return None


def _layer(sm: SessionModel, wanted: str | None, kinds: tuple[str, ...]) -> str:
    """``wanted`` if the model has it, else the first layer of the given kinds (models differ); ``"last"`` is the
    deepest map the model makes, the one Grad-CAM reads (``relu4`` in the gap preset, ``relu2`` in tiny)."""
    if wanted == "last":
        return gradcam.default_layer(sm.model)
    names = [n for k in kinds for n in probe.layer_names(sm.model, k)]
    return wanted if wanted in names else names[0]


def windows(sm: SessionModel) -> dict[str, int]:
    """The side of the input square one cell of each layer sees, by layer name; empty for a model whose receptive
    fields cannot be read from its structure."""
    found = _receptive(sm.model, sm.model_id, sm.info.size)
    return {} if isinstance(found, str) else {f.name: f.size for f in found}


def filters(sm: SessionModel) -> None:
    weights = probe.filters(sm.model)
    name, w = next(iter(weights.items()))
    st.image(figure_png((sm.model_id, "filters", name), lambda: figures.filter_grid(
        w, title=f"{name}: {w.shape[0]} filters of {w.shape[2]}×{w.shape[3]}")), width="stretch")
    st.caption(explain.filters(name, tuple(w.shape), first=True))


def feature_maps(sm: SessionModel, split: Split, layer: str | None = None, index: int = 0) -> None:
    info = sm.info
    layer = _layer(sm, layer, ("activation", "conv"))
    x = data.normalize(split.x[index: index + 1], info)
    rec = probe.run(sm.model, x)[layer]
    a, b = st.columns([1, 3])
    a.image(figures.to_png(figures.image_strip([("the image", figures.to_pil(figures.input_image(x, info)))])),
            width="stretch")
    b.image(figure_png((sm.model_id, "lesson-maps", layer, index), lambda: pictures.feature_grid(
        rec.output[0], title=f"{layer}: {explain.shape_words(tuple(rec.output.shape[1:]))}")), width="stretch")
    st.caption(explain.feature_maps(rec, windows(sm).get(layer), info.size))


def top_patches(sm: SessionModel, split: Split, layer: str | None = None, rows: int = 8) -> None:
    info = sm.info
    layer = _layer(sm, layer, ("activation", "pool", "conv"))
    found = cache.top_patches(sm.model, sm.model_id, split, split.info.name, layer, 6)
    channels = sorted(found, key=lambda c: -found[c][0].value)[:rows]
    rf = next(f for f in fields(sm, ("conv", "activation", "pool", "norm", "dropout")) if f.name == layer)
    size = min(rf.size, info.size)
    st.image(figure_png((sm.model_id, "patches", layer, rows, split.info.name), lambda: figures.patch_grid(
        [(f"#{c}", [p.pixels for p in found[c]]) for c in channels], size=size,
        title=f"{layer}: the 6 test patches each of its {len(channels)} busiest channels fires on most")),
        width="stretch")
    st.caption(f"Each row is one channel; each patch is the {size}×{size} window one cell of {layer} sees, cut from "
               f"the test image where that channel fired hardest. What a row shares is what the channel detects.")


def pooling(sm: SessionModel, split: Split, index: int = 0, channel: int | None = None) -> None:
    x = data.normalize(split.x[index: index + 1], sm.info)
    pairs = probe.pooling_pairs(probe.run(sm.model, x))
    if not pairs:
        st.info("This model has no pooling layer.")
        return
    pair = pairs[0]
    if channel is None:  # the busiest channel shows the most
        channel = int(pair.input.flatten(1).amax(1).argmax())
    st.image(figure_png((sm.model_id, "lesson-pool", pair.name, index, channel), lambda: figures.pooling_pair(
        pair, channel)), width="stretch")
    st.caption(explain.pooling(pair))


@st.cache_resource(max_entries=32, show_spinner=False)
def _receptive(_model, model_id: str, size: int) -> tuple[receptive.RF, ...] | str:
    """A model's receptive fields, read once per model (0.3 s for a zoo network); the reason when they cannot be."""
    try:
        return tuple(receptive.receptive_fields(_model, size))
    except ValueError as e:
        return str(e)


def fields(sm: SessionModel, kinds: tuple[str, ...] = ("conv", "pool"), maps: bool = False) -> list[receptive.RF]:
    """The receptive fields of the model's layers of these kinds, in order (``maps``: only layers whose output is
    bigger than 1×1, not a global pool); empty for a model whose receptive fields cannot be read from its structure."""
    found = _receptive(sm.model, sm.model_id, sm.info.size)
    if isinstance(found, str):
        return []
    return [f for f in found if probe.kind_of(probe.get_module(sm.model, f.name)) in kinds
            and (f.out_size > 1 or not maps)]


MAX_BOXES = 6  # squares drawn on one image, rows of the overview: more would hide it (ResNet-18 has 20 conv layers)


def spread(items: list, n: int) -> list:
    """At most ``n`` of ``items``, evenly spread from the first to the last (all of them when they fit)."""
    if len(items) <= n:
        return list(items)
    return [items[i] for i in dict.fromkeys(round(k * (len(items) - 1) / (n - 1)) for k in range(n))]


def receptive_fields(sm: SessionModel, split: Split) -> None:
    info = sm.info
    found = fields(sm, maps=True)
    if not found:
        st.info("The receptive fields of this model cannot be read from its structure.")
        return
    shown = spread(found, MAX_BOXES)
    boxes = [(f"{f.name}: {f.size}×{f.size}", receptive.window(f, f.out_size // 2, f.out_size // 2, info.size))
             for f in shown]
    x = data.normalize(split.x[:1], info)
    st.image(figure_png((sm.model_id, "rf", split.info.name), lambda: figures.image_with_boxes(
        figures.input_image(x, info), boxes, title="What one cell in the middle of each layer sees")),
        width="stretch")
    # The mean side of the objects' bounding boxes, where the dataset has masks: the scale a layer must reach.
    side = None if split.masks is None else float((split.masks.any(2).sum(1) + split.masks.any(1).sum(1)).float()
                                                  .mean() / 2)
    st.caption(explain.receptive_field(shown[-1].name, shown[-1].size, shown[-1].jump, info.size, side))


AUTO_SIZE = 64  # inputs up to this side are synthesised as the page opens; bigger networks on request
BIG_LIMIT = 3  # channels synthesised at once for a bigger network (about 15 s each for ResNet-18 on one core)


def maximized(sm: SessionModel, layer: str | None = None, limit: int = 12, cols: int = 4) -> None:
    """Activation maximisation for the first ``limit`` channels of a layer, with a progress bar; kept per session
    so it runs once per layer."""
    info, model = sm.info, sm.model
    layer = _layer(sm, layer, ("activation", "pool", "conv"))
    big = info.size > AUTO_SIZE
    if big:
        limit = min(limit, BIG_LIMIT)
    key = f"maxim::{sm.model_id}::{layer}::{limit}"
    if key not in st.session_state:
        if big and not st.button(f"Make an input for each of {limit} channels of {layer}", key=f"maxim_go_{layer}",
                                 icon=":material/auto_awesome:"):
            st.caption(f"A {info.size}×{info.size} network takes a while for this (each channel is hundreds of "
                       "forward and backward passes), so it starts when you ask.")
            return
        width = probe.run(model, torch.zeros(1, *info.input_shape))[layer].output.shape[1]
        channels = list(range(min(limit, width)))
        bar = st.progress(0.0, text="Synthesising an input for each channel…")
        # A big colour network gets Lucid's recipe (Olah et al. 2017): without it its inputs come out as noise.
        style = {"style": "lucid", "info": info} if big and info.channels == 3 else {}
        results = maximize.maximize_layer(model, layer, info.input_shape, channels, **style,
                                          on_step=lambda i, n: bar.progress(i / n, text=f"Step {i} of {n}"))
        bar.empty()
        st.session_state[key] = results
    results = st.session_state[key]
    imgs = (data.denormalize(torch.stack([r.image for r in results]).cpu(), info) * 255).to(torch.uint8)
    st.image(figures.to_png(figures.sample_grid(imgs, [f"#{r.channel}" for r in results], cols=cols,
                                                title=f"{layer}: inputs made to excite each channel")),
             width="stretch")
    st.caption(explain.maximized(layer, windows(sm).get(layer), info.size))


def overview(sm: SessionModel, split: Split) -> None:
    info = sm.info
    found_levels = fields(sm, ("activation", "pool"))
    levels = spread(found_levels, MAX_BOXES)  # each level is one search through the images
    rows = []
    for f in levels:
        found = cache.top_patches(sm.model, sm.model_id, split, split.info.name, f.name, 6)
        best = max(found, key=lambda c: found[c][0].value)
        rows.append((f"{f.name}\n{f.size}×{f.size}", [p.pixels for p in found[best]]))
    st.image(figure_png((sm.model_id, "overview", split.info.name), lambda: figures.patch_grid(
        rows, size=min(max(f.size for f in levels), info.size),
        title="Busiest channel of each layer: its top 6 patches (window size under the name)")), width="stretch")
    st.caption(explain.overview([(f.name, f.size) for f in levels], info.size))


def gradcam_grid(sm: SessionModel, split: Split, n: int = 6, wrong: bool = False) -> None:
    """Grad-CAM overlays for ``n`` test images of different classes: predicted class, or a class not predicted."""
    model, info = sm.model, sm.info
    picks = [int((split.y == c).nonzero()[0]) for c in range(min(n, info.num_classes))]
    cols = st.columns(len(picks))
    gaps = []
    for col, i in zip(cols, picks):
        x = data.normalize(split.x[i: i + 1], info)
        predicted = int(probe.predict(model, x).argmax())
        target = (predicted + 1) % info.num_classes if wrong else predicted
        res = cache.cam(model, sm.model_id, x, f"test-{i}", None, target, "gradcam")
        if wrong:
            gaps.append(cache.cam(model, sm.model_id, x, f"test-{i}", None, predicted, "gradcam").score - res.score)
        col.image(figures.overlay_image(figures.input_image(x, info), res.heatmap, 0.5), width="stretch",
                  caption=f"'{md(info.class_names[target])}', score {res.score:.1f} "
                          f"(true: {md(info.class_names[int(split.y[i])])})")
    if wrong:
        st.caption(explain.wrong_class(gaps))


@st.cache_data(max_entries=16, ttl=cache.TTL, show_spinner="Playing the pointing game on 200 test images…")
def _pointing(_model, model_id: str, _split: Split, dataset: str, n: int
              ) -> tuple[tuple[float, float], tuple[float, float]]:
    """Hit rates (strict, within 1 pixel) of the Grad-CAM peak and of the centre pixel, on the same images."""
    masks = _split.masks[:n]
    found = gradcam.peaks(_model, data.normalize(_split.x[:n], _split.info))
    return ((gradcam.hits(found, masks).rate, gradcam.hits(found, masks, tolerance=1).rate),
            (gradcam.centre_hits(masks).rate, gradcam.centre_hits(masks, tolerance=1).rate))


def pointing(sm: SessionModel, split: Split, n: int = 200) -> None:
    if split.masks is None:
        st.info("This dataset has no object masks, so the pointing game needs the shapes dataset.")
        return
    n = min(n, len(split))
    model, centre = _pointing(sm.model, sm.model_id, split, split.info.name, n)
    c = st.columns(3)
    c[0].metric("Heatmap peak on the object", f"{model[0]:.0%}", help=f"over the first {n} test images")
    c[1].metric("Centre pixel on the object", f"{centre[0]:.0%}",
                help="the same images and masks, always pointing at the middle of the image")
    c[2].metric("Gain over the centre", f"{(model[0] - centre[0]) * 100:+.0f} points")
    st.caption(explain.pointing(n, model, centre))


def evolution(sm: SessionModel, key: str = "evolution_frame") -> None:
    frames = sm.ckpt.filter_frames if sm.ckpt is not None else []
    if len(frames) < 2:
        st.info("This model has no record of its training. Train one on the Train page to replay its filters.")
        return
    st.session_state.setdefault(key, len(frames) - 1)
    i = st.slider("Training progress", 0, len(frames) - 1, key=key, format=f"frame %d of {len(frames) - 1}")
    step, weights = frames[i]
    st.image(figure_png((sm.model_id, "evolution", i), lambda: figures.filter_grid(
        weights, title=f"First-layer filters after {step} training steps")), width="stretch")
    st.caption(explain.evolution([s for s, _ in frames], probe.filter_drift(frames), i))
