"""Your own images, a torchvision network and your own model, in a real headless browser (issues #11 and #12).

The app is served as a class gets it (``cnnviz app``), with error details on so that a failing page shows its
traceback here. Nothing is downloaded: the "ImageNet weights" are random tensors saved under torchvision's own file
name in a temporary ``$TORCH_HOME``.
"""

from __future__ import annotations

import contextlib
import io
import re
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from browser_support import CHROMIUM, ROOT, SCREENSHOTS, assert_no_exception, browser_page, served
from cnnviz import zoo
from tests import own_model

pytestmark = [pytest.mark.browser, pytest.mark.slow]

KINDS = ("discs", "squares")  # the user's two classes: red discs and blue squares on noise
SIZES = [(64, 48), (120, 90), (200, 200), (96, 160), (300, 220), (80, 80)]  # photos come in every size
PER_CLASS = 12
VIEWS = ("Filters", "Feature maps", "Pooling", "Grad-CAM")
HOME = "cnnviz: see what a convolutional network sees"
FAILED = Path(tempfile.gettempdir()) / "cnnviz-screenshots"  # never the README's folder


# --- what the user brings ----------------------------------------------------------------------------------------

def _picture(kind: str, seed: int, size: tuple[int, int]) -> Image.Image:
    """A noisy photo of one red disc or one blue square, somewhere near the middle, of its own size."""
    rng = np.random.default_rng(seed)
    w, h = size
    img = rng.normal(128, 40, (h, w, 3))
    yy, xx = np.mgrid[0:h, 0:w]
    cx, cy, r = rng.uniform(0.35, 0.65) * w, rng.uniform(0.35, 0.65) * h, rng.uniform(0.2, 0.35) * min(w, h)
    if kind == "discs":
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < r ** 2] = (220, 30, 30)
    else:
        img[(abs(xx - cx) < r) & (abs(yy - cy) < r)] = (30, 40, 220)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _encoded(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def _photos_zip(path: Path) -> None:
    """What zipping a folder ``photos/`` of two class folders gives: JPEGs and PNGs of mixed sizes, one broken."""
    with zipfile.ZipFile(path, "w") as z:
        for c, kind in enumerate(KINDS):
            for i in range(PER_CLASS):
                fmt, ext = ("JPEG", "jpg") if i % 2 else ("PNG", "png")
                z.writestr(f"photos/{kind}/{i}.{ext}", _encoded(_picture(kind, 100 * c + i, SIZES[i % len(SIZES)]),
                                                                fmt))
        z.writestr("photos/squares/broken.jpg", b"not a picture at all")


def _photo(path: Path, kind: str = "discs") -> None:
    """A new photo, not in the zip."""
    path.write_bytes(_encoded(_picture(kind, 999, (250, 180)), "JPEG"))


# --- driving the app ---------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _app(*args: str, env: dict | None = None):
    """``cnnviz app`` (what ``make run`` starts), from the project's root so that ``tests.own_model`` imports."""
    if not Path(CHROMIUM).exists():
        with browser_page():  # skips, or fails with CI=true, before a server starts for nothing
            pass
    with served([sys.executable, "-m", "cnnviz.cli", "app", "--port", "{port}", *args], cwd=ROOT,
                env={"CNNVIZ_MAX_JOBS": "2", "STREAMLIT_CLIENT_SHOW_ERROR_DETAILS": "full", **(env or {})},
                timeout=180) as (_, url):
        yield url


@contextlib.contextmanager
def _page(name: str, height: int = 1000):
    """A browser page that leaves a screenshot of itself in ``FAILED`` when the test fails in it."""
    with browser_page(height=height) as page:
        try:
            yield page
        except BaseException:
            with contextlib.suppress(Exception):
                FAILED.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(FAILED / f"failed-{name}.png"))
            raise


def _idle(page, timeout: float = 120_000) -> None:
    """Wait until the script run started by the last action has ended.

    Reads the script state Streamlit keeps on its root element, at once; its status widget (what
    ``wait_until_idle`` looks for) appears only 500 ms into a run, so a run can look idle before that. The short
    wait covers a slider, which sends its value 200 ms after it moved.
    """
    page.wait_for_timeout(300)
    page.locator('[data-testid="stApp"][data-test-script-state="notRunning"]').wait_for(state="attached",
                                                                                       timeout=timeout)


