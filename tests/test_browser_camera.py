"""The live camera in a real browser: Chromium's fake camera plays a picture file written here, and the app's server
sends every frame through the shipped model over WebRTC, on loopback only.

WebRTC here needs two things a plain test machine lacks. aioice (the server's side) never offers 127.0.0.1 as an
address, so the test runs in a network namespace of its own (only ``lo``, no way out) with 127.0.0.2 added; and
Chromium needs ``--allow-loopback-in-peer-connection``. Without the means for either, the test skips and says which.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from browser_support import CHROMIUM, CHROMIUM_ARGS, ROOT, SCREENSHOTS, served, wait_until_idle

APP = ROOT / "app.py"
SIDE = 240  # the fake camera's frames are SIDE×SIDE: a square, as the shapes model's pictures are
FPS = 10  # frames per second of the picture file
SECONDS_EACH = 4  # each picture plays this long, then the other, in a loop
CLONE_NEWNET = 0x40000000  # <sched.h>


@contextlib.contextmanager
def loopback_only():
    """Run the block in a network namespace of its own: this thread and every process it starts see only ``lo``,
    with 127.0.0.2 beside 127.0.0.1. The thread is put back in its own namespace afterwards."""
    if shutil.which("ip") is None:
        pytest.skip("`ip` (Debian's iproute2) is not installed: the WebRTC test needs it to add 127.0.0.2 to lo")
    libc = ctypes.CDLL(None, use_errno=True)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        if libc.unshare(CLONE_NEWNET) != 0:
            reason = os.strerror(ctypes.get_errno())
            pytest.skip(f"cannot make a network namespace (unshare(CLONE_NEWNET): {reason}): the loopback-only "
                        f"WebRTC test needs root or CAP_SYS_ADMIN")
        try:
            for command in (["ip", "link", "set", "lo", "up"], ["ip", "addr", "add", "127.0.0.2/8", "dev", "lo"]):
                done = subprocess.run(command, capture_output=True, text=True)
                if done.returncode:
                    pytest.skip(f"cannot set up lo in the test's network namespace (`{' '.join(command)}`: "
                                f"{done.stderr.strip()}): aioice offers no address but 127.0.0.2 there")
            yield
        finally:
            if libc.setns(home, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "could not return to the test's own network namespace")
    finally:
        os.close(home)


def _yuv420(rgb: np.ndarray) -> bytes:
    """An RGB picture ``(H, W, 3)`` uint8 as one I420 frame: BT.601 studio range, chroma averaged over 2×2."""
    r, g, b = np.moveaxis(rgb.astype(np.float64), -1, 0)
    y = 16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255
    cb = 128 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255
    cr = 128 + (112.0 * r - 93.786 * g - 18.214 * b) / 255
    h, w = y.shape
    half = [c.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3)) for c in (cb, cr)]
    return b"".join(np.clip(np.rint(p), 0, 255).astype(np.uint8).tobytes() for p in (y, *half))


def _rgb(frame: bytes, h: int, w: int) -> np.ndarray:
    """One I420 frame from :func:`_yuv420` back to RGB, as a video decoder does."""
    planes = np.frombuffer(frame, np.uint8)
    y = planes[: h * w].reshape(h, w).astype(np.float64) - 16
    cb, cr = (planes[h * w + i * h * w // 4: h * w + (i + 1) * h * w // 4].reshape(h // 2, w // 2)
              .repeat(2, 0).repeat(2, 1).astype(np.float64) - 128 for i in (0, 1))
    rgb = np.stack([1.164 * y + 1.596 * cr, 1.164 * y - 0.392 * cb - 0.813 * cr, 1.164 * y + 2.017 * cb], -1)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def write_y4m(path: Path, pictures: list[np.ndarray], frames_each: int) -> None:
    """A YUV4MPEG2 file (what Chromium's fake camera plays, in a loop): each picture for ``frames_each`` frames."""
    h, w = pictures[0].shape[:2]
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F{FPS}:1 Ip A1:1 C420jpeg\n".encode())
        for picture in pictures:
            frame = _yuv420(picture)
            for _ in range(frames_each):
                f.write(b"FRAME\n" + frame)


def two_pictures() -> list[tuple[np.ndarray, str]]:
    """Two shapes pictures the shipped model names differently, and surely (≥ 98 %, also after the trip through
    YUV), each with that name: the first two of a fixed seed's images that qualify."""
    from cnnviz import checkpoint, gradcam, live, shapes
    from cnnviz.ui.state import SHIPPED_MODEL

    ck = checkpoint.load(SHIPPED_MODEL)
    viewing = live.Live(ck.model, ck.info, live.Settings("conv1", gradcam.default_layer(ck.model)))
    x, labels, _ = shapes.generate(32, seed=0, size=SIDE)
    chosen: list[tuple[np.ndarray, str]] = []
    for image, label in zip(x, labels):
        picture = image.permute(1, 2, 0).numpy()
        name, p = viewing.process(_rgb(_yuv420(picture), SIDE, SIDE)).top[0]
        if p >= 0.98 and name == shapes.CLASS_NAMES[label] and name not in [c for _, c in chosen]:
            chosen.append((picture, name))
        if len(chosen) == 2:
            return chosen
    raise AssertionError("the shipped model is sure of fewer than two classes among 32 shapes pictures")


@contextlib.contextmanager
def fake_camera_browser(video: Path):
    """Debian's headless Chromium whose camera plays ``video``, allowed without asking, with loopback WebRTC."""
    if not Path(CHROMIUM).exists():
        missing = "chromium is not installed (apt-get install -y chromium); .ci/run installs it"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{missing}. With CI=true the browser tests must run, not skip.")
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright

    args = [*CHROMIUM_ARGS, "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
            f"--use-file-for-fake-video-capture={video}", "--allow-loopback-in-peer-connection",
            "--autoplay-policy=no-user-gesture-required"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=args, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1200})
            page.set_default_timeout(60_000)
            yield page
        finally:
            browser.close()


