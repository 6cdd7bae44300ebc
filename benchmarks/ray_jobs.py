"""A class clicking Train at once: training jobs on a local Ray instance against the local training processes."""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from dataclasses import dataclass, replace

from benchmarks.common import Options, progress
from benchmarks.report import Row, Skip

STUDENTS, QUICK_STUDENTS = 20, 4
# Each student's run: the tiny preset for 60 steps of 64 images of shapes (1-2 s of training on one core), so that
# the section measures how jobs start, report and share the cores, not how long one model trains.
STEPS, BATCH, IMAGES = 60, 64, 1000
WARM_UP_STEPS = 2  # the untimed first jobs of each backend, which start it (its workers import torch)
POLL_S = 0.01  # how often the benchmark reads every job's snapshot


def ray_jobs(options: Options) -> list[Row]:
    """``STUDENTS`` training jobs (the tiny preset, 60 steps of 64 shapes images each) submitted at the same moment,
    first to the local backend (training processes forked from the fork server, as ``cnnviz app`` serves), then to a
    local Ray instance with as many CPUs as the machine (``ray.init``, one CPU per job). Both backends train as many
    jobs at once as there are cores; the others wait in line. Each backend first trains one short job per core,
    untimed in the class's figures: it starts the fork server, or the Ray workers, which import torch once and are
    then reused (shown on their own row). Both train at a lower CPU priority than the benchmark (local processes at
    nice 10, Ray's workers at its default 15); the speed rows show how fast each job trained while it did.
    Per backend: Train → first step reported (fastest, median, slowest student), Train → the last job done, and the
    spread between the fastest and the slowest student's finish."""
    from cnnviz import cluster, data, models, train
    from cnnviz.ui import jobs

    if not cluster.installed():
        raise Skip("Ray is not installed (pip install 'cnnviz[ray]')")
    import ray

    students = QUICK_STUDENTS if options.quick else STUDENTS
    cpus = os.cpu_count() or 1
    full, test = data.load("shapes", True), data.load("shapes", False)
    tr, val = data.holdout(full.subset(IMAGES + 100), IMAGES, 100, seed=0)
    te = test.subset(200)
    spec = models.preset("tiny", tr.info.channels, tr.info.size, tr.info.num_classes)
    config = train.TrainConfig(epochs=1, batch_size=BATCH, min_steps=STEPS, max_steps=STEPS)

    def make(steps: int = STEPS) -> jobs.TrainingJob:
        return jobs.TrainingJob(spec, tr, val, te, replace(config, min_steps=steps, max_steps=steps))

    rows: list[Row] = []
    progress(f"local backend: {students} jobs, {cpus} at a time")
    with _backend(jobs, None, cpus, students):
        start = time.perf_counter()
        jobs.start_backend()  # the fork server, as `cnnviz app` starts it before it serves
        ready = time.perf_counter() - start
        cold = _class(lambda: make(WARM_UP_STEPS), cpus)  # its first jobs wait for it to import torch
        rows.append(Row("local processes: server start → first jobs' first step", ready + max(cold.first), "s",
                        note="the fork server imports torch"))
        rows += _rows("local processes", _class(make, students))
    progress(f"Ray: a local instance with {cpus} CPUs, {students} jobs, one CPU each")
    start = time.perf_counter()
    context = ray.init(num_cpus=cpus, num_gpus=0, include_dashboard=False, log_to_driver=False)
    try:
        with _backend(jobs, context.address_info["address"], cpus, students):
            jobs.start_backend()  # the connection and this server's mailbox, as `cnnviz app` makes them
            ready = time.perf_counter() - start
            cold = _class(lambda: make(WARM_UP_STEPS), cpus)  # its workers import torch once, then are reused
            rows.append(Row("Ray: server start → first jobs' first step", ready + max(cold.first), "s",
                            note=f"ray.init and this server's mailbox {ready:.1f} s"))
            rows += _rows("Ray", _class(make, students))
    finally:
        cluster.disconnect()
        ray.shutdown()
    return rows


@contextlib.contextmanager
def _backend(jobs, address: str | None, slots: int, students: int):
    """Train on ``address`` (None: local processes) with ``slots`` jobs at once and room in line for the class."""
    saved = jobs.RAY_ADDRESS, jobs.RAY_CPUS, jobs._line, jobs._line_sized
    jobs.RAY_ADDRESS, jobs.RAY_CPUS = address, 1.0
    jobs._line, jobs._line_sized = jobs.Line(slots, students), True
    try:
        yield
    finally:
        jobs.RAY_ADDRESS, jobs.RAY_CPUS, jobs._line, jobs._line_sized = saved


@dataclass
class Class:
    """What a class of jobs measured: each job's seconds from the class's Train to its first step reported and to
    its end, how it ended, and how fast it trained (images/s, while it trained)."""

    first: list[float]
    done: list[float]
    statuses: list[str]
    speeds: list[float]


def _class(make, students: int) -> Class:
    """Start ``students`` jobs at once and follow them to their ends."""
    started = [make() for _ in range(students)]
    start = time.perf_counter()
    for job in started:
        job.start()
    first: list[float | None] = [None] * students
    done: list[float | None] = [None] * students
    while None in done:
        if time.perf_counter() - start > 600:
            raise RuntimeError(f"{done.count(None)} of {students} jobs still not done after 600 s")
        now = time.perf_counter() - start
        for i, job in enumerate(started):
            if done[i] is None:
                snap = job.progress()
                if first[i] is None and snap.step >= 1:
                    first[i] = now
                if not snap.active:
                    done[i] = now
        time.sleep(POLL_S)
    ends = [job.snapshot() for job in started]
    return Class([f if f is not None else float("nan") for f in first], done, [s.status for s in ends],
                 [s.result.history.images_per_s for s in ends if s.result is not None])


def _rows(name: str, measured: Class) -> list[Row]:
    first, done = measured.first, measured.done
    finished = measured.statuses.count("finished")
    note = "" if finished == len(done) else f"only {finished} of {len(done)} finished: {set(measured.statuses)}"
    return [
        Row(f"{name}: Train → first step reported, fastest", min(first), "s"),
        Row(f"{name}: Train → first step reported, median", statistics.median(first), "s"),
        Row(f"{name}: Train → first step reported, slowest", max(first), "s"),
        Row(f"{name}: Train → all {len(done)} jobs done", max(done), "s", note=note),
        Row(f"{name}: spread, slowest − fastest student's finish", max(done) - min(done), "s",
            note=f"fastest done at {min(done):.1f} s"),
        Row(f"{name}: training speed of a job, median", statistics.median(measured.speeds or [float("nan")]),
            "img/s", note=f"{min(measured.speeds, default=float('nan')):,.0f}–"
                          f"{max(measured.speeds, default=float('nan')):,.0f} img/s"),
    ]
