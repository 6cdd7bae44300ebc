"""The training behind :class:`cnnviz.ui.jobs.TrainingJob`: fit, evaluate, report through a pipe.

multiprocessing's fork server imports this module once, and each job's process forks from it. The fork server
starts without the web server's ``OMP_WAIT_POLICY=PASSIVE`` (see :func:`cnnviz.ui.jobs.start_worker_server`): a
training process has its cores to itself and waits actively, as ``cnnviz train`` does. On a Ray cluster the same
:func:`run` runs in a Ray task (:mod:`cnnviz.cluster`), with an outbox that looks like a pipe; it imports no
Streamlit, so a cluster's nodes need only cnnviz and torch.
"""

from __future__ import annotations

import logging
import os
import pickle
import time
from dataclasses import replace

import torch

from cnnviz import devices, gradients, models, train

log = logging.getLogger(__name__)

# The first optimiser a process makes imports torch._dynamo (0.8 s); make one here, so the fork server pays that once.
torch.optim.SGD([torch.zeros(1, requires_grad=True)])

NICENESS = 10  # how much lower a training process's CPU priority is than the web server's
REPORT_EVERY = 0.2  # seconds between reports to the job: the steps since the last one, the first layer's filters
REPLAY_FRAMES = 30  # copies of the first layer's filters kept for replaying how they evolved, spread over the run


