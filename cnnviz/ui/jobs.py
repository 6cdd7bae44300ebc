"""A training run in its own process, owned by one session, reporting through a thread-safe snapshot.

The page never waits on training: it starts a :class:`TrainingJob`, then a fragment polls :meth:`snapshot` about
once a second. The model trains in a child process (forked from multiprocessing's fork server, which has torch and
cnnviz loaded already), so the training loop has its own interpreter lock and OpenMP threads: the server's threads,
busy drawing pages for other students, do not slow it down, and it does not slow them. In the server, one light thread
per job waits for a slot, starts the process and copies what it reports into the snapshot; it never touches
Streamlit.

A server is shared by a class, so every job is bounded: at most ``CNNVIZ_MAX_JOBS`` train at once (default: the
number of cores), at most ``CNNVIZ_MAX_QUEUE`` wait in line (default: twice that; beyond it :meth:`TrainingJob.start`
raises :class:`ServerFull`), each trains for at most ``CNNVIZ_JOB_TIME_CAP`` seconds (default 300) and then stops
keeping what it learned, and a job whose browser session has ended stops within seconds.

When ``CNNVIZ_RAY_ADDRESS`` is set (``cnnviz app --ray ADDRESS``), the same job trains as a task on that Ray cluster
instead (:mod:`cnnviz.cluster`), asking for ``CNNVIZ_RAY_CPUS`` CPUs (default 2), or a GPU when the cluster has one
and the run is long enough to be worth it. The page sees no difference: the same reports at the same rate, Stop,
the line (its slots are then the cluster's: ``CNNVIZ_MAX_JOBS``, default as many jobs as the cluster's CPUs hold),
the time cap, the end with the session; a task lost with its node fails the job with a reason.
"""

from __future__ import annotations

import heapq
import logging
import multiprocessing as mp
from multiprocessing import forkserver, spawn
import os
import pickle
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from cnnviz import cluster, devices, models
from cnnviz.checkpoint import Checkpoint
from cnnviz.data import Split
from cnnviz.train import Evaluation, History, TrainConfig
from cnnviz.ui import worker

log = logging.getLogger(__name__)

MAX_JOBS = int(os.environ.get("CNNVIZ_MAX_JOBS", 0)) or os.cpu_count() or 1
MAX_QUEUE = int(os.environ.get("CNNVIZ_MAX_QUEUE", 0)) or 2 * MAX_JOBS
RAY_ADDRESS = os.environ.get(cluster.ADDRESS_ENV) or None  # train on this Ray cluster (None: in local processes)
RAY_CPUS = float(os.environ.get("CNNVIZ_RAY_CPUS", 0)) or 2.0  # CPUs a job asks the cluster for
TIME_CAP = float(os.environ.get("CNNVIZ_JOB_TIME_CAP", 0)) or 300.0  # seconds of training per job
# The web server's own share of the cores while jobs train, served with .streamlit/config.toml and a Train page
# polling each second (measured with py-spy and /proc: ~0.1 core). Training threads get the rest.
SERVER_CORES = 0.1
TRAIN_THREADS = int(os.environ.get("CNNVIZ_TRAIN_THREADS", 0))  # a fixed thread count per training process (0: sized)
IDLE_SAMPLE = 0.2  # seconds over which a starting job measures how many cores are idle
ALIVE_EVERY = 1.0  # seconds between checks that the job's browser session is still there
# A session gone this long ends its job. Shorter than a closed tab would matter; long enough that a browser
# reconnecting after a network blip (Streamlit keeps its session) does not lose its training.
ALIVE_GRACE = 3.0

# One PyTorch thread per operation: a server answers many small requests at once, and with every core busy,
# multi-threaded small ops spin and wait far longer than they compute. Set per thread (OpenMP keeps it per thread).
TORCH_THREADS = int(os.environ.get("CNNVIZ_TORCH_THREADS", 0)) or 1

# Training processes fork from multiprocessing's fork server, which imports the worker (and so torch) once: starting
# a job takes milliseconds instead of the seconds a fresh interpreter needs. `cnnviz app` starts it with the server.
_context = mp.get_context("forkserver")
_context.set_forkserver_preload([worker.__name__])
_start_lock = threading.Lock()
STOP_GRACE = 10.0  # seconds a training process gets to answer a stop before it is killed


