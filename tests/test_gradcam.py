"""Tests for cnnviz.gradcam: analytic known answers, a model left as found, and a sanity check on a trained CNN."""

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from cnnviz import gradcam

# Classifier weights (2 classes × 3 channels) of the analytic model below.
W = torch.tensor([[1.0, -2.0, 0.5], [-1.0, 0.5, 2.0]])
B = torch.tensor([0.1, -0.3])


def _analytic_model() -> nn.Sequential:
    """conv (1×1, stride 2, fixed) → global average pool → linear: y^c = sum_k W[c, k] mean(A^k) + B[c]."""
    model = nn.Sequential()
    model.add_module("conv", nn.Conv2d(2, 3, kernel_size=1, stride=2))
    model.add_module("gap", nn.AdaptiveAvgPool2d(1))
    model.add_module("flatten", nn.Flatten())
    model.add_module("fc", nn.Linear(3, 2))
    with torch.no_grad():
        # A^0 = x0, A^1 = x1, A^2 = x0 - x1 + 0.5, sampled at every second row and column.
        model.conv.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]]).reshape(3, 2, 1, 1))
        model.conv.bias.copy_(torch.tensor([0.0, 0.0, 0.5]))
        model.fc.weight.copy_(W)
        model.fc.bias.copy_(B)
    return model


def _analytic_input() -> tuple[torch.Tensor, torch.Tensor]:
    """An input (1, 2, 6, 8) and by hand its conv maps A (3, 3, 4)."""
    torch.manual_seed(0)
    x = torch.randn(1, 2, 6, 8)
    x0, x1 = x[0, 0, ::2, ::2], x[0, 1, ::2, ::2]
    return x, torch.stack([x0, x1, x0 - x1 + 0.5])


def test_gradcam_equals_the_analytic_answer():
    model = _analytic_model()
    x, a = _analytic_input()
    hw = 3 * 4
    logits = W @ a.mean(dim=(1, 2)) + B
    for c in range(2):
        result = gradcam.compute(model, x, layer="conv", target=c)
        # dy^c/dA^k_ij = W[c, k] / (h w) everywhere, so alpha_k = W[c, k] / (h w).
        expected = (W[c][:, None, None] * a).sum(dim=0).clamp(min=0) / hw
        torch.testing.assert_close(result.raw, expected)
        assert result.target == c and result.layer == "conv" and result.method == "gradcam"
        assert result.score == pytest.approx(float(logits[c]), abs=1e-5)
        upsampled = F.interpolate(expected[None, None], size=(6, 8), mode="bilinear", align_corners=False)[0, 0]
        torch.testing.assert_close(result.heatmap, upsampled / upsampled.max())
        assert result.heatmap.shape == (6, 8)
        assert result.heatmap.min() >= 0 and result.heatmap.max() == 1


def test_gradcam_plusplus_equals_the_analytic_answer():
    model = _analytic_model()
    x, a = _analytic_input()
    hw = 3 * 4
    c = 1
    # Constant gradient g_k per channel: alpha_k = g^2 / (2 g^2 + sum(A^k) g^3), weight_k = hw * alpha_k * ReLU(g_k).
    weights = []
    for k in range(3):
        g = float(W[c, k]) / hw
        alpha = g**2 / (2 * g**2 + float(a[k].sum()) * g**3 + 1e-6)
        weights.append(hw * alpha * max(g, 0.0))
    expected = (torch.tensor(weights)[:, None, None] * a).sum(dim=0).clamp(min=0)
    result = gradcam.compute(model, x, layer="conv", target=c, method="gradcam++")
    torch.testing.assert_close(result.raw, expected)
    assert result.heatmap.shape == (6, 8) and result.heatmap.max() == 1 and result.heatmap.min() >= 0


