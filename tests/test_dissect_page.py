"""#14 in the app: "What each layer learns" dissects a model trained on parts, beside its untrained control."""

from __future__ import annotations

from streamlit.testing.v1 import AppTest

from cnnviz import data, dissect, models
from cnnviz.ui import dissection, state
from tests.test_pages import APP, texts


def on_hierarchy(sm: state.SessionModel, **values) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=300)
    at.session_state["model"] = sm
    for key, value in values.items():
        at.session_state[key] = value
    # Straight to the page, run on its own: a run of the whole app first would draw the sidebar's model picker with
    # labels this test model changes, which AppTest cannot replay.
    at.switch_page("pages/hierarchy.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_a_model_not_trained_on_parts_is_pointed_to_the_train_page():
    at = on_hierarchy(state.SessionModel(_shapes_model(), data.info("shapes"), "test-shapes", "test"))
    assert "This needs a model trained on the **parts** dataset" in texts(at)
    assert "dissect_go" not in [b.key for b in at.button]


def _shapes_model():
    info = data.info("shapes")
    return models.build(models.preset("tiny", info.channels, info.size, info.num_classes), seed=0).eval()


def test_dissecting_a_parts_model_draws_both_charts_with_the_measured_sentences(monkeypatch):
    monkeypatch.setattr(dissection, "IMAGES", 60)
    info = data.info("parts")
    model = models.build(models.preset("parts", info.channels, info.size, info.num_classes), seed=0).eval()
    sm = state.SessionModel(model, info, "test-parts", "built in a test")
    assert "dissect_go" in [b.key for b in on_hierarchy(sm).button]
    # What the button does (a second run here trips AppTest over the sidebar's model picker, whose labels changed).
    at = on_hierarchy(sm, **{f"dissected_{sm.model_id}": True})
    assert len(at.get("plotly_chart")) >= 2
    trained = dissect.dissect(model, images=60)
    control = dissect.dissect(dissect.untrained(model, seed=dissection.CONTROL_SEED), images=60)
    captions = [c.value for c in at.caption]
    assert dissection.trend(trained, True) in captions
    assert any(c.startswith(dissection.trend(control, True)) for c in captions)
    assert any(s.value == "The units behind a bar" for s in at.subheader)


def test_a_default_dissection_stays_in_its_cache_and_is_computed_once(monkeypatch):
    """The scenes a dissection points to are shared (parts.cached): its cache must not count them, or a default
    dissection (2,000 scenes, ~57 MB of images and masks) would never be kept and every rerun would dissect again."""
    from cnnviz.ui import cache

    info = data.info("parts")
    model = models.build(models.preset("parts", info.channels, info.size, info.num_classes), seed=0).eval()
    found = dissect.dissect(model, images=dissect.IMAGES)
    assert cache.nbytes(found.scenes) > cache.dissection.cache.max_bytes  # the scenes alone would not fit
    assert cache.nbytes(found) < cache.dissection.cache.max_bytes / 2
    calls = []
    monkeypatch.setattr(dissect, "dissect", lambda *a, **k: calls.append(1) or found)
    first = cache.dissection(model, "test-cache-once", False, dissect.IMAGES, lambda f: None)
    again = cache.dissection(model, "test-cache-once", False, dissect.IMAGES, lambda f: None)
    assert first is again is found and calls == [1]


def test_the_hierarchy_lesson_dissects_a_parts_model_and_shows_its_units(monkeypatch):
    """The lesson's measured step: one chart of both dissections, the measured sentences, then the units."""
    monkeypatch.setattr(dissection, "IMAGES", 60)
    info = data.info("parts")
    model = models.build(models.preset("parts", info.channels, info.size, info.num_classes), seed=0).eval()
    sm = state.SessionModel(model, info, "test-parts-lesson", "built in a test")

    def step(i: int, **values) -> AppTest:
        at = AppTest.from_file(APP, default_timeout=300)
        at.session_state["model"] = sm
        at.session_state["lesson"], at.session_state["step"] = "hierarchy", i
        for key, value in values.items():
            at.session_state[key] = value
        at.switch_page("pages/lessons.py").run()
        assert not at.exception, [e.value for e in at.exception]
        return at

    at = step(2)
    assert at.title[0].value == "Count what each layer detects"
    assert "lesson_dissect_go" in [b.key for b in at.button] and not at.image  # nothing runs until asked
    at = step(2, **{f"dissected_{sm.model_id}": True})
    trained = dissect.dissect(model, images=60)
    control = dissect.dissect(dissect.untrained(model, seed=dissection.CONTROL_SEED), images=60)
    captions = " ".join(c.value for c in at.caption)
    for sentence in (dissection.trend(trained, True), dissection.trend(trained, False),
                     dissection.trend(control, True), dissection.trend(control, False)):
        assert sentence in captions
    assert len(at.image) >= 1 and not at.get("plotly_chart")  # one static chart: light for a class's browsers
    at = step(3, **{f"dissected_{sm.model_id}": True})
    assert at.title[0].value == "Meet the detectors"
    assert at.selectbox(key="dissect_layer").value == trained.names[-1]
    assert any(c.value.startswith("Choose a layer and a kind of concept") for c in at.caption)  # no bars to click
    shown = len(trained.layer(trained.names[-1]).units_in("object", rule=False))
    assert len(at.image) == min(6, shown) or "No unit of" in " ".join(i.value for i in at.info)


def test_the_control_note_is_said_only_when_the_control_detects_colours():
    info = data.info("parts")
    model = models.build(models.preset("parts", info.channels, info.size, info.num_classes), seed=0).eval()
    control = dissect.dissect(dissect.untrained(model, seed=dissection.CONTROL_SEED), images=60)
    n = control.layers[0].counts(rule=True)["colour"]
    note = dissection.control_note(control)
    assert (f"{n} of the {len(control.layers[0].units)} units" in note) if n else note == ""
    for unit in control.layers[0].units:
        unit.detector = False  # no detector left: nothing to say
    assert dissection.control_note(control) == ""
