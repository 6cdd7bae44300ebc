"""The pages as a user drives them, through their widgets, with streamlit.testing.v1.AppTest."""

from __future__ import annotations

import io
import re
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parent.parent / "app.py")


def app(page: str | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120).run()
    assert not at.exception, [e.value for e in at.exception]
    if page:
        at.switch_page(page).run()
        assert not at.exception, [e.value for e in at.exception]
    return at


def texts(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption] + [e.value for e in at.error]
    parts += [s.value for s in at.success] + [i.value for i in at.info] + [w.value for w in at.warning]
    return re.sub(r"\\(.)", r"\1", "\n".join(parts))  # as read on screen: outside text arrives Markdown-escaped


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_home_shows_journey_and_shipped_model():
    at = app()
    assert at.title[0].value.startswith("cnnviz")
    body = texts(at)
    assert "Shapes (built in)" in body and "test accuracy" in body
    assert len(at.get("page_link")) >= 3
    assert at.session_state.model.model_id.startswith("shipped-")


def test_train_page_defaults_render_layer_table():
    at = app("pages/train.py")
    assert "parameters" in texts(at)
    table = next(d.value for d in at.dataframe if "layer" in d.value.columns)
    assert list(table["layer"])[:3] == ["input", "conv1", "bn1"] and "fc" in list(table["layer"])
    assert at.button(key="train_start").disabled is False
    assert at.button(key="train_stop").disabled is True


