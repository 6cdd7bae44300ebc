"""The Train page's "Your images" source and the pages on a model trained on it (AppTest).

AppTest cannot drive a file uploader, so these tests put into the session what the uploader's handler stores: the
dataset :func:`cnnviz.data.from_folder` made from a zip built here (the zip upload itself is driven in a real
browser by tests/test_browser_yours.py).
"""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from cnnviz import data
from tests.test_pages import APP, texts
from tests.test_zoo_pages import by_link
from tests.test_zoo_pages import photo as photo_upload



def photo(kind: str, i: int) -> bytes:
    """A photo of a red disc or a blue square on noise, of a size that differs from photo to photo."""
    rng = np.random.default_rng(i + (100 if kind == "squares" else 0))
    w, h = 60 + 7 * i, 50 + 5 * i
    arr = rng.integers(90, 160, (h, w, 3)).astype(np.uint8)
    yy, xx = np.mgrid[:h, :w]
    cy, cx, r = h / 2 + rng.integers(-5, 5), w / 2 + rng.integers(-5, 5), min(h, w) / 4
    inside = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2 if kind == "discs" else (abs(yy - cy) < r) & (abs(xx - cx) < r)
    arr[inside] = (230, 30, 30) if kind == "discs" else (30, 30, 230)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG" if i % 2 else "PNG")
    return buf.getvalue()


def photos_zip(n: int = 12) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for kind in ("discs", "squares"):
            for i in range(n):
                z.writestr(f"my photos/{kind}/{i}.{'jpg' if i % 2 else 'png'}", photo(kind, i))
        z.writestr("my photos/discs/broken.jpg", b"\xff\xd8\xff not really a jpeg")
    return buf.getvalue()


@pytest.fixture(scope="module")
def loaded() -> data.Loaded:
    return data.from_folder(photos_zip(), size=32, title="my photos")


def yours(loaded: data.Loaded) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=180).run()
    at.session_state["train_dataset"] = "yours"
    at.session_state["own_data"] = loaded
    at.session_state["own_data_digest"] = "x"
    at.switch_page("pages/train.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_the_page_says_what_was_kept_and_skipped_and_picks_settings_for_a_small_set(loaded):
    at = yours(loaded)
    body = texts(at)
    assert "24 images in 2 classes: discs (12), squares (12)" in body
    assert any(s.value["file"].tolist() == ["my photos/discs/broken.jpg"] for s in at.dataframe if "file" in s.value.columns)
    assert at.toggle(key="train_augment").value is True  # a small set learns more from shifted copies
    assert at.number_input(key="train_epochs").value == loaded.info.epochs
    assert at.radio(key="train_preset").value == loaded.info.preset


@pytest.mark.slow
def test_train_on_your_images_then_explore_an_image_of_your_class(loaded):
    import time

    at = yours(loaded)
    at.button(key="train_start").click().run()
    assert not at.exception, [e.value for e in at.exception]
    deadline = time.monotonic() + 240
    while at.session_state.job.snapshot().active:
        assert time.monotonic() < deadline, "training did not finish"
        time.sleep(0.5)
    at.run()
    at.run()
    assert "Done:" in texts(at), texts(at)
    sm = at.session_state.model
    assert sm.info.class_names == ("discs", "squares") and sm.source == "trained here"
    # The session's own test images are there to pick from, by the user's class names.
    at.switch_page("pages/explore.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert "Test set" in at.button_group[0].options
    at.selectbox(key="explore_class").set_value("squares").run()
    assert not at.exception
    assert "(a squares)" in texts(at)
    for page in ("pages/convolution.py", "pages/hierarchy.py", "pages/lessons.py"):
        at.switch_page(page).run()
        assert not at.exception, (page, [e.value for e in at.exception])


def test_without_a_dataset_yet_the_page_asks_for_one():
    at = AppTest.from_file(APP, default_timeout=180).run()
    at.session_state["train_dataset"] = "yours"
    at.switch_page("pages/train.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert "Upload a zip of class folders, or make classes here" in texts(at)
    assert at.get("file_uploader")  # the zip uploader


@pytest.fixture
def own_code():
    """`cnnviz app --model tests.own_model:make --classes …` as the server process sees it: the model registered."""
    from cnnviz import usercode
    from tests import own_model

    usercode.register(usercode.from_module(own_model.make(), classes=list(own_model.CLASSES), input_size=64,
                                           title="tests.own_model:make"))
    yield
    usercode.register(None)


@pytest.mark.slow
def test_every_page_renders_on_the_users_own_model(own_code):
    at = by_link("code")
    assert "Your code: tests.own_model:make" in at.selectbox(key="model_pick").format_func("code")
    at.session_state["explore_last_Upload"] = photo_upload()
    at.switch_page("pages/explore.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.session_state["_borrowed"]["code"].info.class_names == ("cat", "dog", "bird", "fish")
    # Layers inside blocks and branches are layers like any other, named by their module path.
    assert {"res.body.0", "branch.paths.1.0"} <= set(at.select_slider(key="explore_map_layer").options)
    for view in ["Filters", "Pooling", "Grad-CAM"]:
        at.session_state["explore_view"] = view
        at.switch_page("pages/explore.py").run()
        assert not at.exception, (view, [e.value for e in at.exception])
    for page in ("pages/convolution.py", "pages/lessons.py", "pages/train.py", "pages/hierarchy.py"):
        at.switch_page(page).run()
        assert not at.exception, (page, [e.value for e in at.exception])
    # A page that needs the model's training images says so instead of failing.
    assert "The images your model was trained on are not here" in texts(at)


def test_make_classes_in_the_browser_by_upload_then_use_them():
    at = AppTest.from_file(APP, default_timeout=180).run()
    at.session_state["train_dataset"] = "yours"
    at.switch_page("pages/train.py").run()
    at.button_group(key="own_how").set_value("Make classes here").run()
    assert at.button(key="own_use").disabled  # no classes yet
    for i, kind in enumerate(("discs", "squares")):
        at.text_input(key="own_new_class").input(kind).run()
        at.button(key="own_add_class").click().run()
        assert not at.exception, [e.value for e in at.exception]
        files = [(f"{kind}{j}.png", photo(kind, j), "image/png") for j in range(6)]
        at.file_uploader(key=f"own_files_{i}").set_value(files).run()
        assert not at.exception, [e.value for e in at.exception]
    assert "discs** · 6 pictures" in texts(at) and "squares** · 6 pictures" in texts(at)
    at.button(key="own_use").click().run()
    assert not at.exception, [e.value for e in at.exception]
    loaded = at.session_state["own_data"]
    assert loaded.info.class_names == ("discs", "squares") and len(loaded.train) + len(loaded.test) == 12
    assert "12 images in 2 classes: discs (6), squares (6)" in texts(at)
    # The page goes on to the architecture and the Train button, with settings for a small set.
    assert at.button(key="train_start") and at.toggle(key="train_augment").value is True
