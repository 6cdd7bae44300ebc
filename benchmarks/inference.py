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


def pointing(options: Options) -> list[Row]:
    """Pointing game (Zhang et al. 2016, "Top-down Neural Attention by Excitation Backprop"): is the Grad-CAM
    maximum on the object? Strict, and with the mask dilated by one pixel; vs random weights and the image centre."""
    import torch
    import torch.nn.functional as F

    import cnnviz
    from cnnviz import data, gradcam, models

    n = 100 if options.quick else 500
    split = data.load("shapes", train=False)
    x, y, masks = split.x[:n], split.y[:n], split.masks[:n]
    # Dilated by one pixel: a peak just off the object's edge counts as a hit.
    loose = F.max_pool2d(masks[:, None].float(), 3, stride=1, padding=1)[:, 0].bool()
    shipped = cnnviz.load_checkpoint(SHIPPED_MODEL)
    random_model = models.build(shipped.spec, seed=0).eval()
    xs = data.normalize(x, split.info)

    def peaks(model, true_class: bool, method: str = "gradcam") -> torch.Tensor:
        """(n, 2) row, col of each image's CAM maximum at the default layer (the first one, if tied)."""
        out = []
        for i in range(n):
            target = int(y[i]) if true_class else None
            heat = gradcam.compute(model, xs[i: i + 1], target=target, method=method).heatmap
            out.append(divmod(int(heat.argmax()), heat.shape[1]))
        return torch.tensor(out)

    def rate(p: torch.Tensor, m: torch.Tensor) -> float:
        return 100 * m[torch.arange(n), p[:, 0], p[:, 1]].float().mean().item()

    with torch.no_grad():
        accuracy = (shipped.model(xs).argmax(1) == y).float().mean().item()
    start = time.perf_counter()
    # One thread: thousands of tiny backward passes; see the probe section for what two threads cost under load.
    with torch_threads(1):
        cases = {"Grad-CAM, predicted class": peaks(shipped.model, False),
                 "Grad-CAM, true class": peaks(shipped.model, True),
                 "random weights (Grad-CAM, predicted)": peaks(random_model, False),
                 "Grad-CAM++, predicted class (contrast)": peaks(shipped.model, False, "gradcam++")}
    seconds = time.perf_counter() - start
    size = x.shape[-1]
    cases["image centre (no model)"] = torch.tensor([[size // 2, size // 2]]).expand(n, 2)
    layer = gradcam.default_layer(shipped.model)
    rows = [Row(f"shipped model's accuracy on these {n} images", 100 * accuracy, "%",
                note=f"maps at {layer}; {4 * n} maps in {seconds:.1f} s")]
    for label, p in cases.items():
        target = at_least(90) if label.startswith("Grad-CAM,") else None
        rows.append(Row(f"{label}: strict", rate(p, masks), "%", target, checked=not options.quick))
        rows.append(Row(f"{label}: 1-px tolerance", rate(p, loose), "%"))
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