def test_train_hint_counts_the_steps_the_settings_give():
    """The hint before the first run is computed from the settings on screen, not a promised time."""
    from cnnviz import data, train

    at = app("pages/train.py")
    n = len(data.load("shapes", True))
    n_train = n - min(500, n // 10)  # the page holds out validation images

    def hint() -> str:
        return next(i.value for i in at.info if "Press **Train**" in i.value)

    assert hint() == (f"Press **Train** to start: {2 * -(-n_train // 128):,} steps of 128 images, from {n_train:,} "
                      f"training images.")
    at.selectbox(key="train_batch").set_value(64).run()
    at.select_slider(key="train_size").set_value("1,000").run()
    # 2 epochs of 1,000 would be 32 steps: a small set gets the minimum number of steps, so that it still learns
    steps = max(32, train.TrainConfig().min_steps)
    assert steps > 32 and hint() == f"Press **Train** to start: {steps} steps of 64 images, from 1,000 training images."


def _wait_for_job(at: AppTest, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while at.session_state.job.snapshot().active:
        assert time.monotonic() < deadline, "training did not finish"
        time.sleep(0.5)
    at.run()  # the page notices the end of the job and adopts the model
    at.run()


@pytest.mark.slow
def test_short_training_on_shapes_finishes_and_becomes_the_model():
    at = app("pages/train.py")
    at.select_slider(key="train_size").set_value("1,000").run()
    at.number_input(key="train_epochs").set_value(1).run()
    at.button(key="train_start").click().run()
    assert not at.exception, [e.value for e in at.exception]
    job = at.session_state.job
    at.button(key="train_start").click().run()  # a second click must not start a second job
    assert at.session_state.job is job
    _wait_for_job(at)
    assert not at.exception, [e.value for e in at.exception]
    assert "Done:" in texts(at)
    metric = next(m for m in at.metric if m.label == "Test accuracy")
    assert float(metric.value.rstrip("%")) > 30  # 8 classes: chance is 12.5 %
    assert at.session_state.model.source == "trained here"
    assert len(at.session_state.model.ckpt.filter_frames) >= 2


def test_stop_keeps_the_last_good_model():
    at = app("pages/train.py")
    at.number_input(key="train_epochs").set_value(20).run()
    at.button(key="train_start").click().run()
    at.button(key="train_stop").click().run()
    _wait_for_job(at)
    assert at.session_state.job.snapshot().status == "stopped"
    assert "Stopped" in texts(at)
    assert at.session_state.model.source == "trained here"


def test_diverging_run_shows_the_reason_and_keeps_the_model(monkeypatch):
    from dataclasses import replace

    import torch

    from cnnviz.ui import state

    # Whether a too-high learning rate blows up, and when, depends on thread counts and rounding. Data that cannot
    # be normalised (std 0: every input is ±inf or NaN) makes the first loss NaN, every time. It travels with the
    # data to the training process, where a patched function would not.
    real = state.dataset

    def unnormalisable(name, train=False, data_dir=None):
        split = real(name, train, data_dir)
        return replace(split, info=replace(split.info, std=(0.0,) * split.info.channels))

    monkeypatch.setattr(state, "dataset", unnormalisable)
    at = app("pages/train.py")
    before = at.session_state.model.model_id
    at.select_slider(key="train_size").set_value("1,000").run()
    at.button(key="train_start").click().run()
    _wait_for_job(at)
    assert at.session_state.job.snapshot().status == "diverged"
    assert "diverged" in texts(at) and "learning rate" in texts(at)
    assert not at.exception
    # The model that is adopted is the last good state (here the starting weights), never NaN.
    assert all(torch.isfinite(p).all() for p in at.session_state.model.ckpt.model.parameters())
    assert at.session_state.model.model_id != before
    assert at.session_state.model.ckpt.history.steps == [] and "at step 1" in texts(at)


@pytest.mark.parametrize("raw", [b"not a model at all", b"", b"PK\x03\x04truncated zip"])
def test_bad_checkpoint_upload_shows_error_and_keeps_model(raw):
    at = app("pages/train.py")
    before = at.session_state.model.model_id
    at.file_uploader(key="upload_model").set_value(("model.pt", raw, "application/octet-stream")).run()
    assert not at.exception
    assert any("current model is unchanged" in e.value for e in at.error)
    assert at.session_state.model.model_id == before


def test_good_checkpoint_upload_replaces_model():
    from cnnviz.ui.state import SHIPPED_MODEL

    at = app("pages/train.py")
    at.file_uploader(key="upload_model").set_value(("mine.pt", SHIPPED_MODEL.read_bytes(), "x")).run()
    assert at.session_state.model.source == "uploaded: mine.pt"
    assert not at.error and not at.exception


# --- Explore ------------------------------------------------------------------------------------------------------

VIEW_WORDS = {"Feature maps": "maps of", "Filters": "Each small square is one filter", "Pooling": "shrinks each map",
              "Grad-CAM": "Red means"}


def view(at: AppTest, name: str) -> AppTest:
    """Show one of Explore's views (the page draws one at a time)."""
    at.button_group(key="explore_view").set_value(name).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _views_rendered(at: AppTest) -> None:
    """Each of Explore's four views draws its pictures and explains them; the prediction stays in words."""
    assert not at.exception, [e.value for e in at.exception]
    for name, words in VIEW_WORDS.items():
        view(at, name)
        body = texts(at)
        assert "The network is" in body  # prediction in words
        assert words in body, name
        assert len(at.image) >= 2  # the preprocessing steps and the view's own figure


def test_explore_default_test_image_renders_every_view():
    at = app("pages/explore.py")
    _views_rendered(at)
    assert at.get("download_button")


def _upload(at: AppTest, name: str, raw: bytes) -> AppTest:
    at.pills(key="explore_source").set_value("Upload").run()
    at.file_uploader(key="explore_upload").set_value((name, raw, "application/octet-stream")).run()
    return at


PHOTO = Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 90, 3), dtype=np.uint8))


