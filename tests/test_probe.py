"""Tests for cnnviz.probe: known answers on tiny hand-made layers, and torchvision models by module path."""

import pytest
import torch
import torchvision
from torch import nn

from cnnviz import models, probe


def test_conv_record_equals_hand_computed_sliding_window_sum():
    conv = nn.Conv2d(2, 2, kernel_size=3, stride=2, padding=1)
    with torch.no_grad():
        conv.weight.copy_(torch.arange(36, dtype=torch.float32).reshape(2, 2, 3, 3) / 10 - 1.5)
        conv.bias.copy_(torch.tensor([0.5, -2.0]))
    model = nn.Sequential(conv)
    x = torch.arange(50, dtype=torch.float32).reshape(1, 2, 5, 5) / 7 - 3

    # Zero padding 1, stride 2: output 3×3, cell (i, j) reads padded rows 2i..2i+2 and columns 2j..2j+2.
    padded = [[[0.0] * 7 for _ in range(7)] for _ in range(2)]
    for c in range(2):
        for r in range(5):
            for s in range(5):
                padded[c][r + 1][s + 1] = float(x[0, c, r, s])
    expected = torch.zeros(1, 2, 3, 3)
    for o in range(2):
        for i in range(3):
            for j in range(3):
                total = float(conv.bias[o].detach())
                for c in range(2):
                    for u in range(3):
                        for v in range(3):
                            total += float(conv.weight[o, c, u, v].detach()) * padded[c][2 * i + u][2 * j + v]
                expected[0, o, i, j] = total

    record = probe.run(model, x)["0"]
    assert record.kind == "conv" and record.module_type == "Conv2d"
    assert record.shape == (2, 3, 3)
    torch.testing.assert_close(record.output, expected)
    torch.testing.assert_close(record.input, x)
    assert record.params == {"kernel_size": (3, 3), "stride": (2, 2), "padding": (1, 1), "dilation": (1, 1)}


def test_max_pooling_pair_holds_hand_computed_max_and_winner():
    model = nn.Sequential(nn.MaxPool2d(2))
    x = torch.tensor([[1.0, 5.0, 2.0, 0.0],
                      [3.0, 4.0, 9.0, 1.0],
                      [0.0, 0.0, -1.0, -2.0],
                      [7.0, 0.0, -3.0, -4.0]]).reshape(1, 1, 4, 4)
    records = probe.run(model, x)
    (pair,) = probe.pooling_pairs(records)
    assert pair.name == "0"
    torch.testing.assert_close(pair.output, torch.tensor([[[5.0, 9.0], [7.0, -1.0]]]))
    # Flat indices into the 4×4 plane: 5 at (0, 1), 9 at (1, 2), 7 at (3, 0), -1 at (2, 2).
    assert pair.argmax.tolist() == [[[1, 6], [12, 10]]]
    assert torch.equal(pair.input.flatten(1).gather(1, pair.argmax.flatten(1)), pair.output.flatten(1))


def test_pooling_pairs_use_the_modules_own_settings_and_average_has_no_argmax():
    torch.manual_seed(0)
    model = nn.Sequential(nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True), nn.AvgPool2d(2))
    x = torch.randn(2, 3, 7, 7)
    max_pair, avg_pair = probe.pooling_pairs(probe.run(model, x))
    assert max_pair.input.shape == (3, 7, 7) and max_pair.output.shape == (3, 4, 4)
    torch.testing.assert_close(max_pair.input, x[0])
    winners = max_pair.input.flatten(1).gather(1, max_pair.argmax.flatten(1)).reshape(3, 4, 4)
    torch.testing.assert_close(winners, max_pair.output)
    assert avg_pair.argmax is None
    torch.testing.assert_close(avg_pair.output, max_pair.output.reshape(3, 2, 2, 2, 2).mean(dim=(2, 4)))


