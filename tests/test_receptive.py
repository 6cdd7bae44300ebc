"""Tests for cnnviz.receptive: hand-checked architectures, and the gradient of one unit as the ground truth."""

import pytest
import torch
from torch import nn

from cnnviz import models, probe
from cnnviz.models import ConvBlock, ModelSpec
from cnnviz.receptive import RF, receptive_fields, window


def _table(fields: list[RF]) -> list[tuple]:
    return [(f.name, f.size, f.jump, f.start, f.out_size) for f in fields]


def test_conv_pool_conv_pool_known_answer():
    model = models.build(ModelSpec(3, 32, 8, [ConvBlock(4), ConvBlock(4)]))
    # conv 3×3 pad 1 → 3 (centre 0); pool 2 → 3 + 1 = 4, jump 2, centre 0.5;
    # conv → 4 + 2·2 = 8; pool → 8 + 1·2 = 10, jump 4, centre 0.5 + 0.5·2 = 1.5.
    assert _table(receptive_fields(model, 32)) == [
        ("conv1", 3, 1, 0.0, 32), ("relu1", 3, 1, 0.0, 32), ("pool1", 4, 2, 0.5, 16),
        ("conv2", 8, 2, 0.5, 16), ("relu2", 8, 2, 0.5, 16), ("pool2", 10, 4, 1.5, 8),
    ]
    last = receptive_fields(model, 32)[-1]
    # Unit (0, 0) covers input -3..6; unit (1, 2) is 4 and 8 pixels further on.
    assert window(last, 0, 0, 32) == (0, 0, 7, 7)
    assert window(last, 1, 2, 32) == (1, 5, 11, 15)
    assert window(last, 7, 7, 32) == (25, 25, 32, 32)


def test_cnn_explainer_tiny_vgg():
    # CNN Explainer's Tiny VGG (Wang et al. 2020): 64×64 input, 3×3 convs without padding, 2×2 max pools.
    blocks = [ConvBlock(10, padding=0, pool="none"), ConvBlock(10, padding=0),
              ConvBlock(10, padding=0, pool="none"), ConvBlock(10, padding=0)]
    model = models.build(ModelSpec(3, 64, 10, blocks))
    table = [row for row in _table(receptive_fields(model, 64)) if not row[0].startswith("relu")]
    assert table == [
        ("conv1", 3, 1, 1.0, 62), ("conv2", 5, 1, 2.0, 60), ("pool2", 6, 2, 2.5, 30),
        ("conv3", 10, 2, 4.5, 28), ("conv4", 14, 2, 6.5, 26), ("pool4", 16, 4, 7.5, 13),
    ]
    # Without padding every window lies inside the image: unit (0, 0) of pool4 sees rows 0..15.
    assert window(receptive_fields(model, 64)[-1], 0, 0, 64) == (0, 0, 16, 16)


def test_five_by_five_stride_two_conv():
    (rf,) = receptive_fields(nn.Sequential(nn.Conv2d(1, 2, 5, stride=2, padding=2)), 28)
    assert (rf.size, rf.jump, rf.start, rf.out_size) == (5, 2, 0.0, 14)
    assert window(rf, 0, 0, 28) == (0, 0, 3, 3)  # rows -2..2, clipped
    assert window(rf, 5, 13, 28) == (8, 24, 13, 28)
    (valid,) = receptive_fields(nn.Sequential(nn.Conv2d(1, 2, (5, 5), stride=(2, 2))), 28)
    assert (valid.size, valid.jump, valid.start, valid.out_size) == (5, 2, 2.0, 12)


def test_dilation_adaptive_pool_and_stop_at_flatten():
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=2, dilation=2),  # effective kernel 5
        nn.BatchNorm2d(2), nn.Dropout2d(0.1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 3),
    )
    assert _table(receptive_fields(model, 12)) == [
        ("0", 5, 1, 0.0, 12), ("1", 5, 1, 0.0, 12), ("2", 5, 1, 0.0, 12), ("3", 16, 12, 5.5, 1),
    ]
    assert window(receptive_fields(model, 12)[-1], 0, 0, 12) == (0, 0, 12, 12)


