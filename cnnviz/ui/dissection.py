"""The measured hierarchy on "What each layer learns": network dissection (:mod:`cnnviz.dissect`) of the session's
model on the ``parts`` dataset, beside the same architecture with fresh random weights (the control).

A dissection takes tens of seconds of CPU, so it runs only when a student asks, one at a time per server (others
wait their turn, with a message), and its result is cached by the model's id: every student looking at the same
weights gets the first one's result.
"""

from __future__ import annotations

import streamlit as st
from cnnviz import dissect, dissect_figures, parts, text
from cnnviz.ui import cache, links
from cnnviz.ui.cache import figure_png
from cnnviz.ui.state import SessionModel

IMAGES = dissect.IMAGES  # scenes dissected: the paper's measure needs enough pixels of every concept
CONTROL_SEED = cache.DISSECTION_CONTROL_SEED  # the untrained control's weights: the same for everyone
CATEGORIES = (*parts.CATEGORIES, dissect.NONE)


def _share(layer: dissect.Layer, categories: tuple[str, ...], rule: bool) -> float:
    counts = layer.counts(rule=rule)
    return 100 * sum(counts[c] for c in categories) / max(1, len(layer.units))


def trend(d: dissect.Dissection, rule: bool) -> str:
    """One sentence on the climb from the first conv layer to the last, computed from ``d``."""
    first, last = d.layers[0], d.layers[-1]
    low, high = ("colour", "texture"), ("part", "object")
    return (f"{text.md(first.name)}: {_share(first, low, rule):.0f} % colour or texture units and "
            f"{_share(first, high, rule):.0f} % part or object units; {text.md(last.name)}: "
            f"{_share(last, low, rule):.0f} % and {_share(last, high, rule):.0f} %.")


INTRO = (
    "Network dissection (Bau et al., 2017) measures what each unit detects. Every scene of the **parts** dataset "
    "comes with a mask of each colour, texture, part (an eye, a wheel, a roof) and object. A unit's region is "
    "where it fires most (its top 0.5 % of activations); it *detects* a concept when that region overlaps the "
    f"concept's masks with an IoU of at least {dissect.IOU_THRESHOLD:g}. Counting each layer's detectors shows "
    "whether features climb from colours and textures to parts and objects.")


def measured(sm: SessionModel, button_key: str = "dissect_go") -> tuple[dissect.Dissection, dissect.Dissection] | None:
    """The dissection of the session's model and of its untrained control, once the student asked for it (a button,
    then a progress bar); ``None`` while it has not been asked for, or when the model was not trained on parts (then
    it says how to get one)."""
    if sm.info.name != "parts":
        st.info("This needs a model trained on the **parts** dataset, whose pictures carry those masks. Train one "
                "(about a minute), then come back here.", icon=":material/info:")
        links.open_train("Train on parts", {"train_dataset": "parts"}, key=f"{button_key}_train")
        return None
    key = f"dissected_{sm.model_id}"
    if not st.session_state.get(key):
        st.caption(f"It runs {len(dissect.conv_layers(sm.model))} conv layers over {IMAGES:,} scenes, twice: this "
                   f"model and the same architecture untrained. About a minute on a small server.")
        if not st.button("Dissect this model", icon=":material/biotech:", key=button_key):
            return None
        st.session_state[key] = True
    bar = st.progress(0.0, text="Dissecting your model…")
    if cache.dissecting.locked():
        bar.progress(0.0, text="Another student's dissection is running; yours starts when it ends…")
    trained = cache.dissection(sm.model, sm.model_id, False, IMAGES,
                               lambda f: bar.progress(min(1.0, f / 2), text="Dissecting your model…"))
    control = cache.dissection(sm.model, sm.model_id, True, IMAGES,
                               lambda f: bar.progress(min(1.0, 0.5 + f / 2), text="Dissecting the untrained control…"))
    bar.empty()
    return trained, control