def _clean(page) -> None:
    """No exception on the page, neither Streamlit's report nor the app's own apology (app.py)."""
    assert_no_exception(page)
    assert page.get_by_text("Something went wrong on this page").count() == 0


def _open(page, url: str, query: str = "") -> None:
    """Open the app's home page, as a student following the teacher's link does."""
    page.goto(f"{url}/{query}")
    page.get_by_role("heading", name=HOME).wait_for(timeout=120_000)
    _idle(page)


def _nav(page, title: str, heading: str) -> None:
    """Go to another page through the sidebar, as a user does: the session (its data and model) goes along."""
    page.get_by_test_id("stSidebarNav").get_by_text(title, exact=True).click()
    page.get_by_role("heading", name=heading, exact=True).wait_for(timeout=120_000)
    _idle(page)


def _choose(page, label: str, option: str) -> None:
    """Pick ``option`` in the selectbox labelled ``label``."""
    page.get_by_test_id("stSelectbox").filter(has_text=label).first.click()
    page.get_by_role("option", name=option).first.click()
    _idle(page)


def _button(page, name: str):
    """A pill or a segment of a segmented control (the Explore page's image source and view)."""
    return page.get_by_test_id("stButtonGroup").get_by_text(name, exact=True)


def _upload_photo(page, photo: Path) -> None:
    """Explore: upload ``photo`` and wait until its prediction is shown."""
    if page.get_by_test_id("stFileUploader").filter(has_text="Upload an image").count() == 0:
        _button(page, "Upload").click()
        _idle(page)
    uploader = page.get_by_test_id("stFileUploader").filter(has_text="Upload an image")
    uploader.locator('input[type="file"]').set_input_files(str(photo))
    page.get_by_text(f"your upload {photo.name}").wait_for(timeout=120_000)
    _idle(page)


def _prediction(page) -> str:
    return page.get_by_test_id("stMarkdown").filter(has_text="The network is").first.inner_text()


def _view(page, name: str) -> None:
    """Explore: show one view and wait until its figure is drawn."""
    _button(page, name).click()
    _idle(page)
    main = page.get_by_test_id("stMain")
    main.get_by_test_id("stDownloadButton").filter(has_text="Download PNG").first.wait_for(timeout=120_000)
    _clean(page)


def _slide(page, label: str, key: str) -> None:
    """Move the slider labelled ``label`` (a prefix) with one key, as a keyboard user does, and wait for the page."""
    page.get_by_test_id("stSlider").filter(has_text=label).get_by_role("slider").focus()
    page.keyboard.press(key)
    _idle(page)


def _shot(page, name: str, top: str | None = None) -> None:
    """Save a screenshot for the README; ``top``: text scrolled to the top of the page first (Streamlit's main area
    scrolls inside the window, so a "full page" is the window)."""
    if top is not None:
        page.get_by_text(top).first.evaluate("e => e.scrollIntoView({block: 'start'})")
        page.wait_for_timeout(300)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / name), full_page=True)


def _load() -> str:
    return "load average " + " ".join(Path("/proc/loadavg").read_text().split()[:3])


# --- 1. your own images, end to end (issue #11) ------------------------------------------------------------------

@pytest.fixture(scope="module")
def zoo_home(tmp_path_factory) -> Path:
    """A $TORCH_HOME whose hub holds ResNet-18's file under torchvision's own name, and no GoogLeNet file.

    The weights are torchvision's random initialisation: untrained, but its activations stay finite, as trained ones
    do (the all-positive tensors of ``tests.test_zoo.fake_weights`` overflow a 224² ResNet to NaN).
    """
    home = tmp_path_factory.mktemp("torch")
    hub = home / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), hub / zoo.weights_file("resnet18").name)
    return home


@pytest.fixture(scope="module")
def app_url(zoo_home):
    with _app(env={"TORCH_HOME": str(zoo_home)}) as url:
        yield url


