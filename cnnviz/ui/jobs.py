"""A training run in its own process, owned by one session, reporting through a thread-safe snapshot.

The page never waits on training: it starts a :class:`TrainingJob`, then a fragment polls :meth:`snapshot` about
once a second. The model trains in a child process (forked from multiprocessing's fork server, which has torch and
cnnviz loaded already), so the training loop has its own interpreter lock and OpenMP threads: the server's threads,
busy drawing pages for other students, do not slow it down, and it does not slow them. In the server, one light thread
per job waits for a slot, starts the process and copies what it reports into the snapshot; it never touches
Streamlit. A server-wide semaphore bounds how many jobs train at once (``CNNVIZ_MAX_JOBS``, default: the number of
cores); the rest wait in line and say so.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
from multiprocessing import forkserver, spawn
import os
import pickle
import threading
import time
from dataclasses import dataclass, field, replace

import torch

from cnnviz import models
from cnnviz.checkpoint import Checkpoint
from cnnviz.data import Split
from cnnviz.train import Evaluation, History, TrainConfig
from cnnviz.ui import worker

log = logging.getLogger(__name__)

MAX_JOBS = int(os.environ.get("CNNVIZ_MAX_JOBS", 0)) or os.cpu_count() or 1
_slots = threading.BoundedSemaphore(MAX_JOBS)
_training = 0  # jobs holding a slot: a job alone on the server may use every core
_training_lock = threading.Lock()

# One PyTorch thread per operation: a server answers many small requests at once, and with every core busy,
# multi-threaded small ops spin and wait far longer than they compute. Set per thread (OpenMP keeps it per thread).
TORCH_THREADS = int(os.environ.get("CNNVIZ_TORCH_THREADS", 0)) or 1

# Training processes fork from multiprocessing's fork server, which imports the worker (and so torch) once: starting
# a job takes milliseconds instead of the seconds a fresh interpreter needs. `cnnviz app` starts it with the server.
_context = mp.get_context("forkserver")
_context.set_forkserver_preload([worker.__name__])
_start_lock = threading.Lock()
STOP_GRACE = 10.0  # seconds a training process gets to answer a stop before it is killed


def start_worker_server() -> None:
    """Start the fork server if it is not running (it takes a few seconds; `cnnviz app` calls this at start, so the
    first Train click does not wait).

    It starts without ``OMP_WAIT_POLICY``, which the web server sets to ``PASSIVE`` for its own threads: the
    variable is read once, when torch loads, and a training process has its cores to itself, so it waits actively,
    as ``cnnviz train`` does.
    """
    with _start_lock:
        policy = os.environ.pop("OMP_WAIT_POLICY", None)
        try:
            forkserver.ensure_running()
        finally:
            if policy is not None:
                os.environ["OMP_WAIT_POLICY"] = policy


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


@dataclass
class Snapshot:
    """What the page shows about a job; a copy, safe to read while the job goes on."""

    status: str = "queued"  # queued | running | finished | stopped | diverged | failed
    message: str = ""
    step: int = 0
    total_steps: int = 0
    loss: float = float("nan")
    acc: float = float("nan")
    images_per_s: float = 0.0
    elapsed: float = 0.0
    eta: float = 0.0
    history: dict = field(default_factory=lambda: History().to_dict())
    filters: torch.Tensor | None = None  # first conv layer's weights (O, I, kh, kw) at the latest report
    result: Checkpoint | None = None
    evaluation: Evaluation | None = None

    @property
    def active(self) -> bool:
        return self.status in ("queued", "running")


class TrainingJob:
    """Trains a fresh model for ``spec`` on ``train_split`` in a child process; stop it with :meth:`stop`."""

    def __init__(self, spec: models.ModelSpec, train_split: Split, test_split: Split, config: TrainConfig):
        self.spec, self.config = spec, config
        self.train_split, self.test_split = train_split, test_split
        self._stop = _context.Event()  # shared with the training process, which checks it after each step
        self._lock = threading.Lock()
        self._snap = Snapshot(total_steps=config.total_steps(len(train_split)))
        self._thread = threading.Thread(target=self._run, name="cnnviz-train", daemon=True)
        self.process: mp.process.BaseProcess | None = None  # the training process, once started

    def start(self) -> "TrainingJob":
        self._thread.start()
        return self

    def stop(self) -> None:
        """Ask the job to end after its current step; the model keeps its last good weights."""
        self._stop.set()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def snapshot(self) -> Snapshot:
        with self._lock:
            snap = replace(self._snap)
            snap.history = {"steps": list(self._snap.history["steps"]), "epochs": list(self._snap.history["epochs"])}
            return snap

    def _update(self, **changes) -> None:
        with self._lock:
            for k, v in changes.items():
                setattr(self._snap, k, v)

    def _run(self) -> None:
        global _training
        while not _slots.acquire(timeout=0.25):
            if self._stop.is_set():
                self._update(status="stopped", message="Stopped before it started.")
                return
            self._update(message=f"Waiting for a free training slot: {MAX_JOBS} other "
                                 f"training job{'s are' if MAX_JOBS > 1 else ' is'} running on this server.")
        if self._stop.is_set():  # stopped while it waited for the slot it just got
            _slots.release()
            self._update(status="stopped", message="Stopped before it started.")
            return
        with _training_lock:
            _training += 1
            threads = max(1, (os.cpu_count() or 1) // _training)  # cores shared among the jobs training now
        try:
            self._supervise(threads)
        except Exception as e:  # the page must show a reason, never lose the job silently
            log.exception("training job failed")
            self._update(status="failed", message=f"Training failed: {e}")
        finally:
            with _training_lock:
                _training -= 1
            _slots.release()

    def _supervise(self, threads: int) -> None:
        """Start the training process, send it the work, and copy its reports into the snapshot until it ends."""
        self._update(status="running", message="")
        here, there = _context.Pipe()
        process = None
        try:
            self.process = process = _context.Process(target=worker.run, args=(there, self._stop, threads),
                                                      name="cnnviz-train", daemon=True)
            _start(process)
            there.close()  # the child holds the only other end now: reading raises EOFError once it exits
            # Plain pickle, not multiprocessing's: torch would move the tensors to shared memory, which is small in
            # containers. Sent through the pipe rather than as the process's arguments, so the server does not keep
            # a second copy of the data while the job runs (~0.1 s for MNIST). Training needs no masks.
            splits = [replace(split, masks=None) for split in (self.train_split, self.test_split)]
            here.send_bytes(pickle.dumps((self.spec, *splits, self.config)))
            del splits
            self._follow(here, process)
        except (EOFError, OSError):  # the pipe closed (BrokenPipeError is an OSError): the process is gone
            if process is not None:
                process.join(timeout=5)
            self._update(status="failed", message=f"The training process ended unexpectedly (exit code "
                                                  f"{getattr(process, 'exitcode', None)}); the server may be out of "
                                                  f"memory.")
        finally:
            here.close()
            there.close()
            if process is not None and process.pid is not None:
                process.join(timeout=5)
                if process.exitcode is None:  # it hangs: nothing more can come from it
                    process.kill()
                    process.join()

    def _follow(self, here, process: mp.process.BaseProcess) -> None:
        """Copy the process's reports into the snapshot until its last one; kill it if a stop goes unanswered."""
        steps, epochs = [], []
        stop_seen = None
        while True:
            if not here.poll(min(0.25, STOP_GRACE)):
                if self._stop.is_set():
                    stop_seen = stop_seen or time.monotonic()
                    if time.monotonic() - stop_seen > STOP_GRACE:
                        process.kill()
                        self._update(status="stopped", message="Stopped. The training process did not answer in "
                                                               "time, so what it had learned was not kept.")
                        return
                continue
            kind, data = pickle.loads(here.recv_bytes())
            if kind == "progress":
                steps += data.pop("steps")
                epochs += data.pop("epochs")
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
        message = {"finished": f"Done: {evaluation.accuracy:.1%} test accuracy in {history.seconds:.0f} s.",
                   "stopped": f"Stopped at step {len(history.steps)}: the model keeps what it had learned "
                              f"({evaluation.accuracy:.1%} test accuracy).",
                   "diverged": f"Training diverged: {history.reason}"}[history.status]
        self._update(status=history.status, message=message, result=result, evaluation=evaluation,
                     history=history.to_dict(), filters=frames[-1][1] if frames else None, step=len(history.steps),
                     elapsed=history.seconds, eta=0.0)


def wait_for(job: TrainingJob, timeout: float = 60.0) -> Snapshot:
    """Block until ``job`` ends (for tests and scripts; pages poll instead)."""
    deadline = time.monotonic() + timeout
    job.join(max(0.0, deadline - time.monotonic()))
    return job.snapshot()
