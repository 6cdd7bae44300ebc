"""The background training job: runs outside the caller, reports snapshots, stops, queues behind a server limit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from cnnviz import models, train
from cnnviz.ui import jobs


@pytest.fixture
def small(shapes_small):
    tr, te = shapes_small
    return models.preset("tiny", 3, 32, tr.info.num_classes), tr.subset(512), te.subset(200)


def _wait_for_step(job: jobs.TrainingJob, step: int, timeout: float = 60) -> None:
    """Poll until ``job`` has reported ``step``; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while job.snapshot().step < step:
        assert time.monotonic() < deadline, job.snapshot()
        time.sleep(0.01)


def test_job_trains_in_background_and_reports(small):
    spec, tr, te = small
    job = jobs.TrainingJob(spec, tr, te, train.TrainConfig(epochs=1, min_steps=20, batch_size=64)).start()
    snap = jobs.wait_for(job, 120)
    assert snap.status == "finished" and snap.step == snap.total_steps == 20
    assert len(snap.history["steps"]) == 20 and snap.history["epochs"]
    assert snap.result is not None and snap.evaluation is not None
    assert snap.result.metrics["test_accuracy"] == snap.evaluation.accuracy
    frames = snap.result.filter_frames
    assert frames[0][0] == 0 and frames[-1][0] == 20 and not torch.equal(frames[0][1], frames[-1][1])
    assert snap.filters.shape == (16, 3, 3, 3)


def test_snapshot_is_a_copy(small):
    spec, tr, te = small
    job = jobs.TrainingJob(spec, tr, te, train.TrainConfig(epochs=1, min_steps=10, batch_size=64)).start()
    jobs.wait_for(job, 120)
    a = job.snapshot()
    a.history["steps"].clear()
    assert len(job.snapshot().history["steps"]) == 10


def test_stop_ends_the_job_with_its_last_good_model(small):
    spec, tr, te = small
    job = jobs.TrainingJob(spec, tr, te, train.TrainConfig(epochs=50, batch_size=32)).start()
    _wait_for_step(job, 3)
    job.stop()
    snap = jobs.wait_for(job, 60)
    assert snap.status == "stopped" and snap.step < snap.total_steps
    assert snap.result is not None and all(torch.isfinite(p).all() for p in snap.result.model.parameters())


def test_jobs_beyond_the_limit_wait_in_line_and_can_be_stopped(small, monkeypatch):
    spec, tr, te = small
    monkeypatch.setattr(jobs, "_slots", threading.BoundedSemaphore(1))
    monkeypatch.setattr(jobs, "MAX_JOBS", 1)
    first = jobs.TrainingJob(spec, tr, te, train.TrainConfig(epochs=50, batch_size=32)).start()
    second = jobs.TrainingJob(spec, tr, te, train.TrainConfig(epochs=1, min_steps=5, batch_size=32)).start()
    deadline = time.monotonic() + 30
    while "Waiting for a free training slot" not in second.snapshot().message:
        assert time.monotonic() < deadline, second.snapshot()
        time.sleep(0.05)
    assert second.snapshot().status == "queued" and second.snapshot().active
    first.stop()
    snap = jobs.wait_for(second, 120)
    assert snap.status == "finished"  # it got the slot once the first job let go of it
    assert jobs.wait_for(first, 60).status == "stopped"
    third = jobs.TrainingJob(spec, tr, te, train.TrainConfig(epochs=50, batch_size=32)).start()
    fourth = jobs.TrainingJob(spec, tr, te, train.TrainConfig(epochs=1, batch_size=32)).start()
    time.sleep(0.5)
    fourth.stop()  # stopping a queued job ends it without training
    assert jobs.wait_for(fourth, 30).status == "stopped" and fourth.snapshot().step == 0
    third.stop()
    assert jobs.wait_for(third, 60).status == "stopped"


def test_two_sessions_train_two_models_independently(small):
    spec, tr, te = small
    a = jobs.TrainingJob(spec, tr, te, train.TrainConfig(epochs=1, min_steps=15, batch_size=64, seed=1)).start()
    b = jobs.TrainingJob(spec, tr, te, train.TrainConfig(epochs=1, min_steps=15, batch_size=64, seed=2)).start()
    sa, sb = jobs.wait_for(a, 120), jobs.wait_for(b, 120)
    assert sa.result.model is not sb.result.model
    assert not torch.equal(sa.result.model.conv1.weight, sb.result.model.conv1.weight)


