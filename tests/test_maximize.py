"""Tests for cnnviz.maximize on the briefly trained shapes model: real maxima, real patches, real ascent."""

import math

import pytest
import torch
import torchvision
from torch import nn

from cnnviz import data, maximize, probe
from cnnviz.receptive import receptive_fields, window

STEPS = 64  # half the default: enough to leave the data far behind, and quick on a busy CPU


def _channel_means(model: nn.Module, x: torch.Tensor, layer: str) -> torch.Tensor:
    """(N, C): each image's mean activation per channel of a map layer, or its entries of a vector layer."""
    out = probe.run(model, x)[layer].output
    return out.flatten(2).mean(dim=2) if out.ndim == 4 else out


def _model_state(model: nn.Module) -> dict:
    return {
        "weights": {k: v.clone() for k, v in model.state_dict().items()},
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        # Training may have left gradients behind; they must come back exactly as they were.
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
    }


def _assert_untouched(model: nn.Module, before: dict) -> None:
    after = _model_state(model)
    assert after["training"] == before["training"] and after["requires_grad"] == before["requires_grad"]
    assert all(torch.equal(v, after["weights"][k]) for k, v in before["weights"].items())
    assert all((a is None) == (b is None) and (a is None or torch.equal(a, b))
               for a, b in zip(before["grads"], after["grads"]))
    assert not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in model.modules())


def test_top_patches_hold_each_channels_true_maxima(trained_shapes):
    model, _, _, test = trained_shapes
    limit = 300
    patches = maximize.top_patches(model, test, "relu2", k=5, batch_size=128, limit=limit)
    maps = probe.run(model, data.normalize(test.x[:limit], test.info))["relu2"].output  # (300, 32, 16, 16)
    rf = {f.name: f for f in receptive_fields(model, 32)}["relu2"]
    assert sorted(patches) == list(range(32))
    for channel, found in patches.items():
        values = [p.value for p in found]
        assert len(found) == 5 and values == sorted(values, reverse=True)
        # The 5 best images by their largest value, and nothing better left out.
        best = maps[:, channel].flatten(1).amax(dim=1)
        torch.testing.assert_close(torch.tensor(values), best.topk(5).values)
        for patch in found:
            assert patch.value == pytest.approx(float(maps[patch.image_index, channel, patch.row, patch.col]))
            assert patch.value == pytest.approx(float(best[patch.image_index]))
            top, left, bottom, right = patch.box
            assert patch.box == window(rf, patch.row, patch.col, 32)
            assert patch.pixels.dtype == torch.uint8 and patch.pixels.shape == (3, bottom - top, right - left)
            assert torch.equal(patch.pixels, test.x[patch.image_index, :, top:bottom, left:right])
            # relu2 sees 8×8 pixels; a patch is smaller only where the image's edge cuts it off.
            assert bottom - top == 8 or (top == 0 or bottom == 32) and bottom - top < 8
            assert right - left == 8 or (left == 0 or right == 32) and right - left < 8


def test_top_patches_limits_and_errors(trained_shapes):
    model, _, _, test = trained_shapes
    model.train()
    before = _model_state(model)
    try:
        few = maximize.top_patches(model, test, "conv1", k=9, limit=4)
        _assert_untouched(model, before)
    finally:
        model.eval()
    assert all(len(found) == 4 and {p.image_index for p in found} == {0, 1, 2, 3} for found in few.values())
    assert all(p.pixels.shape[0] == 3 and p.pixels.shape[1] <= 3 for p in few[0])  # conv1 sees 3×3 pixels
    with pytest.raises(ValueError, match=r"no layer named 'fc'.*conv1, bn1, relu1, pool1, conv2"):
        maximize.top_patches(model, test, "fc")
    with pytest.raises(ValueError, match="k >= 1"):
        maximize.top_patches(model, test, "conv1", k=0)