@pytest.mark.parametrize("name, raw", [
    ("photo.png", encode(PHOTO, "PNG")),
    ("photo.jpg", encode(PHOTO, "JPEG")),
    ("anim.gif", encode(PHOTO.convert("P"), "GIF")),
    ("rgba.png", encode(PHOTO.convert("RGBA"), "PNG")),
    ("grey16.png", encode(Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)), "PNG")),
    ("cmyk.jpg", encode(PHOTO.convert("CMYK"), "JPEG")),
    ("tiny.bmp", encode(Image.new("L", (1, 1), 200), "BMP")),
    ("wide.webp", encode(Image.new("RGB", (900, 3), (10, 200, 30)), "WEBP")),
])
def test_explore_uploads_in_many_formats(name, raw):
    at = _upload(app("pages/explore.py"), name, raw)
    _views_rendered(at)
    assert f"your upload {name}" in texts(at)
    # A picture unlike the training data still gets one of the model's classes: the page says which it knows.
    names = at.session_state.model.ckpt.info.class_names
    assert f"It knows only its {len(names)} classes ({', '.join(names[:-1])} and {names[-1]})" in texts(at)


@pytest.mark.parametrize("raw, words", [
    (b"%PDF-1.4 definitely not an image", "not an image"),
    (encode(PHOTO, "PNG")[:200], "damaged or incomplete"),
    (b"", "empty"),
])
def test_explore_bad_upload_keeps_last_good_image(raw, words):
    at = _upload(app("pages/explore.py"), "good.png", encode(PHOTO, "PNG"))
    model_before = at.session_state.model.model_id
    at.file_uploader(key="explore_upload").set_value(("bad.png", raw, "image/png")).run()
    assert any(words in e.value and "last good image is still shown" in e.value for e in at.error), \
        [e.value for e in at.error]
    _views_rendered(at)
    assert "your upload good.png" in texts(at)
    assert at.session_state.model.model_id == model_before


def test_a_bad_first_upload_does_not_promise_a_last_good_image():
    at = app("pages/explore.py")
    at.pills(key="explore_source").set_value("Upload").run()
    at.file_uploader(key="explore_upload").set_value(("bad.png", b"%PDF-1.4 not an image", "image/png")).run()
    [error] = [e.value for e in at.error]
    assert error.startswith("This file is not an image") and error.endswith("Please choose another file.")
    assert "last good image" not in error
    assert "Choose an image on the left" in texts(at)


def test_explore_switching_to_an_empty_upload_shows_the_uploader_alone_and_switching_back_keeps_the_test_image():
    at = app("pages/explore.py")
    test_image = at.session_state["explore_last_Test set"]
    assert "The network is" in texts(at) and len(at.image) >= 2
    at.pills(key="explore_source").set_value("Upload").run()
    assert not at.exception
    assert "Choose an image on the left" in texts(at) and "The network is" not in texts(at) and len(at.image) == 0
    at.file_uploader(key="explore_upload").set_value(("good.png", encode(PHOTO, "PNG"), "image/png")).run()
    assert "your upload good.png" in texts(at) and "The network is" in texts(at)
    at.pills(key="explore_source").set_value("Test set").run()
    assert at.session_state["explore_last_Test set"] == test_image and test_image.label in texts(at)


def test_explore_huge_upload_refused(monkeypatch):
    from cnnviz import images

    monkeypatch.setattr(images, "MAX_PIXELS", 100)
    at = _upload(app("pages/explore.py"), "big.png", encode(Image.new("RGB", (50, 50)), "PNG"))
    assert any("50×50 pixels" in e.value for e in at.error)
    assert not at.exception


def test_explore_controls_change_views_without_errors():
    at = app("pages/explore.py")
    at.select_slider(key="explore_map_layer").set_value("gap").run()  # 48 maps of 1×1: one number per channel
    assert not at.exception and "48 maps of 1×1" in texts(at)
    at.select_slider(key="explore_map_layer").set_value("relu3").run()
    at.number_input(key="explore_channel").set_value(5).run()
    view(at, "Grad-CAM")
    at.radio(key="explore_cam_method").set_value("gradcam++").run()
    at.radio(key="explore_cam_method").set_value("hirescam").run()
    at.selectbox(key="explore_cam_class").set_value(3).run()
    at.radio(key="explore_cam_method").set_value("saliency").run()
    view(at, "Filters")
    at.selectbox(key="explore_filter_layer").set_value("conv2").run()
    at.radio(key="explore_resize").set_value("pad").run()
    _views_rendered(at)
    view(at, "Feature maps")
    assert "32 maps of 16×16" in texts(at)


