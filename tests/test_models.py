import json

import pytest
import torch

from cnnviz import models
from cnnviz.models import ConvBlock, ModelSpec, SpecError


def test_presets_build_with_readable_names_and_right_output():
    for name in models.PRESETS:
        spec = models.preset(name, 3, 32, 8)
        model = models.build(spec)
        assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 8)
        names = [n for n, _ in model.named_children()]
        assert names[0] == "conv1" and names[-1] == "fc" and "flatten" in names


def test_tinyvgg_matches_cnn_explainer():
    model = models.build(models.preset("tinyvgg", 3, 64, 10))
    convs = [m for m in model if isinstance(m, torch.nn.Conv2d)]
    pools = [m for m in model if isinstance(m, torch.nn.MaxPool2d)]
    assert [c.out_channels for c in convs] == [10, 10, 10, 10]
    assert len(pools) == 2
    names = [n for n, _ in model.named_children()]
    assert names[:5] == ["conv1", "relu1", "conv2", "relu2", "pool2"]


def test_summary_shapes_and_param_count_by_hand():
    spec = ModelSpec(1, 28, 10, [ConvBlock(4, kernel=3, padding=1), ConvBlock(8, kernel=5, padding=0, pool="none")])
    rows = {r.name: r for r in models.summary(spec)}
    assert rows["conv1"].output_shape == (4, 28, 28)
    assert rows["conv1"].params == 4 * 1 * 9 + 4
    assert rows["pool1"].output_shape == (4, 14, 14)
    assert rows["conv2"].output_shape == (8, 10, 10)  # 14 - 5 + 1
    assert rows["fc"].params == 8 * 10 * 10 * 10 + 10
    assert sum(r.params for r in rows.values()) == models.count_params(models.build(spec))


def test_spec_round_trips_through_json():
    spec = models.preset("deep", 3, 32, 10)
    again = ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec


def test_same_seed_same_weights():
    spec = models.preset("tiny", 1, 28, 10)
    a, b = models.build(spec, seed=3), models.build(spec, seed=3)
    c = models.build(spec, seed=4)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.conv1.weight, c.conv1.weight)


def test_pooling_to_nothing_is_refused_naming_the_layer():
    spec = ModelSpec(1, 8, 10, [ConvBlock(4), ConvBlock(4), ConvBlock(4), ConvBlock(4)])
    with pytest.raises(SpecError, match="pool4"):
        models.build(spec)


def test_kernel_bigger_than_maps_is_refused():
    spec = ModelSpec(1, 8, 10, [ConvBlock(4, kernel=3), ConvBlock(4, kernel=7, padding=0)])
    with pytest.raises(SpecError, match="conv2.*7×7.*4×4"):
        models.build(spec)


def test_bad_activation_and_dropout_refused():
    with pytest.raises(SpecError, match="activation"):
        models.build(ModelSpec(1, 8, 2, [ConvBlock(4, activation="nope")]))
    with pytest.raises(SpecError, match="drop1"):
        models.build(ModelSpec(1, 8, 2, [ConvBlock(4, dropout=1.5)]))


def test_no_conv_block_is_refused():
    with pytest.raises(SpecError, match="at least one conv block"):
        models.build(ModelSpec(3, 32, 8, []))


def test_table_rows_become_blocks_or_clear_errors():
    row = {"channels": 16.0, "kernel": 3, "padding": 1, "stride": 1, "activation": "relu", "pool": "max",
           "pool_size": 2, "batchnorm": True, "dropout": 0.0}
    assert models.block_from_row(row, 1) == ConvBlock(16, batchnorm=True)
    with pytest.raises(SpecError, match="block 2: 'kernel' is empty"):
        models.block_from_row({**row, "kernel": float("nan")}, 2)
    with pytest.raises(SpecError, match="block 3: 'channels' must be a int"):
        models.block_from_row({**row, "channels": "lots"}, 3)
