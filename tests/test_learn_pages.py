"""The Learn pages and lessons, driven through AppTest; links (query parameters) open the same state."""

from __future__ import annotations

import pytest

from cnnviz import gradcam, lessons, probe
from test_pages import app, texts


def test_convolution_page_numbers_equal_the_models_output():
    at = app("pages/convolution.py")
    assert any("the same number" in s.value for s in at.success), texts(at)
    at.selectbox(key="conv_layer").set_value("conv2").run()
    at.number_input(key="conv_channel").set_value(7).run()
    at.slider(key="conv_row").set_value(0).run()
    at.slider(key="conv_col").set_value(15).run()
    assert not at.exception
    assert any("conv2 output at channel 7, row 0, column 15" in s.value and "the same number" in s.value
               for s in at.success)
    assert "Batch norm (bn2)" in texts(at) and "relu2" in texts(at)
    assert "Max pooling looks at the 2×2 window" in texts(at)


def test_convolution_sweep_steps_through_cells():
    at = app("pages/convolution.py")
    at.button(key="conv_step_btn").click().run()
    at.button(key="conv_step_btn").click().run()
    assert at.session_state.conv_sweep == 2
    at.button(key="conv_reset").click().run()
    assert at.session_state.conv_sweep == 0 and not at.exception


def test_hierarchy_page_shows_every_section():
    at = app("pages/hierarchy.py")
    assert not at.exception, [e.value for e in at.exception]
    body = texts(at)
    assert "One cell of **conv4** sees a 16×16 pixel window" in body
    assert "activation maximisation" in body and "The windows grow from 3×3 pixels at relu1" in body
    assert "the window of conv4 is at least as big as an average object" in body  # shapes: ~15 px across
    for claim in ("edge, colour and spot detectors", "then textures, then parts", "Early layers give colours"):
        assert claim not in body  # claims never measured on the model are gone
    assert len(at.image) >= 5
    # The replay says how far training moved the filters, measured from the model's own frames.
    frames = at.session_state.model.ckpt.filter_frames
    drift = probe.filter_drift(frames)
    assert f"After {frames[-1][0]} steps they are on average {drift[-1].mean():.0%} of their starting size" in body
    at.slider(key="hier_frame").set_value(0).run()
    assert "At step 0 the filters hold the random numbers they started from." in texts(at)
    at.select_slider(key="hier_layer").set_value("relu2").run()
    assert not at.exception and "relu2" in texts(at)


@pytest.mark.slow
@pytest.mark.parametrize("lesson", lessons.LESSONS, ids=lambda x: x.id)
def test_every_lesson_step_renders(lesson):
    at = app("pages/lessons.py")
    at.button(key=f"start_{lesson.id}").click().run()
    for i, step in enumerate(lesson.steps):
        assert not at.exception, (step.title, [e.value for e in at.exception])
        assert at.title[0].value == step.title
        assert at.query_params["lesson"] == lesson.id and at.query_params["step"] == str(i)
        if step.params.get("wrong"):  # the scores of the classes not picked, measured against the predicted one
            assert "below the predicted class" in texts(at)
        if i < len(lesson.steps) - 1:
            at.button(key="lesson_next").click().run()
    at.button(key="lesson_back").click().run()
    assert at.title[0].value == lesson.steps[-2].title


def test_lesson_link_opens_that_step():
    from streamlit.testing.v1 import AppTest

    from test_pages import APP

    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params.update({"lesson": "gradcam", "step": "2", "presenter": "1"})
    at.run()
    at.switch_page("pages/lessons.py").run()
    assert not at.exception
    assert at.title[0].value == "How often does it point at the object?"
    assert any(m.value.startswith("### Over many test images") for m in at.markdown)  # presenter mode: large type
    from cnnviz import data

    metric = {m.label: m.value for m in at.metric}
    model, centre = (float(metric[k].rstrip("%")) for k in ("Heatmap peak on the object", "Centre pixel on the object"))
    # The baseline is measured on the same 200 images and masks: always pointing at the centre pixel.
    masks = data.load(at.session_state.model.ckpt.info.name, train=False).masks[:200]
    assert centre == round(gradcam.centre_hits(masks).rate * 100) and 50 < centre < 80  # shapes: objects near the middle
    gain = int(metric["Gain over the centre"].split()[0])
    assert model > centre + 10 and abs(gain - (model - centre)) <= 1  # the rates are rounded on screen
    assert f"{gain} percentage points better than the centre" in texts(at)


