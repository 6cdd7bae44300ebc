"""The Train page as served to a class: bounded live curves, the app's own error message, a full server's answer,
and, in a real browser, a training job that ends with its tab."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from streamlit import config as st_config
from streamlit.testing.v1 import AppTest

from browser_support import CHROMIUM, assert_no_exception, browser_page, served, wait_until_idle
from cnnviz import charts
from cnnviz.train import History

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")


def _history(n: int, n_val: int = 0) -> History:
    steps = [dict(step=i, epoch=i / 100, loss=1.0 + (i % 2), acc=0.5, lr=0.01) for i in range(1, n + 1)]
    val = [dict(epoch=i, step=i * max(1, n // max(1, n_val)), val_loss=0.5, val_acc=0.75, seconds=1.0)
           for i in range(1, n_val + 1)]
    return History(steps=steps, epochs=val)


def test_live_curves_send_a_bounded_number_of_points_and_keep_the_last():
    fig = charts.training_curves(_history(10_000, n_val=500))
    for trace in fig.data:
        assert 2 <= len(trace.x) <= charts.MAX_POINTS == 300
        assert trace.x[0] >= 1 and trace.x[-1] == 10_000  # the latest point is always shown
    raw, smooth = fig.data[0], fig.data[1]
    # Smoothed over every step before thinning: alternating 1, 2 settles near their mean, 1.5, at the last point.
    assert smooth.y[-1] == pytest.approx(1.5, abs=0.06)
    assert set(np.unique(raw.y)) <= {1.0, 2.0}
    assert list(charts.downsample(5)) == [0, 1, 2, 3, 4]
    picked = charts.downsample(1001, limit=10)
    assert len(picked) == 10 and picked[0] == 0 and picked[-1] == 1000 and np.all(np.diff(picked) > 0)


def test_live_curves_update_in_place():
    fig = charts.training_curves(History())
    assert fig.layout.annotations[-1].text == charts.EMPTY
    same = charts.update_training_curves(fig, _history(40, n_val=2))
    assert same is fig and [len(t.x) for t in fig.data] == [40, 40, 2, 40, 40, 2]
    assert all(a.text != charts.EMPTY for a in fig.layout.annotations)
    assert [a.text for a in fig.layout.annotations] == ["Loss (lower is better)", "Accuracy (higher is better)"]
    assert {t.name for t in fig.data} >= {"validation (held-out training images)"}


@contextlib.contextmanager
def _error_details(value: str):
    old = st_config.get_option("client.showErrorDetails")
    st_config.set_option("client.showErrorDetails", value)
    try:
        yield
    finally:
        st_config.set_option("client.showErrorDetails", old)


def test_a_failing_page_shows_the_apps_own_message_when_served(monkeypatch):
    import streamlit as st

    def broken(*args, **kwargs):
        raise RuntimeError("/srv/cnnviz/secret/path.py is broken")

    # The Home page: AppTest runs app.py (and so its handler) around the first page only; switch_page runs a page
    # file on its own.
    monkeypatch.setattr(st, "page_link", broken)
    with _error_details("none"):  # as .streamlit/config.toml serves the app
        at = AppTest.from_file(APP, default_timeout=120).run()
    assert not at.exception
    shown = "\n".join(e.value for e in at.error)
    assert "Something went wrong on this page" in shown and "secret" not in shown
    assert at.title[0].value.startswith("cnnviz")  # what the page drew before it failed stays
    with _error_details("full"):  # `make dev`: Streamlit's own report, with the details
        at.run()
    assert at.exception and "secret/path.py is broken" in at.exception[0].value


def test_a_full_server_says_so_and_starts_nothing(monkeypatch):
    from cnnviz.ui import jobs

    monkeypatch.setattr(jobs, "_line", jobs.Line(slots=0, max_waiting=0))
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.switch_page("pages/train.py").run()
    at.button(key="train_start").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("server is full" in w.value and "Try again in a minute" in w.value for w in at.warning)
    assert "job" not in at.session_state
    help_text = at.select_slider(key="train_lr").help
    assert "diverges" in help_text and "stuck guessing at chance" in help_text and "2.0" in help_text


@pytest.mark.slow
def test_a_learning_rate_of_2_fails_and_the_page_says_why():
    """The learning-rate help promises that 2.0 makes training fail: train at 2.0 for real and read the page."""
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.switch_page("pages/train.py").run()
    at.select_slider(key="train_size").set_value("1,000").run()
    at.select_slider(key="train_lr").set_value(2.0).run()
    at.button(key="train_start").click().run()
    deadline = time.monotonic() + 300
    while at.session_state.job.snapshot().active:
        assert time.monotonic() < deadline, "training did not end"
        time.sleep(0.5)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    snap = at.session_state.job.snapshot()
    assert snap.status in ("stuck", "diverged"), snap.message
    errors = "\n".join(e.value for e in at.error)
    assert ("guessing at chance" if snap.status == "stuck" else "diverged") in errors
    assert not at.success  # never "Done" for a run that failed


# --- In a real browser, served as `make run` serves it ----------------------------------------------------------

def _children() -> dict[int, list[int]]:
    """Every process's children, from /proc (pid → child pids)."""
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:  # it ended while we looked
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            tree.setdefault(ppid, []).append(int(entry))
    return tree


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _training_processes(server: int) -> list[int]:
    """The server's training processes: the children of its multiprocessing fork server."""
    tree = _children()
    forkservers = [p for p in tree.get(server, [])
                   if b"forkserver" in Path(f"/proc/{p}/cmdline").read_bytes()]
    return [c for f in forkservers for c in tree.get(f, []) if _running(c)]


