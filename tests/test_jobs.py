"""The background training job: runs outside the caller, reports snapshots, stops, queues behind a server limit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from cnnviz import data, models, train
from cnnviz.ui import jobs, worker


@pytest.fixture
def small(shapes_small):
    """A spec, 512 training images, 100 held out of the training split to validate on, and 200 test images."""
    tr, te = shapes_small
    fit_on, val = data.holdout(tr, 512, 100, seed=0)
    return models.preset("tiny", 3, 32, tr.info.num_classes), fit_on, val, te.subset(200)


# Far longer than any test waits: a job that must still be training when the test acts on it.
LONG = train.TrainConfig(epochs=1, min_steps=100_000, batch_size=32)


def _job(small, config: train.TrainConfig, **kw) -> jobs.TrainingJob:
    spec, tr, val, te = small
    return jobs.TrainingJob(kw.pop("spec", spec), kw.pop("train_split", tr), val, te, config, **kw)


def _wait_for_step(job: jobs.TrainingJob, step: int, timeout: float = 60) -> None:
    """Poll until ``job`` has reported ``step``; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while job.snapshot().step < step:
        assert time.monotonic() < deadline, job.snapshot()
        time.sleep(0.01)


def test_job_trains_in_background_and_reports(small):
    job = _job(small, train.TrainConfig(epochs=1, min_steps=20, batch_size=64)).start()
    snap = jobs.wait_for(job, 120)
    assert snap.status == "finished" and snap.step == snap.total_steps == 20
    assert len(snap.history["steps"]) == 20 and snap.history["epochs"]
    assert snap.result is not None and snap.evaluation is not None
    assert snap.result.metrics["test_accuracy"] == snap.evaluation.accuracy
    frames = snap.result.filter_frames
    assert frames[0][0] == 0 and frames[-1][0] == 20 and not torch.equal(frames[0][1], frames[-1][1])
    assert snap.filters.shape == (16, 3, 3, 3) and snap.filters_step == 20
    # Backpropagation, live: every parameterised layer's gradient norm, sampled (steps 1, 11 of 20 at every 10).
    grads = snap.gradients
    assert grads["layers"][0] == "conv1" and grads["layers"][-1] == "fc" and grads["steps"][0] == 1
    assert all(len(row) == len(grads["steps"]) and all(v > 0 for v in row) for row in grads["grad_norm"])


def test_snapshot_is_a_copy(small):
    job = _job(small, train.TrainConfig(epochs=1, min_steps=10, batch_size=64)).start()
    jobs.wait_for(job, 120)
    a = job.snapshot()
    a.history["steps"].clear()
    assert len(job.snapshot().history["steps"]) == 10


def test_stop_ends_the_job_with_its_last_good_model(small):
    job = _job(small, LONG).start()
    _wait_for_step(job, 3)
    job.stop()
    snap = jobs.wait_for(job, 60)
    assert snap.status == "stopped" and snap.step < snap.total_steps
    assert snap.result is not None and all(torch.isfinite(p).all() for p in snap.result.model.parameters())


def test_jobs_beyond_the_limit_wait_in_line_and_can_be_stopped(small, monkeypatch):
    monkeypatch.setattr(jobs, "_line", jobs.Line(slots=1, max_waiting=2))
    monkeypatch.setattr(jobs, "MAX_JOBS", 1)
    first = _job(small, LONG).start()
    second = _job(small, train.TrainConfig(epochs=1, min_steps=5, batch_size=32)).start()
    third = _job(small, train.TrainConfig(epochs=1, min_steps=5, batch_size=32)).start()
    with pytest.raises(jobs.ServerFull):  # one training, two waiting: the line is full
        _job(small, train.TrainConfig(epochs=1, batch_size=32)).start()
    waiting = second.snapshot(), third.snapshot()
    assert [s.status for s in waiting] == ["queued", "queued"] and all(s.active for s in waiting)
    assert [s.place for s in waiting] == [1, 2]
    assert "number 1 in line" in waiting[0].message and "number 2 in line" in waiting[1].message
    assert 0 < waiting[0].wait <= waiting[1].wait
    third.stop()  # stopping a waiting job ends it without training, and the one behind it moves up
    assert jobs.wait_for(third, 30).status == "stopped" and third.snapshot().step == 0 and third.process is None
    first.stop()
    assert jobs.wait_for(second, 120).status == "finished"  # it got the slot once the first job let go of it
    assert jobs.wait_for(first, 60).status == "stopped"
    assert jobs._line.running == [] and jobs._line.waiting == []