def test_out_sizes_match_a_real_forward_pass():
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3, stride=2, padding=1), nn.ReLU(),
        nn.MaxPool2d(3, stride=2, ceil_mode=True),
        nn.Sequential(nn.Conv2d(2, 2, 2), nn.AvgPool2d(2, ceil_mode=True, padding=1)),
    )
    for size in (9, 16, 23, 32):
        fields = receptive_fields(model, size)
        records = probe.run(model, torch.zeros(1, 1, size, size))
        assert [f.name for f in fields] == list(records)
        assert [f.out_size for f in fields] == [r.output.shape[-1] for r in records.values()]


def test_errors_name_the_layer_and_the_range():
    with pytest.raises(ValueError, match=r"'0'.*Upsample"):
        receptive_fields(nn.Sequential(nn.Upsample(scale_factor=2)), 8)
    with pytest.raises(ValueError, match="not square"):
        receptive_fields(nn.Sequential(nn.Conv2d(1, 1, (3, 5))), 8)
    with pytest.raises(ValueError, match="no output"):
        receptive_fields(nn.Sequential(nn.Conv2d(1, 1, 5)), 3)
    with pytest.raises(ValueError, match=r"col must be in \[0, 14\), got 14"):
        window(RF("conv1", 5, 2, 0.0, 14), 0, 14, 28)


def _unit_input_gradients(model: nn.Sequential, layer: str, cells: list[tuple[int, int]],
                          x: torch.Tensor) -> torch.Tensor:
    """|d(unit cells[b] of channel 0 of ``layer``) / d(input)| summed over input channels, (B, H, W).

    One backward pass for all cells: copy b of the image only feeds unit cells[b] (no layer mixes the batch).
    """
    x = x.expand(len(cells), -1, -1, -1).clone().requires_grad_(True)
    out = x
    for name, module in model.named_children():
        out = module(out)
        if name == layer:
            break
    rows, cols = torch.tensor(cells).T
    (grad,) = torch.autograd.grad(out[torch.arange(len(cells)), 0, rows, cols].sum(), x)
    return grad.abs().sum(1)


def _mixed(pool: type[nn.Module]) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), pool(2),
        nn.Conv2d(3, 3, 5, stride=2, padding=2), nn.ReLU(),
        nn.Conv2d(3, 3, 3, padding=2, dilation=2), nn.AvgPool2d(3, stride=2, padding=1),
    )


def test_gradient_of_a_unit_stays_inside_its_window_and_reaches_its_edges():
    size = 29  # odd, so the last windows do not line up with the image's edge
    random_model = _mixed(nn.MaxPool2d)
    # All-ones weights, zero biases, positive input and average pools: no unit can be zero by accident, so the
    # gradient's support is the receptive field itself (a max pool would pass the gradient to one winner only).
    ones_model = _mixed(nn.AvgPool2d)
    with torch.no_grad():
        for module in ones_model.modules():
            if isinstance(module, nn.Conv2d):
                module.weight.fill_(1.0)
                module.bias.zero_()
    x_random = torch.randn(1, 2, size, size, generator=torch.Generator().manual_seed(0))
    x_ones = torch.ones(1, 2, size, size)
    checked = 0
    for rf in receptive_fields(random_model, size):
        last = rf.out_size - 1
        cells = [(0, 0), (0, last), (last // 2, last // 3), (last, last)]
        random_grads = _unit_input_gradients(random_model, rf.name, cells, x_random)
        ones_grads = _unit_input_gradients(ones_model, rf.name, cells, x_ones)
        for (row, col), random_grad, ones_grad in zip(cells, random_grads, ones_grads):
            top, left, bottom, right = window(rf, row, col, size)
            inside = torch.zeros(size, size, dtype=torch.bool)
            inside[top:bottom, left:right] = True
            assert not random_grad[~inside].any(), (rf.name, row, col)
            rows, cols = ones_grad.nonzero(as_tuple=True)
            # Dilation leaves holes inside the window; its bounding box is still the whole window.
            assert (rows.min(), cols.min(), rows.max() + 1, cols.max() + 1) == (top, left, bottom, right), rf.name
            checked += 1
    assert checked == 28