def test_activation_maximisation_beats_every_test_image(trained_shapes):
    model, _, _, test = trained_shapes
    data_means = _channel_means(model, data.normalize(test.x[:200], test.info), "relu2")  # (200, 32)
    results = maximize.maximize_layer(model, "relu2", (3, 32, 32), steps=STEPS)
    reached = torch.tensor([r.activation for r in results])
    assert [r.channel for r in results] == list(range(32))
    assert all(r.image.shape == (3, 32, 32) and len(r.history) == STEPS for r in results)
    # Measured with 64 steps: every channel above its best test image (by 1.10× or more), 31 of 32 above 3× its test
    # mean, the last at 2.94×.
    assert (reached > data_means.amax(dim=0)).float().mean() >= 0.9
    assert (reached > 3 * data_means.mean(dim=0)).float().mean() >= 0.9 and (reached > 2 * data_means.mean(dim=0)).all()
    # The reported activation is the layer's own output for the returned image.
    images = torch.stack([r.image for r in results])
    torch.testing.assert_close(_channel_means(model, images, "relu2").diagonal(), reached)


def test_class_logits_are_maximised_at_the_last_linear_layer(trained_shapes):
    model, spec, _, test = trained_shapes
    data_logits = _channel_means(model, data.normalize(test.x[:200], test.info), "fc")  # (200, 8)
    results = maximize.maximize_layer(model, "fc", (3, 32, 32), steps=STEPS)
    reached = torch.tensor([r.activation for r in results])
    # Measured with 64 steps: each class's logit 2.0-3.3× its highest on a test image (the lowest ratio differs a
    # little between CPUs: 1.99× for one class on one machine).
    best = data_logits.amax(dim=0)
    assert len(results) == spec.num_classes and (reached > 1.5 * best).all()
    assert (reached > 2 * best).float().mean() >= 0.75


def test_each_batched_image_excites_its_own_channel_most(trained_shapes):
    model, _, _, _ = trained_shapes
    results = maximize.maximize_layer(model, "conv2", (3, 32, 32), steps=STEPS)
    # means[b, c]: channel c's mean activation on the image made for channel b.
    means = _channel_means(model, torch.stack([r.image for r in results]), "conv2")
    own = means.diagonal()
    others = (means.sum(dim=0) - own) / (len(results) - 1)  # channel c on the other channels' images
    assert (own > others).float().mean() >= 0.9 and own.mean() > others.mean() + 1

    single = maximize.activation_maximization(model, "conv2", 5, (3, 32, 32), steps=STEPS)
    assert single.channel == 5 and single.activation > others[5]
    assert single.activation == pytest.approx(results[5].activation, rel=0.25)  # same objective, other random draws


def test_maximisation_leaves_the_model_untouched_even_on_error(trained_shapes):
    model, _, _, _ = trained_shapes
    model.train()
    model.fc1.weight.requires_grad_(False)
    before = _model_state(model)
    seen = []
    try:
        result = maximize.activation_maximization(model, "relu1", 3, (3, 32, 32), steps=6,
                                                  on_step=lambda *args: seen.append(args))
        _assert_untouched(model, before)

        def stop(step: int, steps: int) -> None:
            raise RuntimeError("stop")

        with pytest.raises(RuntimeError, match="stop"):
            maximize.maximize_layer(model, "relu1", (3, 32, 32), steps=6, on_step=stop)
        _assert_untouched(model, before)
    finally:
        model.fc1.weight.requires_grad_(True)
        model.eval()
    assert seen == [(step, 6) for step in range(1, 7)] and len(result.history) == 6


def test_same_seed_same_image_and_bad_arguments(trained_shapes):
    model, _, _, _ = trained_shapes
    first, second = (maximize.activation_maximization(model, "conv1", 2, (3, 32, 32), steps=4, seed=7)
                     for _ in range(2))
    assert torch.equal(first.image, second.image) and first.history == second.history
    with pytest.raises(ValueError, match=r"channels must be in \[0, 16\), got \[16\]"):
        maximize.activation_maximization(model, "conv1", 16, (3, 32, 32), steps=1)
    with pytest.raises(ValueError, match="no layer named 'conv9'"):
        maximize.maximize_layer(model, "conv9", (3, 32, 32), steps=1)


