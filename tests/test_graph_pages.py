"""Every page on models with residual and Inception blocks (#13), and Explore's look inside a block."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from cnnviz import data, models
from cnnviz.ui import state
from tests.test_pages import APP

PAGES = ["pages/home.py", "pages/train.py", "pages/explore.py", "pages/camera.py", "pages/convolution.py",
         "pages/hierarchy.py", "pages/lessons.py", "pages/architectures.py"]


def session_model(preset: str) -> state.SessionModel:
    info = data.info("shapes")
    model = models.build(models.preset(preset, info.channels, info.size, info.num_classes), seed=0).eval()
    return state.SessionModel(model, info, f"test-{preset}", "built in a test")


def sm_spec(preset: str) -> models.ModelSpec:
    info = data.info("shapes")
    return models.preset(preset, info.channels, info.size, info.num_classes)


def on(sm: state.SessionModel, page: str, **values) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=240)
    at.session_state["model"] = sm
    for key, value in values.items():
        at.session_state[key] = value
    at.run()
    at.switch_page(page).run()
    assert not at.exception, (page, [e.value for e in at.exception])
    return at


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["mini-resnet", "mini-inception"])
def test_every_page_renders_on_a_graph_model(preset):
    sm = session_model(preset)
    for page in PAGES:
        on(sm, page)


@pytest.mark.parametrize(("preset", "layer", "panels"), [
    ("mini-resnet", "block2.add", ["x (what the shortcut carries)", "F(x) (the two convolutions)",
                                   "x + F(x) (the sum)"]),
    ("mini-inception", "inc2.branch3x3.conv2", ["branch1x1", "branch3x3", "branch5x5", "branchpool"]),
])
def test_explore_shows_the_parts_of_the_block_a_layer_is_in(preset, layer, panels):
    sm = session_model(preset)
    at = on(sm, "pages/explore.py", explore_view="Feature maps", explore_map_layer=layer)
    block = layer.split(".")[0]
    assert any(h.value.startswith(f"Inside {block}") for h in at.subheader), [h.value for h in at.subheader]
    images_before = len(on(sm, "pages/explore.py", explore_view="Feature maps",
                           explore_map_layer=models.summary(sm_spec(preset))[1].name).get("image"))
    assert len(at.get("image")) == images_before + len(panels)  # one grid per part of the block
    words = "shortcut" if preset == "mini-resnet" else "branch"
    assert any(words in m.value for m in at.markdown)