def test_records_follow_execution_order_with_module_paths_and_kinds():
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("conv1", nn.Conv2d(1, 4, 3, padding=1))
    model.add_module("bn1", nn.BatchNorm2d(4))
    model.add_module("relu1", nn.ReLU())
    model.add_module("pool1", nn.MaxPool2d(2))
    model.add_module("drop1", nn.Dropout(0.5))
    model.add_module("flatten", nn.Flatten())
    model.add_module("fc", nn.Linear(4 * 4 * 4, 3))
    model.add_module("head", nn.Identity())
    records = probe.run(model, torch.randn(2, 1, 8, 8))
    assert list(records) == ["conv1", "bn1", "relu1", "pool1", "drop1", "flatten", "fc", "head"]
    kinds = [r.kind for r in records.values()]
    assert kinds == ["conv", "norm", "activation", "pool", "dropout", "flatten", "linear", "other"]
    assert [r.shape for r in records.values()][:4] == [(4, 8, 8), (4, 8, 8), (4, 8, 8), (4, 4, 4)]
    assert records["fc"].output.shape == (2, 3)  # batch kept
    assert probe.layer_names(model) == list(records)
    assert probe.layer_names(model, "pool") == ["pool1"]
    with pytest.raises(ValueError, match="kind"):
        probe.layer_names(model, "convolution")


def test_resnet18_records_by_module_path_with_shared_relu_kept_apart():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None)
    records = probe.run(model, torch.randn(1, 3, 64, 64))
    names = list(records)
    assert names[:4] == ["conv1", "bn1", "relu", "maxpool"]
    assert names[-2:] == ["avgpool", "fc"]
    # BasicBlock calls its one self.relu twice: after bn1, and after the residual sum.
    block = ["layer1.0.conv1", "layer1.0.bn1", "layer1.0.relu", "layer1.0.conv2", "layer1.0.bn2", "layer1.0.relu#2"]
    assert names[4:10] == block
    assert "relu#2" not in names
    assert records["layer2.0.downsample.0"].kind == "conv"
    assert records["layer4.1.relu#2"].shape == (512, 2, 2)
    assert records["fc"].shape == (1000,)
    # The ReLUs are in-place: records must hold copies taken before and after, not one overwritten tensor.
    relu = records["layer1.0.relu"]
    assert relu.input.min() < 0 and relu.output.min() >= 0
    torch.testing.assert_close(relu.input, records["layer1.0.bn1"].output)
    torch.testing.assert_close(relu.output, relu.input.clamp(min=0))


def test_vgg11_records_and_filters():
    torch.manual_seed(0)
    model = torchvision.models.vgg11(weights=None)
    records = probe.run(model, torch.randn(1, 3, 64, 64))
    assert list(records)[:3] == ["features.0", "features.1", "features.2"]
    assert [records[n].kind for n in ("features.0", "features.1", "features.2")] == ["conv", "activation", "pool"]
    assert records["classifier.6"].shape == (1000,)
    weights = probe.filters(model)
    assert list(weights) == probe.layer_names(model, "conv")
    assert weights["features.0"].shape == (64, 3, 3, 3)
    assert weights["features.18"].shape == (512, 512, 3, 3)
    weights["features.0"].zero_()  # a copy: the model keeps its weights
    assert model.features[0].weight.abs().sum() > 0


class _Boom(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom")


def _assert_no_hooks(model: nn.Module) -> None:
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks and not module._backward_hooks


def test_hooks_removed_and_modes_restored_even_when_forward_raises():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Dropout(0.5), _Boom())
    model.train()
    model[1].eval()  # mixed flags must come back exactly as they were
    with pytest.raises(RuntimeError, match="boom"):
        probe.run(model, torch.randn(1, 1, 5, 5))
    _assert_no_hooks(model)
    assert [m.training for m in model.modules()] == [True, True, False, True]