def test_a_later_in_place_relu_does_not_change_what_is_measured():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2))
    with torch.no_grad():
        model[0].bias[0] = -10.0  # channel 0 is negative everywhere: its maxima only survive before the ReLU
    x = torch.randint(0, 256, (20, 3, 12, 12), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    split = data.Split(data.info("shapes"), x, torch.zeros(20, dtype=torch.int64))
    conv = probe.run(model, data.normalize(x, split.info))["0"].output  # probe copies it before the ReLU
    patches = maximize.top_patches(model, split, "0", k=3)
    for channel, found in patches.items():
        expected = conv[:, channel].amax(dim=(1, 2)).topk(3).values
        torch.testing.assert_close(torch.tensor([p.value for p in found]), expected)
    assert all(p.value < 0 for p in patches[0])
    (result,) = maximize.maximize_layer(model, "0", (3, 12, 12), channels=[1], steps=3)
    assert result.activation == pytest.approx(float(_channel_means(model, result.image[None], "0")[0, 1]), abs=1e-5)


# The lucid style: a decorrelated Fourier parametrisation and transformation robustness (Olah et al. 2017).

RGB = data.DatasetInfo(name="rgb", title="RGB", class_names=("a", "b"), channels=3, size=32,
                       mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))  # ImageNet's statistics


def test_fourier_image_of_single_frequencies_is_a_cosine_scaled_by_one_over_frequency():
    # Coefficient 1 at (ky, kx) of a 16×16 real FFT: irfft2 gives 2·scale/256·cos(2π(ky·y + kx·x)/16) (the half
    # of the spectrum it leaves out mirrors it), scale = sqrt(256) / max(f, 1/16), and the image is divided by 4:
    # amplitude 1 / (2 · 16 f). Column kx = 0 holds both halves: (3, 0) needs its mirror (13, 0) given too.
    y, x = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    for (ky, kx), amplitude in {(0, 1): 0.5, (0, 4): 0.5 / 4, (1, 1): 0.5 / 2 ** 0.5, (3, 0): 0.5 / 3}.items():
        spectrum = torch.zeros(16, 9, 2)
        spectrum[ky, kx, 0] = 1.0
        spectrum[-ky, kx, 0] = 1.0 if kx == 0 else spectrum[-ky, kx, 0]
        expected = amplitude * torch.cos(2 * math.pi * (ky * y + kx * x) / 16)
        torch.testing.assert_close(maximize.fourier_image(spectrum, 16, 16), expected, atol=1e-6, rtol=0)
    dc = torch.zeros(16, 9, 2)
    dc[0, 0, 0] = 1.0  # frequency 0 is scaled as the lowest one, 1/16: a flat image of 1·16·16/256/4
    torch.testing.assert_close(maximize.fourier_image(dc, 16, 16), torch.full((16, 16), 0.25))


def test_fourier_image_inverts_its_own_scaled_spectrum():
    image = torch.rand(2, 3, 20, 13, generator=torch.Generator().manual_seed(0))  # odd width: the last column too
    scale = maximize.fourier_frequencies(20, 13).clamp(min=1 / 20).reciprocal() * math.sqrt(20 * 13)
    spectrum = torch.view_as_real(torch.fft.rfft2(image * 4) / scale)  # (2, 3, 20, 7, 2)
    torch.testing.assert_close(maximize.fourier_image(spectrum, 20, 13), image)
    assert maximize.fourier_frequencies(20, 13)[1, 0] == pytest.approx(1 / 20)
    assert maximize.fourier_frequencies(20, 13)[0, 6] == pytest.approx(6 / 13)


def test_colour_decorrelation_gives_natural_colour_correlations():
    # Lucid's matrix: its largest column (brightness) has norm 1 and is nearly grey.
    assert maximize.COLOR_CORRELATION.norm(dim=0).max() == pytest.approx(1.0)
    torch.testing.assert_close(maximize.COLOR_CORRELATION[:, 0], torch.tensor([0.5628, 0.5845, 0.5845]),
                               atol=1e-4, rtol=0)
    # Independent unit noise comes out with the channel correlations of M Mᵀ: R-G 0.914, R-B 0.794, G-B 0.909.
    noise = torch.randn(3, 400, 500, generator=torch.Generator().manual_seed(0))
    rgb = maximize.decorrelate_colors(noise).flatten(1)
    correlation = torch.corrcoef(rgb)
    assert [round(float(correlation[i, j]), 2) for i, j in ((0, 1), (0, 2), (1, 2))] == [0.91, 0.79, 0.91]
    with pytest.raises(ValueError, match="3 colour channels"):
        maximize.decorrelate_colors(torch.zeros(1, 4, 2, 2))


