"""Tests for cnnviz.stepper: a hand-computed convolution, and every step equal to the model's own output."""

from collections import OrderedDict

import pytest
import torch
from torch import nn

from cnnviz import data, models, probe, stepper


def _hand_model() -> nn.Sequential:
    conv = nn.Conv2d(2, 1, 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]],
                                         [[0.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 0.0]]]]))
        conv.bias.fill_(0.5)
    return nn.Sequential(OrderedDict(conv=conv, relu=nn.ReLU()))


def _hand_input() -> torch.Tensor:
    # Channel 0 counts 0..15 row by row; channel 1 is all ones.
    return torch.stack([torch.arange(16.0).reshape(4, 4), torch.ones(4, 4)])[None]


def test_hand_computed_three_by_three_step():
    step = stepper.conv_step(_hand_model(), _hand_input(), "conv", 0, 1, 2)
    # Output (1, 2) with padding 1 reads input rows 0..2, columns 1..3.
    assert step.box == (0, 1, 3, 4)
    torch.testing.assert_close(step.patch, torch.tensor([[[1.0, 2.0, 3.0], [5.0, 6.0, 7.0], [9.0, 10.0, 11.0]],
                                                         [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]]))
    torch.testing.assert_close(step.products, torch.tensor([[[-1.0, 0.0, 3.0], [-10.0, 0.0, 14.0], [-9.0, 0.0, 11.0]],
                                                            [[0.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 0.0]]]))
    torch.testing.assert_close(step.per_channel_sums, torch.tensor([8.0, -1.0]))
    assert (step.bias, step.total, step.output) == (0.5, 7.5, pytest.approx(7.5))
    assert (step.norm, step.after_norm, step.activation_name, step.activated) == (None, None, "relu", 7.5)


def test_hand_computed_edge_step_is_zero_padded_and_rectified():
    step = stepper.conv_step(_hand_model(), _hand_input(), "conv", 0, 1, 3)
    assert step.box == (0, 2, 3, 5)  # one column of padding on the right
    torch.testing.assert_close(step.patch[0], torch.tensor([[2.0, 3.0, 0.0], [6.0, 7.0, 0.0], [10.0, 11.0, 0.0]]))
    torch.testing.assert_close(step.products[0], torch.tensor([[-2.0, 0.0, 0.0], [-12.0, 0.0, 0.0],
                                                               [-10.0, 0.0, 0.0]]))
    assert step.total == -24.5 and step.output == pytest.approx(-24.5)
    assert step.activated == 0.0  # ReLU: max(0, -24.5)


def _mixed_model() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(3, 4, 3, stride=2, padding=1), relu1=nn.ReLU(),
        conv2=nn.Conv2d(4, 6, 5, padding=2, bias=False), bn2=nn.BatchNorm2d(6), act2=nn.LeakyReLU(0.1),
        pool2=nn.MaxPool2d(3, stride=2, padding=1),
        conv3=nn.Conv2d(6, 6, 3, padding=2, dilation=2, groups=2), pool3=nn.AvgPool2d(2, ceil_mode=True),
        flatten=nn.Flatten(),
    ))
    with torch.no_grad():  # running statistics far from (0, 1), so the norm step matters
        model.bn2.running_mean.uniform_(-1, 1)
        model.bn2.running_var.uniform_(0.5, 3)
        model.bn2.weight.uniform_(0.5, 2)
        model.bn2.bias.uniform_(-1, 1)
    return model


def _cells(h: int, w: int, generator: torch.Generator) -> set[tuple[int, int]]:
    corners = {(0, 0), (0, w - 1), (h - 1, 0), (h - 1, w - 1)}
    rows, cols = torch.randint(h, (3,), generator=generator), torch.randint(w, (3,), generator=generator)
    return corners | set(zip(rows.tolist(), cols.tolist()))


def test_conv_steps_equal_the_models_output_norm_and_activation():
    model = _mixed_model()
    x = torch.randn(1, 3, 17, 17, generator=torch.Generator().manual_seed(1))
    records = probe.run(model, x)
    generator = torch.Generator().manual_seed(2)
    checked = 0
    for layer, norm, activation in (("conv1", None, "relu1"), ("conv2", "bn2", "act2"), ("conv3", None, None)):
        _, channels, h, w = records[layer].output.shape
        for channel in (0, channels - 1):
            for row, col in _cells(h, w, generator):
                step = stepper.conv_step(model, x, layer, channel, row, col)
                assert step.output == pytest.approx(float(records[layer].output[0, channel, row, col]), abs=1e-6)
                assert step.total == pytest.approx(step.output, abs=1e-5), (layer, channel, row, col)
                assert step.total == pytest.approx(float(step.products.sum()) + step.bias, abs=1e-5)
                assert (step.norm.name if step.norm else None, step.activation_name) == (norm, activation)
                if norm:
                    assert step.after_norm == pytest.approx(float(records[norm].output[0, channel, row, col]),
                                                            abs=1e-5)
                if activation:
                    assert step.activated == pytest.approx(
                        float(records[activation].output[0, channel, row, col]), abs=1e-5)
                checked += 1
    assert checked >= 30
    # Groups: output channel 5 of conv3 belongs to the second group and reads input channels 3..5 only.
    step = stepper.conv_step(model, x, "conv3", 5, 0, 0)
    assert step.patch.shape == step.kernel.shape == (3, 3, 3)
    assert step.box == (-2, -2, 3, 3)  # dilation 2: a 3×3 kernel spans 5 cells


