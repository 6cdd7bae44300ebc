"""Run the real app with ``streamlit run`` on a free localhost port and drive it in headless Chromium."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Without these, Chromium keeps trying to reach Google's servers, which a closed network refuses many times over.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
# The README's screenshots are retaken with `make screenshots`; a plain test run keeps the working tree clean.
SCREENSHOTS = (ROOT / "docs" / "screenshots" if os.environ.get("CNNVIZ_SCREENSHOTS")
               else Path(tempfile.gettempdir()) / "cnnviz-screenshots")


def free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def served(command: list[str], cwd: Path = ROOT, env: dict | None = None, timeout: float = 90.0):
    """Start ``command`` (which must serve on the port given by ``{port}`` in it) and yield ``(process, url)`` once
    its health check answers."""
    port = free_port()
    log = tempfile.TemporaryFile()  # not a pipe: a server that logs much would block once a pipe's buffer is full
    proc = subprocess.Popen([part.format(port=port) for part in command], cwd=cwd, env={**os.environ, **(env or {})},
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                log.seek(0)
                out = log.read().decode(errors="replace")
                raise RuntimeError(f"the app did not start:\n{out[-3000:]}")
            time.sleep(0.3)
        yield proc, url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@contextlib.contextmanager
def streamlit_server(timeout: float = 90.0):
    """Serve the app as ``make run`` does (``cnnviz app``: the project's launcher and Streamlit configuration) and
    yield its URL once its health check answers."""
    with served([sys.executable, "-m", "cnnviz.cli", "app", "--port", "{port}"], env={"CNNVIZ_MAX_JOBS": "2"},
                timeout=timeout) as (_, url):
        yield url


@contextlib.contextmanager
def browser_page(width: int = 1400, height: int = 1000):
    """A Playwright page in Debian's headless Chromium (never a downloaded browser)."""
    if not Path(CHROMIUM).exists():
        missing = "chromium is not installed (apt-get install -y chromium); .ci/run installs it"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{missing}. With CI=true the browser tests must run, not skip.")
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(60_000)
            yield page
        finally:
            browser.close()


def wait_until_idle(page, timeout: float = 60_000) -> None:
    """Wait until Streamlit has finished running the script.

    The app root carries the script's run state (``data-test-script-state``, as Streamlit's own end-to-end tests read
    it); the status widget alone shows a run only after a delay, so a slow machine could look idle before a rerun began.
    """
    page.wait_for_timeout(300)
    page.wait_for_function(
        "() => { const app = document.querySelector('[data-testid=\"stApp\"]');"
        " return app && app.getAttribute('data-test-script-state') === 'notRunning'"
        " && !document.querySelector('[data-testid=\"stStatusWidget\"]'); }", timeout=timeout)


APP_FAILED = "Something went wrong on this page"  # app.py's own message, where a served app hides tracebacks


def assert_no_exception(page) -> None:
    errors = page.locator('[data-testid="stException"]')
    assert errors.count() == 0, errors.first.inner_text()
    failed = page.get_by_text(APP_FAILED)
    assert failed.count() == 0, "the page showed app.py's failure message; the traceback is in the server's log"
