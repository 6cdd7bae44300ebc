"""A training run in a background thread, owned by one session, reporting through a thread-safe snapshot.

The page never waits on training: it starts a :class:`TrainingJob`, then a fragment polls :meth:`snapshot` about
once a second. The thread never touches Streamlit. A server-wide semaphore bounds how many jobs train at once
(``CNNVIZ_MAX_JOBS``, default: the number of cores); the rest wait in line and say so.
"""

from __future__ import annotations

import copy
import logging
import os
import threading
import time
from dataclasses import dataclass, field, replace

import torch

from cnnviz import models, train
from cnnviz.checkpoint import Checkpoint
from cnnviz.data import Split
from cnnviz.train import Evaluation, History, TrainConfig

log = logging.getLogger(__name__)

MAX_JOBS = int(os.environ.get("CNNVIZ_MAX_JOBS", 0)) or os.cpu_count() or 1
_slots = threading.BoundedSemaphore(MAX_JOBS)
_training = 0  # jobs holding a slot: a job alone on the server may use every core
_training_lock = threading.Lock()

# One PyTorch thread per operation: a server answers many small requests at once, and with every core busy,
# multi-threaded small ops spin and wait far longer than they compute. Set per thread (OpenMP keeps it per thread).
TORCH_THREADS = int(os.environ.get("CNNVIZ_TORCH_THREADS", 0)) or 1


def use_server_threads() -> None:
    """Apply :data:`TORCH_THREADS` to the calling thread (app.py calls this in each script run)."""
    if torch.get_num_threads() != TORCH_THREADS:
        torch.set_num_threads(TORCH_THREADS)


FILTER_EVERY = 10  # steps between copies of the first layer's filters for the live view
REPLAY_FRAMES = 30  # copies kept for replaying how the filters evolved, spread over the run


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
    filters: torch.Tensor | None = None  # first conv layer's weights (O, I, kh, kw) at the latest copy
    result: Checkpoint | None = None
    evaluation: Evaluation | None = None

    @property
    def active(self) -> bool:
        return self.status in ("queued", "running")


class TrainingJob:
    """Trains a fresh model for ``spec`` on ``train_split`` in a daemon thread; stop it with :meth:`stop`."""

    def __init__(self, spec: models.ModelSpec, train_split: Split, test_split: Split, config: TrainConfig):
        self.spec, self.config = spec, config
        self.train_split, self.test_split = train_split, test_split
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._snap = Snapshot(total_steps=config.total_steps(len(train_split)))
        self._frames: list[tuple[int, torch.Tensor]] = []
        self._thread = threading.Thread(target=self._run, name="cnnviz-train", daemon=True)

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
        with _training_lock:
            _training += 1
            # Cores shared among the jobs training now; the setting holds for this thread only (OpenMP).
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // _training))
        try:
            self._train()
        except Exception as e:  # the page must show a reason, never lose the thread silently
            log.exception("training job failed")
            self._update(status="failed", message=f"Training failed: {e}")
        finally:
            with _training_lock:
                _training -= 1
            _slots.release()

    def _train(self) -> None:
        self._update(status="running", message="")
        model = models.build(self.spec, seed=self.config.seed)
        first_conv = next((m for m in model.modules() if isinstance(m, torch.nn.Conv2d)), None)
        history_steps: list[dict] = []
        history_epochs: list[dict] = []

        frame_every = max(1, self._snap.total_steps // REPLAY_FRAMES)

        def copy_filters(step: int) -> torch.Tensor | None:
            if first_conv is None:
                return None
            w = first_conv.weight.detach().clone()
            if step % frame_every == 0 and (not self._frames or self._frames[-1][0] != step):
                self._frames.append((step, w))
            return w

        self._update(filters=copy_filters(0))

        def on_step(s: train.Step) -> None:
            history_steps.append(dict(step=s.step, epoch=s.epoch, loss=s.loss, acc=s.acc, lr=s.lr))
            changes = dict(step=s.step, loss=s.loss, acc=s.acc, images_per_s=s.images_per_s, elapsed=s.elapsed,
                           eta=s.eta, history={"steps": history_steps, "epochs": history_epochs})
            if s.step % FILTER_EVERY == 0 or s.step % frame_every == 0:
                changes["filters"] = copy_filters(s.step)
            self._update(**changes)

        val = self.test_split.subset(1000)
        history = train.fit(model, self.train_split, self.config, val=val, on_step=on_step, stop=self._stop,
                            on_epoch=history_epochs.append)
        if first_conv is not None and (not self._frames or self._frames[-1][0] != len(history.steps)):
            self._frames.append((len(history.steps), first_conv.weight.detach().clone()))
        evaluation = train.evaluate(model, self.test_split)
        result = Checkpoint(model, copy.deepcopy(self.spec), self.train_split.info, history,
                            {"test_accuracy": evaluation.accuracy, "per_class": evaluation.per_class},
                            filter_frames=list(self._frames))
        message = {"finished": f"Done: {evaluation.accuracy:.1%} test accuracy in {history.seconds:.0f} s.",
                   "stopped": f"Stopped at step {len(history.steps)}: the model keeps what it had learned "
                              f"({evaluation.accuracy:.1%} test accuracy).",
                   "diverged": f"Training diverged: {history.reason}"}[history.status]
        self._update(status=history.status, message=message, result=result, evaluation=evaluation,
                     history=history.to_dict(), filters=copy_filters(len(history.steps)), elapsed=history.seconds,
                     eta=0.0)


def wait_for(job: TrainingJob, timeout: float = 60.0) -> Snapshot:
    """Block until ``job`` ends (for tests and scripts; pages poll instead)."""
    deadline = time.monotonic() + timeout
    job.join(max(0.0, deadline - time.monotonic()))
    return job.snapshot()
