"""Training jobs on a Ray cluster (cnnviz.cluster behind cnnviz.ui.jobs): a local Ray instance with 2 CPUs, started
once for this file. The jobs train, stop, lose their worker, wait in line and end with their session as local jobs
do. Ray is in the test extra: without it these tests skip, except under CI=true, where they must run.

Then the app in replicas (deploy/): the container file's steps against the Makefile's, and the nginx config."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cnnviz import cluster, data, models, train
from cnnviz.ui import jobs, worker

ROOT = Path(__file__).resolve().parent.parent
LONG = train.TrainConfig(epochs=1, min_steps=100_000, batch_size=32)  # still training whenever a test acts on it
SHORT = train.TrainConfig(epochs=1, min_steps=20, batch_size=64)


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray instance (2 CPUs, no dashboard) that this file's jobs train on, one CPU each."""
    if not cluster.installed():
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("Ray is not installed, but it is in the test extra: with CI=true the Ray tests must run")
        pytest.skip("Ray is not installed (pip install 'cnnviz[ray]'): the Ray backend's tests need it")
    import ray

    context = ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(jobs, "RAY_ADDRESS", context.address_info["address"])
        mp.setattr(jobs, "RAY_CPUS", 1.0)
        mp.setattr(jobs, "_line_sized", True)  # each test sets its own line
        try:
            yield ray
        finally:
            cluster.disconnect()
            ray.shutdown()


@pytest.fixture(scope="module")
def split(shapes_small):
    """512 training images, 100 held out to validate on, 200 test images."""
    tr, te = shapes_small
    fit_on, val = data.holdout(tr, 512, 100, seed=0)
    return fit_on, val, te.subset(200)


@pytest.fixture(scope="module")
def warm(ray_cluster, split):
    """Two tiny jobs trained side by side first: each leaves a Ray worker with torch loaded, which later tasks
    reuse, as on a cluster that has trained before (a test then waits for training, not for an import)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(jobs, "_line", jobs.Line(slots=2, max_waiting=0))
        tr, val, te = split
        pair = [jobs.TrainingJob(models.preset("tiny", 3, 32, 8), tr, val, te, train.TrainConfig(max_steps=5)).start()
                for _ in range(2)]
        snaps = [jobs.wait_for(job, 120) for job in pair]
        assert [s.status for s in snaps] == ["finished", "finished"], [s.message for s in snaps]


@pytest.fixture
def small(split, warm, monkeypatch):
    """A spec and the split; a line of two slots."""
    monkeypatch.setattr(jobs, "_line", jobs.Line(slots=2, max_waiting=2))
    return (models.preset("tiny", 3, 32, 8), *split)


def _job(small, config: train.TrainConfig, **kw) -> jobs.TrainingJob:
    spec, tr, val, te = small
    return jobs.TrainingJob(spec, tr, val, te, config, **kw)


def _wait_for_step(job: jobs.TrainingJob, step: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while job.snapshot().step < step:
        assert time.monotonic() < deadline, job.snapshot()
        time.sleep(0.02)


def _gone(pid: int, timeout: float = 15) -> bool:
    """Whether process ``pid`` has ended (or become a zombie) within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] == "Z":
                return True
        except (FileNotFoundError, IndexError):
            return True
        time.sleep(0.05)
    return False


def test_a_job_trains_on_the_cluster_as_it_would_here(small):
    spec, tr, val, te = small
    job = _job(small, SHORT).start()
    snap = jobs.wait_for(job, 120)
    assert snap.status == "finished", snap.message
    assert snap.step == snap.total_steps == 20 and len(snap.history["steps"]) == 20 and snap.history["epochs"]
    assert job.process is None and job.remote.pid not in (None, os.getpid())  # in a Ray worker, not a process of ours
    assert snap.filters.shape == (16, 3, 3, 3) and snap.filters_step == 20
    # On the machine that serves the pages (here, this one), a task yields the CPU as local training processes do.
    nice = int(Path(f"/proc/{job.remote.pid}/stat").read_text().rsplit(") ", 1)[1].split()[16])
    assert nice >= worker.NICENESS
    # The same seed and data on one thread train the same weights as train.fit does in this process.
    model = models.build(spec, seed=SHORT.seed)
    history = train.fit(model, tr, SHORT, val=val)
    assert [s["loss"] for s in snap.history["steps"]] == pytest.approx([s["loss"] for s in history.steps], rel=1e-4)
    for (name, mine), theirs in zip(model.state_dict().items(), snap.result.model.state_dict().values()):
        assert torch.allclose(mine, theirs, atol=1e-5), name
    assert snap.evaluation.accuracy == pytest.approx(train.evaluate(model, te).accuracy)