def test_run_uses_eval_mode_restores_training_and_leaves_input_alone():
    seen = []

    class Spy(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(self.training)
            return x

    model = nn.Sequential(nn.ReLU(inplace=True), nn.Dropout(0.9), Spy()).train()
    x = torch.randn(1, 1, 6, 6)
    before = x.clone()
    records = probe.run(model, x)
    assert seen == [False]
    assert model.training and all(m.training for m in model.modules())
    _assert_no_hooks(model)
    torch.testing.assert_close(x, before)  # the in-place ReLU worked on a copy
    torch.testing.assert_close(records["1"].output, x.clamp(min=0))  # dropout off in eval mode


def test_predict_gives_probabilities_of_the_first_image_in_eval_mode():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3, bias=False), nn.Dropout(0.9)).train()
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]]))
    x = torch.tensor([[1.0, 2.0, 0.0, 0.0], [9.0, 9.0, 9.0, 9.0]]).reshape(2, 1, 2, 2)
    probs = probe.predict(model, x)
    torch.testing.assert_close(probs, torch.softmax(torch.tensor([1.0, 2.0, 0.0]), dim=0))
    assert model.training


def test_channel_stats_known_answers():
    t = torch.tensor([[[1.0, -1.0], [3.0, -3.0]],
                      [[0.0, 0.0], [0.0, 2.0]]])
    stats = probe.channel_stats(t)
    torch.testing.assert_close(stats["mean"], torch.tensor([0.0, 0.5]))
    torch.testing.assert_close(stats["max"], torch.tensor([3.0, 2.0]))
    torch.testing.assert_close(stats["min"], torch.tensor([-3.0, 0.0]))
    torch.testing.assert_close(stats["std"], torch.tensor([5.0**0.5, 0.75**0.5]))
    torch.testing.assert_close(stats["frac_active"], torch.tensor([0.5, 0.25]))
    assert probe.channel_stats(torch.ones(3, 1, 1))["std"].tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        probe.channel_stats(torch.ones(1, 3, 2, 2))


def test_unknown_layer_error_lists_valid_names():
    model = nn.Sequential()
    model.add_module("conv1", nn.Conv2d(1, 2, 3))
    model.add_module("relu1", nn.ReLU())
    assert probe.get_module(model, "relu1") is model.relu1
    assert probe.get_module(model, "relu1#2") is model.relu1
    with pytest.raises(KeyError) as error:
        probe.get_module(model, "conv9")
    assert "conv9" in str(error.value) and "conv1, relu1" in str(error.value)
    with pytest.raises(ValueError):
        probe.get_module(model, "conv9")


def test_run_rejects_a_non_image_batch():
    with pytest.raises(ValueError, match=r"expected a \(N, C, H, W\) tensor, got \(3, 8, 8\)"):
        probe.run(nn.Identity(), torch.zeros(3, 8, 8))


def test_filter_drift_known_answers():
    from cnnviz.probe import filter_drift

    w0 = torch.ones(3, 1, 2, 2)  # each filter's norm is 2
    w1 = w0.clone()
    w1[0] *= 2  # moved by its own size: 100 %
    w1[1, 0, 0, 0] = 0.0  # one weight from 1 to 0: |1| / 2 = 50 %
    drift = filter_drift([(0, w0), (10, w1)])
    assert drift.shape == (2, 3)
    torch.testing.assert_close(drift, torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.5, 0.0]]))
    with pytest.raises(ValueError, match="at least one"):
        filter_drift([])
    with pytest.raises(ValueError, match="one \\(out, in, kh, kw\\) shape"):
        filter_drift([(0, w0), (1, torch.ones(3, 1, 3, 3))])


def test_an_unchanged_output_and_the_next_layers_input_share_one_copy():
    # conv1 → relu1 (in place) → conv2: relu1 reads conv1's output unchanged (one copy for both), then overwrites it;
    # conv2 reads relu1's result, not conv1's stale copy.
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("conv1", nn.Conv2d(1, 2, 3, padding=1))
    model.add_module("relu1", nn.ReLU(inplace=True))
    model.add_module("conv2", nn.Conv2d(2, 2, 3, padding=1))
    records = probe.run(model, torch.randn(1, 1, 6, 6))
    assert records["relu1"].input is records["conv1"].output
    assert records["conv2"].input is records["relu1"].output
    assert (records["conv1"].output < 0).any() and (records["relu1"].output >= 0).all()
    torch.testing.assert_close(records["relu1"].output, records["conv1"].output.clamp(min=0))