def test_norm_step_uses_the_running_statistics():
    model = _mixed_model()
    step = stepper.conv_step(model, torch.randn(1, 3, 9, 9), "conv2", 3, 2, 1)
    bn = model.bn2.requires_grad_(False)
    assert step.bias == 0.0  # conv2 has no bias of its own
    norm = step.norm
    assert (norm.mean, norm.var, norm.weight, norm.bias, norm.eps) == pytest.approx(
        (float(bn.running_mean[3]), float(bn.running_var[3]), float(bn.weight[3]), float(bn.bias[3]), bn.eps))
    expected = (step.total - norm.mean) / (norm.var + norm.eps) ** 0.5 * norm.weight + norm.bias
    assert step.after_norm == pytest.approx(expected)
    assert step.activated == pytest.approx(expected if expected > 0 else 0.1 * expected)  # LeakyReLU(0.1)


def test_trained_model_step_with_batchnorm(trained_shapes):
    model, _, _, test = trained_shapes
    x = data.normalize(test.x[:1], test.info)
    records = probe.run(model, x)
    for row, col in ((0, 0), (5, 31), (31, 17)):
        step = stepper.conv_step(model, x, "conv1", 7, row, col)
        assert step.norm.name == "bn1" and step.activation_name == "relu1"
        assert step.total == pytest.approx(step.output, abs=1e-5)
        assert step.activated == pytest.approx(float(records["relu1"].output[0, 7, row, col]), abs=1e-5)
    assert model.training is False


def test_pool_steps_equal_the_models_output():
    model = nn.Sequential(OrderedDict(
        max=nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True),
        avg=nn.AvgPool2d(3, stride=2, padding=1),
        avg_real=nn.AvgPool2d(2, padding=1, count_include_pad=False, ceil_mode=True),
        avg_fixed=nn.AvgPool2d(2, divisor_override=3),
        max_dilated=nn.MaxPool2d(2, stride=1, dilation=2),
    ))
    x = torch.randn(1, 2, 64, 64, generator=torch.Generator().manual_seed(3))
    records = probe.run(model, x)
    generator = torch.Generator().manual_seed(4)
    for layer, record in records.items():
        _, channels, h, w = record.output.shape
        for row, col in _cells(h, w, generator):
            step = stepper.pool_step(model, x, layer, channels - 1, row, col)
            assert step.output == float(record.output[0, channels - 1, row, col])
            assert step.value == pytest.approx(step.output, abs=1e-5), (layer, row, col)
            if step.kind == "max":
                assert step.divisor is None and step.window[step.winner] == step.value
            else:
                assert step.winner is None and step.divisor >= 1


def test_hand_computed_max_and_average_pool_steps():
    x = torch.tensor([[1.0, 5.0, 2.0, 0.0],
                      [3.0, 4.0, 9.0, 1.0],
                      [0.0, 0.0, -1.0, -2.0],
                      [7.0, 0.0, -3.0, -4.0]]).reshape(1, 1, 4, 4)
    model = nn.Sequential(OrderedDict(max=nn.MaxPool2d(2), avg=nn.AvgPool2d(2)))
    step = stepper.pool_step(model, x, "max", 0, 0, 1)
    torch.testing.assert_close(step.window, torch.tensor([[2.0, 0.0], [9.0, 1.0]]))
    assert (step.box, step.winner, step.value, step.output) == ((0, 2, 2, 4), (1, 0), 9.0, 9.0)
    step = stepper.pool_step(model, x, "avg", 0, 0, 0)  # the average of the max pool's output [[5, 9], [7, -1]]
    assert (step.divisor, step.value, step.output) == (4, 5.0, 5.0)


def test_sweep_is_the_layer_output_in_raster_order():
    model, x = _hand_model(), _hand_input()
    sweep = stepper.conv_sweep(model, x, "conv", 0)
    torch.testing.assert_close(sweep, probe.run(model, x)["conv"].output[0, 0])
    order = stepper.sweep_order(2, 3)
    assert order == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    steps = [stepper.conv_step(model, x, "conv", 0, row, col).total for row, col in stepper.sweep_order(4, 4)]
    torch.testing.assert_close(torch.tensor(steps).reshape(4, 4), sweep)