class _Running:
    """A stand-in for a training job in the line: what its progress says, how long it would train."""

    def __init__(self, snap: jobs.Snapshot, expected: float = 0.0):
        self.snap, self.expected = snap, expected

    def progress(self) -> jobs.Snapshot:
        return self.snap

    def expected_seconds(self, images_per_s: float) -> float:
        return self.expected


def test_the_estimated_wait_adds_up_the_jobs_ahead():
    line = jobs.Line(slots=2, max_waiting=3)
    a = _Running(jobs.Snapshot(status="running", step=10, total_steps=40, eta=30.0, elapsed=10.0,
                               images_per_s=1000))
    b = _Running(jobs.Snapshot(status="running", step=10, total_steps=20, eta=10.0, elapsed=10.0,
                               images_per_s=1000))
    c, d, e = _Running(jobs.Snapshot(), expected=25.0), _Running(jobs.Snapshot(), expected=5.0), _Running(None)
    for job in (a, b, c, d, e):
        line.join(job)
    assert line.running == [a, b] and line.waiting == [c, d, e]
    # Slots free at 10 s (b) and 30 s (a). c takes the one free at 10 s and holds it until 35 s; d takes the one
    # free at 30 s and holds it until 35 s; e gets a slot at 35 s.
    assert line.place(c) == (1, 10.0)
    assert line.place(d) == (2, 30.0)
    assert line.place(e) == (3, 35.0)
    assert line.place(a) == (0, 0.0)  # training, not waiting
    with pytest.raises(jobs.ServerFull):
        line.join(_Running(None))
    line.leave(b)
    assert line.admit(c, timeout=0) and line.running == [a, c] and line.waiting == [d, e]
    assert not line.admit(e, timeout=0)  # d is ahead of it


def test_training_threads_share_the_cores_the_server_leaves():
    assert jobs.training_threads(2, 1, None) == 2  # (2 cores − 0.1 for the server) for one job
    assert jobs.training_threads(2, 1, 1.95) == 2
    assert jobs.training_threads(2, 1, 0.3) == 1  # the cores are busy: one thread, which never waits on another
    assert jobs.training_threads(2, 2, 2.0) == 1
    assert jobs.training_threads(16, 3, 16.0) == 5
    assert jobs.training_threads(1, 4, 0.0) == 1
    assert 0 <= jobs._idle_cores(0.05) <= os.cpu_count()


class _Machine:
    """A clock and a thread setting for ThreadTuner: each step takes ``cost[threads]`` seconds."""

    def __init__(self, cost: dict[int, float], threads: int):
        self.cost, self.threads, self.now, self.counts = cost, threads, 0.0, []

    def set(self, n: int) -> None:
        self.threads = n
        self.counts.append(n)

    def run(self, tuner: worker.ThreadTuner, steps: int) -> list[int]:
        """``steps`` steps; the thread count each one ran on."""
        used = []
        for _ in range(steps):
            self.now += self.cost[self.threads]
            used.append(self.threads)
            tuner.step()
        return used


def _tuner(machine: _Machine, others: tuple[int, ...], **kw) -> worker.ThreadTuner:
    return worker.ThreadTuner(machine.threads, others, clock=lambda: machine.now, set_threads=machine.set, **kw)


def test_thread_tuner_keeps_the_faster_count_and_looks_again_later():
    m = _Machine({1: 0.10, 2: 0.06}, threads=1)  # the first guess (1) is the slower one
    tuner = _tuner(m, (1, 2), probe_steps=4, warmup=2, every=5.0)
    used = m.run(tuner, 40)
    assert tuner.threads == 2 and m.counts[-1] == 2
    assert used[:2] == [1, 1] and used[-10:] == [2] * 10  # warm-up on the guess; then the faster one
    m.cost = {1: 0.05, 2: 0.50}  # another process took a core: two threads now wait on each other
    m.run(tuner, 200)
    assert tuner.threads == 1
    m.counts.clear()
    m.run(tuner, 20)  # within `every` seconds of the last round: no probing
    assert m.counts == []


