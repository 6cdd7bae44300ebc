"""Training: the CLI on shapes and MNIST, and the app's background job."""

from __future__ import annotations

import json
import statistics
import sys
import threading
import time

from benchmarks.common import Child, Options, mnist_dir, run_child
from benchmarks.report import Row, Skip, at_least, at_most


def _cli_train(dataset: str, options: Options, *extra: str) -> tuple[dict, Child]:
    args = [sys.executable, "-m", "cnnviz.cli", "train", "--dataset", dataset, "--json", *extra]
    if options.quick:
        args += ["--epochs", "1"]
    child = run_child(args)
    if child.returncode != 0:
        raise RuntimeError(f"`cnnviz train --dataset {dataset}` exited with {child.returncode}: "
                           f"{child.stderr.strip().splitlines()[-1:]}")
    return json.loads(child.stdout.strip().splitlines()[-1]), child


def _cli_rows(result: dict, child: Child, acc_target: float, wall_target: float, options: Options) -> list[Row]:
    full = not options.quick
    note = "" if full else "(quick: --epochs 1)"
    return [
        Row("cnnviz test accuracy", 100 * result["test_accuracy"], "%", at_least(acc_target), note, checked=full),
        Row("cnnviz wall, incl. imports and data loading", child.seconds, "s", at_most(wall_target), note,
            checked=full),
        Row("  of which the training loop", result["train_seconds"], "s",
            note=f"{result['steps']} steps, epochs: {result['epochs']}"),
        Row("cnnviz training images/s", result["images_per_s"], "img/s"),
        Row("cnnviz peak RSS (the whole process)", child.max_rss_mb, "MB"),
    ]


FAST_SHAPES = ("--epochs", "1", "--batch-size", "64", "--lr", "0.01")  # gap's own fast recipe (see data.DATASETS)


def train_shapes(options: Options) -> list[Row]:
    """``cnnviz train --dataset shapes --json`` with its defaults, in a fresh process; then gap's faster recipe (one
    epoch of 64 at 0.01: not the default, which must also suit the other presets), for the margin to ≥ 97 % in
    ≤ 10 s of training."""
    result, child = _cli_train("shapes", options)
    fast, _ = _cli_train("shapes", options, *FAST_SHAPES)
    full = not options.quick
    recipe = " ".join(FAST_SHAPES)
    return [*_cli_rows(result, child, 97, 15, options),
            Row(f"{recipe}: test accuracy", 100 * fast["test_accuracy"], "%", at_least(97), checked=full),
            Row(f"{recipe}: training loop", fast["train_seconds"], "s", at_most(10), checked=full,
                note=f"{fast['steps']} steps, {fast['images_per_s']:,.0f} img/s")]


def train_mnist(options: Options) -> list[Row]:
    """``cnnviz train --dataset mnist --json`` with its defaults, in a fresh process (the race to 99 % against
    PyTorch's examples/mnist recipe is the section ``mnist-to-99``)."""
    root, looked = mnist_dir(options)
    if root is None:
        raise Skip(f"MNIST not found at {', '.join(str(p) for p in looked)} "
                   "(pass --data-dir or set CNNVIZ_DATA_DIR to a folder holding MNIST/raw/…)")
    result, child = _cli_train("mnist", options, "--data-dir", str(root))
    return _cli_rows(result, child, 99.0, 20, options)


GRAPH_PRESETS = ("mini-vgg", "mini-resnet", "mini-inception")  # issue 13: each trains on shapes in about a minute


def train_presets(options: Options) -> list[Row]:
    """``cnnviz train --dataset shapes --preset P --json`` for the VGG, ResNet and Inception presets, each in a fresh
    process with the dataset's other defaults: test accuracy and seconds of training (issue 13: about a minute)."""
    rows = []
    for preset in GRAPH_PRESETS:
        result, child = _cli_train("shapes", options, "--preset", preset)
        full = not options.quick
        rows += [
            Row(f"{preset}: test accuracy", 100 * result["test_accuracy"], "%", at_least(97), checked=full,
                note="" if full else "(quick: --epochs 1)"),
            Row(f"{preset}: training seconds", result["train_seconds"], "s", at_most(60), checked=full,
                note=f"{result['steps']} steps, {result['images_per_s']:,.0f} img/s; wall {child.seconds:.1f} s "
                     f"with imports and data"),
        ]
    return rows


PAGE_EVERY = 3.0  # pages/train.py: CHARTS_EVERY and FILTERS_EVERY, the seconds between redraws of the live views
PAGE_TICK = 2.0  # pages/train.py: TICK, the seconds between the live view's updates