@contextlib.contextmanager
def _served(cwd: Path, timeout: float = 120):
    """``python -m cnnviz.cli app`` (what ``make run`` starts), from ``cwd``: the process and its URL."""
    with served([sys.executable, "-m", "cnnviz.cli", "app", "--port", "{port}"], cwd=cwd,
                env={"CNNVIZ_MAX_JOBS": "1"}, timeout=timeout) as (proc, url):
        yield proc, url


@pytest.mark.browser
@pytest.mark.slow
def test_closing_the_tab_ends_its_training_within_seconds(tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    with _served(tmp_path) as (server, url), browser_page() as page:  # tmp_path: not the project's directory
        page.goto(f"{url}/train?train_epochs=50")  # far longer than this test
        page.get_by_text("1 · Data").wait_for(timeout=120_000)
        wait_until_idle(page, 120_000)
        # .streamlit/config.toml applies whatever the current directory: a student sees no Deploy button.
        assert page.get_by_role("button", name="Deploy").count() == 0
        page.get_by_role("button", name="Train", exact=False).filter(has_text="Train").first.click()
        page.get_by_text(re.compile(r"Step [1-9]\d* / \d+")).wait_for(timeout=120_000)
        assert_no_exception(page)
        trainers = _training_processes(server.pid)
        assert len(trainers) == 1, trainers
        page.close()  # the tab is closed: its session ends
        closed = time.monotonic()
        while _running(trainers[0]):
            assert time.monotonic() - closed < 10, "the training process outlived its tab by 10 s"
            time.sleep(0.2)
        assert _training_processes(server.pid) == []


@pytest.mark.slow
def test_graph_presets_show_blocks_and_diagram_and_a_run_joins_the_comparison_in_one_click():
    """#13: residual and inception presets on the Train page (their blocks, layers and diagram), and "Train
    mini-inception on this data" starts that run, which then appears in the comparison table and chart."""
    at = AppTest.from_file(APP, default_timeout=180).run()
    at.switch_page("pages/train.py").run()
    for name, layer in (("mini-resnet", "block2.add"), ("mini-inception", "inc2.branch3x3.conv2")):
        at.radio(key="train_preset").set_value(name).run()
        assert not at.exception, (name, [e.value for e in at.exception])
        layers = [v for df in at.dataframe for v in (df.value["layer"] if "layer" in df.value else [])]
        assert layer in layers, (name, layers[:20])
        assert any("shortcuts (residual blocks)" in c.value for c in at.caption)
    assert "Finished runs appear here." in [i.value for i in at.info]
    at.select_slider(key="train_size").set_value("200").run()
    at.number_input(key="train_epochs").set_value(1).run()
    at.button(key="train_next_mini-inception").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.session_state.job_architecture == "mini-inception"
    deadline = time.monotonic() + 400
    while at.session_state.job.snapshot().active:
        assert time.monotonic() < deadline, "training did not end"
        time.sleep(0.5)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    snap = at.session_state.job.snapshot()
    rows = at.session_state.runs.table()
    assert [r["architecture"] for r in rows] == ["mini-inception"]
    assert rows[0]["test accuracy (%)"] == pytest.approx(100 * snap.evaluation.accuracy, abs=0.01)
    assert rows[0]["parameters"] == sum(p.numel() for p in snap.result.model.parameters())
    assert any("MFLOPs per image" in df.value.columns for df in at.dataframe)