def test_thread_tuner_ends_a_clearly_slower_probe_early_and_ignores_skipped_steps():
    m = _Machine({1: 0.05, 2: 1.0}, threads=1)
    tuner = _tuner(m, (2,), probe_steps=6, warmup=0, every=1000.0)
    used = m.run(tuner, 30)
    assert used.count(2) < 6 and tuner.threads == 1  # the 2-thread probe stopped once it was twice as slow
    m = _Machine({1: 0.10, 2: 0.06}, threads=2)
    tuner = _tuner(m, (1,), probe_steps=3, warmup=0, every=1000.0)
    for _ in range(40):  # every other interval also validates for a long time: skipped, it cannot mislead
        m.now += m.cost[m.threads]
        tuner.step()
        m.now += 5.0
        tuner.skip()
    assert tuner.threads == 2


def test_thread_tuner_with_one_candidate_never_changes_anything():
    m = _Machine({2: 0.1}, threads=2)
    tuner = _tuner(m, (2,), warmup=0)
    m.run(tuner, 50)
    assert m.counts == [] and tuner.threads == 2


def test_outside_a_served_app_nothing_can_end_a_session():
    assert jobs.this_session() is None


def test_a_job_whose_session_ends_stops_within_seconds(small):
    session = {"open": True}
    job = _job(small, LONG, alive=lambda: session["open"]).start()
    _wait_for_step(job, 3)
    process = job.process
    session["open"] = False  # the tab was closed
    closed = time.monotonic()
    jobs.wait_for(job, 30)
    gone = time.monotonic() - closed
    assert not process.is_alive() and process.exitcode is not None
    assert jobs.ALIVE_GRACE <= gone <= jobs.ALIVE_GRACE + jobs.ALIVE_EVERY + 3
    snap = job.snapshot()
    assert snap.status == "stopped" and "tab" in snap.message and not snap.active


def test_a_short_disconnection_does_not_stop_the_job(small):
    session = {"open": True}
    job = _job(small, LONG, alive=lambda: session["open"]).start()
    _wait_for_step(job, 3)
    session["open"] = False  # a network blip: the browser reconnects to the same session
    time.sleep(jobs.ALIVE_GRACE / 2)
    session["open"] = True
    time.sleep(jobs.ALIVE_GRACE + jobs.ALIVE_EVERY)
    assert job.snapshot().status == "running" and job.process.is_alive()
    job.stop()
    assert jobs.wait_for(job, 60).status == "stopped"


def test_a_job_waiting_in_line_leaves_it_when_its_session_ends(small, monkeypatch):
    monkeypatch.setattr(jobs, "_line", jobs.Line(slots=1, max_waiting=1))
    first = _job(small, LONG).start()
    waiting = _job(small, train.TrainConfig(epochs=1, batch_size=32), alive=lambda: False).start()
    snap = jobs.wait_for(waiting, jobs.ALIVE_GRACE + 10)
    assert snap.status == "stopped" and waiting.process is None and jobs._line.waiting == []
    first.stop()
    assert jobs.wait_for(first, 60).status == "stopped"


def test_a_job_stops_at_the_time_cap_and_keeps_what_it_learned(small, monkeypatch):
    monkeypatch.setattr(jobs, "TIME_CAP", 2.0)
    job = _job(small, LONG).start()
    snap = jobs.wait_for(job, 60)
    assert snap.status == "stopped" and 0 < snap.step < snap.total_steps
    assert "time limit" in snap.message and "2 s" in snap.message
    assert snap.result is not None and snap.result.history.status == "stopped"
    assert 1.0 <= snap.result.history.seconds < 2.0 + 5  # the cap counts from the process's start


def test_two_sessions_train_two_models_independently(small):
    a = _job(small, train.TrainConfig(epochs=1, min_steps=15, batch_size=64, seed=1)).start()
    b = _job(small, train.TrainConfig(epochs=1, min_steps=15, batch_size=64, seed=2)).start()
    sa, sb = jobs.wait_for(a, 120), jobs.wait_for(b, 120)
    assert sa.result.model is not sb.result.model
    assert not torch.equal(sa.result.model.conv1.weight, sb.result.model.conv1.weight)