def test_explore_link_restores_the_view_and_ignores_nonsense():
    from streamlit.testing.v1 import AppTest

    from test_pages import APP

    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params.update({"explore_map_layer": "pool1", "explore_channel": "3", "explore_cam_method": "nope",
                            "explore_class": "ring", "explore_seed": "2"})
    at.run()
    at.switch_page("pages/explore.py").run()
    assert not at.exception
    assert at.select_slider(key="explore_map_layer").value == "pool1"
    assert at.number_input(key="explore_channel").value == 3
    assert "(a ring)" in texts(at)
    at.number_input(key="explore_channel").set_value(4).run()
    assert at.query_params["explore_channel"] == "4"
    at.button_group(key="explore_view").set_value("Grad-CAM").run()
    assert at.radio(key="explore_cam_method").value == "gradcam"  # the bad value was dropped
    assert at.query_params["explore_view"] == "Grad-CAM"  # the link carries the view too


def _train_page_from_link(query: dict[str, str]):
    """A new session opened by a link carrying ``query``, then on the Train page."""
    from streamlit.testing.v1 import AppTest

    from test_pages import APP

    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params.update(query)
    at.run()
    at.switch_page("pages/train.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_train_link_sets_up_the_overfitting_run():
    at = _train_page_from_link({"train_size": "200", "train_epochs": "30"})
    assert at.select_slider(key="train_size").value == "200"
    assert at.number_input(key="train_epochs").value == 30


def _use_model(at, spec, info):
    from cnnviz import checkpoint, models
    from cnnviz.train import History

    ck = checkpoint.Checkpoint(models.build(spec, seed=0).eval(), spec, info, History())
    at.file_uploader(key="upload_model").set_value(("other.pt", checkpoint.to_bytes(ck), "x")).run()
    assert at.session_state.model.source == "uploaded: other.pt"


@pytest.mark.parametrize("page", ["pages/explore.py", "pages/convolution.py", "pages/hierarchy.py"])
def test_pages_work_for_a_greyscale_deep_model(page, tmp_path, monkeypatch):
    from cnnviz import data, models
    from test_data import _write_mnist

    _write_mnist(tmp_path, n_train=40, n_test=30)
    monkeypatch.setenv("CNNVIZ_DATA_DIR", str(tmp_path))
    at = app("pages/train.py")
    _use_model(at, models.preset("deep", 1, 28, 10), data.info("mnist"))
    at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    assert len(at.image) >= 2


@pytest.mark.parametrize("page", ["pages/convolution.py", "pages/explore.py"])
def test_pages_work_when_maps_shrink_to_one_cell(page):
    from cnnviz import data, models

    info = data.info("shapes")
    spec = models.ModelSpec(3, 32, 8, [models.ConvBlock(8)] * 5, global_pool=True)  # 32 → 1 after five pools
    at = app("pages/train.py")
    _use_model(at, spec, info)
    at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]


def test_a_set_up_button_opens_the_train_page_set_up_even_after_the_student_chose_otherwise():
    """A lesson's or a page's "Open the Train page with …" sets the page up although the student's own choices on it
    are kept in the session (a link's query parameters only seed widgets that have no value yet)."""
    at = app("pages/train.py")
    at.radio(key="train_preset").set_value("tiny").run()
    at.switch_page("pages/lessons.py").run()
    at.button(key="start_hierarchy").click().run()
    at.button(key="lesson_train_0").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.title[0].value == "Train a CNN"  # the button switched page
    from cnnviz import data, parts

    assert at.selectbox(key="train_dataset").value == "parts"
    assert at.radio(key="train_preset").value == data.DATASETS["parts"].preset  # the dataset's own defaults
    assert at.number_input(key="train_epochs").value == data.DATASETS["parts"].epochs
    assert at.session_state.train_lr == parts.LR


def test_a_link_to_a_dataset_brings_its_defaults_unless_the_link_sets_them():
    from cnnviz import data

    at = _train_page_from_link({"train_dataset": "parts", "train_epochs": "3"})
    assert at.radio(key="train_preset").value == data.DATASETS["parts"].preset
    assert at.number_input(key="train_epochs").value == 3  # the link's own value wins