class ServerFull(RuntimeError):
    """Every training slot is taken and the line of waiting jobs is full."""


def start_worker_server() -> None:
    """Start the fork server if it is not running (it takes a few seconds; `cnnviz app` calls this at start, so the
    first Train click does not wait).

    It starts without the web server's tuning for many small requests, which would slow training down:
    ``OMP_WAIT_POLICY=PASSIVE`` (read once, when torch loads; a training process waits actively, as ``cnnviz train``
    does) and ``MALLOC_MMAP_THRESHOLD_`` (every batch-sized tensor would be mapped and unmapped each step: training
    ran at half speed, with a fifth of its time in the kernel).
    """
    server_only = ("OMP_WAIT_POLICY", "MALLOC_MMAP_THRESHOLD_")
    with _start_lock:
        kept = {name: os.environ.pop(name) for name in server_only if name in os.environ}
        try:
            forkserver.ensure_running()
        finally:
            os.environ.update(kept)


def start_backend() -> None:
    """Get ready to train, so that the first Train click does not wait and a wrong setting shows at start: the fork
    server, or the connection to the Ray cluster (:class:`cluster.ClusterError` when it cannot be reached)."""
    if RAY_ADDRESS:
        _use_cluster()
    else:
        start_worker_server()


def _use_cluster() -> None:
    """Connect to the Ray cluster once, and size the line to it unless ``CNNVIZ_MAX_JOBS`` says otherwise."""
    global _line_sized
    cluster.connect(RAY_ADDRESS)
    with _start_lock:
        if not _line_sized:
            slots = cluster.capacity(cluster.cpus_for(RAY_CPUS))
            _line.resize(slots, int(os.environ.get("CNNVIZ_MAX_QUEUE", 0)) or 2 * slots)
            _line_sized = True


def _start(process: mp.process.BaseProcess) -> None:
    """Start ``process`` without re-running the parent's main module in it.

    multiprocessing runs the parent's ``__main__`` file in each child (as ``__mp_main__``) so that pickled functions
    defined there resolve. Ours live in :mod:`cnnviz.ui.worker`, and under Streamlit ``__main__`` is ``app.py``
    itself: re-running it would draw the home page in every training process (0.5 s and a screenful of warnings).
    """
    start_worker_server()
    with _start_lock:
        prepare = spawn.get_preparation_data

        def without_main(name: str) -> dict:
            data = prepare(name)
            data.pop("init_main_from_path", None)
            data.pop("init_main_from_name", None)
            return data

        spawn.get_preparation_data = without_main
        try:
            process.start()
        finally:
            spawn.get_preparation_data = prepare


def use_server_threads() -> None:
    """Apply :data:`TORCH_THREADS` to the calling thread (app.py calls this in each script run)."""
    if torch.get_num_threads() != TORCH_THREADS:
        torch.set_num_threads(TORCH_THREADS)


def this_session() -> Callable[[], bool] | None:
    """Whether the calling script run's browser session is still connected, as a callable for
    :class:`TrainingJob`; None outside a served app (a test, a script), where nothing can close it."""
    from streamlit.runtime import Runtime
    from streamlit.runtime.scriptrunner_utils.script_run_context import get_script_run_ctx

    ctx = get_script_run_ctx()
    if ctx is None or not Runtime.exists():
        return None
    runtime, session = Runtime.instance(), ctx.session_id
    return lambda: bool(runtime.is_active_session(session))