def test_zip_of_your_photos_trains_and_explains_a_new_photo_in_under_two_minutes(app_url, tmp_path):
    archive, photo = tmp_path / "photos.zip", tmp_path / "new-disc.jpg"
    _photos_zip(archive)
    _photo(photo, "discs")
    with _page("yours", height=1600) as page:
        start = time.monotonic()
        _open(page, app_url)
        _nav(page, "Train a CNN", "Train a CNN")
        _choose(page, "Dataset", "Your images")
        uploader = page.get_by_test_id("stFileUploader").filter(has_text="A .zip of class folders")
        uploader.locator('input[type="file"]').set_input_files(str(archive))
        summary = page.get_by_test_id("stAlert").filter(has_text="images in 2 classes")
        summary.wait_for(timeout=120_000)
        _idle(page)
        assert "24 images in 2 classes: discs (12), squares (12)" in summary.inner_text()
        skipped = page.get_by_test_id("stExpander").filter(has_text=re.compile(r"1 files? skipped"))
        skipped.get_by_text(re.compile(r"1 files? skipped")).click()
        # The table is drawn on a canvas; its cells are also in the page, for screen readers.
        cells = skipped.locator('[role="gridcell"]')
        cells.filter(has_text="photos/squares/broken.jpg").wait_for(state="attached", timeout=30_000)
        assert cells.filter(has_text="This file is not an image").count() == 1
        _clean(page)
        loaded = time.monotonic() - start

        page.get_by_role("button", name="Train", exact=False).filter(has_text="Train").first.click()
        page.get_by_text("Done:").wait_for(timeout=180_000)
        page.get_by_text("4 · Results").wait_for(timeout=60_000)
        _idle(page)
        _clean(page)
        _shot(page, "yours-train.png", top="3 · Train")
        trained = time.monotonic() - start

        _nav(page, "Explore an image", "Explore an image")
        assert "Source: trained here" in page.get_by_test_id("stSidebar").inner_text()  # the new model is shown
        # Explore opens on a picture from the user's own held-out images, as it does for a built-in dataset.
        page.get_by_text(re.compile(r"Image: test image #\d+ \(a (discs|squares)\)")).wait_for(timeout=60_000)
        _upload_photo(page, photo)
        said = _prediction(page)
        assert re.search(r": discs with \d+%", said), said
        _view(page, "Grad-CAM")
        what = page.get_by_test_id("stExpander").filter(has_text="What am I seeing?").inner_text()
        assert "made the network say discs" in what, what
        assert page.get_by_test_id("stMain").locator('[data-testid="stImage"] img').count() >= 3
        total = time.monotonic() - start
        _shot(page, "yours-explore.png", top="Image: your upload")
    print(f"\nyour images in the browser, from opening the app: zip read {loaded:.1f} s, trained {trained:.1f} s, "
          f"Grad-CAM on a new photo {total:.1f} s ({_load()})")
    assert total < 120, f"the whole journey took {total:.0f} s, more than 2 minutes ({_load()})"


# --- 2. a torchvision network (issue #12) ------------------------------------------------------------------------

def test_resnet18_from_a_link_walks_every_view_and_pages_512_channels(app_url, tmp_path):
    photo = tmp_path / "photo.jpg"
    _photo(photo, "squares")
    with _page("zoo", height=1600) as page:
        start = time.monotonic()
        _open(page, app_url, "?model=resnet18")
        sidebar = page.get_by_test_id("stSidebar")
        sidebar.get_by_text("ResNet-18").first.wait_for(timeout=120_000)
        # The file in the cache is used, and said not to be torchvision's: its checksum is not the published one.
        sidebar.get_by_text("weights not torchvision's", exact=False).first.wait_for(timeout=60_000)
        assert "untrained" not in sidebar.inner_text() and "as reported by torchvision" not in sidebar.inner_text()
        _nav(page, "Explore an image", "Explore an image")
        _upload_photo(page, photo)
        for view in VIEWS:
            _view(page, view)
            assert "nan%" not in _prediction(page)
            if view == "Feature maps":
                _slide(page, "Layer (slide", "End")  # avgpool: 512 maps of 1×1
                _slide(page, "Layer (slide", "ArrowLeft")  # the last block: 512 maps of 7×7
                page.get_by_test_id("stExpander").filter(has_text="gives 512 maps of 7×7").wait_for(timeout=60_000)
                page.get_by_text("Which 64 of the 512").wait_for(timeout=60_000)
                _slide(page, "Which 64 of the 512", "End")
                page.get_by_test_id("stSliderThumbValue").filter(has_text="448 to 511").wait_for(timeout=60_000)
                _clean(page)
                _shot(page, "zoo-explore.png", top="Image: your upload")
        print(f"\nResNet-18 in the browser: every view in {time.monotonic() - start:.1f} s ({_load()})")


