"""Time to 99 % on MNIST: cnnviz's default training against PyTorch's examples/mnist recipe, in the same run."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from benchmarks.common import Options, mnist_dir, progress, synchronize
from benchmarks.report import Row, Skip, at_least

GOAL = 0.99  # test accuracy both runs race to
CAP_S, QUICK_CAP_S = 600.0, 20.0  # training seconds each run may use (--mnist-cap changes it)
PEAK_S, PEAK_N = 2.0, 2048  # the matmul loop that measures the machine's peak: seconds, matrix side
RECIPE_BATCH, RECIPE_SEED = 64, 1  # examples/mnist/main.py: --batch-size 64, --seed 1
MEAN, STD = 0.1307, 0.3081  # its transforms.Normalize, also cnnviz's MNIST statistics


def cap_seconds(options: Options) -> float:
    if options.mnist_cap is not None:
        return options.mnist_cap
    return QUICK_CAP_S if options.quick else CAP_S


def announce(options: Options) -> str:
    return f"each run stops at {cap_seconds(options):.0f} s of training, reached or not (--mnist-cap)"


@dataclass
class Race:
    """One run towards :data:`GOAL`: the test evaluations it made, and whether the time cap stopped it."""

    evals: list[tuple[float, float, float]] = field(default_factory=list)  # (epochs, training seconds, accuracy)
    capped: bool = False
    images: int = 0  # training images seen
    seconds: float = 0.0  # training seconds in all, evaluations excluded

    def time_to(self, goal: float) -> float | None:
        """Training seconds at the first evaluation at or above ``goal``; None if none got there."""
        return next((s for _, s, acc in self.evals if acc >= goal), None)

    def epochs_to(self, goal: float) -> float | None:
        return next((e for e, _, acc in self.evals if acc >= goal), None)

    @property
    def best(self) -> float:
        return max((acc for _, _, acc in self.evals), default=0.0)


class Stopwatch:
    """Training seconds: wall time since ``start()`` minus the time spent in :meth:`paused` blocks (evaluations)."""

    def __init__(self, device) -> None:
        self.device = device
        self.begun = 0.0
        self.excluded = 0.0

    def start(self) -> None:
        synchronize(self.device)
        self.begun = time.perf_counter()

    def read(self) -> float:
        synchronize(self.device)
        return time.perf_counter() - self.begun - self.excluded

    def pause(self) -> "_Paused":
        return _Paused(self)


class _Paused:
    def __init__(self, watch: Stopwatch) -> None:
        self.watch = watch

    def __enter__(self) -> None:
        synchronize(self.watch.device)
        self.t0 = time.perf_counter()

    def __exit__(self, *exc) -> None:
        synchronize(self.watch.device)
        self.watch.excluded += time.perf_counter() - self.t0


def mnist_to_99(options: Options) -> list[Row]:
    """Training time until the first test evaluation at ≥ 99.0 %: cnnviz's default MNIST training (what `cnnviz
    train --dataset mnist` runs: the CLI's default preset, epochs, batch, learning rate, seed and 500 held-out
    validation images) against PyTorch's examples/mnist recipe as published (its `Net`: two convs, dropout, two
    dense layers; Adadelta lr 1.0; StepLR step 1, γ 0.7, stepped per epoch; batches of 64; Normalize(0.1307,
    0.3081); seed 1).

    The same rule for both: the whole 10,000-image test set is evaluated at the end of every epoch (the recipe's
    own rhythm; cnnviz's default for MNIST is 3 epochs), with one shared function, the model in eval mode; the clock counts
    training only and stops during those evaluations (cnnviz's own validations of 500 images stay in its time).
    Each run stops at the first evaluation at ≥ 99.0 %, or once its training time reaches the cap: then it is
    evaluated where it stopped, the accuracy reached is printed, and a capped recipe makes the ratio a lower
    bound. Both read the same uint8 tensors from memory, on the same device, one after the other; the recipe
    normalises each batch as its transforms would, without its DataLoader's per-image PIL work (which would only
    slow it down).
    FLOPs per image are counted by `torch.utils.flop_counter.FlopCounterMode` (forward, and forward + backward of
    a training step); GFLOP/s = training FLOPs per image × images trained ÷ training seconds, beside a float32
    matmul measured in the same run.
    """
    import torch

    from cnnviz import data

    root, looked = mnist_dir(options)
    if root is None:
        raise Skip(f"MNIST not found at {', '.join(str(p) for p in looked)} "
                   "(pass --data-dir or set CNNVIZ_DATA_DIR to a folder holding MNIST/raw/…)")
    device = torch.device(options.device)
    cap = cap_seconds(options)
    train_split, test_split = data.load("mnist", True, root), data.load("mnist", False, root)
    test_x = normalise(test_split.x.to(device))
    test_y = test_split.y.to(device)

    def accuracy(model: torch.nn.Module) -> float:
        return test_accuracy(model, test_x, test_y)

    progress(f"cnnviz's default training, until {100 * GOAL:.1f} % or {cap:.0f} s of training")
    ours, model, setup = race_cnnviz(train_split, accuracy, cap, device)
    progress(f"examples/mnist's recipe, until {100 * GOAL:.1f} % or {cap:.0f} s of training")
    ref, ref_model = race_recipe(train_split.x.to(device), train_split.y.to(device), accuracy, cap, device)
    peak_n = PEAK_N if not options.quick else PEAK_N // 2
    peak = matmul_gflops(peak_n, PEAK_S if not options.quick else PEAK_S / 4, device)

    shape = (1, 1, 28, 28)
    ours_fwd, ours_train = flops_per_image(model, shape, setup["batch_size"], device)
    ref_fwd, ref_train = flops_per_image(ref_model, shape, RECIPE_BATCH, device, log_softmax=True)
    t_ours, t_ref = ours.time_to(GOAL), ref.time_to(GOAL)
    goal = f"{100 * GOAL:.1f} %"
    if t_ours is None:
        ratio, why = None, f"cnnviz did not reach {goal}"
    elif t_ref is None:
        ratio, why = (ref.seconds / t_ours if ref.capped else None), (
            "a lower bound: the recipe was stopped by the cap" if ref.capped
            else f"the recipe did not reach {goal}")
    else:
        ratio, why = t_ref / t_ours, ""
    full = not options.quick and options.mnist_cap is None
    quick_note = "" if full else f"not judged: a cap of {cap:.0f} s, not {CAP_S:.0f} s"
    ours_gflops = ours_train * ours.images / ours.seconds / 1e9
    ref_gflops = ref_train * ref.images / ref.seconds / 1e9
    return [
        Row("time cap for each run (training seconds)", cap, "s",
            note=f"{_device_name(device)}, {torch.get_num_threads()} torch threads"),
        Row(f"cnnviz's default training: time to {goal}", t_ours, "s",
            note=f"{setup['preset']}, {setup['epochs']} epochs, {setup['optimizer']} one-cycle, batch "
                 f"{setup['batch_size']}: {_race_note(ours)}"),
        Row(f"examples/mnist recipe: time to {goal}", t_ref, "s",
            note=f"Adadelta, StepLR, batch {RECIPE_BATCH}: {_race_note(ref)}"),
        Row(f"time to {goal}: recipe ÷ cnnviz", ratio, "×", at_least(8), note="; ".join(filter(None, (
            why, quick_note))), checked=full),
        Row("cnnviz forward MFLOP per image", ours_fwd / 1e6, "MFLOP",
            note=f"training step {ours_train / 1e6:.2f} MFLOP/image (forward + backward)"),
        Row("recipe forward MFLOP per image", ref_fwd / 1e6, "MFLOP",
            note=f"training step {ref_train / 1e6:.2f} MFLOP/image; {ref_fwd / ours_fwd:.1f}× cnnviz's forward"),
        Row(f"float32 matmul peak ({peak_n}², same threads)", peak, "GFLOP/s"),
        Row("cnnviz training GFLOP/s", ours_gflops, "GFLOP/s", note=f"{100 * ours_gflops / peak:.1f} % of the "
            f"matmul peak; {ours.images:,} images in {ours.seconds:.1f} s"),
        Row("recipe training GFLOP/s", ref_gflops, "GFLOP/s", note=f"{100 * ref_gflops / peak:.1f} % of the "
            f"matmul peak; {ref.images:,} images in {ref.seconds:.1f} s"),
    ]


def _race_note(race: Race) -> str:
    reached = race.epochs_to(GOAL)
    evals = ", ".join(f"{100 * acc:.2f} %" for _, _, acc in race.evals)
    if reached is not None:
        return f"at epoch {reached:g} (test accuracy per evaluation: {evals})"
    if race.capped:
        return f"not reached: capped after {race.seconds:.0f} s, {race.images:,} images; accuracy {evals}"
    return f"not reached by the end of its run; accuracy {evals}"


def _device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "CPU"


def normalise(x):
    """uint8 MNIST (N, 1, 28, 28) → float, as ToTensor() then Normalize((0.1307,), (0.3081,))."""
    return (x.float() / 255 - MEAN) / STD


def test_accuracy(model, x, y, batch: int = 1000) -> float:
    """Accuracy of ``model`` (eval mode, no gradients) on normalised ``x`` (N, 1, 28, 28) and labels ``y`` (N,);
    the model's mode is put back."""
    import torch

    was_training = model.training
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(y), batch):
            correct += int((model(x[i: i + batch]).argmax(1) == y[i: i + batch]).sum())
    model.train(was_training)
    return correct / len(y)


def race_cnnviz(full_train, accuracy: Callable, cap: float, device) -> tuple[Race, object, dict]:
    """cnnviz's default MNIST training, as ``cnnviz train --dataset mnist`` sets it up (read from the CLI's own
    defaults), evaluated with ``accuracy(model)`` at each epoch end; stopped at :data:`GOAL` or ``cap``."""
    import threading

    from cnnviz import cli, data, models, train

    args = cli.parser().parse_args(["train", "--dataset", "mnist"])
    n_val = min(train.VAL_IMAGES, len(full_train) // 10)
    train_split, val_split = data.holdout(full_train, None, n_val, args.seed)
    train_split, val_split = (data.Split(s.info, s.x.to(device), s.y.to(device)) for s in (train_split, val_split))
    info = train_split.info
    preset = args.preset or info.preset
    spec = models.preset(preset, info.channels, info.size, info.num_classes)
    model = models.build(spec, seed=args.seed).to(device)
    batch, lr = cli.batch_and_lr(args)
    config = train.TrainConfig(epochs=args.epochs or info.epochs, batch_size=batch, lr=lr, seed=args.seed,
                               augment=args.augment)
    steps_per_epoch = -(-len(train_split) // config.batch_size)
    race, stop, watch = Race(), threading.Event(), Stopwatch(device)

    def on_step(s: train.Step) -> None:
        race.images += min(config.batch_size, len(train_split) - (s.step - 1) % steps_per_epoch * config.batch_size)
        seconds = watch.read()
        if not (s.step % steps_per_epoch == 0 or s.step == s.total_steps or seconds >= cap):
            return
        race.seconds = seconds
        with watch.pause():
            race.evals.append((round(s.step / steps_per_epoch, 2), seconds, accuracy(model)))
        progress(f"cnnviz: epoch {race.evals[-1][0]:g}, {100 * race.evals[-1][2]:.2f} % after {seconds:.1f} s of "
                 f"training")
        if race.evals[-1][2] >= GOAL:
            stop.set()
        elif seconds >= cap:
            race.capped = True
            stop.set()

    watch.start()
    train.fit(model, train_split, config, val=val_split, on_step=on_step, stop=stop)
    setup = dict(preset=preset, epochs=config.epochs, optimizer=config.optimizer, batch_size=config.batch_size)
    return race, model, setup


def recipe_net():
    """The network of PyTorch's examples/mnist/main.py, layer for layer; returns log-probabilities (N, 10)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 32, 3, 1)
            self.conv2 = nn.Conv2d(32, 64, 3, 1)
            self.dropout1 = nn.Dropout(0.25)
            self.dropout2 = nn.Dropout(0.5)
            self.fc1 = nn.Linear(9216, 128)
            self.fc2 = nn.Linear(128, 10)

        def forward(self, x):
            x = F.relu(self.conv1(x))  # (N, 32, 26, 26)
            x = F.relu(self.conv2(x))  # (N, 64, 24, 24)
            x = F.max_pool2d(x, 2)  # (N, 64, 12, 12)
            x = self.dropout1(x)
            x = torch.flatten(x, 1)  # (N, 9216)
            x = F.relu(self.fc1(x))
            x = self.dropout2(x)
            return F.log_softmax(self.fc2(x), dim=1)

    return Net()


def race_recipe(x, y, accuracy: Callable, cap: float, device) -> tuple[Race, object]:
    """examples/mnist's loop on uint8 ``x`` (N, 1, 28, 28) and labels ``y``: an epoch of batches of 64 in a new
    random order, a test evaluation, ``scheduler.step()``; until :data:`GOAL` or ``cap`` training seconds."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(RECIPE_SEED)
    model = recipe_net().to(device)
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7)
    race, watch = Race(), Stopwatch(device)
    epoch, n = 0, len(y)
    watch.start()
    while True:
        model.train()
        order = torch.randperm(n, device=device)
        seen = 0
        for i in range(0, n, RECIPE_BATCH):
            idx = order[i: i + RECIPE_BATCH]
            opt.zero_grad()
            loss = F.nll_loss(model(normalise(x[idx])), y[idx])
            loss.backward()
            opt.step()
            seen += len(idx)
            if watch.read() >= cap:
                break
        race.images += seen
        race.seconds = watch.read()
        with watch.pause():
            race.evals.append((round(epoch + seen / n, 2), race.seconds, accuracy(model)))
        progress(f"recipe: epoch {race.evals[-1][0]:g}, {100 * race.evals[-1][2]:.2f} % after {race.seconds:.1f} s "
                 f"of training")
        if race.evals[-1][2] >= GOAL:
            break
        if race.seconds >= cap:
            race.capped = True
            break
        sched.step()
        epoch += 1
    return race, model


def flops_per_image(model, shape: tuple[int, ...], batch: int, device, log_softmax: bool = False) -> tuple[int, int]:
    """FLOPs of one image's forward pass, and of a training step per image (forward + backward of a batch of
    ``batch``), as ``FlopCounterMode`` counts them (convolutions and matrix products). The model's mode is kept."""
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    try:
        model.eval()
        with FlopCounterMode(display=False) as fwd, torch.no_grad():
            model(torch.zeros(shape, device=device))
        model.train()
        x = torch.zeros((batch, *shape[1:]), device=device)
        y = torch.zeros(batch, dtype=torch.long, device=device)
        with FlopCounterMode(display=False) as step:
            out = model(x)
            loss = F.nll_loss(out, y) if log_softmax else F.cross_entropy(out, y)
            loss.backward()
        model.zero_grad(set_to_none=True)
    finally:
        model.train(was_training)
    return fwd.get_total_flops() // shape[0], step.get_total_flops() // batch


def matmul_gflops(n: int, seconds: float, device) -> float:
    """GFLOP/s of back-to-back float32 ``n × n`` matrix products for about ``seconds`` (2 n³ FLOPs each)."""
    import torch

    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=gen).to(device), torch.randn(n, n, generator=gen).to(device)
    out = torch.empty(n, n, device=device)
    torch.mm(a, b, out=out)  # warm-up: the first call picks kernels
    synchronize(device)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.mm(a, b, out=out)
        count += 1
        if device.type != "cpu" and count % 8 == 0:
            synchronize(device)
    synchronize(device)
    return 2 * n ** 3 * count / (time.perf_counter() - start) / 1e9
