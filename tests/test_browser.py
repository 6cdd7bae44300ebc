"""The whole app in a real headless browser: train on shapes, explore an uploaded photo, open a lesson link."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from browser_support import SCREENSHOTS, assert_no_exception, browser_page, streamlit_server, wait_until_idle

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def app_url():
    with streamlit_server() as url:
        yield url


def _photo_like(path) -> None:
    """A smooth, noisy colour image with a bright disc, like a photo of a round object."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:240, 0:320]
    img = np.stack([xx / 320 * 120 + 40, yy / 240 * 100 + 60, np.full_like(xx, 90.0)], -1)
    disc = (xx - 170) ** 2 + (yy - 120) ** 2 < 70 ** 2
    img[disc] = [240, 230, 60]
    img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
    Image.fromarray(img).save(path, format="PNG")


def _goto(page, url: str, path: str, title: str) -> None:
    page.goto(f"{url}/{path}")
    page.get_by_role("heading", name=title).wait_for(timeout=120_000)
    wait_until_idle(page, 120_000)


def test_train_page_trains_and_shows_curves_and_accuracy(app_url):
    with browser_page() as page:
        _goto(page, app_url, "", "cnnviz: see what a convolutional network sees")
        page.get_by_test_id("stSidebarNav").get_by_text("Train a CNN").click()
        page.get_by_text("1 · Data").wait_for()
        wait_until_idle(page, 120_000)
        # Few images and one epoch keep the browser test short; the full default run is in `make bench`.
        page.get_by_test_id("stNumberInput").filter(has_text="Epochs").locator("input").fill("1")
        page.keyboard.press("Enter")
        wait_until_idle(page)
        page.get_by_role("button", name="Train", exact=False).filter(has_text="Train").first.click()
        page.get_by_text("Done:").wait_for(timeout=180_000)
        page.get_by_text("4 · Results").wait_for(timeout=60_000)
        wait_until_idle(page, 120_000)
        page.screenshot(path="/tmp/train_debug.png", full_page=True)
        assert page.locator(".js-plotly-plot").count() >= 3  # curves, per-class accuracy, confusion matrix
        assert page.get_by_text("Test accuracy").count() >= 1
        assert_no_exception(page)
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "train.png"), full_page=True)


# Words each of Explore's views explains itself with.
EXPLAINED = {"Feature maps": "maps of", "Pooling": "shrinks each map", "Grad-CAM": "Red means",
             "Filters": "Each small square is one filter"}


def test_explore_page_upload_photo_and_bad_file(app_url, tmp_path):
    photo = tmp_path / "photo.png"
    _photo_like(photo)
    junk = tmp_path / "notes.png"
    junk.write_bytes(b"this is not an image at all")
    with browser_page() as page:
        _goto(page, app_url, "explore", "Explore an image")
        page.get_by_text("Upload", exact=True).click()
        wait_until_idle(page)
        page.locator('input[type="file"]').set_input_files(str(photo))
        page.get_by_text("your upload photo.png").wait_for(timeout=60_000)
        wait_until_idle(page)
        assert page.get_by_text("The network is").count() == 1  # the prediction, in words
        # The preprocessing steps (original, resized, what the network sees: one image each), the top-5 bars, the
        # feature maps, one map enlarged beside the input, and each channel's activation.
        assert page.locator('[data-testid="stImage"] img').count() == 3 + 1 + 1 + 2 + 1
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "explore.png"), full_page=True)
        for view in ("Feature maps", "Pooling", "Grad-CAM", "Filters"):  # the page draws one view at a time
            page.locator('[data-testid="stButtonGroup"]').get_by_role("radio", name=view, exact=True).click()
            wait_until_idle(page)
            page.get_by_text(EXPLAINED[view]).first.wait_for(timeout=60_000)
            if view != "Filters":
                page.screenshot(path=str(SCREENSHOTS / f"explore-{view.lower().replace(' ', '-')}.png"),
                                full_page=True)
            assert page.locator('[data-testid="stImage"] img').count() >= 2, view
        assert_no_exception(page)
        page.locator('input[type="file"]').set_input_files(str(junk))
        page.get_by_text("This file is not an image").wait_for(timeout=30_000)
        wait_until_idle(page)
        assert page.get_by_text("The network is").count() == 1  # the last good image and its views stay
        assert_no_exception(page)