def test_robust_view_is_seeded_and_keeps_a_flat_grey_image_grey():
    grey = torch.full((2, 3, 40, 40), 0.5)
    sizes = set()
    for seed in range(8):
        a, b = (maximize.robust_view(grey, torch.Generator().manual_seed(seed)) for _ in range(2))
        assert torch.equal(a, b) and a.shape[:2] == (2, 3)
        torch.testing.assert_close(a, torch.full_like(a, 0.5))  # padding is grey too
        sizes.add(a.shape[-1])
        # Pad 12 each side, jitter 8 and 4, scale 0.9-1.1: (40 + 24 - 8) · s - 4.
        assert round(56 * 0.9) - 4 <= a.shape[-1] <= round(56 * 1.1) - 4 and a.shape[-1] == a.shape[-2]
    assert len(sizes) > 1
    ramp = torch.linspace(0, 1, 40).expand(1, 3, 40, 40)
    g = torch.Generator().manual_seed(3)
    assert not torch.equal(maximize.robust_view(ramp, g), maximize.robust_view(ramp, g))  # a new draw each call


def _red_edge_net(transposed: bool = False) -> nn.Sequential:
    """One 8×8 filter that fires where red rises from left to right while green and blue fall (a vertical red edge;
    a grey edge leaves it at 0). ``transposed``: the same for a horizontal edge, red rising downwards."""
    conv = nn.Conv2d(3, 1, 8, bias=False)
    with torch.no_grad():
        edge = torch.tensor([-1.0] * 4 + [1.0] * 4).expand(8, 8) / 32
        edge = edge.T if transposed else edge
        conv.weight[0] = torch.stack([edge, -edge / 2, -edge / 2])
    return nn.Sequential(conv, nn.ReLU()).requires_grad_(False)


def test_lucid_style_finds_a_filters_preferred_pattern():
    model, across = _red_edge_net(), _red_edge_net(transposed=True)
    noise = (torch.rand(64, 3, 32, 32, generator=torch.Generator().manual_seed(0))
             - torch.tensor(RGB.mean).view(3, 1, 1)) / torch.tensor(RGB.std).view(3, 1, 1)
    noise_mean = float(model(noise).mean())
    (result,) = maximize.maximize_layer(model, "1", (3, 32, 32), [0], style="lucid", info=RGB, steps=128)
    # Measured over seeds 0-2: 5.7-6.8× the mean on uniform noise; the transposed filter 0.39-0.49× as strong.
    assert result.activation > 4 * noise_mean
    assert float(across(result.image[None]).mean()) < 0.6 * result.activation
    rgb = result.image * torch.tensor(RGB.std).view(3, 1, 1) + torch.tensor(RGB.mean).view(3, 1, 1)
    assert rgb.min() >= -1e-5 and rgb.max() <= 1 + 1e-5  # a valid image: the sigmoid keeps it in [0, 1]


def test_lucid_style_upsamples_a_small_canvas_and_reports_the_result_at_full_size(monkeypatch):
    monkeypatch.setattr(maximize, "LUCID_SIZE", 16)
    model = _red_edge_net()
    seen = []
    results = maximize.maximize_layer(model, "0", (3, 40, 40), [0, 0], style="lucid", info=RGB, steps=5,
                                      on_step=lambda *args: seen.append(args))
    assert seen == [(step, 5) for step in range(1, 6)]
    assert [r.image.shape for r in results] == [(3, 40, 40)] * 2 and all(len(r.history) == 5 for r in results)
    reached = model[0](torch.stack([r.image for r in results])).mean(dim=(1, 2, 3))
    torch.testing.assert_close(torch.tensor([r.activation for r in results]), reached)
    assert not torch.equal(results[0].image, results[1].image)  # two channels' images start from different noise


