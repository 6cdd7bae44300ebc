import json
import math
import re
import time

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch.utils.flop_counter import FlopCounterMode

from cnnviz import data, models, probe
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
    with pytest.raises(SpecError, match=r"block 1: 'dropout' must be a number from 0 to below 1, got 1.5"):
        models.build(ModelSpec(1, 8, 2, [ConvBlock(4, dropout=1.5)]))


def test_no_block_is_refused():
    with pytest.raises(SpecError, match="at least one block"):
        models.build(ModelSpec(3, 32, 8, []))


def test_table_rows_become_blocks_or_clear_errors():
    row = {"channels": 16.0, "kernel": 3, "padding": 1, "stride": 1, "activation": "relu", "pool": "max",
           "pool_size": 2, "batchnorm": True, "dropout": 0.0}
    assert models.block_from_row(row, 1) == ConvBlock(16, batchnorm=True)
    with pytest.raises(SpecError, match="block 2: 'kernel' is empty"):
        models.block_from_row({**row, "kernel": float("nan")}, 2)
    with pytest.raises(SpecError, match="block 3: 'channels' must be a whole number from 1 to 256, got 'lots'"):
        models.block_from_row({**row, "channels": "lots"}, 3)


def test_table_cells_as_pandas_hands_them_over():
    row = {"channels": np.float64(16.0), "kernel": np.int64(5), "padding": np.int64(2), "stride": 1,
           "activation": "gelu", "pool": "avg", "pool_size": np.int64(2), "batchnorm": np.bool_(False),
           "dropout": np.float64(0.1)}
    block = models.block_from_row(row, 1)
    assert block == ConvBlock(16, 5, 2, 1, "gelu", "avg", 2, False, 0.1)
    assert type(block.channels) is int and type(block.batchnorm) is bool
    nullable = pd.DataFrame([ConvBlock(8).__dict__]).convert_dtypes()  # Int64, boolean and string columns
    assert models.block_from_row(nullable.to_dict("records")[0], 1) == ConvBlock(8)
    nullable.loc[0, "kernel"] = pd.NA
    with pytest.raises(SpecError, match="block 1: 'kernel' is empty"):
        models.block_from_row(nullable.to_dict("records")[0], 1)


@pytest.mark.parametrize("field, value, words", [
    ("channels", 16.5, "'channels' must be a whole number"),  # not rounded quietly
    ("channels", float("inf"), "'channels' must be a whole number"),
    ("channels", True, "'channels' must be a whole number from 1 to 256, got True"),
    ("kernel", 13, "'kernel' must be a whole number from 1 to 11, got 13"),
    ("batchnorm", "False", "'batchnorm' must be true or false, got 'False'"),  # bool("False") would be True
    ("batchnorm", 1, "'batchnorm' must be true or false, got 1"),
    ("dropout", float("inf"), "'dropout' must be a number from 0 to below 1, got inf"),
    ("pool", "MAX", "'pool' must be 'max' or 'avg' or 'none', got 'MAX'"),
])
def test_table_rows_cannot_smuggle_wrong_types(field, value, words):
    row = {**models.ConvBlock(8).__dict__, field: value}
    with pytest.raises(SpecError, match="block 4: " + words):
        models.block_from_row(row, 4)


def test_table_row_with_unknown_column_refused():
    with pytest.raises(SpecError, match="block 1: unknown column 'groups'"):
        models.block_from_row({**ConvBlock(8).__dict__, "groups": 2}, 1)


def test_presets_pass_the_limits_with_room_on_every_dataset_up_to_32_pixels():
    for info in data.DATASETS.values():
        if info.size > 32:  # parts' 64×64 scenes have an architecture of their own
            continue
        for name in models.PRESETS:
            cost = models.check(models.preset(name, info.channels, info.size, info.num_classes))
            assert cost.params <= models.MAX_PARAMS / 10
            assert cost.train_bytes <= models.MAX_TRAIN_BYTES / 2
            assert cost.macs <= models.MAX_MACS / 5