def _processed(page) -> int:
    """The frames the server says it has sent through the network, read from the page's counter."""
    text = page.get_by_text("frames through the network").inner_text()
    return int(re.search(r"([\d,]+) frames through the network", text).group(1).replace(",", ""))


def _prediction(page) -> str:
    """The class the page names as the prediction now ("" before the first frame)."""
    heading = page.get_by_text("Prediction now:")
    found = re.search(r"Prediction now:\s*(.+?)\s*\(\d+%\)", heading.inner_text()) if heading.count() else None
    return found.group(1) if found else ""


def test_the_page_without_a_server_says_so_and_names_a_bad_ice_setting(monkeypatch):
    """AppTest runs the page alone, with no server for WebRTC: the controls work and the page says why no video."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("CNNVIZ_ICE_SERVERS", '{"urls": "turn:x"}')
    at = AppTest.from_file(str(ROOT / "pages" / "camera.py"), default_timeout=60).run()
    assert not at.exception
    assert "must be a JSON list" in at.error[0].value and "still works on this computer" in at.error[0].value
    assert any("needs the app's server" in i.value for i in at.info)
    slider = at.select_slider(key="camera_layer")
    assert slider.value == "conv1" and at.selectbox(key="camera_cam_layer").value == "relu4"
    slider.set_value("relu3").run()
    assert not at.exception and at.session_state["_camera_live"].settings.layer == "relu3"


@pytest.mark.browser
@pytest.mark.slow
def test_camera_page_plays_counts_frames_and_follows_the_picture(tmp_path):
    assert "pages/camera.py" in APP.read_text(), f"{APP.name} does not list pages/camera.py in its navigation"
    (picture_a, name_a), (picture_b, name_b) = two_pictures()
    video = tmp_path / "camera.y4m"
    write_y4m(video, [picture_a, picture_b], FPS * SECONDS_EACH)
    with loopback_only(), served([sys.executable, "-m", "streamlit", "run", str(APP), "--server.port", "{port}",
                                  "--server.headless", "true", "--browser.gatherUsageStats", "false",
                                  "--server.fileWatcherType", "none"]) as (_, url), \
            fake_camera_browser(video) as page:
        page.goto(f"{url}/camera")
        page.get_by_role("heading", name="Live camera").wait_for(timeout=120_000)
        wait_until_idle(page, 120_000)
        component = page.frame_locator('iframe[title*="webrtc"]')
        component.get_by_role("button", name="Start the camera").click()
        video_element = component.locator("video")
        video_element.wait_for()
        deadline = time.monotonic() + 30
        while video_element.evaluate("v => v.currentTime") <= 0:
            assert time.monotonic() < deadline, "the video never played (currentTime stayed 0)"
            page.wait_for_timeout(250)

        seen: list[str] = []  # each prediction shown, in order, repeats left out
        deadline = time.monotonic() + 4 * SECONDS_EACH + 20
        while not {name_a, name_b} <= set(seen):
            assert time.monotonic() < deadline, f"the prediction did not follow the picture: saw {seen}, expected " \
                                                f"{name_a!r} and {name_b!r} in turn"
            shown = _prediction(page)
            if shown and (not seen or seen[-1] != shown):
                seen.append(shown)
            page.wait_for_timeout(200)
        first = _processed(page)
        page.wait_for_timeout(1500)
        assert _processed(page) > first > 0, "the server's count of processed frames did not grow"
        assert page.locator('[data-testid="stException"]').count() == 0
        assert not page.get_by_text("could not go through the network").count(), "a frame failed on the server"
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "camera.png"), full_page=True)