def test_explore_cam_controls_change_the_map_as_they_should(monkeypatch):
    """Class, layer and method each give the map they name: the page's own CamResult equals one computed here."""
    import torch

    from cnnviz import gradcam, images
    from cnnviz.inspection import inspect
    from cnnviz.ui import cache

    shown = []  # every CamResult the page asked for, in order: per run the main map, then the comparison's
    real = cache.cam
    monkeypatch.setattr(cache, "cam", lambda *a, **k: shown.append(real(*a, **k)) or shown[-1])
    at = view(app("pages/explore.py"), "Grad-CAM")
    model, info = at.session_state.model.ckpt.model, at.session_state.model.ckpt.info
    x = inspect(model, info, images.load(at.session_state["explore_last_Test set"].data)).x

    def main_map() -> gradcam.CamResult:
        assert not at.exception, [e.value for e in at.exception]
        return shown[-2]

    first = main_map()
    predicted = int(model(x).argmax())
    assert (first.layer, first.target, first.method) == (gradcam.default_layer(model), predicted, "gradcam")
    other = (predicted + 1) % info.num_classes
    at.selectbox(key="explore_cam_class").set_value(other).run()
    by_class = main_map()
    assert by_class.target == other and (by_class.heatmap - first.heatmap).abs().max() > 0.1
    torch.testing.assert_close(by_class.heatmap, gradcam.compute(model, x, "relu4", other).heatmap)

    at.selectbox(key="explore_cam_layer").set_value("relu3").run()
    by_layer = main_map()
    assert by_layer.layer == "relu3" and by_layer.raw.shape == (16, 16)
    torch.testing.assert_close(by_layer.heatmap, gradcam.compute(model, x, "relu3", other).heatmap)
    assert (by_layer.heatmap - by_class.heatmap).abs().max() > 0.1

    # HiResCAM: another map at relu3, Grad-CAM's own at relu4 (global average pool), as the help says.
    assert "can differ" in at.radio(key="explore_cam_method").help
    at.radio(key="explore_cam_method").set_value("hirescam").run()
    hires = main_map()
    assert hires.method == "hirescam" and (hires.heatmap - by_layer.heatmap).abs().max() > 0.01
    at.selectbox(key="explore_cam_layer").set_value("relu4").run()
    assert "give the same map" in at.radio(key="explore_cam_method").help
    torch.testing.assert_close(main_map().heatmap, by_class.heatmap, atol=1e-5, rtol=0)
    for method in ("gradcam++", "saliency"):
        at.radio(key="explore_cam_method").set_value(method).run()
        result = main_map()
        assert result.method == method and (result.heatmap - by_class.heatmap).abs().max() > 0.05
    assert result.layer == "input"


def test_explore_draw_source_paints_an_image():
    at = app("pages/explore.py")
    at.pills(key="explore_source").set_value("Draw").run()
    assert not at.exception
    at.session_state["explore_ink_32"] = set(range(32 * 10, 32 * 14))  # a horizontal bar, as if lassoed
    at.run()
    assert "your drawing" in texts(at)
    _views_rendered(at)


def test_choosing_a_dataset_starts_from_its_own_preset_and_epochs():
    at = app("pages/train.py")
    assert at.radio(key="train_preset").value == "gap" and at.number_input(key="train_epochs").value == 2
    at.radio(key="train_preset").set_value("deep").run()
    at.selectbox(key="train_dataset").set_value("fashion-mnist").run()  # not downloaded here: the page says so
    assert not at.exception
    assert at.session_state.train_preset == "tiny" and at.session_state.train_epochs == 3
    at.selectbox(key="train_dataset").set_value("shapes").run()
    assert at.radio(key="train_preset").value == "gap" and at.number_input(key="train_epochs").value == 2
