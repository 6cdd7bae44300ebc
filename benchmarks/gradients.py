"""Gradient statistics while training: what watching every layer's gradients costs the training loop."""

from __future__ import annotations

import statistics
import time

from benchmarks.common import Options, progress
from benchmarks.report import Row, at_most

PAIRS, QUICK_PAIRS = 4, 1  # runs with and without statistics, alternated so that a slow spell hits both
STEPS, QUICK_STEPS = 150, 30


def gradient_stats(options: Options) -> list[Row]:
    """``train.fit`` on shapes with and without :class:`cnnviz.gradients.GradientStats` watching every layer (the
    sampling interval the app uses), in alternated pairs; the median ratio of their training times, and the share
    of the time spent inside the statistics themselves."""
    from cnnviz import data, gradients, models, train

    tr = data.load("shapes", True).subset(5000)
    preset = "mini-resnet" if "mini-resnet" in models.PRESETS else tr.info.preset
    spec = models.preset(preset, tr.info.channels, tr.info.size, tr.info.num_classes)
    steps = QUICK_STEPS if options.quick else STEPS
    config = train.TrainConfig(max_steps=steps, min_steps=steps)
    train.fit(models.build(spec, seed=0), tr, train.TrainConfig(max_steps=10))  # warm-up: first-call costs

    without, with_stats, inside = [], [], []
    for pair in range(QUICK_PAIRS if options.quick else PAIRS):
        progress(f"pair {pair + 1}: {steps} steps with and without gradient statistics")
        # Alternate which goes first, so that a slow spell or a warming machine favours neither.
        for watched in ((False, True) if pair % 2 == 0 else (True, False)):
            model = models.build(spec, seed=0)
            if not watched:
                without.append(train.fit(model, tr, config).seconds)
                continue
            stats = _Timed(gradients.GradientStats(model))
            with_stats.append(train.fit(model, tr, config, **gradients.training_hooks(stats)).seconds)
            inside.append(stats.seconds)
    # Each pair ran back to back, under the same load: the median of their ratios is steadier than a ratio of medians.
    ratio = statistics.median(w / b for w, b in zip(with_stats, without))
    note = f"{preset}, {steps} steps, median of {len(without)} alternated pairs"
    return [
        Row("training without gradient statistics", statistics.median(without), "s", note=note),
        Row("training with gradient statistics", statistics.median(with_stats), "s",
            note=f"every {gradients.SAMPLE_EVERY} steps: {len(stats.inner.steps)} samples of "
                 f"{len(stats.inner.layers)} layers"),
        Row("with ÷ without (training time)", ratio, "×", at_most(1.05), checked=not options.quick,
            note="median of the pairs' ratios" if not options.quick else "(quick: one pair, too noisy to judge)"),
        Row("  of which inside the statistics", 100 * statistics.median(i / w for i, w in zip(inside, with_stats)),
            "%", note="the callback's own time: the part of the difference that is not noise"),
    ]


class _Timed:
    """A callback that counts the seconds spent in the one it wraps."""

    def __init__(self, inner) -> None:
        self.inner, self.model, self.seconds = inner, inner.model, 0.0

    def __call__(self, model, step: int) -> None:
        start = time.perf_counter()
        self.inner(model, step)
        self.seconds += time.perf_counter() - start
