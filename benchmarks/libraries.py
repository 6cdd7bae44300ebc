"""cnnviz's Grad-CAM next to the libraries a user would pick instead: pytorch-grad-cam and TorchCAM.

Both are benchmark-only extras (``pip install -e '.[bench]'``), imported here and nowhere else.
"""

from __future__ import annotations

from importlib import metadata

from benchmarks.common import Options, median_times
from benchmarks.report import Row, Skip, at_least

LAYER = "layer4"
SEED = 0


def pearson(a, b) -> float:
    """Pearson correlation of two maps of the same shape (any shape), in float64; NaN when either is constant."""
    import torch

    a, b = torch.as_tensor(a).double().flatten(), torch.as_tensor(b).double().flatten()
    if a.shape != b.shape:
        raise ValueError(f"expected maps of one shape, got {a.numel()} and {b.numel()} values")
    a, b = a - a.mean(), b - b.mean()
    denominator = a.norm() * b.norm()
    return float(a @ b / denominator) if denominator > 0 else float("nan")


def gradcam_libs(options: Options) -> list[Row]:
    """Grad-CAM of one torchvision ResNet-18 at 224² with random weights (seeded), one seeded random input, layer
    `layer4`, the class the network predicts for it, by cnnviz (`gradcam.compute`), pytorch-grad-cam (`GradCAM`
    with `ClassifierOutputTarget`) and TorchCAM (`GradCAM` with `class_idx`).

    Each library scales and resizes differently, so maps are compared where they are the same kind of thing:
    pytorch-grad-cam only returns maps at 224² (min-max scaled at 7×7, resized by OpenCV), compared with cnnviz's
    `heatmap` (resized by torch's bilinear interpolation, divided by its maximum); TorchCAM returns its 7×7 map
    (min-max scaled), compared with cnnviz's `raw` 7×7 map, with no resizing on either side. Pearson's r ignores
    scale and shift. Time per map: the median of N calls after 3 untimed ones, one library after the other (a
    library's hooks stay on the model while its extractor lives, and would run in the others' passes); each call
    is a full forward + backward + map, read back to the CPU. pytorch-grad-cam's and TorchCAM's extractors are built
    once, outside the clock; cnnviz's call registers and removes its own hook each time.
    """
    missing = [pkg for pkg, module in (("grad-cam", "pytorch_grad_cam"), ("torchcam", "torchcam"))
               if not _importable(module)]
    if missing:
        raise Skip(f"{' and '.join(missing)} not installed: pip install -e '.[bench]' (benchmark-only extras)")
    import torch
    import torchvision
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    from torchcam.methods import GradCAM as TorchCAMGradCAM

    from cnnviz import gradcam

    device = torch.device(options.device)
    runs = 5 if options.quick else 20
    torch.manual_seed(SEED)
    model = torchvision.models.resnet18(weights=None).eval().to(device)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(SEED)).to(device)
    with torch.no_grad():
        target = int(model(x).argmax())

    def ours():
        result = gradcam.compute(model, x, layer=LAYER, target=target)
        return result.heatmap.cpu(), result.raw.cpu()

    heatmap, raw = ours()
    (t_ours,), _ = median_times([ours], runs)
    # One library's hooks at a time: a hook left on layer4 would run in the others' passes too.
    with GradCAM(model=model, target_layers=[model.layer4]) as pgc:
        pgc_targets = [ClassifierOutputTarget(target)]

        def theirs_pgc():
            return torch.from_numpy(pgc(input_tensor=x, targets=pgc_targets)[0])  # (224, 224), from numpy float32

        pgc_map = theirs_pgc()
        (t_pgc,), _ = median_times([theirs_pgc], runs)
    with TorchCAMGradCAM(model, target_layer=LAYER) as extractor:

        def theirs_torchcam():
            return extractor(class_idx=target, scores=model(x))[0][0].cpu()  # (7, 7)

        torchcam_map = theirs_torchcam()
        (t_tc,), _ = median_times([theirs_torchcam], runs)
    versions = f"grad-cam {metadata.version('grad-cam')}, torchcam {metadata.version('torchcam')}"
    where = "CPU" if device.type == "cpu" else torch.cuda.get_device_name(device)
    return [
        Row("Pearson r, cnnviz vs pytorch-grad-cam (maps at 224²)", pearson(heatmap, pgc_map), "r",
            at_least(0.99), note=f"resnet18 {LAYER}, class {target}; {versions}"),
        Row(f"Pearson r, cnnviz vs TorchCAM ({'×'.join(map(str, raw.shape))} maps, before resizing)",
            pearson(raw, torchcam_map), "r", at_least(0.99)),
        Row("cnnviz gradcam.compute, per map", 1000 * t_ours, "ms",
            note=f"median of {runs}, {where}, {torch.get_num_threads()} torch threads"),
        Row("pytorch-grad-cam GradCAM, per map", 1000 * t_pgc, "ms"),
        Row("TorchCAM GradCAM (forward + map), per map", 1000 * t_tc, "ms"),
        Row("speed: pytorch-grad-cam ÷ cnnviz time per map", t_pgc / t_ours, "×", at_least(2)),
        Row("speed: TorchCAM ÷ cnnviz time per map", t_tc / t_ours, "×"),
    ]


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None
