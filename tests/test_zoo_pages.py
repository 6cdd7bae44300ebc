"""Every page on a torchvision network (AppTest), with random weights written under torchvision's own file names in a
temporary TORCH_HOME: nothing is downloaded."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from streamlit.testing.v1 import AppTest

from cnnviz import images, probe, zoo
from cnnviz.ui import state
from cnnviz.ui.widgets import PickedImage
from tests.test_pages import APP, texts
from tests.test_zoo import fake_weights, published, put_weights, to_bytes  # noqa: F401  (published: a fixture)

PAGES = ["pages/explore.py", "pages/camera.py", "pages/convolution.py", "pages/hierarchy.py", "pages/lessons.py",
         "pages/train.py", "pages/home.py"]


@pytest.fixture
def hub(tmp_path, monkeypatch) -> Path:
    """An empty torch hub in a temporary $TORCH_HOME, and no zoo model loaded yet in this process or its caches."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(zoo, "_SHARED", {})
    monkeypatch.setattr(zoo, "_SHARED_SEEN", {})
    state.zoo_model.clear()
    yield tmp_path / "torch" / "hub" / "checkpoints"
    state.zoo_model.clear()


def photo(shift: int = 0) -> PickedImage:
    """A 320×240 'photo' with a bright square in it (moved right by ``shift``), as an upload would give."""
    arr = np.zeros((240, 320, 3), np.uint8)
    arr[60:180, 100 + shift:220 + shift] = (250, 200, 40)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG")
    raw = buf.getvalue()
    return PickedImage(raw, "your upload photo.jpg", hashlib.sha1(raw).hexdigest())


def on(name: str, page: str) -> AppTest:
    """The app on ``page`` with the zoo model ``name`` chosen and a photo picked."""
    at = AppTest.from_file(APP, default_timeout=180).run()
    at.session_state["model_choice"] = name
    at.session_state["explore_last_Upload"] = photo()
    at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def by_link(model: str) -> AppTest:
    """The app opened by a link that carries ``?model=…`` (the sidebar's first run, which AppTest sees whole)."""
    at = AppTest.from_file(APP, default_timeout=180)
    at.query_params["model"] = model
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.selectbox(key="model_pick").value == model
    return at


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "googlenet"])
def test_every_page_renders_on_a_zoo_network(hub, published, name):
    put_weights(hub, name)
    published.add(name)
    at = on(name, "pages/explore.py")
    body = texts(at)
    assert f"Looking inside **{zoo.TITLES[name]}**" in at.caption[0].value.replace("\\", "")
    assert "untrained" not in body and "as reported by torchvision" in body
    # The pipeline torchvision evaluates with: shorter side to 256, then the centre 224×224.
    assert at.radio(key="explore_resize").value == "crop"
    for view in ["Feature maps", "Filters", "Pooling", "Grad-CAM"]:
        at.session_state["explore_view"] = view
        at.switch_page("pages/explore.py").run()
        assert not at.exception, (view, [e.value for e in at.exception])
    for page in PAGES:
        at.switch_page(page).run()
        assert not at.exception, (page, [e.value for e in at.exception])
    # No test images of ImageNet here: the pages that need them say so instead of failing.
    at.switch_page("pages/hierarchy.py").run()
    assert "ImageNet's test images are not here" in texts(at)


@pytest.mark.slow
def test_a_link_opens_a_zoo_model_and_missing_weights_name_the_file(hub):
    at = by_link("resnet18")
    body = texts(at)
    assert "resnet18-f37072fd.pth" in body and str(hub) in body
    assert "ResNet-18 (untrained)" in body and "accuracy not measured" in body
    assert at.button(key="zoo_download_resnet18")  # torchvision downloads it, when the server is online


@pytest.mark.slow
def test_a_cached_file_that_is_not_torchvisions_quotes_no_imagenet_accuracy(hub):
    put_weights(hub, "resnet18")  # torchvision's file name, other contents
    body = texts(by_link("resnet18"))
    assert "ResNet-18 (weights not torchvision's)" in body.replace("\\", "")
    assert "as reported by torchvision" not in body and "accuracy not measured" in body


