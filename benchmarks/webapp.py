"""The app as a user meets it: the first paint in a real browser, and the Explore page from upload to views."""

from __future__ import annotations

import io
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from benchmarks.common import ROOT, Options, free_port, reap
from benchmarks.report import Row, Skip, at_most
from cnnviz import text

HOME_H1 = "cnnviz: see what a convolutional network sees"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Without these, Chromium keeps trying to reach Google's servers, which a closed network refuses many times over.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def first_paint(options: Options) -> list[Row]:
    """``cnnviz app`` (what ``make run`` starts): time until its health check answers, then page.goto → the home
    page's h1 visible, for the first visitor and for a second one. ``cnnviz app`` imports torch and the pages'
    modules before the server listens, so the first visitor does not wait for them."""
    if not Path(CHROMIUM).exists():
        raise Skip(f"chromium not found at {CHROMIUM} (apt-get install chromium; never `playwright install`)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise Skip("playwright is not installed (pip install -e '.[test]')") from None

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log:
        start = time.perf_counter()
        server = subprocess.Popen(
            [sys.executable, "-m", "cnnviz.cli", "app", "--port", str(port)],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            server_s = _wait_healthy(url, server, start, log)
            with sync_playwright() as p:
                t = time.perf_counter()
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
                launch_s = time.perf_counter() - t
                try:
                    first = _goto_h1(browser, url)
                    second = _goto_h1(browser, url)
                finally:
                    browser.close()
        finally:
            server.terminate()
            _, rss = reap(server, timeout=15)
    return [
        Row("server start → health check answers", server_s, "s"),
        Row("first visitor: goto → h1 visible", first, "s", at_most(3)),
        Row("make run → first paint (server start + first visitor)", server_s + first, "s"),
        Row("second visitor: goto → h1 visible", second, "s"),
        Row("Chromium launch (not counted above)", launch_s, "s"),
        Row("server peak RSS after two visits", rss, "MB"),
    ]


def _wait_healthy(url: str, server: subprocess.Popen, start: float, log) -> float:
    while True:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return time.perf_counter() - start
        except OSError:
            pass
        if server.poll() is not None or time.perf_counter() - start > 90:
            log.seek(0)
            raise RuntimeError(f"streamlit did not start: {log.read().decode(errors='replace')[-500:]}")
        time.sleep(0.05)


def _goto_h1(browser, url: str) -> float:
    """Seconds from ``page.goto`` (a new tab, so a new session) until the home page's title is visible."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        start = time.perf_counter()
        page.goto(url)
        page.locator("h1", has_text=HOME_H1).first.wait_for(state="visible", timeout=60_000)
        return time.perf_counter() - start
    finally:
        page.close()


def explore(options: Options) -> list[Row]:
    """Explore page in AppTest: a new upload with its first view, then each other view (cold: a new image each
    time), then warm reruns."""
    from streamlit.logger import set_log_level
    from streamlit.testing.v1 import AppTest

    set_log_level("error")  # AppTest runs Streamlit in "bare mode", which warns about it on every run
    uploads = _photos(2 if options.quick else 5)
    start = time.perf_counter()
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    home_s = time.perf_counter() - start
    start = time.perf_counter()
    at.switch_page("pages/explore.py").run()
    switch_s = time.perf_counter() - start
    at.pills(key="explore_source").set_value("Upload").run()
    _check(at)

    cold = []
    for i, png in enumerate(uploads):  # the page draws one view at a time: a new image, then each other view
        at.session_state["explore_view"] = VIEWS[0]
        start = time.perf_counter()
        at.file_uploader(key="explore_upload").set_value((f"photo{i}.png", png, "image/png")).run()
        _check(at)
        if not any(text.md(f"photo{i}.png") in c.value for c in at.caption):  # outside text arrives escaped
            raise RuntimeError(f"the Explore page does not show the uploaded photo{i}.png")
        for view in VIEWS[1:]:
            at.session_state["explore_view"] = view
            at.switch_page("pages/explore.py").run()
            _check(at)
        cold.append(time.perf_counter() - start)
    slider = []  # on the Grad-CAM view, the last one drawn
    for alpha in (0.7, 0.3, 0.9):
        start = time.perf_counter()
        at.slider(key="explore_cam_alpha").set_value(alpha).run()
        slider.append(time.perf_counter() - start)
        _check(at)
    rerun = []
    for _ in range(3):
        start = time.perf_counter()
        at.run()
        rerun.append(time.perf_counter() - start)
    return [
        Row("app start (home page, first run in this process)", home_s, "s"),
        Row("switch to Explore (test-set image)", switch_s, "s"),
        Row(f"upload → every view, cold (median of {len(cold)} new images)", statistics.median(cold), "s", at_most(1),
            note="each: " + ", ".join(f"{c:.2f}" for c in cold) + " s"),
        Row("warm: move the Grad-CAM opacity slider (median of 3)", statistics.median(slider), "s",
            note="probe and CAM cached; only the overlays are new"),
        Row("warm: rerun with nothing changed (median of 3)", statistics.median(rerun), "s"),
    ]


VIEWS = ("Feature maps", "Filters", "Pooling", "Grad-CAM")


def _check(at) -> None:
    if at.exception:
        raise RuntimeError(f"the Explore page raised: {at.exception[0].value}")


def _photos(n: int) -> list[bytes]:
    """``n`` distinct 480×480 PNG "photos": shapes images enlarged, new to this process's caches."""
    from PIL import Image

    from cnnviz import shapes

    x, _, _ = shapes.generate(n, seed=7)
    out = []
    for img in x:
        buf = io.BytesIO()
        Image.fromarray(img.permute(1, 2, 0).numpy()).resize((480, 480), Image.Resampling.BICUBIC).save(buf, "PNG")
        out.append(buf.getvalue())
    return out