def test_googlenet_without_its_file_names_it_and_says_untrained(app_url):
    with _page("googlenet") as page:
        _open(page, app_url, "?model=googlenet")
        sidebar = page.get_by_test_id("stSidebar")
        sidebar.get_by_text(zoo.weights_file("googlenet").name, exact=False).wait_for(timeout=180_000)
        _idle(page)
        assert "googlenet-1378be20.pth" in sidebar.inner_text()
        assert "untrained" in sidebar.inner_text()
        _clean(page)


# --- 3. your own model, one command (issue #11) ------------------------------------------------------------------

PAGES = [  # (sidebar title, heading)
    ("Train a CNN", "Train a CNN"),
    ("Explore an image", "Explore an image"),
    ("Convolution step by step", "Convolution step by step"),
    ("What each layer learns", "What each layer learns"),
    ("Lessons", "Lessons"),
    ("Home", HOME),
]


def test_your_own_model_with_one_command_renders_every_page(tmp_path):
    photo, classes = tmp_path / "cat.jpg", tmp_path / "classes.txt"
    _photo(photo, "discs")
    classes.write_text("\n".join(own_model.CLASSES) + "\n")
    with _app("--model", "tests.own_model:make", "--classes", str(classes)) as url, _page("own-model") as page:
        start = time.monotonic()
        _open(page, url)
        sidebar = page.get_by_test_id("stSidebar")
        sidebar.get_by_test_id("stSelectbox").filter(has_text="Model").first.click()
        page.get_by_role("option", name=re.compile(r"^Your code: ")).click()
        _idle(page)
        sidebar.get_by_text("Source: your code").wait_for(timeout=60_000)
        assert "tests.own_model:make" in sidebar.inner_text()
        assert "model=code" in page.url  # a link to share opens the same model
        _clean(page)
        for title, heading in PAGES:
            _nav(page, title, heading)
            if title in ("Convolution step by step", "What each layer learns"):  # figures of the model's layers
                page.get_by_test_id("stMain").locator('[data-testid="stImage"] img').nth(1).wait_for(timeout=120_000)
                _idle(page)
            _clean(page)
            assert "Source: your code" in sidebar.inner_text(), title  # the choice holds on every page
            if title == "Explore an image":
                _upload_photo(page, photo)
                said = _prediction(page)
                assert re.search(rf": ({'|'.join(own_model.CLASSES)}) with \d+%", said), said
                for view in VIEWS:
                    _view(page, view)
        print(f"\nyour own model: every page in {time.monotonic() - start:.1f} s ({_load()})")


# --- a link straight to a page, as a new server's first visit (issue #12: "a link carries it") --------------------

def test_a_link_to_explore_as_a_new_servers_first_visit_opens_the_whole_app(zoo_home):
    # Streamlit starts a server with a pages/ folder beside app.py in its old mode, where a first visit to /explore
    # would run the page alone, for good: `cnnviz app` (make run) turns that mode off before it serves.
    server = _app(env={"TORCH_HOME": str(zoo_home)})
    with server as url, _page("link") as page:
        page.goto(f"{url}/explore?model=resnet18")
        page.get_by_role("heading", name="Explore an image").wait_for(timeout=120_000)
        _idle(page)
        nav = page.get_by_test_id("stSidebarNav")
        assert nav.get_by_text("Explore an image", exact=True).count() == 1, nav.inner_text()
        assert "ResNet-18" in page.get_by_test_id("stSidebar").inner_text()