@pytest.mark.slow
def test_uploaded_weights_for_a_zoo_network_are_used_and_bad_ones_refused(hub):
    at = by_link("mobilenet_v3_small")
    good = to_bytes(fake_weights("mobilenet_v3_small", seed=3))
    digest = hashlib.sha1(good).hexdigest()
    # What the uploader hands over once a file arrives (AppTest cannot drive a file uploader).
    at.session_state["zoo_weights_raw_mobilenet_v3_small"] = good
    at.session_state["zoo_weights_mobilenet_v3_small"] = digest
    at.switch_page("pages/explore.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert "MobileNetV3-Small (your weights)" in at.caption[0].value.replace("\\", "")
    sm = at.session_state["_borrowed"]["mobilenet_v3_small"]
    assert sm.model_id == f"zoo-mobilenet_v3_small-upload-{digest}"
    assert torch.equal(sm.model.state_dict()["classifier.3.weight"],
                       fake_weights("mobilenet_v3_small", seed=3)["classifier.3.weight"])
    with pytest.raises(zoo.ZooError, match="shape"):
        bad = fake_weights("mobilenet_v3_small")
        bad["classifier.3.weight"] = bad["classifier.3.weight"][:10]
        state._uploaded_zoo("mobilenet_v3_small", "bad", to_bytes(bad))


@pytest.mark.slow
def test_feature_maps_of_a_big_layer_come_busiest_first_a_page_at_a_time(hub):
    at = on("resnet18", "pages/explore.py")
    at.session_state["explore_map_layer"] = "layer4.1.relu#2"  # 512 channels of 7×7
    at.switch_page("pages/explore.py").run()
    assert not at.exception
    pages = at.select_slider(key="explore_map_page_layer4.1.relu#2")
    assert pages.options[0] == "0 to 63" and len(pages.options) == 8
    assert at.radio(key="explore_map_order").value == "most active first"
    # The channel looked at closer is the layer's busiest one for this image.
    zm = zoo.shared("resnet18")
    x = images.prepare(images.load(photo().data), zm.info, resize="crop").tensor
    maps = probe.run(zm.model, x)["layer4.1.relu#2"].output[0]
    assert at.number_input(key="explore_channel").value == int(probe.busiest(maps)[0])


def test_the_page_offers_the_users_own_pictures_when_a_model_has_no_test_set(hub):
    at = on("mobilenet_v3_small", "pages/explore.py")
    source = at.button_group[0]
    assert "Test set" not in source.options and source.value == "Upload"


@pytest.mark.slow
def test_what_each_layer_learns_searches_the_pictures_you_brought(hub):
    put_weights(hub, "resnet18")
    at = AppTest.from_file(APP, default_timeout=300).run()
    at.session_state["model_choice"] = "resnet18"
    at.switch_page("pages/hierarchy.py").run()
    assert "Upload pictures or take photos on Explore" in texts(at)
    at.switch_page("pages/explore.py").run()
    for i in range(2):
        raw = photo(shift=40 * i).data
        at.file_uploader(key="explore_upload").set_value((f"p{i}.jpg", raw, "image/jpeg")).run()
        assert not at.exception, [e.value for e in at.exception]
    at.switch_page("pages/hierarchy.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert "the 2 pictures you brought to Explore" in texts(at)


def test_a_lessons_set_up_button_shows_for_a_model_without_test_images(hub):
    """A lesson step that only opens the Train page needs no test images: a torchvision model (none here) still
    gets the button, while a step that shows test images says they are missing."""
    put_weights(hub, "resnet18")
    at = on("resnet18", "pages/lessons.py")
    at.session_state["lesson"], at.session_state["step"] = "hierarchy", 0
    at.switch_page("pages/lessons.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert "lesson_train_0" in [b.key for b in at.button]
    at.session_state["step"] = 1  # the top patches of each layer: test images needed
    at.switch_page("pages/lessons.py").run()
    assert not at.exception and "lesson_train_0" not in [b.key for b in at.button]
    assert "test images are not here" in texts(at)