class Line:
    """The server's training slots and the jobs waiting for one, first come, first served."""

    def __init__(self, slots: int, max_waiting: int):
        self.slots, self.max_waiting = slots, max_waiting
        self.running: list[TrainingJob] = []
        self.waiting: list[TrainingJob] = []
        self._changed = threading.Condition()

    def resize(self, slots: int, max_waiting: int) -> None:
        """Change the number of slots and places in line (jobs already in line keep their place)."""
        with self._changed:
            self.slots, self.max_waiting = slots, max_waiting
            self._changed.notify_all()

    def join(self, job: TrainingJob) -> None:
        """Take a free slot, or a place at the end of the line; :class:`ServerFull` when the line is full."""
        with self._changed:
            if len(self.running) < self.slots and not self.waiting:
                self.running.append(job)
            elif len(self.waiting) < self.max_waiting:
                self.waiting.append(job)
            else:
                raise ServerFull(f"{len(self.running)} jobs are training and {len(self.waiting)} are waiting")

    def admit(self, job: TrainingJob, timeout: float) -> bool:
        """Wait up to ``timeout`` s for ``job`` to hold a slot; True once it does."""
        with self._changed:
            if job not in self.running:
                if not self._next(job):
                    self._changed.wait(timeout)
                if self._next(job):
                    self.running.append(self.waiting.pop(0))
                    self._changed.notify_all()  # the next in line moves up
            return job in self.running

    def _next(self, job: TrainingJob) -> bool:
        return bool(self.waiting) and self.waiting[0] is job and len(self.running) < self.slots

    def leave(self, job: TrainingJob) -> None:
        with self._changed:
            for jobs in (self.running, self.waiting):
                if job in jobs:
                    jobs.remove(job)
            self._changed.notify_all()

    def training(self) -> int:
        with self._changed:
            return len(self.running)

    def place(self, job: TrainingJob) -> tuple[int, float]:
        """``job``'s place in line (1 = next; 0 = not waiting) and the estimated seconds until it gets a slot: the
        running jobs end at their ETAs (or time caps), and each job ahead then trains about as long as it would at
        the running jobs' speed."""
        with self._changed:
            if job not in self.waiting:
                return 0, 0.0
            ahead, running = self.waiting[: self.waiting.index(job)], list(self.running)
        snaps = [r.progress() for r in running]
        speeds = [s.images_per_s for s in snaps if s.images_per_s > 0]
        speed = sum(speeds) / len(speeds) if speeds else 0.0
        free_at = sorted([s.remaining for s in snaps] + [0.0] * max(0, self.slots - len(running)))
        for other in ahead:
            heapq.heappush(free_at, heapq.heappop(free_at) + other.expected_seconds(speed))
        return len(ahead) + 1, free_at[0]


@dataclass
class Snapshot:
    """What the page shows about a job; a copy, safe to read while the job goes on."""

    status: str = "queued"  # queued | running | finished | stopped | diverged | stuck | failed
    message: str = ""
    step: int = 0
    total_steps: int = 0
    loss: float = float("nan")
    acc: float = float("nan")
    images_per_s: float = 0.0
    elapsed: float = 0.0
    eta: float = 0.0
    place: int = 0  # 1-based place in the line of waiting jobs; 0 when not waiting
    wait: float = 0.0  # estimated seconds until a waiting job gets a slot
    history: dict = field(default_factory=lambda: History().to_dict())
    filters: torch.Tensor | None = None  # first conv layer's weights (O, I, kh, kw) at the latest report
    filters_step: int = -1  # the step ``filters`` was taken at: a page redraws them only when it changes
    gradients: dict | None = None  # cnnviz.gradients.GradientSnapshot.to_dict() at the latest report
    result: Checkpoint | None = None
    evaluation: Evaluation | None = None

    @property
    def active(self) -> bool:
        return self.status in ("queued", "running")

    @property
    def remaining(self) -> float:
        """Estimated seconds until this job's slot is free (for the line's estimate)."""
        if not self.active:
            return 0.0
        if self.status == "queued" or self.step == 0:
            return TIME_CAP
        return max(0.0, min(self.eta, TIME_CAP - self.elapsed))