@pytest.mark.parametrize("preset, block, parts", [
    ("mini-resnet", "block3", "x, F(x) and x + F(x)"),
    ("mini-inception", "inc3", "its branches side by side"),
])
def test_a_residual_or_inception_model_loaded_on_the_train_page_shows_its_blocks(app_url, tmp_path, preset, block,
                                                                                parts):
    from cnnviz import checkpoint, data, models
    from cnnviz.train import History

    info = data.info("shapes")
    spec = models.preset(preset, info.channels, info.size, info.num_classes)
    saved = checkpoint.save(checkpoint.Checkpoint(models.build(spec, seed=0).eval(), spec, info,
                                                  History(status="finished")), tmp_path / f"{preset}.pt")
    convs = sum(1 for row in models.summary(spec) if row.kind == "Conv2d")
    with browser_page() as page:
        _goto(page, app_url, "", "cnnviz: see what a convolutional network sees")
        page.get_by_test_id("stSidebarNav").get_by_text("Train a CNN").click()
        page.get_by_role("heading", name="Train a CNN").wait_for(timeout=60_000)
        wait_until_idle(page, 120_000)
        page.get_by_test_id("stFileUploader").filter(has_text="Load a saved model").locator(
            'input[type="file"]').set_input_files(str(saved))
        sidebar = page.get_by_test_id("stSidebar")
        sidebar.get_by_text("Source: uploaded").wait_for(timeout=120_000)
        assert f"{convs} conv layers" in sidebar.inner_text()
        page.get_by_test_id("stSidebarNav").get_by_text("Explore an image").click()
        page.get_by_role("heading", name="Explore an image").wait_for(timeout=60_000)
        wait_until_idle(page, 120_000)
        page.get_by_text("The network is").wait_for(timeout=120_000)  # the prediction, in words
        # The layer slider's last layers are gap, drop3 and the last block's output: walk there by keyboard.
        thumb = page.locator(".st-key-explore_map_layer [tabindex=\"0\"]").first  # the slider's thumb
        for key in ("End", "ArrowLeft", "ArrowLeft"):
            thumb.focus()
            page.keyboard.press(key)
            wait_until_idle(page)
        page.get_by_role("heading", name=f"Inside {block}: {parts}").wait_for(timeout=60_000)
        wait_until_idle(page)
        assert page.locator('[data-testid="stImage"] img').count() >= 5 + (3 if preset == "mini-resnet" else 4)
        assert_no_exception(page)
        for view in ("Pooling", "Grad-CAM", "Filters"):
            page.locator('[data-testid="stButtonGroup"]').get_by_role("radio", name=view, exact=True).click()
            wait_until_idle(page)
            page.get_by_text(EXPLAINED[view]).first.wait_for(timeout=60_000)
            assert_no_exception(page)
        # Every Learn page explains the same loaded model without an error.
        for title, shown in (("Convolution step by step", "the same number"),
                             ("What each layer learns", "How much of the image each layer sees"),
                             ("Lessons", "Short guided lessons"),
                             ("Backpropagation and architectures", "Backpropagation for one weight")):
            page.get_by_test_id("stSidebarNav").get_by_text(title).click()
            wait_until_idle(page, 120_000)
            page.get_by_text(shown).first.wait_for(timeout=60_000)
            assert_no_exception(page)
            assert "Source: uploaded" in page.get_by_test_id("stSidebar").inner_text(), title


def test_lesson_link_opens_the_lesson_in_presenter_mode(app_url):
    with browser_page() as page:
        _goto(page, app_url, "lessons?lesson=deeper&step=1&presenter=1", "What excites the first layer")
        page.get_by_text("Step 2 of 4", exact=False).wait_for()
        page.locator('[data-testid="stImage"] img').first.wait_for(timeout=60_000)
        assert_no_exception(page)
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "lesson.png"), full_page=True)
        page.get_by_role("button", name="Next").click()
        page.get_by_role("heading", name="What excites a deeper layer").wait_for()
        wait_until_idle(page)
        assert "step=2" in page.url and "lesson=deeper" in page.url
        assert_no_exception(page)


@pytest.mark.parametrize("path, title, shot", [
    ("convolution", "Convolution step by step", "convolution.png"),
    ("hierarchy", "What each layer learns", "hierarchy.png"),
])
def test_learn_pages_render(app_url, path, title, shot):
    with browser_page() as page:
        _goto(page, app_url, path, title)
        page.locator('[data-testid="stImage"] img').nth(2).wait_for(timeout=60_000)
        wait_until_idle(page)
        assert_no_exception(page)
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / shot), full_page=True)
