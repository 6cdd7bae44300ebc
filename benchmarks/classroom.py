"""A class on one server, in a real browser: memory after many big uploads, thirty students uploading at once, and
one student's upload while two others train.

Every section serves the app as ``make run`` does (``python -m cnnviz.cli app --port N``, with the project's
``.streamlit/config.toml``) and drives it from headless Debian Chromium through Playwright's async API, so many pages
wait at once. The baseline of "classroom" is a bare Streamlit page that shows an uploaded image, served with the same
flags from the same folder, driven by the same code.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from benchmarks.common import ROOT, Options, free_port
from benchmarks.report import Row, Skip, at_least, at_most
from benchmarks.webapp import CHROMIUM, CHROMIUM_ARGS, _wait_healthy

MB = 1024 * 1024
PHOTO = (4000, 3000)  # a phone's 12-megapixel photo
QUICK_PHOTO = (1600, 1200)
STUDENTS, QUICK_STUDENTS = 30, 4
UPLOADS, QUICK_UPLOADS = 64, 4
CLASS_LINK = "explore?explore_source=Upload"  # the address a teacher who chose Upload shares: no test image first
READY_S = 120  # how long a page may take to show its uploader: the issue counts a page that never does as failed
RENDER_S = 240
# Explore draws one view at a time; each view's own control, seen once the view is drawn.
VIEWS = {"Filters": "Conv layer", "Feature maps": "Layer (slide to walk through the network in order)",
         "Pooling": "Pooling layer", "Grad-CAM": "Opacity"}
BARE_PAGE = '''"""The baseline: a Streamlit page that only shows an uploaded image."""
import streamlit as st

st.title("Upload")
up = st.file_uploader("Upload an image")
if up is not None:
    st.image(up.getvalue())
    st.caption(f"Image: {up.name}.")
'''

# Done for an upload named ``name``: its caption is on screen, the script run has finished (no status widget, no
# element left stale from the previous run) and every image in the main area has loaded.
RENDERED_JS = """name => {
  const main = document.querySelector('[data-testid="stMain"]') || document.body;
  if (![...main.querySelectorAll('[data-testid="stCaptionContainer"]')].some(e => e.innerText.includes(name)))
    return false;
  if (document.querySelector('[data-testid="stStatusWidget"]')) return false;
  if (main.querySelector('[data-testid="stElementContainer"][data-stale="true"]')) return false;
  const imgs = [...main.querySelectorAll('img')];
  return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0);
}"""
# Everything on the page drawn: no script running, no stale element, every image loaded.
SETTLED_JS = """() => {
  const main = document.querySelector('[data-testid="stMain"]') || document.body;
  if (document.querySelector('[data-testid="stStatusWidget"]')) return false;
  if (main.querySelector('[data-testid="stElementContainer"][data-stale="true"]')) return false;
  const imgs = [...main.querySelectorAll('img')];
  return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0);
}"""


def memory(options: Options) -> list[Row]:
    """The server's RSS before and after one student uploads many 12-megapixel photos, one after another, on
    Explore; the caches are bounded in bytes, so the growth should stay near their budget, not grow per upload."""
    from cnnviz.ui.cache import total_budget

    n = QUICK_UPLOADS if options.quick else UPLOADS
    budget_mb = total_budget() / MB

    async def run(url: str, pid: int) -> tuple[float, float, float, list[float]]:
        async with _browser() as browser:
            page = await (await browser.new_context(viewport={"width": 1400, "height": 1000})).new_page()
            await _open_upload(page, url)
            before = _rss_mb(pid)
            times = []
            for i in range(n):
                times.append(await _upload(page, f"photo{i:02d}.jpg", _photo(i, PHOTO)))
            await asyncio.sleep(2)  # let the last run's buffers go
            return before, _rss_mb(pid), _rss_mb(pid, "VmHWM"), times

    with _serving(_app_command) as (url, proc):
        before, after, peak, times = asyncio.run(run(url, proc.pid))
    return [
        Row("server RSS on Explore before the uploads", before, "MB"),
        Row(f"server RSS after {n} uploads of {PHOTO[0] * PHOTO[1] / 1e6:g}-MP photos", after, "MB"),
        Row("growth", after - before, "MB", at_most(budget_mb), checked=not options.quick,
            note="target: the caches' budget ($CNNVIZ_CACHE_MB)"),
        Row("server peak RSS (VmHWM)", peak, "MB"),
        Row("cache budget, all caches together", budget_mb, "MB"),
        Row(f"upload → views rendered (median of {n})", statistics.median(times), "s"),
    ]


def classroom(options: Options) -> list[Row]:
    """``STUDENTS`` pages (one Chromium, one context each: that many sessions) open Explore together and choose
    Upload, then upload a photo each at the same moment; upload → every figure rendered, against a bare page that
    shows the upload. Then the same class opening the teacher's link to Explore's uploader
    (``?explore_source=Upload``), which draws no test image first."""
    n = QUICK_STUDENTS if options.quick else STUDENTS
    size = QUICK_PHOTO if options.quick else PHOTO
    photos = [_photo(100 + i, size) for i in range(n)]
    explore, explore_failed, explore_open = _class_at_once(_app_command, "explore", photos)
    linked, linked_failed, linked_open = _class_at_once(_app_command, CLASS_LINK, photos)
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "bare_upload.py"
        script.write_text(BARE_PAGE)
        bare, bare_failed, bare_open = _class_at_once(lambda port: _streamlit_command(script, port), "", photos)
    e95, l95, b95 = _p(explore, 95), _p(linked, 95), _p(bare, 95)
    what = f"{n} pages, {size[0] * size[1] / 1e6:g}-MP JPEG each"
    ratio = e95 / b95 if explore and bare else None
    # deploy/README.md sizes replicas by this row: the class served when every page rendered within the target.
    served = len(explore) if ratio is not None and ratio <= 2 and len(explore) == n else None
    return [
        Row(f"Explore: pages rendered ({what})", len(explore), "", at_least(n), checked=not options.quick,
            note=explore_failed),
        # The margin on opening: a page that takes READY_S to show its uploader counts as failed.
        Row("Explore: all open at once, choose Upload → uploader shown, slowest", max(explore_open, default=None),
            "s", note=_open_note(explore_open)),
        Row("Explore: upload → figures, p50", _p(explore, 50), "s"),
        Row("Explore: upload → figures, p95", e95, "s"),
        Row("class link (?explore_source=Upload): pages rendered", len(linked), "", note=linked_failed),
        Row("class link: all open at once → uploader shown, slowest", max(linked_open, default=None), "s",
            note=_open_note(linked_open)),
        Row("class link: upload → figures, p95", l95, "s",
            note=f"{l95 / b95:.2f}× the bare page" if linked and bare else ""),
        Row("bare page: pages rendered", len(bare), "", note=bare_failed),
        Row("bare page: all open at once → uploader shown, slowest", max(bare_open, default=None), "s"),
        Row("bare page: upload → image, p50", _p(bare, 50), "s"),
        Row("bare page: upload → image, p95", b95, "s"),
        Row("p95 ratio Explore ÷ bare", ratio, "×", at_most(2), checked=not options.quick),
        Row("students per replica of this machine", served, "",
            note="the whole class, all rendered within 2× the bare page" if served else
            "not measured: the class did not all render within 2× the bare page"),
    ]


def _open_note(opened: list[float]) -> str:
    return f"a page is failed after {READY_S} s; median {_p(opened, 50):.1f} s" if opened else ""


def load(options: Options) -> list[Row]:
    """One student's Explore upload → all four views' figures, idle, then while two other sessions train (each
    started from the Train page's button); the median of a few uploads each."""
    n = 1 if options.quick else 3
    size = QUICK_PHOTO if options.quick else PHOTO

    async def run(url: str) -> tuple[list[float], list[float], bool]:
        async with _browser() as browser:
            student = await (await browser.new_context(viewport={"width": 1400, "height": 1000})).new_page()
            await _open_upload(student, url)
            idle = [await _upload(student, f"idle{i}.jpg", _photo(200 + i, size), all_views=True) for i in range(n)]
            trainers = [await (await browser.new_context(viewport={"width": 1400, "height": 1000})).new_page()
                        for _ in range(2)]
            await asyncio.gather(*(_start_training(t, url) for t in trainers))
            busy = [await _upload(student, f"busy{i}.jpg", _photo(300 + i, size), all_views=True) for i in range(n)]
            still = all([await _training(t) for t in trainers])
            for t in trainers:
                await t.locator(".st-key-train_stop button").click()
            return idle, busy, still

    with _serving(_app_command) as (url, _):
        idle, busy, still = asyncio.run(run(url))
    ratio = statistics.median(busy) / statistics.median(idle)
    return [
        Row(f"upload → all views, no job (median of {n})", statistics.median(idle), "s",
            note="each: " + ", ".join(f"{t:.2f}" for t in idle) + " s"),
        Row(f"upload → all views, 2 jobs training (median of {n})", statistics.median(busy), "s",
            note="each: " + ", ".join(f"{t:.2f}" for t in busy) + " s"
                 + ("" if still else "; a job had finished before the last upload")),
        Row("ratio with jobs ÷ idle", ratio, "×", at_most(2), checked=not options.quick),
    ]


# --- the harness --------------------------------------------------------------------------------------------------


def _app_command(port: int) -> list[str]:
    return [sys.executable, "-m", "cnnviz.cli", "app", "--port", str(port)]


def _streamlit_command(script: Path, port: int) -> list[str]:
    """``streamlit run`` with the flags ``cnnviz app`` passes (cnnviz.ui.launch), from the repository root so the
    project's ``.streamlit/config.toml`` applies too."""
    return [sys.executable, "-m", "streamlit", "run", str(script), "--server.port", str(port),
            "--server.headless", "true", "--browser.gatherUsageStats", "false"]


@contextlib.contextmanager
def _serving(command):
    """Start ``command(port)`` in the repository root; yield its URL and process once its health check answers."""
    port = free_port()
    with tempfile.TemporaryFile() as log:
        start = time.perf_counter()
        proc = subprocess.Popen(command(port), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_healthy(url, proc, start, log)
            yield url, proc
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.asynccontextmanager
async def _browser():
    if not Path(CHROMIUM).exists():
        raise Skip(f"chromium not found at {CHROMIUM} (apt-get install chromium; never `playwright install`)")
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        raise Skip("playwright is not installed (pip install -e '.[test]')") from None
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            await browser.close()


def _class_at_once(command, path: str, photos: list[bytes]) -> tuple[list[float], str, list[float]]:
    """Serve ``command``; one context per photo opens ``path``, and once all show their uploader (or
    :data:`READY_S` has passed) every ready page uploads at once. Seconds to rendered, for the pages that got there;
    what happened to the others, in words; and seconds from opening to the uploader, for the pages that got one."""

    async def student(browser, url: str, i: int, go: asyncio.Event) -> float | None:
        page = await (await browser.new_context(viewport={"width": 1400, "height": 1000})).new_page()
        start = time.perf_counter()
        try:
            await asyncio.wait_for(_open_upload(page, url, path), READY_S)
            opened.append(time.perf_counter() - start)
            ok = True
        except Exception as e:  # a page that never gets its uploader has failed, as it would for a student
            failures.append(f"no uploader within {READY_S} s ({type(e).__name__})")
            ok = False
        ready.append(ok)
        if len(ready) == len(photos):
            go.set()
        if not ok:
            return None
        await go.wait()
        try:
            return await _upload(page, f"photo{i:02d}.jpg", photos[i])
        except Exception as e:
            failures.append(f"not rendered ({type(e).__name__})")
            return None

    async def run(url: str) -> list[float]:
        go = asyncio.Event()
        async with _browser() as browser:
            loop = asyncio.get_running_loop()
            loop.call_later(READY_S + 5, go.set)  # the latecomers do not hold the others back for ever
            times = await asyncio.gather(*(student(browser, url, i, go) for i in range(len(photos))))
        return [t for t in times if t is not None]

    ready: list[bool] = []
    failures: list[str] = []
    opened: list[float] = []
    with _serving(command) as (url, _):
        times = asyncio.run(run(url))
    return times, ", ".join(f"{why}: {n}" for why, n in Counter(failures).items()), opened


async def _open_upload(page, url: str, path: str = "explore") -> None:
    """Go to ``path``; on Explore, choose the "Upload" image source (a class link has chosen it); wait until the image
    uploader is there."""
    await page.goto(f"{url}/{path}", timeout=READY_S * 1000)
    if path == "explore":
        # The first run shows a test-set image: let it finish, then switch the source to Upload.
        await page.locator(".st-key-explore_source").get_by_text("Upload", exact=True).click(timeout=READY_S * 1000)
    await _uploader(page).wait_for(state="attached", timeout=READY_S * 1000)


def _uploader(page):
    return page.locator('[data-testid="stFileUploader"]').filter(has_text="Upload an image").locator(
        'input[type="file"]')


async def _upload(page, name: str, photo: bytes, all_views: bool = False) -> float:
    """Seconds from handing ``photo`` to the uploader until the page shows it rendered (with ``all_views``: until
    each of Explore's four views, chosen in turn, shows its figures)."""
    start = time.perf_counter()
    await _uploader(page).set_input_files(files=[{"name": name, "mimeType": "image/jpeg", "buffer": photo}])
    await page.wait_for_function(RENDERED_JS, arg=name, polling=200, timeout=RENDER_S * 1000)
    if all_views:
        for view in (*[v for v in VIEWS if v != "Feature maps"], "Feature maps"):  # back to the first view at the end
            await page.locator(".st-key-explore_view").get_by_role("radio", name=view, exact=True).click()
            await page.get_by_text(VIEWS[view], exact=True).first.wait_for(timeout=RENDER_S * 1000)
            await page.wait_for_function(SETTLED_JS, polling=100, timeout=RENDER_S * 1000)
    return time.perf_counter() - start


async def _start_training(page, url: str) -> None:
    """On the Train page, ask for many epochs (so the job outlasts the measurement) and press Train."""
    await page.goto(f"{url}/train", timeout=READY_S * 1000)
    epochs = page.get_by_role("spinbutton", name="Epochs")
    await epochs.fill("30")
    await epochs.press("Enter")
    await page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", polling=200)
    await page.locator(".st-key-train_start button").click()
    await page.locator(".st-key-train_stop button:enabled").wait_for(timeout=60_000)


async def _training(page) -> bool:
    return await page.locator(".st-key-train_stop button").is_enabled()


def _photo(seed: int, size: tuple[int, int]) -> bytes:
    """A photo-like JPEG (smooth colour fields, a few discs, sensor noise) of ``size`` pixels, new for each seed."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    w, h = size
    small = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(size, Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(small)
    for _ in range(6):
        x, y, r = rng.integers(0, w), rng.integers(0, h), rng.integers(h // 20, h // 5)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    noisy = np.asarray(small, dtype=np.int16) + rng.integers(-6, 7, (h, w, 3), dtype=np.int16)
    buf = io.BytesIO()
    Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(buf, "JPEG", quality=85)
    return buf.getvalue()


def _rss_mb(pid: int, field: str = "VmRSS") -> float:
    """``field`` of ``/proc/PID/status`` (resident set now, or its peak: ``VmHWM``) in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for process {pid}")


def _p(times: list[float], q: int) -> float | None:
    """The ``q``-th percentile (nearest rank) of ``times``; None when there are none."""
    if not times:
        return None
    ranked = sorted(times)
    return ranked[max(0, -(-q * len(ranked) // 100) - 1)]