class ThreadTuner:
    """Train on the number of PyTorch threads that is fastest now, timed on the run's own steps.

    How many cores a training process really gets changes while it runs: the web server answering a class, a
    student's browser on the same machine, other jobs starting and ending. A training process's OpenMP threads wait
    actively (as ``cnnviz train``'s do), which is fastest on cores of their own and falls apart on busy ones (shapes
    on 2 cores: two threads ran 1,850 images/s idle and 165 beside one busy core, where one thread ran 1,000). So a
    run starts on its first guess and then, every :attr:`every` seconds, times a few steps with each candidate and
    keeps the fastest. A probe that is clearly slower than the best so far ends early; a step that also validated
    is not counted.

    Call :meth:`step` after each training step and :meth:`skip` when the coming interval does more than train.
    """

    def __init__(self, first: int, others: tuple[int, ...] = (), *, probe_steps: int = 6, warmup: int = 5,
                 every: float = 10.0, clock=time.perf_counter, set_threads=torch.set_num_threads):
        self.threads = first
        self.candidates = [first, *sorted({n for n in others if n >= 1} - {first})]
        self.probe_steps, self.every, self._clock, self._set = probe_steps, every, clock, set_threads
        self._wait = warmup  # steps before the first round: the first steps of a run are slow anyway
        self._next_round = 0.0
        self._plan: list[int] = []  # candidates still to time in this round, the one being timed first
        self._times: list[float] = []
        self._results: dict[int, float] = {}
        self._last: float | None = None
        self._skip = True  # the interval before the first step is not a step

    def skip(self) -> None:
        self._skip = True

    def step(self) -> None:
        now = self._clock()
        took = None if self._skip or self._last is None else now - self._last
        self._last, self._skip = now, False
        if len(self.candidates) < 2:
            return
        if self._wait > 0:
            self._wait -= 1
            return
        if not self._plan:
            if now < self._next_round:
                return
            self._plan, self._results = list(self.candidates), {}
            self._start(self._plan[0])
            return
        if took is None:
            return
        self._times.append(took)
        best = min(self._results.values(), default=None)
        clearly_slower = best is not None and sum(self._times) > 2 * best * self.probe_steps
        if len(self._times) < self.probe_steps and not clearly_slower:
            return
        self._results[self._plan.pop(0)] = sorted(self._times)[len(self._times) // 2]
        if self._plan:
            self._start(self._plan[0])
            return
        self._use(min(self._results, key=self._results.get))
        self._next_round = now + self.every

    def _start(self, threads: int) -> None:
        self._times = []
        self._use(threads)
        self._skip = True  # the first step on a new count pays for waking its threads

    def _use(self, threads: int) -> None:
        if threads != self.threads:
            self._set(threads)
            self.threads = threads


def run(outbox, stop, threads: int, device: str = "cpu", niceness: int = NICENESS,
        also_try: tuple[int, ...] = ()) -> None:
    """Receive the work from ``outbox`` (pickled spec, train, validation and test splits, config), train on
    ``device``, and send back ``(kind, data)`` messages: ``progress`` several times a second, then ``done`` (weights,
    history, filter frames, evaluation on the whole test split, all on the CPU) or ``failed``. ``stop`` is checked
    after each step. ``niceness``: how far to lower this process's CPU priority (0 in a Ray task: Ray's workers
    already run at a lower one). On the CPU, training starts on ``threads`` PyTorch threads and moves to any of
    ``also_try`` that trains faster (:class:`ThreadTuner`).

    The run validates on ``val_split`` (held-out training images); the test split is used once, at the end."""

    def send(kind: str, **data) -> None:
        outbox.send_bytes(pickle.dumps((kind, data)))

    try:
        torch.set_num_threads(threads)
        # Students' pages come first: under contention the scheduler gives the web server the cores, and training
        # takes what is left (on an idle server it still has them all). Linux's SCHED_IDLE runs it only on cores
        # nothing else wants: a nice-10 process still took a tenth of a busy core each, and an upload while two
        # jobs trained took 2.19× its idle time (make bench BENCH=load), 1.91× with SCHED_IDLE, measured one after
        # the other.
        if niceness:
            os.nice(niceness)
            if hasattr(os, "SCHED_IDLE"):
                os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        device = str(devices.resolve(device))  # here, in the training process: the fork server never touches CUDA
        spec, train_split, val_split, test_split, config = pickle.loads(outbox.recv_bytes())
        train_split, val_split, test_split = (None if split is None else replace(split, x=split.x.to(device),
                                                                                 y=split.y.to(device))
                                              for split in (train_split, val_split, test_split))
        model = models.build(spec, seed=config.seed).to(device)
        stats = gradients.GradientStats(model)  # every layer's gradient and update sizes, sampled: the page plots them
        first_conv = next((m for m in model.modules() if isinstance(m, torch.nn.Conv2d)), None)
        frame_every = max(1, config.total_steps(len(train_split)) // REPLAY_FRAMES)
        tuner = ThreadTuner(threads, also_try if device == "cpu" else ())
        frames: list[tuple[int, torch.Tensor]] = []
        steps: list[dict] = []
        epochs: list[dict] = []
        last_report = 0.0

        def filters() -> torch.Tensor | None:
            # Contiguous: training runs channels-last, and the copies outlive it (checkpoints, figures).
            if first_conv is None:
                return None
            return first_conv.weight.detach().to("cpu", memory_format=torch.contiguous_format, copy=True)

        def on_step(s: train.Step) -> None:
            nonlocal last_report
            tuner.step()
            steps.append(dict(step=s.step, epoch=s.epoch, loss=s.loss, acc=s.acc, lr=s.lr))
            if s.step % frame_every == 0 and first_conv is not None:
                frames.append((s.step, filters()))
            now = time.monotonic()
            if now - last_report >= REPORT_EVERY or s.step == s.total_steps:
                send("progress", steps=steps.copy(), epochs=epochs.copy(), step=s.step, loss=s.loss, acc=s.acc,
                     images_per_s=s.images_per_s, elapsed=s.elapsed, eta=s.eta, filters=filters(),
                     gradients=stats.snapshot().to_dict())
                steps.clear()
                epochs.clear()
                last_report = now
                tuner.skip()  # the report's copies are not training

        def on_epoch(record: dict) -> None:
            epochs.append(record)
            tuner.skip()  # the step that validated is not timed

        if first_conv is not None:
            frames.append((0, filters()))
        send("progress", steps=[], epochs=[], filters=filters())
        history = train.fit(model, train_split, config, val=val_split, on_step=on_step, stop=stop,
                            on_epoch=on_epoch, after_backward=stats)
        stats.finish()
        send("progress", steps=steps, epochs=epochs, step=len(history.steps), gradients=stats.snapshot().to_dict())
        if frames and frames[-1][0] != len(history.steps):
            frames.append((len(history.steps), filters()))
        evaluation = train.evaluate(model, test_split)
        evaluation = replace(evaluation, confusion=evaluation.confusion.cpu(), predictions=evaluation.predictions.cpu(),
                             mistakes=evaluation.mistakes.cpu())
        send("done", state={k: v.cpu() for k, v in model.state_dict().items()}, history=history, frames=frames,
             evaluation=evaluation)
    except Exception as e:  # noqa: BLE001  (the job shows the reason; the traceback goes to the server's log)
        log.exception("training process failed")
        send("failed", error=str(e))
    finally:
        outbox.close()