def test_job_trains_in_its_own_process(small):
    job = _job(small, train.TrainConfig(epochs=1, min_steps=10, batch_size=64)).start()
    snap = jobs.wait_for(job, 120)
    assert snap.status == "finished"
    assert job.process is not None and job.process.pid != os.getpid() and job.process.exitcode == 0


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux's")
def test_a_training_process_runs_only_on_cores_the_pages_leave(small):
    job = _job(small, train.TrainConfig(epochs=50, batch_size=64)).start()
    try:
        deadline = time.monotonic() + 120
        while job.snapshot().step < 1:
            assert time.monotonic() < deadline and job.snapshot().active, job.snapshot().message
            time.sleep(0.05)
        pid = job.process.pid
        assert os.sched_getscheduler(pid) == os.SCHED_IDLE
        nice = int(Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[16])
        assert nice >= worker.NICENESS
        assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the server (here: the test) keeps its priority
    finally:
        job.stop()
        jobs.wait_for(job, 60)


def test_an_error_in_the_training_process_is_reported(small):
    too_few = models.preset("tiny", 3, 32, 2)  # 8 classes in the data, 2 outputs: the loss raises
    job = _job(small, train.TrainConfig(epochs=1, min_steps=10, batch_size=64), spec=too_few).start()
    snap = jobs.wait_for(job, 120)
    assert snap.status == "failed" and snap.message.startswith("Training failed: ") and "out of bounds" in snap.message
    assert snap.result is None and not snap.active


def test_a_killed_training_process_fails_the_job_with_a_reason(small):
    job = _job(small, LONG).start()
    _wait_for_step(job, 3)
    os.kill(job.process.pid, signal.SIGKILL)  # as the kernel's out-of-memory killer would
    snap = jobs.wait_for(job, 30)
    assert snap.status == "failed" and "ended unexpectedly" in snap.message and "-9" in snap.message
    assert snap.step >= 3 and len(snap.history["steps"]) >= 3  # what was reported stays on the page


def test_a_job_stopped_before_it_starts_never_trains(small):
    job = _job(small, train.TrainConfig(epochs=1, min_steps=10, batch_size=64))
    job.stop()
    snap = jobs.wait_for(job.start(), 30)  # a slot is free, so it gets one at once, then sees the stop
    assert snap.status == "stopped" and snap.step == 0 and job.process is None


def test_a_training_process_that_does_not_answer_a_stop_is_killed(small, monkeypatch):
    tr = small[1]
    monkeypatch.setattr(jobs, "STOP_GRACE", 0.01)
    big = replace(tr, x=tr.x.repeat(8, 1, 1, 1), y=tr.y.repeat(8), masks=None)
    slow = models.preset("deep", 3, 32, tr.info.num_classes)  # a step on 4,096 images: a second or more
    job = _job(small, train.TrainConfig(epochs=50, batch_size=4096), spec=slow, train_split=big).start()
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
    job = jobs.TrainingJob(models.preset("tiny", 3, 32, 8), split, split, split,
                           train.TrainConfig(epochs=50, batch_size=32)).start()
    while job.snapshot().step < 1:
        time.sleep(0.01)
    env = open(f"/proc/{job.process.pid}/environ", "rb").read().split(b"\0")
    job.stop()
    print(json.dumps({"status": jobs.wait_for(job, 60).status,
                      "child_policy": [e.decode() for e in env if e.startswith((b"OMP_WAIT_POLICY=",
                                                                                 b"MALLOC_MMAP_THRESHOLD_="))],
                      "server_policy": [os.environ.get("OMP_WAIT_POLICY"), os.environ.get("MALLOC_MMAP_THRESHOLD_")]}))
"""


def test_training_process_waits_actively_and_does_not_rerun_the_main_script(tmp_path):
    """As under `cnnviz app`: the server's OpenMP threads wait passively and its big allocations are mapped apart,
    its training processes do neither (the second halved training speed); and the server's main script (under
    Streamlit, app.py) is not run again inside each training process."""
    script, marker = tmp_path / "server.py", tmp_path / "marker"
    script.write_text(CHILD_SCRIPT)
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "MALLOC_MMAP_THRESHOLD_": "4194304", "MARKER": str(marker),
           "CNNVIZ_MAX_JOBS": "1"}
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=180,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"status": "stopped", "child_policy": [], "server_policy": ["PASSIVE", "4194304"]}
    assert not marker.exists()
