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

from cnnviz import devices, probe
from cnnviz.data import Split, normalize

OPTIMIZERS = ("adam", "adamw", "sgd")

# Validation during a run shows progress; the test set measures the model once, at the end. Bounded so that a long
# run on little data validates a few times, not at every epoch (the 200-image lesson: an epoch every 2 steps).
VAL_EVALS = 20  # at most this many validations per run: at epoch ends, spread out, and one at the last step
VAL_IMAGES = 500  # each validation uses at most this many images of the validation split, the same ones each time

# The one-cycle schedule warms up over this part of the run, then anneals.
WARM_UP = 0.25

# A run is "stuck" when, after STUCK_AFTER steps and past the warm-up, the mean loss of the last STUCK_WINDOW batches
# is within STUCK_LOSS of ln(classes) (the loss of a uniform guess) and their mean accuracy is below chance + STUCK_ACC.
# Measured with the gap preset, Adam and batches of 128 on 1,000 shapes (ln 8 = 2.08; 300 steps, so the warm-up ends
# at step 75): at a learning rate of 2.0 every 25-step window, from the first, has a mean loss of 2.10-2.19 and an
# accuracy of 11-15 %, for each of 5 seeds (adamw alike). At 0.005 (the default) the window before step 100 has
# 0.77 and 78 %; at 0.0005 (the lowest the app offers) 1.73 and 45 %. On MNIST (tiny preset, 938 steps) 2.0 first
# learns a little, then falls back to chance (2.35, 10 %) by step 125 and stays there. SGD (with momentum) still
# trains at 2.0 on shapes (96 % batch accuracy at the end).
STUCK_AFTER, STUCK_WINDOW, STUCK_LOSS, STUCK_ACC = 100, 25, 0.25, 0.05


@dataclass
class TrainConfig:
    """How to train. The run lasts ``max(epochs × steps per epoch, min_steps)`` steps, so small datasets still train."""

    epochs: int = 2
    batch_size: int = 128
    lr: float = 0.005  # peak learning rate of the one-cycle schedule
    optimizer: str = "adam"
    weight_decay: float = 0.0
    augment: bool = False  # small random shifts, rotations and zooms of each training image
    flips: bool = False  # with augment: mirror half the images left to right (only where the classes allow it)
    seed: int = 0
    min_steps: int = 300
    max_steps: int | None = None  # hard cap, for quick demos and tests
    stop_when_stuck: bool = True  # end a run still at chance past the warm-up (a lesson comparing two runs keeps on)

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
    epochs: list[dict] = field(default_factory=list)  # validations: epoch, step, val_loss, val_acc, seconds
    status: str = "not started"  # "finished" | "stopped" | "diverged" | "stuck"
    reason: str = ""  # why a run ended early, in plain words
    seconds: float = 0.0
    images_per_s: float = 0.0
    val_images: int = 0  # how many images each validation used (0: none)

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


