"""Tests for cnnviz.maximize on the briefly trained shapes model: real maxima, real patches, real ascent."""

import pytest
import torch
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