def test_lucid_style_is_seeded_and_leaves_the_model_untouched():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5), nn.Conv2d(4, 2, 1))
    model.train()
    model[4].requires_grad_(False)
    before = _model_state(model)
    first, second, other = (maximize.activation_maximization(model, "2", 1, (3, 24, 24), style="lucid", info=RGB,
                                                             steps=4, seed=seed) for seed in (1, 1, 2))
    _assert_untouched(model, before)
    assert torch.equal(first.image, second.image) and first.history == second.history
    assert not torch.equal(first.image, other.image)

    def stop(step: int, steps: int) -> None:
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        maximize.maximize_layer(model, "0", (3, 24, 24), style="lucid", info=RGB, steps=3, on_step=stop)
    _assert_untouched(model, before)


def test_the_forward_pass_stops_at_the_layer():
    class Boom(nn.Module):
        def forward(self, x):
            raise AssertionError("a layer after the one maximised was run")

    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU(), Boom())
    for style in maximize.STYLES:
        (result,) = maximize.maximize_layer(model, "1", (3, 16, 16), [1], style=style, info=RGB, steps=2)
        assert result.image.shape == (3, 16, 16)


def test_lucid_style_arguments_are_checked():
    model = _red_edge_net()
    with pytest.raises(ValueError, match=r"style in \('pixels', 'lucid'\), got 'dream'"):
        maximize.maximize_layer(model, "0", (3, 8, 8), style="dream")
    with pytest.raises(ValueError, match=r"expected input_shape \(3, H, W\).*got \(3, 8, 8\) and no info"):
        maximize.maximize_layer(model, "0", (3, 8, 8), style="lucid")
    with pytest.raises(ValueError, match=r"got \(1, 8, 8\)"):
        maximize.maximize_layer(nn.Sequential(nn.Conv2d(1, 1, 3)), "0", (1, 8, 8), style="lucid", info=RGB)


def test_lucid_style_on_resnet18_names_a_second_call():
    # torchvision's BasicBlock calls its ReLU twice; "#2" is the block's output, after the residual addition.
    model = torchvision.models.resnet18().eval().requires_grad_(False)
    (result,) = maximize.maximize_layer(model, "layer1.0.relu#2", (3, 224, 224), [3], style="lucid",
                                        info=RGB, steps=2)
    assert result.image.shape == (3, 224, 224) and len(result.history) == 2
    records = probe.run(model, result.image[None])
    assert result.activation == pytest.approx(float(records["layer1.0.relu#2"].output[0, 3].mean()), rel=1e-5)


def test_top_patches_on_a_residual_network():
    # ResNet-18's first block output, after the residual addition (the ReLU's second call): a 16×16 map of 64
    # channels for 64² inputs, each cell seeing 27×27 pixels, 4 apart.
    model = torchvision.models.resnet18().eval().requires_grad_(False)
    info = data.DatasetInfo(name="rgb", title="RGB", class_names=("a", "b"), channels=3, size=64,
                            mean=RGB.mean, std=RGB.std)
    x = torch.randint(0, 256, (12, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    split = data.Split(info, x, torch.zeros(12, dtype=torch.int64))
    patches = maximize.top_patches(model, split, "layer1.0.relu#2", k=3)
    maps = probe.run(model, data.normalize(x, info))["layer1.0.relu#2"].output  # (12, 64, 16, 16)
    rf = {f.name: f for f in receptive_fields(model, 64)}["layer1.0.relu#2"]
    assert (rf.size, rf.jump, rf.out_size) == (27, 4, 16) and sorted(patches) == list(range(64))
    for channel in (0, 17, 63):
        found = patches[channel]
        torch.testing.assert_close(torch.tensor([p.value for p in found]),
                                   maps[:, channel].flatten(1).amax(dim=1).topk(3).values)
        for p in found:
            assert p.box == window(rf, p.row, p.col, 64)
            assert torch.equal(p.pixels, x[p.image_index, :, p.box[0]:p.box[2], p.box[1]:p.box[3]])