def chart(sm: SessionModel, trained: dissect.Dissection, control: dissect.Dissection) -> None:
    """Both dissections as one static chart (both rules), with the measured sentences under it: a lesson's view."""
    st.image(figure_png(("dissect_chart", sm.model_id, IMAGES),
                        lambda: dissect_figures.hierarchy_chart(trained, control)), width="stretch")
    st.caption(f"**Your model**, detectors: {trend(trained, True)} By best concept: {trend(trained, False)}")
    st.caption(f"**Untrained control**, detectors: {trend(control, True)} By best concept: {trend(control, False)}"
               + control_note(control))
    st.caption(f"{len(trained.scenes):,} scenes; dissecting both took {trained.seconds + control.seconds:.0f} s.")


def control_note(control: dissect.Dissection) -> str:
    """What the untrained control's first layer already detects, when it detects colours at the paper's rule."""
    first = control.layers[0]
    n = first.counts(rule=True)["colour"]
    if not n:
        return ""
    return (f" Even untrained, {n} of the {len(first.units)} units of {text.md(first.name)} detect a colour: a colour "
            "detector needs no learning.")


def section(sm: SessionModel) -> None:
    """Dissect the session's model when it was trained on parts; otherwise say how to get such a model."""
    st.markdown(INTRO)
    found = measured(sm)
    if found is None:
        return
    trained, control = found

    rule = not st.toggle("Count each unit's best concept, whatever its IoU", key="dissect_soft",
                         help="The paper's rule counts only units whose IoU reaches the threshold. Each unit's best "
                              "concept shows the same trend more softly, in every unit.")
    left, right = st.columns(2)
    with left:
        st.subheader("Your model", anchor=False)
        event = st.plotly_chart(dissect_figures.layer_bars(trained, rule=rule), on_select="rerun",
                                selection_mode="points", key="dissect_bars", width="stretch")
        st.caption(trend(trained, rule))
    with right:
        st.subheader("The same architecture, untrained", anchor=False)
        st.plotly_chart(dissect_figures.layer_bars(control, rule=rule), key="dissect_control", width="stretch")
        st.caption(trend(control, rule) + control_note(control))
    st.caption(f"{len(trained.scenes):,} scenes; dissecting both took {trained.seconds + control.seconds:.0f} s.")

    units(trained, rule, _chosen(event), sm.model_id)


def _chosen(event) -> tuple[str, str] | None:
    """The (layer, category) of the bar the student clicked, if any."""
    points = getattr(getattr(event, "selection", None), "points", None) or []
    for point in points:
        data = point.get("customdata")
        if isinstance(data, (list, tuple)) and len(data) == 2:
            return str(data[0]), str(data[1])
    return None


def units(d: dissect.Dissection, rule: bool, chosen: tuple[str, str] | None, model_id: str,
          clickable: bool = True) -> None:
    """The units of one layer and category (the bar clicked, or chosen here), each with the scenes it fires on;
    ``clickable``: the page above has bars to click (a lesson's static chart has not)."""
    st.subheader("The units behind a bar", anchor=False)
    st.caption(("Click a bar above, or choose" if clickable else "Choose") + " a layer and a kind of concept. Each "
               "picture is one of the scenes the "
               "unit fires on most; outside its region the scene is dimmed.")
    if chosen and chosen[0] in d.names and chosen[1] in CATEGORIES:
        st.session_state.dissect_layer, st.session_state.dissect_category = chosen
    if st.session_state.get("dissect_layer") not in d.names:
        st.session_state.dissect_layer = d.names[-1]
    if st.session_state.get("dissect_category") not in CATEGORIES:
        st.session_state.dissect_category = "object"
    c1, c2 = st.columns([2, 3])
    layer_name = c1.selectbox("Layer", d.names, key="dissect_layer")
    category = c2.segmented_control("Kind of concept", CATEGORIES, key="dissect_category") or "object"
    units = sorted(d.layer(layer_name).units_in(category, rule=rule), key=lambda u: -u.iou)
    if not units:
        st.info(f"No unit of {layer_name} is counted under {category} here.", icon=":material/info:")
        return
    st.write(f"{len(units)} unit{'s' * (len(units) != 1)} of {layer_name}, best IoU first:")
    for u in units[:6]:
        png = figure_png(("dissect_unit", model_id, layer_name, u.unit),
                         lambda u=u: dissect_figures.unit_images(d, layer_name, u.unit, count=8, cols=8))
        st.image(png, width="stretch")
