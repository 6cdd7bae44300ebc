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


def run(outbox, stop, threads: int, device: str = "cpu", niceness: int = NICENESS) -> None:
    """Receive the work from ``outbox`` (pickled spec, train, validation and test splits, config), train on
    ``device``, and send back ``(kind, data)`` messages: ``progress`` several times a second, then ``done`` (weights,
    history, filter frames, evaluation on the whole test split, all on the CPU) or ``failed``. ``stop`` is checked
    after each step. ``niceness``: how far to lower this process's CPU priority (0 in a Ray task: Ray's workers
    already run at a lower one).

    The run validates on ``val_split`` (held-out training images); the test split is used once, at the end."""

    def send(kind: str, **data) -> None:
        outbox.send_bytes(pickle.dumps((kind, data)))

    try:
        torch.set_num_threads(threads)
        # Students' pages come first: under contention the scheduler gives the web server the cores, and training
        # takes what is left (on an idle server it still has them all).
        if niceness:
            os.nice(niceness)
        device = str(devices.resolve(device))  # here, in the training process: the fork server never touches CUDA
        spec, train_split, val_split, test_split, config = pickle.loads(outbox.recv_bytes())
        train_split, val_split, test_split = (None if split is None else replace(split, x=split.x.to(device),
                                                                                 y=split.y.to(device))
                                              for split in (train_split, val_split, test_split))
        model = models.build(spec, seed=config.seed).to(device)
        stats = gradients.GradientStats(model)  # every layer's gradient and update sizes, sampled: the page plots them
        first_conv = next((m for m in model.modules() if isinstance(m, torch.nn.Conv2d)), None)
        frame_every = max(1, config.total_steps(len(train_split)) // REPLAY_FRAMES)
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

        if first_conv is not None:
            frames.append((0, filters()))
        send("progress", steps=[], epochs=[], filters=filters())
        history = train.fit(model, train_split, config, val=val_split, on_step=on_step, stop=stop,
                            on_epoch=epochs.append, after_backward=stats)
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