def test_default_target_is_the_predicted_class_and_callable_targets_work():
    model = _analytic_model()
    x, a = _analytic_input()
    logits = model(x).detach()[0]
    assert gradcam.compute(model, x, layer="conv").target == int(logits.argmax())

    result = gradcam.compute(model, x, layer="conv", target=lambda out: out[0, 0] - out[0, 1])
    expected = ((W[0] - W[1])[:, None, None] * a).sum(dim=0).clamp(min=0) / 12
    torch.testing.assert_close(result.raw, expected)
    assert result.target is None
    assert result.score == pytest.approx(float(logits[0] - logits[1]), abs=1e-5)


def test_nothing_for_the_class_gives_zeros_not_nan():
    model = nn.Sequential(nn.Conv2d(1, 1, 1, bias=False), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1, 2))
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[3].weight.copy_(torch.tensor([[1.0], [-1.0]]))
    result = gradcam.compute(model, torch.rand(1, 1, 4, 4) + 0.1, layer="0", target=1)
    assert torch.equal(result.heatmap, torch.zeros(4, 4))
    assert torch.equal(result.raw, torch.zeros(4, 4))


def _small_cnn(inplace: bool = False) -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("conv1", nn.Conv2d(3, 4, 3, padding=1))
    model.add_module("bn1", nn.BatchNorm2d(4))
    model.add_module("relu1", nn.ReLU(inplace=inplace))
    model.add_module("pool1", nn.MaxPool2d(2))
    model.add_module("conv2", nn.Conv2d(4, 6, 3, padding=1))
    model.add_module("relu2", nn.ReLU(inplace=inplace))
    model.add_module("drop", nn.Dropout(0.5))
    model.add_module("flatten", nn.Flatten())
    model.add_module("fc", nn.Linear(6 * 4 * 4, 5))
    return model


def test_saliency_is_the_input_gradient_magnitude():
    model = _small_cnn().eval()
    torch.manual_seed(1)
    x = torch.randn(1, 3, 8, 8)
    leaf = x.clone().requires_grad_(True)
    model(leaf)[0, 3].backward()
    expected = leaf.grad.abs().amax(dim=1)[0]  # (8, 8)
    model.zero_grad(set_to_none=True)

    result = gradcam.compute(model, x, layer="conv2", target=3, method="saliency")
    assert result.layer == "input" and result.method == "saliency"
    torch.testing.assert_close(result.raw, expected)
    torch.testing.assert_close(result.heatmap, expected / expected.max())


def test_inplace_activation_after_the_layer_does_not_change_the_map():
    x = torch.randn(1, 3, 8, 8)
    for layer in ("conv1", "bn1", "conv2"):
        for method in ("gradcam", "gradcam++"):
            plain = gradcam.compute(_small_cnn(inplace=False), x, layer=layer, target=2, method=method)
            inplace = gradcam.compute(_small_cnn(inplace=True), x, layer=layer, target=2, method=method)
            torch.testing.assert_close(inplace.raw, plain.raw)