def test_job_trains_in_its_own_process(small):
    spec, tr, te = small
    job = jobs.TrainingJob(spec, tr, te, train.TrainConfig(epochs=1, min_steps=10, batch_size=64)).start()
    snap = jobs.wait_for(job, 120)
    assert snap.status == "finished"
    assert job.process is not None and job.process.pid != os.getpid() and job.process.exitcode == 0


def test_an_error_in_the_training_process_is_reported(small):
    spec, tr, te = small
    too_few = models.preset("tiny", 3, 32, 2)  # 8 classes in the data, 2 outputs: the loss raises
    job = jobs.TrainingJob(too_few, tr, te, train.TrainConfig(epochs=1, min_steps=10, batch_size=64)).start()
    snap = jobs.wait_for(job, 120)
    assert snap.status == "failed" and snap.message.startswith("Training failed: ") and "out of bounds" in snap.message
    assert snap.result is None and not snap.active


def test_a_killed_training_process_fails_the_job_with_a_reason(small):
    spec, tr, te = small
    job = jobs.TrainingJob(spec, tr, te, train.TrainConfig(epochs=50, batch_size=32)).start()
    _wait_for_step(job, 3)
    os.kill(job.process.pid, signal.SIGKILL)  # as the kernel's out-of-memory killer would
    snap = jobs.wait_for(job, 30)
    assert snap.status == "failed" and "ended unexpectedly" in snap.message and "-9" in snap.message
    assert snap.step >= 3 and len(snap.history["steps"]) >= 3  # what was reported stays on the page


def test_a_job_stopped_before_it_starts_never_trains(small):
    spec, tr, te = small
    job = jobs.TrainingJob(spec, tr, te, train.TrainConfig(epochs=1, min_steps=10, batch_size=64))
    job.stop()
    snap = jobs.wait_for(job.start(), 30)  # a slot is free, so it gets one at once, then sees the stop
    assert snap.status == "stopped" and snap.step == 0 and job.process is None


def test_a_training_process_that_does_not_answer_a_stop_is_killed(small, monkeypatch):
    spec, tr, te = small
    monkeypatch.setattr(jobs, "STOP_GRACE", 0.01)
    big = replace(tr, x=tr.x.repeat(8, 1, 1, 1), y=tr.y.repeat(8), masks=None)
    slow = models.preset("deep", 3, 32, tr.info.num_classes)  # a step on 4,096 images: a second or more
    job = jobs.TrainingJob(slow, big, te, train.TrainConfig(epochs=50, batch_size=4096)).start()
    _wait_for_step(job, 1, timeout=120)  # then stop while it is inside its second step
    job.stop()
    snap = jobs.wait_for(job, 60)
    assert snap.status == "stopped" and "did not answer" in snap.message and snap.result is None
    assert job.process.exitcode == -signal.SIGKILL


CHILD_SCRIPT = r"""
import json, os, sys, time
if __name__ != "__main__":  # multiprocessing re-running this file inside the training process
    open(os.environ["MARKER"], "w").write(__name__)
else:
    from cnnviz import data, models, train
    from cnnviz.ui import jobs

    split = data.load("shapes", train=False).subset(256)
    job = jobs.TrainingJob(models.preset("tiny", 3, 32, 8), split, split,
                           train.TrainConfig(epochs=50, batch_size=32)).start()
    while job.snapshot().step < 1:
        time.sleep(0.01)
    env = open(f"/proc/{job.process.pid}/environ", "rb").read().split(b"\0")
    job.stop()
    print(json.dumps({"status": jobs.wait_for(job, 60).status,
                      "child_policy": [e.decode() for e in env if e.startswith(b"OMP_WAIT_POLICY=")],
                      "server_policy": os.environ.get("OMP_WAIT_POLICY")}))
"""


def test_training_process_waits_actively_and_does_not_rerun_the_main_script(tmp_path):
    """As under `cnnviz app`: the server's OpenMP threads wait passively, its training processes do not; and the
    server's main script (under Streamlit, app.py) is not run again inside each training process."""
    script, marker = tmp_path / "server.py", tmp_path / "marker"
    script.write_text(CHILD_SCRIPT)
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "MARKER": str(marker), "CNNVIZ_MAX_JOBS": "1"}
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=180,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"status": "stopped", "child_policy": [], "server_policy": "PASSIVE"}
    assert not marker.exists()
