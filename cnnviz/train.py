"""The training loop: tensors in memory, a one-cycle schedule, callbacks per step, a stop event and a history.

``fit`` is what the CLI, the app's background job and the benchmarks all call. It never prints; it reports through
``on_step`` (every step) and returns a :class:`History` of plain numbers, so a checkpoint can store it as-is.
"""

from __future__ import annotations

import copy
import math
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from cnnviz.data import Split, normalize

OPTIMIZERS = ("adam", "adamw", "sgd")


@dataclass
class TrainConfig:
    """How to train. The run lasts ``max(epochs × steps per epoch, min_steps)`` steps, so small datasets still train."""

    epochs: int = 2
    batch_size: int = 128
    lr: float = 0.005  # peak learning rate of the one-cycle schedule
    optimizer: str = "adam"
    weight_decay: float = 0.0
    augment: bool = False  # small random shifts, rotations and zooms of each training image
    seed: int = 0
    min_steps: int = 300
    max_steps: int | None = None  # hard cap, for quick demos and tests

    def total_steps(self, n_train: int) -> int:
        steps = max(self.epochs * math.ceil(n_train / self.batch_size), self.min_steps)
        return min(steps, self.max_steps) if self.max_steps else steps

    def check(self) -> None:
        """Raise ``ValueError`` with a readable message for settings that cannot train."""
        if self.epochs < 1 or self.batch_size < 1 or self.min_steps < 0:
            raise ValueError("epochs and batch size must be at least 1")
        if not (0 < self.lr < 10):
            raise ValueError(f"the learning rate must be between 0 and 10, got {self.lr}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimiser {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")


@dataclass
class Step:
    """What ``on_step`` receives after each optimiser step."""

    step: int  # 1-based
    total_steps: int
    epoch: float  # fractional epochs seen so far
    loss: float
    acc: float  # accuracy on this batch
    lr: float
    images_per_s: float
    elapsed: float  # seconds since the start of fit

    @property
    def eta(self) -> float:
        return self.elapsed / self.step * (self.total_steps - self.step)


@dataclass
class History:
    """Everything a run measured, as plain numbers (JSON- and checkpoint-friendly)."""

    steps: list[dict] = field(default_factory=list)  # step, epoch, loss, acc, lr
    epochs: list[dict] = field(default_factory=list)  # epoch, step, val_loss, val_acc, seconds
    status: str = "not started"  # "finished" | "stopped" | "diverged"
    reason: str = ""
    seconds: float = 0.0
    images_per_s: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "History":
        return cls(**d)