# Spec-built graph blocks (cnnviz.models): residual sums and Inception branches, read back from the records.

def _graph_model() -> torch.nn.Module:
    spec = models.ModelSpec(3, 16, 4, [models.ConvBlock(4, batchnorm=True), models.ResidualBlock(4),
                                       models.ResidualBlock(6, stride=2), models.InceptionBlock(2, 2, 3, 1, 2, 1),
                                       models.ResidualBlock(6, batchnorm=False)], global_pool=True)
    model = models.build(spec, seed=0)
    with torch.no_grad():  # running statistics that are not 0 and 1, so batchnorm does something
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2), m.bias.uniform_(-0.5, 0.5)
    return model


def test_layer_names_of_graph_blocks_are_dotted_paths_in_the_order_they_run():
    model = _graph_model()
    records = probe.run(model, torch.randn(2, 3, 16, 16))
    assert list(records) == probe.layer_names(model)
    assert list(records)[4:13] == ["block2.conv1", "block2.bn1", "block2.relu1", "block2.conv2", "block2.bn2",
                                   "block2.shortcut", "block2.add", "block2.relu", "block3.conv1"]
    assert records["block2.add"].module_type == "Add" and records["block2.add"].kind == "other"
    assert records["inc4.concat"].shape == (2 + 3 + 2 + 1, 4, 4)  # 16 → 8 (pool1) → 4 (block3: stride 2)
    assert probe.graph_blocks(records) == {"block2": "residual", "block3": "residual", "inc4": "inception",
                                           "block5": "residual"}
    assert probe.graph_blocks(probe.run(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()), torch.randn(1, 1, 8, 8))) == {}


def test_residual_view_is_x_f_of_x_and_their_sum():
    model = _graph_model().eval()
    x = torch.randn(2, 3, 16, 16)
    records = probe.run(model, x)
    with torch.no_grad():
        into_block2 = model.pool1(model.relu1(model.bn1(model.conv1(x))))
    for name, projection in (("block2", False), ("block3", True), ("block5", True)):
        view = probe.residual(records, name)
        block = getattr(model, name)
        assert view.projection == projection and view.x.shape[0] == 2
        with torch.no_grad():
            assert torch.allclose(view.shortcut, block.shortcut(view.x))
            fx = block.conv2(block.relu1(block.bn1(block.conv1(view.x)) if block.bn1 else block.conv1(view.x)))
            assert torch.allclose(view.fx, block.bn2(fx) if block.bn2 else fx, atol=1e-6)
        assert torch.equal(view.shortcut + view.fx, view.sum)  # the add's output is exactly x + F(x)
        assert torch.equal(view.output, torch.relu(view.sum))
    block2 = probe.residual(records, "block2")
    assert torch.allclose(block2.x, into_block2) and torch.equal(block2.shortcut, block2.x)


def test_branch_view_is_the_inception_blocks_branches_side_by_side():
    model = _graph_model().eval()
    records = probe.run(model, torch.randn(1, 3, 16, 16))
    view = probe.branches(records, "inc4")
    assert list(view.branches) == ["inc4.branch1x1", "inc4.branch3x3", "inc4.branch5x5", "inc4.branchpool"]
    with torch.no_grad():
        for path, out in view.branches.items():
            assert torch.allclose(out, probe.get_module(model, path)(view.input))
    assert torch.equal(torch.cat(list(view.branches.values()), dim=1), view.output)
    assert [t.shape[1] for t in view.branches.values()] == [2, 3, 2, 1]


def test_graph_views_name_the_blocks_there_are():
    records = probe.run(_graph_model(), torch.randn(1, 3, 16, 16))
    with pytest.raises(probe.UnknownLayerError, match="no residual block named 'inc4'; residual blocks: block2, "
                                                      "block3, block5"):
        probe.residual(records, "inc4")
    with pytest.raises(probe.UnknownLayerError, match="no inception block named 'block2'; inception blocks: inc4"):
        probe.branches(records, "block2")
