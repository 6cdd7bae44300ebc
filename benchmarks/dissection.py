"""Network dissection on ``parts``: the default model trained in a minute, and what kind of concept each layer
detects, beside the same architecture untrained."""

from __future__ import annotations

import os
import statistics

from benchmarks.common import ROOT, Options, progress, torch_threads
from benchmarks.report import Row, at_least, at_most

SEEDS = (0, 1)
GOAL = 90.0  # % test accuracy each seed's run must reach …
TRAIN_CAP_S = 60.0  # … within this many seconds of training
DISSECT_CAP_S = 30.0  # seconds to dissect the default model over dissect.IMAGES images
LAST_TRAINED = 50.0  # % of the last layer's units whose best concept is a part or an object, trained …
LAST_UNTRAINED = 10.0  # … and untrained (the control): at most this
CHART = ROOT / "docs" / "dissection.png"  # seed 0's chart, shown in the README


def dissection(options: Options) -> list[Row]:
    """Train parts' default model (``parts.model_spec()``, 2 epochs, batches of 64, peak learning rate 0.01) from
    seeds 0 and 1 as the CLI does (500 training images held out to validate); its test accuracy, and the seconds
    of training it took. Then dissect each model on 2,000 held-out scenes (parts' test split of seed 0; Bau et al.
    2017: each unit's top 0.5 % of activations against every concept's masks) and the same architecture with
    fresh random weights (the control). Per conv layer: the share of units (%) that detect a part or an object,
    and a colour or a texture, at the paper's rule (IoU ≥ 0.04) and by each unit's best concept whatever its IoU,
    averaged over the seeds (each seed's in the note). Targets: ≥ 90 % within 60 s of training, dissection ≤ 30 s,
    and by best concept the last layer's part+object share ≥ 50 % trained and ≤ 10 % untrained. One torch thread
    throughout. The full run draws seed 0's chart (trained beside untrained, both rules) into `docs/dissection.png`,
the picture the README shows."""
    full = not options.quick
    # One thread, as the prototype was measured: on a busy 2-core machine two OpenMP threads train 2-3×
    # slower than one (measured: 148-158 images/s with two at load 3-4, ~300 with one at load 7-9).
    with torch_threads(1):
        return _run(options, full)


def _run(options: Options, full: bool) -> list[Row]:
    import torch

    from cnnviz import data, dissect, dissect_figures, models, parts, train

    seeds = SEEDS if full else SEEDS[:1]
    images = dissect.IMAGES if full else 500
    rows, shares = [], {"trained": [], "untrained": []}
    for seed in seeds:
        whole = data.load("parts", True, seed=seed)
        test = data.load("parts", False, seed=seed)
        tr, val = data.holdout(whole, None, min(train.VAL_IMAGES, len(whole) // 10), seed)
        model = models.build(parts.model_spec(), seed=seed)
        config = train.TrainConfig(epochs=parts.EPOCHS, batch_size=parts.BATCH_SIZE, lr=parts.LR, seed=seed,
                                   max_steps=None if full else 100)
        progress(f"training seed {seed}: {config.total_steps(len(tr))} steps")
        history = train.fit(model, tr, config, val=val)
        accuracy = 100 * train.evaluate(model, test).accuracy
        note = (f"{len(history.steps)} steps, {history.images_per_s:.0f} img/s, {torch.get_num_threads()} threads, "
                f"load average {os.getloadavg()[0]:.1f}" + ("" if full else " (quick: 100 steps)"))
        rows += [Row(f"seed {seed}: test accuracy", accuracy, "%", at_least(GOAL), history.status, checked=full),
                 Row(f"seed {seed}: training seconds", history.seconds, "s", at_most(TRAIN_CAP_S), note,
                     checked=full)]
        results = {}
        for kind, subject in (("trained", model), ("untrained", dissect.untrained(model, seed))):
            progress(f"dissecting seed {seed}, {kind}")
            result = results[kind] = dissect.dissect(subject, images=images)
            shares[kind].append({layer.name: _shares(layer) for layer in result.layers})
            if kind == "trained":
                rows.append(Row(f"seed {seed}: dissection seconds ({images:,} images)", result.seconds, "s",
                                at_most(DISSECT_CAP_S), checked=full))
        if full and seed == seeds[0]:
            dissect_figures.hierarchy_chart(results["trained"], results["untrained"]).savefig(CHART, dpi=90)
            progress(f"wrote {CHART.relative_to(ROOT)}")
    for kind in ("trained", "untrained"):
        per_seed = shares[kind]
        names = list(per_seed[0])
        for name in names:
            for rule in (True, False):
                values = [s[name][rule] for s in per_seed]  # (part+object, colour+texture) per seed
                high = [v[0] for v in values]
                how = "detectors, IoU ≥ 0.04" if rule else "by best concept"
                target = None
                if name == names[-1] and not rule:
                    target = at_least(LAST_TRAINED) if kind == "trained" else at_most(LAST_UNTRAINED)
                rows.append(Row(
                    f"{kind} {name}: part+object, {how}", statistics.mean(high), "%", target,
                    f"seed{'s' * (len(seeds) > 1)} {'/'.join(map(str, seeds))}: {'/'.join(f'{v:.0f}' for v in high)} "
                    f"%; colour+texture "
                    f"{'/'.join(f'{v[1]:.0f}' for v in values)} %", checked=full))
    return rows


def _shares(layer) -> dict[bool, tuple[float, float]]:
    """(part+object %, colour+texture %) of a layer's units, at the rule (``True``) and by best concept."""
    out = {}
    for rule in (True, False):
        counts = layer.counts(rule=rule)
        n = len(layer.units)
        out[rule] = (100 * (counts["part"] + counts["object"]) / n, 100 * (counts["colour"] + counts["texture"]) / n)
    return out
