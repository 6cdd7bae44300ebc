"""Live training as a student meets it: the Train page in headless Chromium against ``cnnviz train``'s wall time,
and what the web server itself spends while the job trains."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import ROOT, Options, cpu_seconds, free_port, reap, run_child
from benchmarks.report import Row, Skip, at_most
from benchmarks.webapp import CHROMIUM, CHROMIUM_ARGS, _wait_healthy


def browser_train(options: Options) -> list[Row]:
    """``cnnviz train --dataset shapes`` (wall, in a fresh process), then the app served as ``make run`` serves it:
    Train click with the page's defaults → results shown, and the server process's own CPU (user + sys of its pid:
    the training process is another one) from the click until the job is done."""
    if not Path(CHROMIUM).exists():
        raise Skip(f"chromium not found at {CHROMIUM} (apt-get install chromium; never `playwright install`)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise Skip("playwright is not installed (pip install -e '.[test]')") from None
    epochs = ["--epochs", "1"] if options.quick else []
    cli = run_child([sys.executable, "-m", "cnnviz.cli", "train", "--dataset", "shapes", "--json", *epochs])
    if cli.returncode != 0:
        raise RuntimeError(f"`cnnviz train` exited with {cli.returncode}: {cli.stderr.strip().splitlines()[-1:]}")
    result = json.loads(cli.stdout.strip().splitlines()[-1])

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log:
        server = subprocess.Popen([sys.executable, "-m", "cnnviz.cli", "app", "--port", str(port)], cwd=ROOT,
                                  stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_healthy(url, server, time.perf_counter(), log)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
                try:
                    app = _train_in_page(browser, f"{url}/train" + ("?train_epochs=1" if options.quick else ""),
                                         server.pid)
                finally:
                    browser.close()
        finally:
            server.terminate()
            reap(server, timeout=15)
    full = not options.quick
    note = "" if full else "(quick: 1 epoch each)"
    click_s, done_s, server_cpu, train_s = app
    return [
        Row("cnnviz train --dataset shapes: wall", cli.seconds, "s", note=f"training loop {result['train_seconds']:.1f} s,"
            f" {result['images_per_s']:,.0f} img/s, test accuracy {result['test_accuracy']:.1%} {note}".rstrip()),
        Row("browser: Train click → results shown", click_s, "s",
            note=f"training {train_s:.1f} s (the page's 'Training time'); job done after {done_s:.1f} s"),
        Row("browser ÷ CLI wall", click_s / cli.seconds, "×", at_most(1.5), note, checked=full),
        Row("server process CPU while the job runs", round(server_cpu / done_s, 3), "cores", at_most(0.1),
            "user+sys of the server's pid from the click until 'Done:' (the training process excluded)"),
    ]


def _train_in_page(browser, url: str, server_pid: int) -> tuple[float, float, float, float]:
    """Open the Train page, click Train: seconds until the results show, until 'Done:', the server's CPU seconds
    over the latter, and the training time the page reports."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(600_000)
    page.goto(url)
    page.get_by_text("1 · Data").wait_for()
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')")
    train = page.get_by_role("button", name="Train", exact=False).filter(has_text="Train").first
    cpu0, start = cpu_seconds(server_pid), time.perf_counter()
    train.click()
    page.get_by_text("Done:").wait_for()
    done_s, cpu1 = time.perf_counter() - start, cpu_seconds(server_pid)
    metric = page.get_by_test_id("stMetric").filter(has_text="Training time")
    metric.wait_for()
    click_s = time.perf_counter() - start
    seconds = re.search(r"([\d.]+)\s*s", metric.inner_text())
    page.close()
    return click_s, done_s, cpu1 - cpu0, float(seconds.group(1)) if seconds else float("nan")