def app_train(options: Options) -> list[Row]:
    """The Train page's job (a training process, polled every PAGE_TICK seconds by the page) vs ``train.fit``
    directly."""
    from cnnviz import data, models, train

    full, te = data.load("shapes", True), data.load("shapes", False)
    tr, val = data.holdout(full, None, min(1000, len(full) // 10), seed=0)  # as the Train page splits it
    spec = models.preset(tr.info.preset, tr.info.channels, tr.info.size, tr.info.num_classes)
    # The Train page's defaults: the dataset's epochs, batch size and learning rate, Adam, seed 0, no augmentation.
    info = tr.info
    config = train.TrainConfig(epochs=info.epochs, batch_size=info.batch_size, lr=info.lr,
                               max_steps=100 if options.quick else None)
    train.fit(models.build(spec), tr, train.TrainConfig(max_steps=20))  # warm-up: first-call costs paid here

    model = models.build(spec, seed=config.seed)
    direct = train.fit(model, tr, config, val=val)
    direct_acc = train.evaluate(model, te).accuracy
    quiet, _, _, cold_start = _run_job(spec, tr, val, te, config, poll=False)
    polled, polled_acc, ticks, warm_start = _run_job(spec, tr, val, te, config, poll=True)
    ratio = polled.images_per_s / direct.images_per_s
    rows = [
        Row("train.fit directly (the CLI's path)", direct.images_per_s, "img/s",
            note=f"{len(direct.steps)} steps in {direct.seconds:.1f} s, test accuracy {direct_acc:.1%}"),
        Row("TrainingJob, nobody polling", quiet.images_per_s, "img/s",
            note=f"{quiet.images_per_s / direct.images_per_s:.2f}× direct"),
        Row(f"TrainingJob, page polling + drawing every {PAGE_TICK:g} s", polled.images_per_s, "img/s",
            note=f"{len(polled.steps)} steps in {polled.seconds:.1f} s, test accuracy {polled_acc:.1%}"),
        Row("app ÷ CLI images/s (no browser; see browser-train)", ratio, "×", at_least(0.8)),
        Row("Train → first step reported, first job (fork server starting)", cold_start, "s"),
        Row("Train → first step reported, later jobs", warm_start, "s"),
    ]
    if ticks:
        rows.append(Row(f"page tick: snapshot + curves (new points and filter PNG every {PAGE_EVERY:g} s), median",
                        1000 * statistics.median(ticks),
                        "ms", note=f"max {1000 * max(ticks):.0f} ms over {len(ticks)} ticks"))
    return rows


def _run_job(spec, tr, val, te, config, poll: bool):
    """Run a :class:`TrainingJob` to the end, optionally with a thread doing what the Train page's fragment does
    every PAGE_TICK seconds; the fit's history, the test accuracy, the seconds each page tick took, and the seconds from
    Train to the first step reported (the training process starting and receiving the data)."""
    import plotly.io

    from cnnviz import charts, figures
    from cnnviz.ui import jobs

    job = jobs.TrainingJob(spec, tr, val, te, config)
    done = threading.Event()
    ticks: list[float] = []

    def page() -> None:
        drawn, updated, fig, shown = 0.0, 0.0, None, None
        while not done.wait(PAGE_TICK):
            start = time.perf_counter()
            snap = job.snapshot()
            # As pages/train.py: one figure per job, its points updated when new ones came, at most every
            # CHARTS_EVERY seconds; st.plotly_chart serialises the figure to JSON on every tick, part of its cost.
            if fig is None:
                fig, updated = charts.training_curves(snap.history), time.monotonic()
            elif shown != snap.step and time.monotonic() - updated >= PAGE_EVERY:
                charts.update_training_curves(fig, snap.history)
                shown, updated = snap.step, time.monotonic()
            plotly.io.to_json(fig.to_dict(), validate=False)
            if snap.filters is not None and time.monotonic() - drawn >= PAGE_EVERY:
                figures.to_png(figures.filter_grid(snap.filters), dpi=80)
                drawn = time.monotonic()
            ticks.append(time.perf_counter() - start)

    poller = threading.Thread(target=page, daemon=True)
    if poll:
        poller.start()
    start = time.perf_counter()
    job.start()
    while job.snapshot().step < 1 and job.snapshot().active:
        time.sleep(0.005)
    first_step = time.perf_counter() - start
    snap = jobs.wait_for(job, timeout=600)
    done.set()
    if poll:
        poller.join()
    if snap.result is None:
        raise RuntimeError(f"the training job ended as {snap.status!r}: {snap.message}")
    return snap.result.history, snap.evaluation.accuracy, ticks, first_step