class TrainingJob:
    """Trains a fresh model for ``spec`` on ``train_split`` in a child process, validating on ``val_split`` (held-out
    training images) and testing on ``test_split`` at the end; stop it with :meth:`stop`.

    ``alive`` is asked about once a second; once it has said False for :data:`ALIVE_GRACE` seconds the job ends
    (pages pass :func:`this_session`, so a closed tab's job stops).
    """

    def __init__(self, spec: models.ModelSpec, train_split: Split, val_split: Split | None, test_split: Split,
                 config: TrainConfig, alive: Callable[[], bool] | None = None):
        self.spec, self.config = spec, config
        self.train_split, self.val_split, self.test_split = train_split, val_split, test_split
        self.alive = alive or (lambda: True)
        self._alive_checked, self._gone_since = float("-inf"), None
        self._stop = _context.Event()  # shared with the training process, which checks it after each step
        self._why = ""  # why the job asked its process to stop, when it was not the user
        self._lock = threading.Lock()
        self._snap = Snapshot(total_steps=config.total_steps(len(train_split)))
        self._thread = threading.Thread(target=self._run, name="cnnviz-train", daemon=True)
        self.process: mp.process.BaseProcess | None = None  # the training process, once started
        self.remote: cluster.RemoteRun | None = None  # the training task on a Ray cluster, once submitted

    def start(self) -> "TrainingJob":
        """Take a training slot or a place in line and start; :class:`ServerFull` when neither is free."""
        _line.join(self)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Ask the job to end after its current step; the model keeps its last good weights."""
        self._stop.set()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def progress(self) -> Snapshot:
        """The snapshot without the history, filters and results (cheap; for the line's estimates)."""
        with self._lock:
            return replace(self._snap, history={}, filters=None, result=None, evaluation=None)

    def expected_seconds(self, images_per_s: float) -> float:
        """About how long this job will train at ``images_per_s`` (the time cap when the speed is unknown)."""
        if images_per_s <= 0:
            return TIME_CAP
        return min(TIME_CAP, self._snap.total_steps * self.config.batch_size / images_per_s)

    def snapshot(self) -> Snapshot:
        place, wait = _line.place(self) if self._snap.status == "queued" else (0, 0.0)
        with self._lock:
            snap = replace(self._snap, place=place, wait=wait)
            snap.history = {"steps": list(self._snap.history["steps"]), "epochs": list(self._snap.history["epochs"])}
        if place:
            slots, where = _line.slots, "on the cluster" if RAY_ADDRESS else "on this server"
            snap.message = (f"Waiting for a free training slot: you are number {place} in line, about "
                            f"{_duration(wait)} to wait. {slots} training job{'s are' if slots > 1 else ' is'} "
                            f"running {where}.")
        return snap

    def _update(self, **changes) -> None:
        with self._lock:
            for k, v in changes.items():
                setattr(self._snap, k, v)

    def _gone(self) -> bool:
        """Whether ``alive`` has said False for :data:`ALIVE_GRACE` seconds (checked at most every ALIVE_EVERY s)."""
        now = time.monotonic()
        if now - self._alive_checked < ALIVE_EVERY:
            return self._gone_since is not None and now - self._gone_since >= ALIVE_GRACE
        self._alive_checked = now
        try:
            alive = self.alive()
        except Exception:  # noqa: BLE001  (a broken check must not keep an abandoned job training forever)
            log.exception("checking whether a training job's session is alive failed")
            alive = False
        self._gone_since = None if alive else (self._gone_since or now)
        return self._gone_since is not None and now - self._gone_since >= ALIVE_GRACE

    def _run(self) -> None:
        try:
            if RAY_ADDRESS:
                _use_cluster()  # seconds, the first time
            while not _line.admit(self, timeout=0.25):
                if self._stop.is_set() or self._gone():
                    self._update(status="stopped", message="Stopped before it started.")
                    return
            if self._stop.is_set():  # stopped while it waited for the slot it just got
                self._update(status="stopped", message="Stopped before it started.")
                return
            self._supervise(self._on_cluster() if RAY_ADDRESS else self._in_a_process())
        except Exception as e:  # the page must show a reason, never lose the job silently
            log.exception("training job failed")
            self._update(status="failed", message=f"Training failed: {e}")
        finally:
            _line.leave(self)

    def _in_a_process(self) -> _Process:
        cpus, training = os.cpu_count() or 1, _line.training()
        # The first guess from the cores idle now; the training process then keeps whichever count trains fastest
        # (worker.ThreadTuner): the click that starts a job keeps the server and a browser busy for a moment.
        most = training_threads(cpus, training, None)
        run = _Process(self._stop, training_threads(cpus, training, _idle_cores()),
                       also_try=() if TRAIN_THREADS else tuple({1, most}))
        self.process = run.process
        self._update(status="running", message="")
        return run

    def _on_cluster(self) -> cluster.RemoteRun:
        cpus = cluster.cpus_for(RAY_CPUS)
        images = self._snap.total_steps * self.config.batch_size
        # Augmentation draws its random transforms on the CPU, so an augmented run stays on CPUs.
        gpu = (not self.config.augment and cluster.has_gpu()
               and cluster.worth_a_gpu(models.check(self.spec).macs, images, cpus))
        self._update(status="queued", message="Waiting for the cluster to start it: its CPUs may all be busy "
                                              "training other jobs.")
        self.remote = cluster.RemoteRun(worker.run, 1 if gpu else max(1, round(cpus)), "cuda" if gpu else "cpu", 0,
                                        cpus=1 if gpu else cpus, gpus=1 if gpu else 0)
        return self.remote

    def _supervise(self, run: _Process | cluster.RemoteRun) -> None:
        """Start the training, send it the work, and copy its reports into the snapshot until it ends."""
        try:
            # Plain pickle, not multiprocessing's: torch would move the tensors to shared memory, which is small in
            # containers. Sent once started rather than as the process's arguments, so the server does not keep a
            # second copy of the data while the job runs (~0.1 s for MNIST). Training needs no masks.
            run.start(pickle.dumps((self.spec, *[None if split is None else replace(split, masks=None)
                                                 for split in (self.train_split, self.val_split, self.test_split)],
                                    self.config)))
            self._follow(run)
        except cluster.RunLost as e:
            self._update(status="failed", message=str(e))
        finally:
            run.close()

    def _follow(self, run: _Process | cluster.RemoteRun) -> None:
        """Copy the run's reports into the snapshot until its last one. Ask it to stop at the time cap (counted from
        its start); end it when its session is gone, or when a stop goes unanswered."""
        steps, epochs = [], []
        stop_seen, asked = None, False
        while True:
            if self._gone():
                run.end()  # nobody is left to see what it learned
                self._update(status="stopped", message="Stopped: the browser tab that started it was closed.")
                return
            if run.started is not None and time.monotonic() - run.started >= TIME_CAP and not self._stop.is_set():
                self._why = "time cap"
                self._stop.set()
            if self._stop.is_set() and not asked:
                run.ask_to_stop()
                asked = True
            messages = run.receive(0.25)
            if not messages:
                if self._stop.is_set():
                    if run.started is None:  # still waiting for the cluster: nothing to keep
                        run.kill()
                        self._update(status="stopped", message="Stopped before it started.")
                        return
                    stop_seen = stop_seen or time.monotonic()
                    if time.monotonic() - stop_seen > STOP_GRACE:
                        run.kill()
                        self._update(status="stopped", message="Stopped. The training process did not answer in "
                                                               "time, so what it had learned was not kept.")
                        return
                continue
            if self._snap.status == "queued":  # the cluster started it
                self._update(status="running", message="")
            for message in messages:
                kind, data = pickle.loads(message)
                if kind == "progress":
                    steps += data.pop("steps")
                    epochs += data.pop("epochs")
                    if "filters" in data:
                        data["filters_step"] = data.get("step", self._snap.step)
                    self._update(**data, history={"steps": steps, "epochs": epochs})
                elif kind == "failed":
                    self._update(status="failed", message=f"Training failed: {data['error']}")
                    return
                else:
                    self._finish(**data)
                    return

    def _finish(self, state: dict, history: History, frames: list, evaluation: Evaluation) -> None:
        model = models.build(self.spec)
        model.load_state_dict(state)
        model.eval()
        result = Checkpoint(model, self.spec, self.train_split.info, history,
                            {"test_accuracy": evaluation.accuracy, "per_class": evaluation.per_class},
                            filter_frames=frames)
        kept = f"the model keeps what it had learned ({evaluation.accuracy:.1%} test accuracy)"
        stopped = (f"Stopped after {_duration(TIME_CAP)}, the time limit for one training on this server: {kept}. "
                   f"Fewer epochs or fewer training images finish sooner." if self._why == "time cap"
                   else f"Stopped at step {len(history.steps)}: {kept}.")
        message = {"finished": f"Done: {evaluation.accuracy:.1%} test accuracy in {history.seconds:.0f} s.",
                   "stopped": stopped,
                   "diverged": f"Training diverged: {history.reason}",
                   "stuck": f"Training got stuck: {history.reason}"}[history.status]
        self._update(status=history.status, message=message, result=result, evaluation=evaluation,
                     history=history.to_dict(), filters=frames[-1][1] if frames else None,
                     filters_step=frames[-1][0] if frames else -1, step=len(history.steps), elapsed=history.seconds,
                     eta=0.0)


class _Process:
    """A training process on this machine, fed and heard through a pipe; the same methods as
    :class:`cluster.RemoteRun`, so a job follows either the same way."""

    def __init__(self, stop, threads: int, also_try: tuple[int, ...] = ()):
        self._here, self._there = _context.Pipe()
        device = os.environ.get(devices.ENV) or "cpu"  # `cnnviz app --device`; resolved in the training process
        self.process = _context.Process(target=worker.run, args=(self._there, stop, threads, device, worker.NICENESS,
                                                                 also_try),
                                        name="cnnviz-train", daemon=True)
        self.started: float | None = None  # when the work was sent: the time cap counts from here

    def start(self, payload: bytes) -> None:
        try:
            _start(self.process)
            self._there.close()  # the child holds the only other end now: reading raises EOFError once it exits
            self._here.send_bytes(payload)
        except (EOFError, OSError):  # the pipe closed (BrokenPipeError is an OSError): the process is gone
            raise self._lost() from None
        self.started = time.monotonic()

    def receive(self, timeout: float) -> list[bytes]:
        try:
            return [self._here.recv_bytes()] if self._here.poll(timeout) else []
        except (EOFError, OSError):
            raise self._lost() from None

    def ask_to_stop(self) -> None:
        """Nothing to send: the process shares the job's stop event."""

    def end(self) -> None:
        self.process.terminate()

    def kill(self) -> None:
        self.process.kill()

    def close(self) -> None:
        self._here.close()
        self._there.close()
        if self.process.pid is not None:
            self.process.join(timeout=5)
            if self.process.exitcode is None:  # it hangs: nothing more can come from it
                self.process.kill()
                self.process.join()

    def _lost(self) -> cluster.RunLost:
        if self.process.pid is not None:
            self.process.join(timeout=5)
        return cluster.RunLost(f"The training process ended unexpectedly (exit code {self.process.exitcode}); the "
                               f"server may be out of memory.")


def training_threads(cpus: int, training: int, idle: float | None) -> int:
    """PyTorch threads for a training process: the cores the web server leaves, shared among the ``training`` jobs,
    and no more than are ``idle`` now (None: unknown).

    A training process's OpenMP threads wait actively, as ``cnnviz train``'s do, which suits cores of their own; on
    busy cores a thread spins while its partner waits to be scheduled, and two threads trained shapes 4-11× slower
    than one (2 cores, load average 8-15, measured with the gap preset).
    """
    if TRAIN_THREADS:
        return TRAIN_THREADS
    threads = round((cpus - SERVER_CORES) / max(1, training))
    if idle is not None:
        threads = min(threads, round(idle - SERVER_CORES))
    return max(1, threads)


def _idle_cores(interval: float = IDLE_SAMPLE) -> float | None:
    """How many cores were idle over the next ``interval`` seconds (from ``/proc/stat``; None elsewhere)."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            ticks = [int(t) for t in f.readline().split()[1:]]
        return ticks[3] + ticks[4], sum(ticks)  # idle + iowait, all

    try:
        idle0, all0 = sample()
        time.sleep(interval)
        idle1, all1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return (os.cpu_count() or 1) * (idle1 - idle0) / max(1, all1 - all0)


def _duration(seconds: float) -> str:
    """``seconds`` in words a student reads at a glance: "40 s", "3 min"."""
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


_line = Line(MAX_JOBS, MAX_QUEUE)
# Whether the line's slots are settled: by CNNVIZ_MAX_JOBS, or once sized to the Ray cluster.
_line_sized = "CNNVIZ_MAX_JOBS" in os.environ


def wait_for(job: TrainingJob, timeout: float = 60.0) -> Snapshot:
    """Block until ``job`` ends (for tests and scripts; pages poll instead)."""
    deadline = time.monotonic() + timeout
    job.join(max(0.0, deadline - time.monotonic()))
    return job.snapshot()