def test_bad_layers_and_cells_say_what_is_valid():
    model, x = _mixed_model(), torch.randn(1, 3, 16, 16)
    with pytest.raises(ValueError, match=r"no Conv2d layer named 'conv9'; choose one of: conv1, conv2, conv3"):
        stepper.conv_step(model, x, "conv9", 0, 0, 0)
    with pytest.raises(ValueError, match=r"MaxPool2d or AvgPool2d layer named 'relu1'.*pool2, pool3"):
        stepper.pool_step(model, x, "relu1", 0, 0, 0)
    with pytest.raises(ValueError, match=r"'conv1': row must be in \[0, 8\), got 8"):
        stepper.conv_step(model, x, "conv1", 0, 8, 0)
    with pytest.raises(ValueError, match=r"col must be in \[0, 8\), got -1"):
        stepper.conv_step(model, x, "conv1", 0, 0, -1)
    with pytest.raises(ValueError, match=r"channel must be in \[0, 6\), got 6"):
        stepper.pool_step(model, x, "pool2", 6, 0, 0)
    with pytest.raises(ValueError, match=r"channel must be in \[0, 4\)"):
        stepper.conv_sweep(model, x, "conv1", 4)
    with pytest.raises(ValueError, match=r"one float image \(1, C, H, W\)"):
        stepper.conv_step(model, torch.randn(2, 3, 16, 16), "conv1", 0, 0, 0)


def test_steps_reuse_records_the_caller_has_without_a_forward_pass(trained_shapes):
    model, _, _, test = trained_shapes
    x = data.normalize(test.x[:1], test.info)
    records = probe.run(model, x)
    calls = []
    hook = model.register_forward_hook(lambda *args: calls.append(1))
    try:
        fresh = stepper.conv_step(model, x, "conv2", 3, 4, 5)
        assert len(calls) == 1  # without records, one forward pass
        reused = stepper.conv_step(model, x, "conv2", 3, 4, 5, records=records)
        pooled = stepper.pool_step(model, x, "pool1", 2, 3, 3, records=records)
        assert len(calls) == 1  # with them, none
    finally:
        hook.remove()
    assert reused.total == pytest.approx(fresh.total) and reused.output == fresh.output
    assert pooled.value == pytest.approx(pooled.output)


def test_conv_steps_inside_residual_and_inception_blocks():
    spec = models.ModelSpec(3, 12, 4, [models.ConvBlock(4, pool="none"), models.ResidualBlock(6, stride=2),
                                       models.InceptionBlock(2, 2, 3, 1, 2, 2, pool="max")], global_pool=True)
    model = models.build(spec, seed=0).eval()
    with torch.no_grad():  # statistics that are not 0 and 1, so each norm step does something
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2), m.bias.uniform_(-0.5, 0.5)
    x = torch.randn(1, 3, 12, 12, generator=torch.Generator().manual_seed(3))
    records = probe.run(model, x)
    generator = torch.Generator().manual_seed(4)
    # The ReLU after block2.conv2 comes only after the sum with the shortcut: that conv's step ends at its norm.
    for layer, norm, activation in (
            ("block2.conv1", "block2.bn1", "block2.relu1"), ("block2.conv2", "block2.bn2", None),
            ("block2.shortcut.conv", "block2.shortcut.bn", None),
            ("inc3.branch3x3.conv2", "inc3.branch3x3.bn2", "inc3.branch3x3.relu2"),
            ("inc3.branch5x5.conv2", "inc3.branch5x5.bn2", "inc3.branch5x5.relu2"),
            ("inc3.branchpool.conv1", "inc3.branchpool.bn1", "inc3.branchpool.relu1")):
        _, channels, h, w = records[layer].output.shape
        for row, col in _cells(h, w, generator):
            step = stepper.conv_step(model, x, layer, channels - 1, row, col, records=records)
            assert step.total == pytest.approx(step.output, abs=1e-5), (layer, row, col)
            assert (step.norm.name, step.activation_name) == (norm, activation)
            assert step.after_norm == pytest.approx(float(records[norm].output[0, -1, row, col]), abs=1e-5)
            if activation:
                assert step.activated == pytest.approx(float(records[activation].output[0, -1, row, col]), abs=1e-5)
    kernel = stepper.conv_step(model, x, "inc3.branch5x5.conv2", 0, 0, 0, records=records).kernel
    assert kernel.shape == (1, 5, 5)  # over the one map of the 5×5 branch's reduce
    step = stepper.pool_step(model, x, "inc3.branchpool.pool", 1, 2, 3, records=records)
    assert step.value == step.output and step.window.shape == (3, 3)