def test_stop_on_the_cluster_keeps_the_last_good_model(small):
    job = _job(small, LONG).start()
    _wait_for_step(job, 3)
    job.stop()
    snap = jobs.wait_for(job, 60)
    assert snap.status == "stopped" and 3 <= snap.step < snap.total_steps, snap.message
    assert snap.result is not None and all(torch.isfinite(p).all() for p in snap.result.model.parameters())


def test_a_job_on_the_cluster_stops_at_the_time_cap(small, monkeypatch):
    monkeypatch.setattr(jobs, "TIME_CAP", 2.0)
    snap = jobs.wait_for(_job(small, LONG).start(), 60)
    assert snap.status == "stopped" and "time limit" in snap.message and 0 < snap.step < snap.total_steps
    assert 1.0 <= snap.result.history.seconds < 2.0 + 5  # counted from the first report, not the wait for a worker


def test_jobs_beyond_the_line_wait_and_those_beyond_the_cluster_wait_for_it(small, monkeypatch):
    monkeypatch.setattr(jobs, "_line", jobs.Line(slots=3, max_waiting=1))
    first, second = _job(small, LONG).start(), _job(small, LONG).start()
    _wait_for_step(first, 1)
    _wait_for_step(second, 1)
    # Both CPUs train; the line has a third slot, so the third job is submitted and waits for the cluster.
    third = _job(small, SHORT).start()
    fourth = _job(small, SHORT).start()  # the line is full: this one waits here
    with pytest.raises(jobs.ServerFull):
        _job(small, SHORT).start()
    time.sleep(1.0)
    waiting_here, waiting_there = fourth.snapshot(), third.snapshot()
    assert waiting_here.status == "queued" and waiting_here.place == 1 and "on the cluster" in waiting_here.message
    assert waiting_there.status == "queued" and "Waiting for the cluster" in waiting_there.message
    third.stop()  # it never started: nothing to keep
    snap = jobs.wait_for(third, 30)
    assert snap.status == "stopped" and snap.message == "Stopped before it started." and third.remote.pid is None
    first.stop()
    assert jobs.wait_for(fourth, 120).status == "finished"  # it moved up and trained once a CPU was free
    second.stop()
    assert [jobs.wait_for(j, 60).status for j in (first, second)] == ["stopped", "stopped"]
    assert jobs._line.running == [] and jobs._line.waiting == []


# These two end a worker process (the next task on it starts a fresh one): last of the jobs.
def test_a_job_whose_session_ends_ends_its_task(small):
    session = {"open": True}
    job = _job(small, LONG, alive=lambda: session["open"]).start()
    _wait_for_step(job, 3)
    pid = job.remote.pid
    session["open"] = False
    snap = jobs.wait_for(job, 30)
    assert snap.status == "stopped" and "tab" in snap.message
    assert _gone(pid)  # the task was cancelled with its worker process



def test_a_killed_worker_fails_the_job_with_a_reason_and_keeps_its_reports(small):
    job = _job(small, LONG).start()
    _wait_for_step(job, 3)
    os.kill(job.remote.pid, signal.SIGKILL)  # as the kernel's out-of-memory killer, or a node going down, would
    snap = jobs.wait_for(job, 60)
    assert snap.status == "failed" and "ended unexpectedly" in snap.message and "worker" in snap.message
    assert snap.step >= 3 and len(snap.history["steps"]) >= 3  # what was reported stays on the page
    assert snap.result is None and not snap.active


def test_the_line_is_sized_to_the_cluster(ray_cluster, monkeypatch):
    monkeypatch.setattr(jobs, "_line", jobs.Line(slots=64, max_waiting=128))
    monkeypatch.setattr(jobs, "_line_sized", False)
    monkeypatch.setattr(jobs, "RAY_CPUS", 2.0)
    jobs.start_backend()
    assert (jobs._line.slots, jobs._line.max_waiting) == (1, 2)  # 2 CPUs hold one job of 2 CPUs
    assert cluster.capacity(1) == 2 and cluster.capacity(0.5) == 4
    assert cluster.cpus_for(8) == 2 and cluster.cpus_for(1) == 1  # no node has 8: ask for what one has
    assert not cluster.has_gpu()


def test_a_gpu_is_worth_asking_for_only_for_long_runs():
    # 3 × 6.6 M multiply-adds × 38,400 images (300 steps of 128: two epochs of shapes) on 2 cores: 22 s.
    assert not cluster.worth_a_gpu(6_635_904, 38_400, cpus=2)
    seconds = 3 * 6_635_904 * 38_400 / (cluster.CPU_MACS_PER_S * 2)
    assert seconds == pytest.approx(22.5, abs=0.1)
    assert cluster.worth_a_gpu(6_635_904, 38_400 * 3, cpus=2)  # 67 s
    assert not cluster.worth_a_gpu(6_635_904, 38_400 * 3, cpus=4)  # 34 s on twice the cores