def _real_summary(spec: ModelSpec) -> list[tuple[str, str, tuple, int]]:
    """Every layer's name, type, output shape and parameters, measured on a built model by one probed zero batch."""
    model = models.build(spec)
    x = torch.zeros(1, spec.in_channels, spec.image_size, spec.image_size)
    return [("input", "input", tuple(x.shape[1:]), 0)] + [
        (name, r.module_type, r.shape, sum(p.numel() for p in probe.get_module(model, name).parameters()))
        for name, r in probe.run(model, x).items()]


def _real_macs(spec: ModelSpec) -> int:
    """Multiply-adds of one image's forward pass, counted by PyTorch (which counts 2 FLOPs per multiply-add)."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        models.build(spec).eval()(torch.zeros(1, spec.in_channels, spec.image_size, spec.image_size))
    return counter.get_total_flops() // 2


def test_analytic_summary_equals_the_built_model_for_presets():
    for name in models.PRESETS:
        spec = models.preset(name, 3, 32, 10)
        assert [tuple(r.__dict__.values()) for r in models.summary(spec)] == _real_summary(spec)
        assert models.check(spec).params == models.count_params(models.build(spec))
        assert models.check(spec).macs == _real_macs(spec)


blocks = st.builds(
    ConvBlock, channels=st.integers(1, 12), kernel=st.integers(1, 5), padding=st.integers(0, 2),
    stride=st.integers(1, 2), activation=st.sampled_from(list(models.ACTIVATIONS)), pool=st.sampled_from(models.POOLS),
    pool_size=st.integers(2, 3), batchnorm=st.booleans(), dropout=st.sampled_from([0.0, 0.3]))
small_specs = st.builds(
    ModelSpec, in_channels=st.sampled_from([1, 3]), image_size=st.integers(8, 24), num_classes=st.integers(2, 5),
    blocks=st.lists(blocks, min_size=1, max_size=3), hidden=st.sampled_from([0, 7]),
    head_dropout=st.sampled_from([0.0, 0.5]), global_pool=st.booleans())


@settings(max_examples=30, deadline=None)
@given(small_specs)
def test_analytic_summary_equals_the_built_model(spec):
    try:
        rows = models.summary(spec)
    except SpecError as e:  # a kernel that does not fit or pooling to nothing: building must refuse it too
        with pytest.raises(SpecError, match=str(e)[:20]):
            models.build(spec)
        assert "conv" in str(e) or "pool" in str(e)
        return
    assert [tuple(r.__dict__.values()) for r in rows] == _real_summary(spec)
    assert models.check(spec).params == models.count_params(models.build(spec))
    assert models.check(spec).macs == _real_macs(spec)


def test_train_bytes_by_hand():
    spec = ModelSpec(1, 8, 2, [ConvBlock(4, pool="none")])  # conv 4×8×8, relu 4×8×8, flatten 256, fc 2
    values = 64 + 256 + 256 + 256 + 2
    params = (4 * 9 + 4) + (256 + 1) * 2
    macs = 1 * 4 * 9 * 64 + 256 * 2  # each of 4×8×8 outputs sums 1×3×3 products; fc 256 → 2
    assert models.check(spec) == models.SpecCost(params, 2 * 4 * models.TRAIN_BATCH * values + 16 * params, macs)


@pytest.mark.parametrize("change, words", [
    (dict(hidden=2_000_000), "'hidden' must be a whole number from 0 to 4096, got 2000000"),
    (dict(in_channels=2), "'in_channels' must be 1 or 3, got 2"),
    (dict(in_channels=True), "'in_channels' must be 1 or 3, got True"),
    (dict(image_size=512), "'image_size' must be a whole number from 8 to 256, got 512"),
    (dict(image_size=32.0), "'image_size' must be a whole number from 8 to 256, got 32.0"),
    (dict(num_classes=1), "'num_classes' must be a whole number from 2 to 1000, got 1"),
    (dict(num_classes=10**18), "'num_classes' must be a whole number from 2 to 1000, got 1000000000000000000"),
    (dict(num_classes=10**400), "got a very large whole number"),
    (dict(head_dropout=float("nan")), "'head_dropout' must be a number from 0 to below 1, got nan"),
    (dict(global_pool="yes"), "'global_pool' must be true or false, got 'yes'"),
    (dict(blocks=[ConvBlock(4, pool="none")] * 25), "a model may have at most 24 blocks, got 25"),
    (dict(blocks=[ConvBlock(4), "conv"]), "block 2: expected a conv, residual or inception block, got 'conv'"),
    (dict(blocks=(ConvBlock(4),)), "'blocks' must be a list of blocks, got a tuple"),
    (dict(blocks=[ConvBlock(300)]), "block 1: 'channels' must be a whole number from 1 to 256, got 300"),
    (dict(blocks=[ConvBlock(8, stride=0)]), "block 1: 'stride' must be a whole number from 1 to 4, got 0"),
    (dict(blocks=[ConvBlock(8, padding=-1)]), "block 1: 'padding' must be a whole number from 0 to 5, got -1"),
    (dict(blocks=[ConvBlock(8, pool_size=1)]), "block 1: 'pool_size' must be a whole number from 2 to 4, got 1"),
])
def test_spec_fields_checked_for_type_and_range(change, words):
    spec = ModelSpec(**{**models.preset("tiny", 3, 32, 10).__dict__, **change})
    with pytest.raises(SpecError, match=re.escape(words)):
        models.check(spec)


def test_params_and_memory_limits_name_the_figures():
    many = ModelSpec(3, 32, 10, [ConvBlock(64, pool="none", padding=1, stride=4)], hidden=4096)  # 64×8×8 → 4096
    with pytest.raises(SpecError, match=r"would have 16,\d{3},\d{3} parameters; the limit is 4,000,000"):
        models.check(many)
    # (3 + 2 × 64) × 128 × 128 values per image (input, conv, relu) × 2 × 4 bytes × 256 images ≈ 4.1 GiB
    wide = ModelSpec(3, 128, 10, [ConvBlock(64, pool="none")], global_pool=True)
    with pytest.raises(SpecError, match=r"256 images would need about 4.1 GB of memory; the limit is 1 GB"):
        models.check(wide)


def test_compute_limit_names_the_figure():
    # 128 filters of 32×11×11 over 16×16 maps: 32 × 128 × 121 × 256 ≈ 127 M multiply-adds, within the other limits
    heavy = ModelSpec(3, 32, 10, [ConvBlock(32), ConvBlock(128, kernel=11, padding=5, pool="none")])
    with pytest.raises(SpecError, match="one image would take 128 million multiply-adds; the limit is 100 million"):
        models.check(heavy)


def test_huge_spec_refused_before_any_layer_is_made(monkeypatch):
    made = []
    for cls in (torch.nn.Linear, torch.nn.Conv2d, torch.nn.BatchNorm2d):
        monkeypatch.setattr(cls, "__init__", lambda self, *a, **k: made.append(a))
    start = time.perf_counter()
    for spec in (ModelSpec(3, 32, 8, [ConvBlock(16)], hidden=2_000_000),
                 ModelSpec(3, 256, 8, [ConvBlock(256, pool="none")] * 8)):
        with pytest.raises(SpecError):
            models.build(spec)
        with pytest.raises(SpecError):
            models.summary(spec)
    assert made == [] and time.perf_counter() - start < 0.5


def test_from_dict_refuses_unknown_missing_and_mistyped_fields():
    good = models.preset("tiny", 1, 28, 10).to_dict()
    assert ModelSpec.from_dict(good) == models.preset("tiny", 1, 28, 10)
    with pytest.raises(SpecError, match="unknown field 'depth'"):
        ModelSpec.from_dict({**good, "depth": 3})
    with pytest.raises(SpecError, match="block 1: unknown field 'groups'"):
        ModelSpec.from_dict({**good, "blocks": [{**good["blocks"][0], "groups": 2}]})
    with pytest.raises(SpecError, match="'num_classes' is missing"):
        ModelSpec.from_dict({k: v for k, v in good.items() if k != "num_classes"})
    with pytest.raises(SpecError, match="block 2: 'channels' is missing"):
        ModelSpec.from_dict({**good, "blocks": [good["blocks"][0], {"kernel": 3}]})
    with pytest.raises(SpecError, match="block 1: expected a mapping of fields, got a list"):
        ModelSpec.from_dict({**good, "blocks": [[16, 3]]})
    with pytest.raises(SpecError, match="a model spec must be a mapping of fields, got 'tiny'"):
        ModelSpec.from_dict("tiny")
    with pytest.raises(SpecError, match="at most 24 blocks, got 100000"):
        ModelSpec.from_dict({**good, "blocks": [None] * 100_000})
    with pytest.raises(SpecError, match="block 1: 'kernel' must be a whole number from 1 to 11, got '3'"):
        ModelSpec.from_dict({**good, "blocks": [{**good["blocks"][0], "kernel": "3"}]})


junk = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(allow_nan=True),
                 st.text(max_size=20), st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5),
                                                                                          st.integers(), max_size=2))


@settings(max_examples=40, deadline=None)
@given(field=st.sampled_from(["in_channels", "image_size", "num_classes", "hidden", "head_dropout", "global_pool",
                              "blocks", "channels", "kernel", "padding", "stride", "activation", "pool",
                              "pool_size", "batchnorm", "dropout", "unknown"]), value=junk)
def test_from_dict_gives_a_checked_spec_or_spec_error(field, value):
    d = models.preset("tiny", 1, 28, 10).to_dict()
    if field in models.ModelSpec.__dataclass_fields__ or field == "unknown":
        d[field] = value
    else:
        d["blocks"][0][field] = value
    try:
        spec = ModelSpec.from_dict(d)
    except SpecError:
        return
    cost = models.check(spec)
    assert cost.params <= models.MAX_PARAMS
    assert models.build(spec).eval()(torch.zeros(1, 1, 28, 28)).shape == (1, 10)
    assert all(type(getattr(spec, f)) is int for f in ("in_channels", "image_size", "num_classes", "hidden"))
    assert math.isfinite(spec.head_dropout)


def test_a_table_of_several_block_types_round_trips_through_pandas():
    blocks = [ConvBlock(8, batchnorm=True), models.ResidualBlock(16, stride=2),
              models.InceptionBlock(4, 4, 8, 2, 4, 4, pool="max")]
    rows = models.block_rows(blocks)
    assert rows[1] == {"type": "residual", "channels": 16, "kernel": None, "padding": None, "stride": 2,
                       "activation": None, "pool": "none", "pool_size": 2, "batchnorm": True, "dropout": 0.0,
                       "ch1x1": None, "ch3x3red": None, "ch3x3": None, "ch5x5red": None, "ch5x5": None,
                       "pool_proj": None}
    table = pd.DataFrame(rows).convert_dtypes()  # as the page's editor hands the cells back: NA where empty
    assert [models.block_from_row(r, i + 1) for i, r in enumerate(table.to_dict("records"))] == blocks
    assert models.block_rows([ConvBlock(8)]) == [{"type": "conv", **ConvBlock(8).__dict__}]
    no_type = {k: v for k, v in models.block_rows([ConvBlock(8)])[0].items() if k != "type"}
    assert models.block_from_row(no_type, 1) == ConvBlock(8)  # a table of conv blocks needs no type column
    residual = table.to_dict("records")[1]
    with pytest.raises(SpecError, match="block 2: 'channels' is empty"):
        models.block_from_row({**residual, "channels": pd.NA}, 2)
    with pytest.raises(SpecError, match="block 2: 'type' must be 'conv' or 'residual' or 'inception', got 'dense'"):
        models.block_from_row({**residual, "type": "dense"}, 2)
    with pytest.raises(SpecError, match="block 2: 'stride' must be 1 or 2, got 3"):
        models.block_from_row({**residual, "stride": 3.0}, 2)
