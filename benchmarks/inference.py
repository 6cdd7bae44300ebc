"""Looking inside a trained model: probe + Grad-CAM latency, the pointing game, and the Learn pages' searches."""

from __future__ import annotations

import time
from functools import partial

from benchmarks.common import SHIPPED_MODEL, Options, median_times, torch_threads
from benchmarks.report import Row, at_least, at_most


def probe(options: Options) -> list[Row]:
    """``probe.run`` + ``gradcam.compute`` for one image: the shipped model and a ResNet-18, at N and 1 threads."""
    import torch
    import torchvision

    import cnnviz
    from cnnviz import gradcam, probe as probe_

    runs = 5 if options.quick else 20
    shipped = cnnviz.load_checkpoint(SHIPPED_MODEL)
    resnet = torchvision.models.resnet18(weights=None).eval()
    cases = [("shipped model", shipped.model, (1, *shipped.info.input_shape), 50),
             ("resnet18", resnet, (1, 3, 224, 224), 300)]
    threads = torch.get_num_threads()
    rows = [Row("torch.get_num_threads()", threads)]
    for label, model, shape, target in cases:
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
        for n in dict.fromkeys((threads, 1)):
            with torch_threads(n):
                (run, cam), both = median_times([partial(probe_.run, model, x), partial(gradcam.compute, model, x)],
                                                runs)
            rows.append(Row(f"{label} {tuple(shape)}, {n} thread{'s' * (n > 1)}", 1000 * both, "ms",
                            at_most(target), f"probe {1000 * run:.1f} + Grad-CAM {1000 * cam:.1f} ms "
                                             f"(medians of {runs})"))
    return rows


# The held-out images of the pointing game: the test split of this shapes seed (``data.load("shapes", False,
# seed=HELD_OUT_SEED)`` draws ``shapes.generate(2000, seed=2 * HELD_OUT_SEED + 1)``). The shipped model and the
# architecture search (docs/design.md) used the splits of seeds 0-2 (generator seeds 0-5), the app and the CLI
# seed 0 by default, and tests and other benchmarks draw generator seeds below 12: none of them saw these images.
HELD_OUT_SEED = 1015


def pointing(options: Options) -> list[Row]:
    """Pointing game (Zhang et al. 2016, "Top-down Neural Attention by Excitation Backprop"): is the Grad-CAM
    maximum inside the object's mask? On held-out shapes: the first 500 images of the test split of shapes seed
    1015, which nothing that chose or trained the architecture has seen (seeds 0-2 did). The shipped model's rate,
    strict and with the mask grown by one pixel, next to two baselines: the image centre (no model), and the same
    architecture with random weights; and the gain of Grad-CAM over the centre."""
    import torch

    import cnnviz
    from cnnviz import data, gradcam, models

    n = 100 if options.quick else 500
    split = data.load("shapes", train=False, seed=HELD_OUT_SEED)
    x, y, masks = data.normalize(split.x[:n], split.info), split.y[:n], split.masks[:n]
    shipped = cnnviz.load_checkpoint(SHIPPED_MODEL)
    random_model = models.build(shipped.spec, seed=0).eval()
    with torch.no_grad():
        accuracy = (shipped.model(x).argmax(1) == y).float().mean().item()
    start = time.perf_counter()
    # One thread: thousands of tiny backward passes; see the probe section for what two threads cost under load.
    with torch_threads(1):
        cases = {"Grad-CAM, predicted class": gradcam.peaks(shipped.model, x),
                 "Grad-CAM, true class": gradcam.peaks(shipped.model, x, y),
                 "random weights (Grad-CAM, predicted)": gradcam.peaks(random_model, x),
                 "Grad-CAM++, predicted class (contrast)": gradcam.peaks(shipped.model, x, method="gradcam++")}
    seconds = time.perf_counter() - start
    layer = gradcam.default_layer(shipped.model)
    rows = [Row(f"shipped model's accuracy on these {n} held-out images", 100 * accuracy, "%",
                note=f"shapes test split of seed {HELD_OUT_SEED}; maps at {layer}; {4 * n} maps in {seconds:.1f} s")]
    rates = {}
    for label, peak in [*cases.items(), ("image centre (no model)", None)]:
        strict, loose = ((gradcam.centre_hits(masks, t) if peak is None else gradcam.hits(peak, masks, t))
                         for t in (0, 1))
        rates[label] = 100 * strict.rate
        target = at_least(90) if label.startswith("Grad-CAM,") else None
        rows.append(Row(f"{label}: strict", rates[label], "%", target, checked=not options.quick))
        rows.append(Row(f"{label}: 1-px tolerance", 100 * loose.rate, "%"))
    centre, random_rate = rates["image centre (no model)"], rates["random weights (Grad-CAM, predicted)"]
    rows.append(Row("gain over the centre: Grad-CAM (predicted) − centre, strict",
                    rates["Grad-CAM, predicted class"] - centre, "pp",
                    note=f"random weights − centre: {random_rate - centre:+.2f} pp"))
    return rows


def learn(options: Options) -> list[Row]:
    """``maximize.maximize_layer`` (all channels) and ``maximize.top_patches`` for each conv/relu/pool layer."""
    import cnnviz
    from cnnviz import data, maximize, probe as probe_
    from cnnviz.receptive import receptive_fields

    shipped = cnnviz.load_checkpoint(SHIPPED_MODEL)
    model, shape = shipped.model, shipped.info.input_shape
    split = data.load("shapes", train=False)
    limit = 500 if options.quick else 2000
    steps = 16 if options.quick else 128
    kinds = {name: probe_.kind_of(probe_.get_module(model, name)) for name in probe_.layer_names(model)}
    layers = [rf.name for rf in receptive_fields(model, shape[-1]) if kinds[rf.name] in ("conv", "activation", "pool")]
    rows = []
    for layer in layers:
        start = time.perf_counter()
        results = maximize.maximize_layer(model, layer, shape, steps=steps)
        rows.append(Row(f"maximize_layer {layer} ({len(results)} channels, {steps} steps)",
                        time.perf_counter() - start, "s"))
    for layer in layers:
        start = time.perf_counter()
        patches = maximize.top_patches(model, split, layer, k=9, limit=limit)
        rows.append(Row(f"top_patches {layer} ({len(patches)} channels × 9, {limit:,} images)",
                        time.perf_counter() - start, "s"))
    return rows