def test_without_ray_a_job_on_the_cluster_fails_with_what_to_install(shapes_small, monkeypatch):
    monkeypatch.setattr(cluster, "installed", lambda: False)
    monkeypatch.setattr(jobs, "RAY_ADDRESS", "ray://school-cluster:10001")
    monkeypatch.setattr(jobs, "_line", jobs.Line(slots=1, max_waiting=1))
    tr, te = shapes_small
    job = jobs.TrainingJob(models.preset("tiny", 3, 32, 8), tr.subset(64), None, te.subset(64), SHORT).start()
    snap = jobs.wait_for(job, 30)
    assert snap.status == "failed" and "Ray is not installed" in snap.message and "cnnviz[ray]" in snap.message
    assert job.process is None and job.remote is None


def test_an_address_where_nothing_answers_is_refused_at_once():
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        assert cluster._answers(f"127.0.0.1:{port}", 5) and cluster._answers(f"ray://127.0.0.1:{port}", 5)
    assert not cluster._answers(f"127.0.0.1:{port}", 5)  # closed now
    assert not cluster._answers(f"ray://127.0.0.1:{port}", 5)
    assert cluster._answers("auto", 5)  # Ray finds a local cluster itself


def test_nothing_imports_ray_unless_a_cluster_is_used():
    code = ("import sys; import cnnviz, cnnviz.cli, cnnviz.cluster, cnnviz.ui.jobs, cnnviz.ui.worker; "
            "print(cnnviz.ui.jobs.RAY_ADDRESS, 'ray' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k != cluster.ADDRESS_ENV}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["None", "False"]


# The app in replicas (deploy/): what cannot run here (containers, several hosts) is checked as far as it can be.

DEPLOY = ROOT / "deploy"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def _dockerfile(instruction: str) -> list[str]:
    """The arguments of every ``instruction`` (RUN, CMD, …) in deploy/Dockerfile, continuation lines joined."""
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [" ".join(line.split()) for line in text.splitlines() if not line.lstrip().startswith("#")]
    return [line.split(" ", 1)[1] for line in lines if line.split(" ", 1)[0] == instruction]


def _make(*args: str) -> list[str]:
    """The commands ``make -n args`` would run in the repository (nothing is run)."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    out = subprocess.run(["make", "-n", "--no-print-directory", *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def test_the_dockerfile_installs_what_make_test_installs_with_the_cpu_build_of_pytorch():
    install = _make("-B", ".venv/.installed-stamp", f"TORCH_INDEX={CPU_INDEX}")
    assert any("torch==" in c and f"--index-url {CPU_INDEX}" in c for c in install)  # the pins, from the Makefile
    runs = _dockerfile("RUN")
    # The Makefile's steps, in its order (pins and index included), and besides them only: make itself, and other
    # extras of the project.
    assert [c for c in install if c not in runs] == [], runs
    at = [runs.index(command) for command in install]
    assert at == sorted(at), runs
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for run in runs:
        if run in install:
            continue
        extra = re.fullmatch(r"\.venv/bin/python -m pip install -e '\.\[(\w+)\]'", run)
        assert (extra and extra[1] in extras) or run.startswith("apt-get update && apt-get install -y "
                                                                "--no-install-recommends make "), run


def test_the_container_serves_as_make_run_does_and_is_probed_where_streamlit_answers():
    command = _make("-o", ".venv/.installed-stamp", "run", "PORT=8501")
    assert json.loads(_dockerfile("CMD")[0]) == command[-1].split()
    assert _dockerfile("EXPOSE") == ["8501"]
    assert "http://127.0.0.1:8501/_stcore/health" in _dockerfile("HEALTHCHECK")[0]
    assert "/_stcore/health" in (DEPLOY / "README.md").read_text()


def test_the_nginx_config_parses(tmp_path):
    if shutil.which("nginx") is None:
        pytest.skip("nginx is not installed (apt-get install nginx-light): deploy/nginx.conf not checked")
    out = subprocess.run(["nginx", "-t", "-c", str(DEPLOY / "nginx.conf"), "-p", f"{tmp_path}/"], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0 and "syntax is ok" in out.stderr, out.stderr


def test_the_nginx_config_keeps_a_browser_on_one_replica_and_takes_the_apps_uploads():
    conf = (DEPLOY / "nginx.conf").read_text()
    assert "hash $cnnviz_replica consistent;" in conf and "Set-Cookie \"cnnviz_replica=$cnnviz_replica;" in conf
    assert "proxy_set_header Upgrade $http_upgrade;" in conf and "proxy_http_version 1.1;" in conf
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    upload_mb = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())["server"]["maxUploadSize"]
    assert f"client_max_body_size {upload_mb}m;" in conf