class _Boom(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom")


def _state(model: nn.Module) -> dict:
    return {
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grad": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "buffers": [b.clone() for b in model.buffers()],
    }


def _assert_untouched(model: nn.Module, before: dict, x: torch.Tensor, x_before: torch.Tensor) -> None:
    after = _state(model)
    assert after["training"] == before["training"]
    assert after["requires_grad"] == before["requires_grad"]
    for old, new in zip(before["grad"], after["grad"]):
        assert (old is None and new is None) or torch.equal(old, new)
    for old, new in zip(before["buffers"], after["buffers"]):  # eval mode: BatchNorm statistics unchanged
        assert torch.equal(old, new)
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks and not module._backward_hooks
    assert torch.equal(x, x_before) and not x.requires_grad and x.grad is None


@pytest.mark.parametrize("method", sorted(gradcam.METHODS))
def test_model_and_input_are_left_untouched(method):
    model = _small_cnn().train()
    model.bn1.eval()  # mixed flags come back exactly
    model.conv1.weight.requires_grad_(False)
    model.fc.weight.grad = torch.full_like(model.fc.weight, 7.0)
    x = torch.randn(1, 3, 8, 8)
    before, x_before = _state(model), x.clone()
    gradcam.compute(model, x, layer="relu1", method=method)
    _assert_untouched(model, before, x, x_before)


def test_model_and_input_are_left_untouched_when_forward_raises():
    model = _small_cnn().train()
    model.add_module("boom", _Boom())
    model.fc.weight.grad = torch.ones_like(model.fc.weight)
    x = torch.randn(1, 3, 8, 8)
    before, x_before = _state(model), x.clone()
    for method in gradcam.METHODS:
        with pytest.raises(RuntimeError, match="boom"):
            gradcam.compute(model, x, layer="conv2", target=0, method=method)
        _assert_untouched(model, before, x, x_before)


def test_input_that_requires_grad_keeps_its_flag_and_gets_no_grad():
    x = torch.randn(1, 3, 8, 8, requires_grad=True)
    gradcam.compute(_small_cnn(), x, method="saliency")
    assert x.requires_grad and x.grad is None


def test_bad_layers_targets_methods_and_inputs_raise_clear_errors():
    model = _small_cnn()
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(KeyError, match="conv1, bn1, relu1, pool1, conv2, relu2") as error:
        gradcam.compute(model, x, layer="conv3")
    assert "fc" not in str(error.value)
    with pytest.raises(ValueError, match=r"outputs \(1, 5\)"):
        gradcam.compute(model, x, layer="fc")
    with pytest.raises(ValueError, match="called 1 time"):
        gradcam.compute(model, x, layer="relu1#2")
    with pytest.raises(ValueError, match="class index"):
        gradcam.compute(model, x, target=5)
    with pytest.raises(ValueError, match="method"):
        gradcam.compute(model, x, method="gradcam+++")
    with pytest.raises(ValueError, match=r"\(1, C, H, W\)"):
        gradcam.compute(model, torch.randn(2, 3, 8, 8))


def test_default_layer():
    assert gradcam.default_layer(_small_cnn()) == "relu2"  # after the last conv's activation
    with torch.device("meta"):  # structure only: skips initialising 130M weights
        vgg = torchvision.models.vgg11(weights=None)
    assert gradcam.default_layer(vgg) == "features.19"
    with pytest.raises(ValueError, match="no Conv2d"):
        gradcam.default_layer(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))


def test_resnet18_default_layer_and_a_second_call_of_a_shared_relu():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None)
    x = torch.randn(1, 3, 64, 64)
    result = gradcam.compute(model, x)
    assert result.layer == gradcam.default_layer(model) == "layer4.1.conv2"
    assert result.raw.shape == (2, 2) and result.heatmap.shape == (64, 64)
    assert 0 <= result.target < 1000 and result.heatmap.max() == 1
    block_output = gradcam.compute(model, x, layer="layer4.1.relu#2", target=result.target)
    assert block_output.raw.shape == (2, 2) and block_output.score == pytest.approx(result.score, rel=1e-5)