@dataclass
class Evaluation:
    """Test-set results: accuracy, per-class accuracy, confusion matrix ``(K, K)`` (rows = true) and the mistakes."""

    accuracy: float
    loss: float
    per_class: list[float]
    confusion: torch.Tensor
    predictions: torch.Tensor  # (N,) predicted class of every example
    mistakes: torch.Tensor  # (M,) indices of the misclassified examples, most confident mistakes first


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random affine per image (±10°, ×0.9–1.1, ±10 % shift) of a normalised batch ``(N, C, H, W)``."""
    n = x.shape[0]
    angle = (torch.rand(n, generator=gen) - 0.5) * math.radians(20)
    scale = 0.9 + 0.2 * torch.rand(n, generator=gen)
    shift = (torch.rand(n, 2, generator=gen) - 0.5) * 0.2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # Pad with the image's border so shifted-in pixels look like background, not like a black frame.
    return F.grid_sample(x, grid, padding_mode="border", align_corners=False)


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = model.parameters()
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=0.9, nesterov=True, weight_decay=config.weight_decay)
    cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=config.lr, weight_decay=config.weight_decay)


def fit(
    model: nn.Module,
    train: Split,
    config: TrainConfig,
    val: Split | None = None,
    on_step: Callable[[Step], None] | None = None,
    stop: threading.Event | None = None,
    on_epoch: Callable[[dict], None] | None = None,
) -> History:
    """Train ``model`` in place on ``train`` and return its :class:`History`.

    Uses a one-cycle learning-rate schedule (Smith & Topin, 2019), which reaches good accuracy in few epochs.
    ``on_epoch`` gets each validation record (only when ``val`` is given).
    ``stop.set()`` from another thread ends the run after the current step (status ``"stopped"``). A NaN or infinite
    loss ends it too (status ``"diverged"``), with the weights put back to the last step whose loss was finite.
    Seeds torch's global RNG (dropout uses it) with ``config.seed``.
    """
    config.check()
    info = train.info
    total = config.total_steps(len(train))
    gen = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    # oneDNN's preferred layout on a CPU: 1.2-1.3× more images/s on our presets (docs/benchmarks.md). Put back
    # when done, also when the loop raises.
    model.to(memory_format=torch.channels_last)
    opt = _optimizer(model, config)
    if total >= 10:
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=total, pct_start=0.25)
    else:  # too few steps for a warm-up and a decay: keep the learning rate constant
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    history = History(status="running")
    good_state = copy.deepcopy(model.state_dict())
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    start = time.perf_counter()
    step, seen = 0, 0
    model.train()
    try:
        while step < total and history.status == "running":
            order = torch.randperm(len(train), generator=gen)
            for i in range(0, len(train), config.batch_size):
                idx = order[i: i + config.batch_size]
                x, y = normalize(train.x[idx], info), train.y[idx]
                if config.augment:
                    x = _augment(x, gen)
                x = x.contiguous(memory_format=torch.channels_last)
                logits = model(x)
                loss = F.cross_entropy(logits, y)
                if not torch.isfinite(loss):
                    model.load_state_dict(good_state)
                    history.status = "diverged"
                    history.reason = (f"the loss became {loss.item()} at step {step + 1}: the learning rate "
                                      f"({config.lr:g}) is probably too high. The model was put back to step {step}.")
                    break
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                step += 1
                seen += len(idx)
                good_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                elapsed = time.perf_counter() - start
                record = Step(step, total, step / steps_per_epoch, loss.item(),
                              (logits.argmax(1) == y).float().mean().item(), sched.get_last_lr()[0],
                              seen / elapsed, elapsed)
                history.steps.append(dict(step=step, epoch=record.epoch, loss=record.loss, acc=record.acc, lr=record.lr))
                if on_step:
                    on_step(record)
                epoch_end = step % steps_per_epoch == 0 or step == total
                if val is not None and epoch_end:
                    ev = evaluate(model, val)
                    history.epochs.append(dict(epoch=record.epoch, step=step, val_loss=ev.loss, val_acc=ev.accuracy,
                                               seconds=time.perf_counter() - start))
                    if on_epoch:
                        on_epoch(history.epochs[-1])
                    model.train()
                if stop is not None and stop.is_set():
                    history.status, history.reason = "stopped", f"stopped by request at step {step} of {total}"
                    break
                if step >= total:
                    break
    finally:
        model.to(memory_format=torch.contiguous_format)
    if history.status == "running":
        history.status = "finished"
    model.eval()
    history.seconds = time.perf_counter() - start
    history.images_per_s = seen / history.seconds if history.seconds > 0 else 0.0
    return history


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, batch_size: int = 1000) -> Evaluation:
    """Accuracy, loss, per-class accuracy, confusion matrix and mistakes of ``model`` on ``split`` (eval mode)."""
    was_training = model.training
    model.eval()
    k = split.info.num_classes
    preds, confid, total_loss = [], [], 0.0
    try:
        for i in range(0, len(split), batch_size):
            x, y = normalize(split.x[i: i + batch_size], split.info), split.y[i: i + batch_size]
            logits = model(x)
            total_loss += F.cross_entropy(logits, y, reduction="sum").item()
            p = logits.softmax(1)
            conf, pred = p.max(1)
            preds.append(pred)
            confid.append(conf)
    finally:
        model.train(was_training)
    pred, conf = torch.cat(preds), torch.cat(confid)
    confusion = torch.bincount(split.y * k + pred, minlength=k * k).view(k, k)
    per_class = (confusion.diag() / confusion.sum(1).clamp(min=1)).tolist()
    wrong = (pred != split.y).nonzero().squeeze(1)
    mistakes = wrong[conf[wrong].argsort(descending=True)]
    return Evaluation((pred == split.y).float().mean().item(), total_loss / len(split), per_class, confusion, pred,
                      mistakes)