def _augment(x: torch.Tensor, gen: torch.Generator, flips: bool = False) -> torch.Tensor:
    """Random affine per image (±10°, ×0.9–1.1, ±10 % shift, and a left-right mirror for half of them when
    ``flips``) of a normalised batch ``(N, C, H, W)``."""
    n = x.shape[0]
    # Drawn on the CPU from ``gen`` (the same numbers on every device), then moved to the images.
    angle = (torch.rand(n, generator=gen) - 0.5) * math.radians(20)
    scale = 0.9 + 0.2 * torch.rand(n, generator=gen)
    shift = (torch.rand(n, 2, generator=gen) - 0.5) * 0.2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    if flips:  # x_in = -x_out: the first column of each (2, 3) matrix changes sign
        mirror = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
        theta[:, :, 0] *= mirror[:, None]
    grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
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
    device: str | torch.device | None = None,
    after_backward: Callable[[nn.Module, int], None] | None = None,
) -> History:
    """Train ``model`` in place on ``train`` and return its :class:`History`.

    Uses a one-cycle learning-rate schedule (Smith & Topin, 2019), which reaches good accuracy in few epochs.
    With ``val``, validates on the same :data:`VAL_IMAGES` of it at most :data:`VAL_EVALS` times: at epoch ends at
    least ``total / VAL_EVALS`` steps apart, and at the last step. ``on_epoch`` gets each validation record.
    ``stop.set()`` from another thread ends the run after the current step (status ``"stopped"``). A NaN or infinite
    loss ends it too (status ``"diverged"``), with the weights put back to the last step whose loss was finite; so
    does a network that still guesses at chance after :data:`STUCK_AFTER` steps and the warm-up (status ``"stuck"``,
    weights kept). ``history.reason`` says why in plain words.
    Seeds torch's global RNG (dropout uses it) with ``config.seed``.

    ``device`` (``"auto"``, ``"cpu"``, ``"cuda"``, ``"mps"``: see :func:`cnnviz.devices.resolve`) moves the model
    there, where it stays; ``None`` trains where the model already is. The training images go to that device once,
    whole (uint8, a byte a pixel), and each batch is cut and normalised there. The random draws (order, augmentation)
    come from a CPU generator, so the same seed draws the same batches on every device.
    ``after_backward(model, step)``, when given, runs after each backward pass and before the optimiser's step, with
    the gradients in the parameters' ``.grad``; ``step`` is the number of the step being made (1-based, as
    :attr:`Step.step`).
    """
    config.check()
    if len(train) == 0:
        raise ValueError("there are no training images")
    info = train.info
    total = config.total_steps(len(train))
    gen = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    device = probe.device_of(model) if device is None else devices.resolve(device)
    # oneDNN's preferred layout on a CPU: 1.2-1.3× more images/s on our presets (docs/benchmarks.md); measured
    # there only, so accelerators keep the default layout. Put back when done, also when the loop raises.
    layout = torch.channels_last if device.type == "cpu" else torch.contiguous_format
    model.to(device, memory_format=layout)
    xs, ys = train.x.to(device), train.y.to(device)  # the whole split, once (a no-op on the CPU)
    opt = _optimizer(model, config)
    if total >= 10:
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=total, pct_start=WARM_UP)
    else:  # too few steps for a warm-up and a decay: keep the learning rate constant
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    history = History(status="running")
    val = _on(val.subset(VAL_IMAGES), device) if val is not None else None
    history.val_images = len(val) if val is not None else 0
    val_every, last_val = math.ceil(total / VAL_EVALS), 0
    # A slow start is not a stuck run: judge only once the learning rate has reached its peak.
    stuck_from = max(STUCK_AFTER, math.ceil(WARM_UP * total))
    good_state = copy.deepcopy(model.state_dict())
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    start = time.perf_counter()
    step, seen = 0, 0
    model.train()
    try:
        while history.status == "running":
            order = torch.randperm(len(train), generator=gen).to(device)
            for i in range(0, len(train), config.batch_size):
                idx = order[i: i + config.batch_size]
                x, y = normalize(xs[idx], info), ys[idx]
                if config.augment:
                    x = _augment(x, gen, config.flips)
                x = x.contiguous(memory_format=layout)
                logits = model(x)
                loss = F.cross_entropy(logits, y)
                if not torch.isfinite(loss):
                    model.load_state_dict(good_state)
                    history.status = "diverged"
                    history.reason = (f"the loss became {loss.item()} at step {step + 1}: the numbers in the "
                                      f"network grew too large to compute with. The learning rate ({config.lr:g}) "
                                      f"is probably too high. The model was put back to step {step}.")
                    break
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if after_backward is not None:
                    after_backward(model, step + 1)
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
                if step >= total:
                    history.status = "finished"
                elif config.stop_when_stuck and step >= stuck_from and (reason := _stuck(history.steps, info.num_classes, config)):
                    history.status, history.reason = "stuck", reason
                elif stop is not None and stop.is_set():
                    history.status, history.reason = "stopped", f"stopped by request at step {step} of {total}"
                epoch_end = step % steps_per_epoch == 0 and step - last_val >= val_every
                if val is not None and (epoch_end or history.status in ("finished", "stuck")):
                    last_val = step
                    ev = evaluate(model, val)
                    history.epochs.append(dict(epoch=record.epoch, step=step, val_loss=ev.loss, val_acc=ev.accuracy,
                                               seconds=time.perf_counter() - start))
                    if on_epoch:
                        on_epoch(history.epochs[-1])
                    model.train()
                if history.status != "running":
                    break
    finally:
        model.to(memory_format=torch.contiguous_format)
    model.eval()
    history.seconds = time.perf_counter() - start
    history.images_per_s = seen / history.seconds if history.seconds > 0 else 0.0
    return history


def _on(split: Split, device: torch.device) -> Split:
    """``split``'s images and labels on ``device`` (``to`` copies nothing when they are there already); no masks."""
    return Split(split.info, split.x.to(device), split.y.to(device))


def _stuck(steps: list[dict], num_classes: int, config: TrainConfig) -> str:
    """Why the run is stuck at chance, in plain words, or ``""`` while its last batches do better than chance."""
    window = steps[-STUCK_WINDOW:]
    loss = sum(s["loss"] for s in window) / len(window)
    acc = sum(s["acc"] for s in window) / len(window)
    guess = math.log(num_classes)
    if abs(loss - guess) >= STUCK_LOSS or acc >= 1 / num_classes + STUCK_ACC:
        return ""
    if config.lr > TrainConfig.lr:
        advice = (f"The learning rate ({config.lr:g}) is probably too high for {config.optimizer}: try a "
                  f"smaller one, such as {TrainConfig.lr:g}.")
    else:
        advice = (f"The learning rate ({config.lr:g}) is not high, so try another architecture, or a larger "
                  f"learning rate.")
    return (f"after {len(steps)} steps the loss is still {loss:.2f} ≈ ln({num_classes}) = {guess:.2f}, the loss of a "
            f"uniform guess, and the accuracy on the last {len(window)} batches is {acc:.0%}, what guessing gets "
            f"(1 in {num_classes}): the network is guessing at chance. {advice} Training stopped early; the model "
            f"keeps its current weights.")


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, batch_size: int = 1000) -> Evaluation:
    """Accuracy, loss, per-class accuracy, confusion matrix and mistakes of ``model`` on ``split`` (eval mode).

    Runs where the model is, the split's images moved there once; the tensors of the result are on the CPU.
    """
    was_training = model.training
    model.eval()
    k = split.info.num_classes
    on_device = _on(split, probe.device_of(model))
    preds, confid, total_loss = [], [], 0.0
    try:
        for i in range(0, len(split), batch_size):
            x, y = normalize(on_device.x[i: i + batch_size], split.info), on_device.y[i: i + batch_size]
            logits = model(x)
            total_loss += F.cross_entropy(logits, y, reduction="sum").item()
            p = logits.softmax(1)
            conf, pred = p.max(1)
            preds.append(pred)
            confid.append(conf)
    finally:
        model.train(was_training)
    pred, conf = torch.cat(preds).cpu(), torch.cat(confid).cpu()
    confusion = torch.bincount(split.y * k + pred, minlength=k * k).view(k, k)
    per_class = (confusion.diag() / confusion.sum(1).clamp(min=1)).tolist()
    wrong = (pred != split.y).nonzero().squeeze(1)
    mistakes = wrong[conf[wrong].argsort(descending=True)]
    return Evaluation((pred == split.y).float().mean().item(), total_loss / len(split), per_class, confusion, pred,
                      mistakes)