def _objects(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Noise (n, 1, 16, 16) with a 4×4 square (bright: class 1, dark: class 0) inside one quadrant and a bright
    2×6 bar, the distractor, in another. Returns images, classes and the square's quadrant (row-major 0..3)."""
    x = torch.randn(n, 1, 16, 16, generator=generator) * 0.5
    y = torch.randint(0, 2, (n,), generator=generator)
    quadrant = torch.randint(0, 4, (n,), generator=generator)
    other = (quadrant + torch.randint(1, 4, (n,), generator=generator)) % 4
    rows = torch.randint(0, 5, (n,), generator=generator) + quadrant // 2 * 8
    cols = torch.randint(0, 5, (n,), generator=generator) + quadrant % 2 * 8
    bar_rows = torch.randint(0, 7, (n,), generator=generator) + other // 2 * 8
    bar_cols = torch.randint(0, 3, (n,), generator=generator) + other % 2 * 8
    for i in range(n):
        x[i, 0, rows[i] : rows[i] + 4, cols[i] : cols[i] + 4] += 2.0 if y[i] else -2.0
        x[i, 0, bar_rows[i] : bar_rows[i] + 2, bar_cols[i] : bar_cols[i] + 6] += 2.0
    return x, y, quadrant


def _object_cnn(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    model = nn.Sequential()
    model.add_module("conv1", nn.Conv2d(1, 8, 3, padding=1))
    model.add_module("relu1", nn.ReLU())
    model.add_module("pool1", nn.MaxPool2d(2))
    model.add_module("conv2", nn.Conv2d(8, 16, 3, padding=1))
    model.add_module("relu2", nn.ReLU())
    model.add_module("gap", nn.AdaptiveAvgPool2d(1))
    model.add_module("flatten", nn.Flatten())
    model.add_module("fc", nn.Linear(16, 2))
    return model


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation, ties given their average rank; 0 when a map is constant."""

    def ranks(t: torch.Tensor) -> torch.Tensor:
        t = t.flatten()
        below = (t[:, None] > t[None, :]).sum(dim=1)
        ties = (t[:, None] == t[None, :]).sum(dim=1)
        return below + (ties - 1) / 2

    return float(torch.corrcoef(torch.stack([ranks(a), ranks(b)]))[0, 1].nan_to_num(0.0))


@pytest.mark.slow
def test_trained_model_maps_find_the_object_and_differ_from_a_random_models():
    """The model-randomisation sanity check of Adebayo et al. 2018 ("Sanity Checks for Saliency Maps")."""
    generator = torch.Generator().manual_seed(0)
    trained = _object_cnn(seed=0)
    optimiser = torch.optim.Adam(trained.parameters(), lr=1e-2)
    for _ in range(100):
        x, y, _ = _objects(64, generator)
        loss = F.cross_entropy(trained(x), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    x, y, _ = _objects(500, generator)
    with torch.no_grad():
        assert (trained(x).argmax(dim=1) == y).float().mean() > 0.9

    randomised = _object_cnn(seed=100)  # same architecture, weights never trained
    x, y, quadrant = _objects(20, generator)
    found, correlations = 0, []
    for i in range(20):
        ours = gradcam.compute(trained, x[i : i + 1], target=int(y[i])).heatmap  # (16, 16)
        theirs = gradcam.compute(randomised, x[i : i + 1], target=int(y[i])).heatmap
        row, col = divmod(int(ours.argmax()), 16)
        found += (row >= 8) * 2 + (col >= 8) == int(quadrant[i])
        correlations.append(_spearman(ours, theirs))  # the measure Adebayo et al. use
    assert found >= 16
    assert sum(correlations) / len(correlations) < 0.5


def test_pointing_game_scores_peaks_against_masks_by_hand():
    from cnnviz.gradcam import hits

    masks = torch.zeros(3, 4, 4, dtype=torch.bool)
    masks[:, 1, 1] = True  # one object pixel at (1, 1) in every image
    peak = torch.tensor([1 * 4 + 1, 1 * 4 + 2, 3 * 4 + 3])  # on it, next to it, far away
    assert (hits(peak, masks).hits, hits(peak, masks).total) == (1, 3)
    assert hits(peak, masks, tolerance=1).hits == 2 and hits(peak, masks, tolerance=1).rate == pytest.approx(2 / 3)


def test_shipped_model_points_at_the_object():
    """The pointing game (Zhang et al. 2016) on shapes: the shipped model's Grad-CAM peak lies inside the object's
    mask for at least 90 % of test images (``make bench`` scores 500); the same architecture untrained does not."""
    import cnnviz
    from cnnviz import data, models
    from cnnviz.ui.state import SHIPPED_MODEL

    shipped = cnnviz.load_checkpoint(SHIPPED_MODEL)
    split = data.load("shapes", train=False).subset(200, seed=3)
    x = data.normalize(split.x, split.info)
    assert gradcam.pointing_game(shipped.model, x, split.masks).rate >= 0.9
    untrained = models.build(shipped.spec, seed=0).eval()
    assert gradcam.pointing_game(untrained, x, split.masks).rate < 0.5


def test_hirescam_equals_gradcam_exactly_where_the_head_is_a_global_average_pool():
    """Draelos & Carin 2020: with a global average pool right after the layer, dy/dA is the same at every cell, so
    HiResCAM's map is Grad-CAM's. Measured on a real shapes image: the shipped "gap" model and the "tiny" preset."""
    import cnnviz
    from cnnviz import data, models
    from cnnviz.ui.state import SHIPPED_MODEL

    shipped = cnnviz.load_checkpoint(SHIPPED_MODEL).model
    split = data.load("shapes", train=False).subset(4, seed=1)
    x = data.normalize(split.x[:1], split.info)

    def difference(model: nn.Module, layer: str) -> float:
        grad, hires = (gradcam.compute(model, x, layer=layer, target=0, method=m).raw for m in ("gradcam", "hirescam"))
        return float((grad - hires).abs().max() / grad.abs().max().clamp(min=1e-12))

    # relu4 → drop4 → gap: the same map up to rounding; gap's own 1×1 maps trivially so.
    assert gradcam.global_average_pooled(shipped, "relu4") is True and difference(shipped, "relu4") < 1e-5
    assert gradcam.global_average_pooled(shipped, "drop4") is True and gradcam.global_average_pooled(shipped, "gap")
    # conv4 → bn4 → relu4 → …: the ReLU gives each cell its own gradient.
    assert gradcam.global_average_pooled(shipped, "conv4") is False and difference(shipped, "conv4") > 0.01
    assert gradcam.global_average_pooled(shipped, "relu3") is False and difference(shipped, "relu3") > 0.01
    tiny = models.build(models.preset("tiny", 3, 32, 8), seed=0).eval()  # relu2 → pool2 → flatten → fc1
    assert gradcam.global_average_pooled(tiny, "relu2") is False and difference(tiny, "relu2") > 0.01


def test_global_average_pooled_says_none_where_the_structure_does_not_tell():
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(weights=None)  # not a chain: forward() is code
    assert gradcam.global_average_pooled(resnet, "layer4.1.conv2") is None
    avg = nn.Sequential(nn.Conv2d(1, 2, 3), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(2, 2))  # global only for 2×2
    assert gradcam.global_average_pooled(avg, "0") is None
    with pytest.raises(KeyError, match="valid layer names: 0, 1, 2, 3"):
        gradcam.global_average_pooled(avg, "conv9")


def test_centre_baseline_scores_the_centre_pixel_by_hand():
    masks = torch.zeros(3, 5, 4, dtype=torch.bool)  # centre pixel (5 // 2, 4 // 2) = (2, 2)
    masks[0, 2, 2] = True  # on the centre
    masks[1, 2, 3] = True  # one pixel to its right
    masks[2, 0, 0] = True  # in a corner
    assert gradcam.centre_hits(masks).hits == 1 and gradcam.centre_hits(masks).total == 3
    assert gradcam.centre_hits(masks, tolerance=1).hits == 2
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        gradcam.centre_hits(torch.zeros(5, 4, dtype=torch.bool))


@pytest.mark.parametrize(("preset", "expected"), [("mini-resnet", ".relu"), ("mini-inception", ".concat"),
                                                  ("resnet-20", ".relu")])
def test_default_layer_of_a_graph_model_is_its_last_blocks_output(preset, expected):
    from cnnviz import models

    spec = models.preset(preset, 3, 32, 8)
    model = models.build(spec, seed=0).eval()
    layer = gradcam.default_layer(model)
    blocks = [name for name, m in model.named_children() if isinstance(m, (models.Residual, models.Inception))]
    assert layer == blocks[-1] + expected
    result = gradcam.compute(model, torch.rand(1, 3, 32, 32), layer=layer)
    assert result.heatmap.shape[-2:] == (32, 32) and torch.isfinite(result.heatmap).all()
