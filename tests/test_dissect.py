import json
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnviz import data, dissect, dissect_figures, figures, models, parts, probe
from cnnviz.dissect import NONE


@pytest.fixture(scope="module")
def scenes() -> parts.Scenes:
    return parts.generate(40, seed=11)


def _encoded(scenes: parts.Scenes, masks: list[torch.Tensor]) -> parts.Scenes:
    """The same concept maps, with images whose channel k is 255 where ``masks[k]`` holds and 0 elsewhere: a unit
    that reads channel k is on exactly there."""
    images = torch.zeros_like(scenes.images)
    for k, mask in enumerate(masks):
        images[:, k] = mask.to(torch.uint8) * 255
    return parts.Scenes(images, scenes.labels, scenes.concepts)


def _reader(channels: int, constant: bool = False) -> nn.Sequential:
    """A 1×1 conv whose unit k copies (normalised) input channel k; with ``constant``, one more unit that is 0.7
    everywhere."""
    conv = nn.Conv2d(3, channels + constant, 1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
        for k in range(channels):
            conv.weight[k, k] = 1.0
        if constant:
            conv.bias[channels] = 0.7
    return nn.Sequential(OrderedDict(conv1=conv, relu1=nn.ReLU()))


def test_upsampler_is_bilinear_interpolation():
    maps = torch.randn(2, 3, 8, 5)
    up = dissect.upsampler(8, 64) @ maps @ dissect.upsampler(5, 64).T
    expected = F.interpolate(maps, size=(64, 64), mode="bilinear", align_corners=False)
    assert torch.allclose(up, expected, atol=1e-6)
    assert torch.equal(dissect.upsampler(64, 64), torch.eye(64))


def test_units_that_are_concept_masks_detect_them_with_iou_one(scenes):
    chosen = [parts.concept("red"), parts.concept("wheel"), parts.concept("face")]
    encoded = _encoded(scenes, [scenes.mask(c) for c in chosen])
    assert all(scenes.mask(c).any() for c in chosen)
    result = dissect.dissect(_reader(3, constant=True), images=encoded)
    units = result.layer("conv1").units
    for unit, c in zip(units, chosen):
        assert (unit.concept, unit.category, unit.detector) == (c.name, c.category, True)
        assert unit.iou == pytest.approx(1.0)
    constant = units[3]
    assert (constant.concept, constant.category, constant.iou, constant.detector) == (None, NONE, 0.0, False)
    assert not constant.regions.any()
    assert result.layer("conv1").detectors == {"colour": 1, "texture": 0, "part": 1, "object": 1}


def test_iou_is_summed_over_images_as_computed_by_hand():
    # Two 4×4 images. The unit is on at 3 pixels of image 0 and 2 of image 1; the wheel covers 4 pixels of image 0,
    # 2 of them under the unit, and none of image 1: IoU = 2 / (5 + 4 - 2) = 2/7.
    concepts = torch.zeros(2, 4, 4, 4, dtype=torch.uint8)
    concepts[0, 2, :2, :2] = parts.concept("wheel").value
    on = torch.zeros(2, 4, 4, dtype=torch.bool)
    on[0, 0, 0] = on[0, 1, 1] = on[0, 3, 3] = True
    on[1, 2, 2] = on[1, 2, 3] = True
    encoded = _encoded(parts.Scenes(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.zeros(2, dtype=torch.long),
                                 concepts), [on])
    unit = dissect.dissect(_reader(1), images=encoded).layer("conv1").units[0]
    assert (unit.concept, unit.detector) == ("wheel", True)
    assert unit.iou == pytest.approx(2 / 7)
    assert unit.top_images == [0, 1] and torch.equal(unit.regions, on)


def test_a_batchnorm_after_the_conv_is_part_of_the_unit(scenes):
    wheel = parts.concept("wheel")
    encoded = _encoded(scenes, [scenes.mask(wheel)])
    model = _reader(1)
    model.add_module("bn1", nn.BatchNorm2d(1))  # registered after relu1: not the conv's own batchnorm
    assert dissect.dissect(model, images=encoded).layer("conv1").units[0].concept == "wheel"

    flipped = nn.Sequential(OrderedDict(conv1=model.conv1, bn1=nn.BatchNorm2d(1), relu1=nn.ReLU()))
    with torch.no_grad():
        flipped.bn1.weight.fill_(-1.0)  # high where the wheel is not
    result = dissect.dissect(flipped.eval(), images=encoded).layer("conv1")
    assert result.iou[0, parts.CONCEPTS.index(wheel)] == 0
    with torch.no_grad():
        flipped.bn1.weight.fill_(2.0)
        flipped.bn1.bias.fill_(-3.0)
    assert dissect.dissect(flipped, images=encoded).layer("conv1").units[0].iou == pytest.approx(1.0)


def _normalised(scenes: parts.Scenes) -> torch.Tensor:
    return data.normalize(scenes.images, data.info("parts"))


def _naive_iou(model: nn.Module, name: str, scenes: parts.Scenes, quantile: float, units: int) -> torch.Tensor:
    """The same measure for the first ``units`` units, written the plain way: every map upsampled by
    F.interpolate, every concept's masks."""
    unit_module = dissect._unit_module(model, name)
    kept = []
    handle = unit_module.register_forward_hook(lambda m, i, o: kept.append(o))
    with torch.no_grad():
        model.eval()(_normalised(scenes))
    handle.remove()
    a = kept[0][:, :units]  # (N, U, h, w)
    values = a.transpose(0, 1).flatten(1)
    k = max(1, round(quantile * values.shape[1]))
    threshold = values.sort(1, descending=True).values[:, k - 1]
    low = values.amin(1)
    up = F.interpolate(a, size=(64, 64), mode="bilinear", align_corners=False)
    on = (up >= threshold[:, None, None]) & (up > low[:, None, None])  # (N, U, 64, 64)
    iou = torch.zeros(a.shape[1], len(parts.CONCEPTS))
    for j, c in enumerate(parts.CONCEPTS):
        mask = scenes.mask(c)[:, None]
        iou[:, j] = (on & mask).sum((0, 2, 3)) / (on | mask).sum((0, 2, 3)).clamp(min=1)
    return iou


def test_dissection_agrees_with_a_plain_implementation(scenes):
    model = models.build(parts.model_spec(), seed=3).eval()
    result = dissect.dissect(model, images=scenes, quantile=0.01)
    assert result.names == ["conv1", "conv2", "conv3", "conv4"]
    for name in result.names:
        naive = _naive_iou(model, name, scenes, 0.01, units=3)
        assert naive.max() > 0.01
        # Upsampling by matrices and by F.interpolate round differently in the last bit: a pixel may flip.
        assert torch.allclose(result.layer(name).iou[:3], naive, atol=2e-3), name


def test_top_images_are_where_the_unit_peaks_and_regions_are_its_area(scenes):
    model = models.build(parts.model_spec(), seed=4).eval()
    result = dissect.dissect(model, images=scenes)
    kept = []
    handle = model.bn3.register_forward_hook(lambda m, i, o: kept.append(o))
    with torch.no_grad():
        model(_normalised(scenes))
    handle.remove()
    peaks = kept[0].amax((2, 3))  # (N, U)
    for unit in result.layer("conv3").units[:5]:
        assert unit.top_images == peaks[:, unit.unit].topk(dissect.TOP_IMAGES).indices.tolist()
        assert unit.regions.shape == (dissect.TOP_IMAGES, 64, 64) and unit.regions[0].any()


def test_json_shape_and_plain_values(scenes):
    model = models.build(parts.model_spec(), seed=0)
    out = json.loads(json.dumps(dissect.dissect(model, images=scenes).to_json()))
    assert set(out) == {"layers", "images", "seconds"} and out["images"] == len(scenes)
    assert [layer["name"] for layer in out["layers"]] == ["conv1", "conv2", "conv3", "conv4"]
    assert [layer["units"] for layer in out["layers"]] == [b.channels for b in parts.model_spec().blocks]
    for layer in out["layers"]:
        assert set(layer) == {"name", "units", "detectors", "unit_concepts"}
        assert list(layer["detectors"]) == ["colour", "texture", "part", "object"]
        assert len(layer["unit_concepts"]) == layer["units"]
        first = layer["unit_concepts"][0]
        assert set(first) == {"unit", "concept", "category", "iou", "detector", "top_images"}
        assert sum(layer["detectors"].values()) == sum(u["detector"] for u in layer["unit_concepts"])


def test_model_left_as_it_was_and_progress_reported(scenes):
    model = models.build(parts.model_spec(), seed=0).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen = []
    dissect.dissect(model, images=scenes, progress=seen.append)
    assert model.training and all(m.training for m in model.modules())
    assert all(not m._forward_hooks for m in model.modules())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert seen == sorted(seen) and seen[-1] == 1.0 and len(seen) == 2  # 40 images: one batch, two passes


def test_layers_by_dotted_name_in_branching_networks(scenes):
    class Branches(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.right = nn.Sequential(OrderedDict(conv=nn.Conv2d(3, 4, 3, padding=1), bn=nn.BatchNorm2d(4)))
            self.left = nn.Sequential(OrderedDict(conv=nn.Conv2d(3, 2, 5, stride=2, padding=2)))

        def forward(self, x):
            return torch.cat([self.left.conv(x).mean((2, 3)), self.right(x).mean((2, 3))], 1)

    model = Branches()
    assert dissect.conv_layers(model) == ["right.conv", "left.conv"]
    result = dissect.dissect(model, images=scenes)
    assert result.names == ["left.conv", "right.conv"]  # in the order the forward pass reaches them
    assert [len(layer.units) for layer in result.layers] == [2, 4]
    with pytest.raises(ValueError, match="not a conv layer"):
        dissect.dissect(model, layers=["right.bn"], images=scenes)
    with pytest.raises(probe.UnknownLayerError):
        dissect.dissect(model, layers=["middle.conv"], images=scenes)


def test_bad_arguments_refused(scenes):
    model = _reader(1)
    with pytest.raises(ValueError, match="quantile"):
        dissect.dissect(model, images=scenes, quantile=0)
    with pytest.raises(ValueError, match="IoU threshold"):
        dissect.dissect(model, images=scenes, iou_threshold=1.5)
    with pytest.raises(ValueError, match="no conv layers"):
        dissect.dissect(nn.Sequential(nn.Flatten()), images=scenes)


def test_untrained_copy_has_fresh_weights_and_leaves_the_model_alone():
    model = models.build(parts.model_spec(), seed=0)
    with torch.no_grad():
        model.conv1.weight.add_(1.0)  # "trained"
    before = model.conv1.weight.clone()
    fresh, again = dissect.untrained(model, seed=5), dissect.untrained(model, seed=5)
    assert torch.equal(model.conv1.weight, before)
    assert torch.equal(fresh.conv1.weight, again.conv1.weight)
    assert not torch.equal(fresh.conv1.weight, model.conv1.weight)
    assert fresh.conv1.weight.abs().max() < 1.0  # PyTorch's initial scale, not the +1 shift
    assert [n for n, _ in fresh.named_modules()] == [n for n, _ in model.named_modules()]


def test_units_in_a_category_and_figures(scenes):
    chosen = [parts.concept("red"), parts.concept("wheel")]
    result = dissect.dissect(_reader(2, constant=True), images=_encoded(scenes, [scenes.mask(c) for c in chosen]))
    layer = result.layer("conv1")
    assert [u.unit for u in layer.units_in("part")] == [1]
    assert [u.unit for u in layer.units_in(NONE)] == [2]
    assert layer.counts(rule=False) == {"colour": 1, "texture": 0, "part": 1, "object": 0, "none": 1}

    bars = dissect_figures.layer_bars(result)
    assert [t.name for t in bars.data] == ["colour", "texture", "part", "object", "none"]
    assert sum(t.y[0] for t in bars.data) == pytest.approx(100)
    assert list(bars.data[2].customdata[0]) == ["conv1", "part"]
    fig = dissect_figures.unit_images(result, "conv1", 1, count=3)
    assert "wheel (part), IoU 1.000: a detector" in fig._suptitle.get_text()
    assert figures.to_png(fig, dpi=40).startswith(b"\x89PNG")
    with pytest.raises(ValueError, match="unit of conv1"):
        dissect_figures.unit_images(result, "conv1", 3)


def test_cli_dissect_prints_the_issues_json_for_a_parts_checkpoint_and_refuses_others(tmp_path, capsys):
    from cnnviz import checkpoint, cli

    info = data.info("parts")
    spec = models.preset("parts", info.channels, info.size, info.num_classes)
    path = checkpoint.save(checkpoint.Checkpoint(models.build(spec, seed=0).eval(), spec, info), tmp_path / "p.pt")
    assert cli.main(["dissect", "--checkpoint", str(path), "--images", "40", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [layer["name"] for layer in out["layers"]] == ["conv1", "conv2", "conv3", "conv4"]
    assert [layer["units"] for layer in out["layers"]] == [8, 16, 32, 64]
    assert out["images"] == 40 and out["seconds"] >= 0
    for layer in out["layers"]:
        assert set(layer["detectors"]) == {"colour", "texture", "part", "object"}
        assert len(layer["unit_concepts"]) == layer["units"]
    assert cli.main(["dissect", "--checkpoint", str(path), "--images", "40", "--untrained"]) == 0
    assert "untrained control" in capsys.readouterr().out
    shapes = data.info("shapes")
    other = models.preset("tiny", shapes.channels, shapes.size, shapes.num_classes)
    path2 = checkpoint.save(checkpoint.Checkpoint(models.build(other, seed=0).eval(), other, shapes), tmp_path / "s.pt")
    assert cli.main(["dissect", "--checkpoint", str(path2), "--json"]) == 1
    assert "needs one trained on parts" in capsys.readouterr().err
