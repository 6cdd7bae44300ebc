"""Graph blocks in the spec (residual and Inception): names, costs, presets, hostile specs, diagram and words."""

import json
import time

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings, strategies as st
from torch import nn

from cnnviz import data, diagram, explain, figures, gradcam, models, probe, shapes
from cnnviz.models import ConvBlock, InceptionBlock, ModelSpec, ResidualBlock, SpecError


def _eval(spec: ModelSpec, seed: int = 0) -> nn.Sequential:
    return models.build(spec, seed=seed).eval()


def test_a_residual_block_with_zeroed_convs_is_relu_of_its_input():
    block = models.Residual(4, 4)
    for conv in (block.conv1, block.conv2):
        nn.init.zeros_(conv.weight)
    block.eval()  # fresh running statistics: mean 0, var 1; beta 0, so F(x) = bn2(0) = 0
    x = torch.randn(2, 4, 5, 5)
    assert isinstance(block.shortcut, nn.Identity)
    assert torch.allclose(block(x), torch.relu(x))
    assert torch.equal(block(-x.abs()), torch.zeros_like(x))


def test_a_residual_block_without_batchnorm_starts_as_relu_of_its_input():
    """Fixup's start: with nothing to rescale F(x), the second conv starts at zero and the block passes x on."""
    block = models.Residual(3, 3, batchnorm=False).eval()
    x = torch.randn(2, 3, 6, 6)
    assert torch.equal(block(x), torch.relu(x))
    assert block.conv1.weight.abs().sum() > 0  # only the last conv of F starts at zero, so F can still learn
    x.requires_grad_(True)
    block(x).sum().backward()  # ...and the gradient reaches conv2 through conv1's non-zero output
    assert block.conv2.weight.grad.abs().sum() > 0


def test_a_residual_block_without_batchnorm_has_biases_and_sums_conv2():
    block = models.Residual(2, 2, batchnorm=False).eval()
    assert block.bn1 is None and block.conv1.bias is not None
    torch.manual_seed(0)
    nn.init.normal_(block.conv2.weight)
    nn.init.normal_(block.conv2.bias)
    x = torch.randn(1, 2, 4, 4)
    fx = block.conv2(torch.relu(block.conv1(x)))
    assert torch.allclose(block(x), torch.relu(x + fx))


@pytest.mark.parametrize("c_in, channels, stride, size, out", [
    (8, 8, 1, 16, 16), (8, 16, 1, 16, 16), (8, 8, 2, 16, 8), (8, 16, 2, 15, 8), (3, 4, 2, 1, 1)])
def test_projection_shortcut_when_channels_or_size_change(c_in, channels, stride, size, out):
    block = models.Residual(c_in, channels, stride).eval()
    x = torch.randn(2, c_in, size, size)
    assert block(x).shape == (2, channels, out, out)
    if c_in == channels and stride == 1:
        assert isinstance(block.shortcut, nn.Identity)
    else:
        conv = block.shortcut.conv
        assert (conv.kernel_size, conv.stride, conv.in_channels, conv.out_channels) == ((1, 1), (stride, stride),
                                                                                          c_in, channels)
        assert block.shortcut(x).shape == block.bn2(block.conv2(block.conv1(x))).shape


def test_an_inception_block_stacks_its_branches():
    block = models.Inception(6, 3, 2, 5, 1, 4, 7).eval()
    x = torch.randn(2, 6, 9, 9)
    outs = [block.branch1x1(x), block.branch3x3(x), block.branch5x5(x), block.branchpool(x)]
    assert [o.shape[1] for o in outs] == [3, 5, 4, 7]
    assert torch.equal(block(x), torch.cat(outs, dim=1)) and block(x).shape == (2, 3 + 5 + 4 + 7, 9, 9)
    assert InceptionBlock(3, 2, 5, 1, 4, 7).channels == 19
    kernels = [m.kernel_size for m in block.branch5x5 if isinstance(m, nn.Conv2d)]
    assert kernels == [(1, 1), (5, 5)] and isinstance(block.branchpool.pool, nn.MaxPool2d)


def test_module_names_are_readable_and_stable():
    names = dict(_eval(models.preset("mini-resnet", 3, 32, 8)).named_modules())
    assert [n for n in names if n.startswith("block3.")] == [
        "block3.conv1", "block3.bn1", "block3.relu1", "block3.conv2", "block3.bn2", "block3.shortcut",
        "block3.shortcut.conv", "block3.shortcut.bn", "block3.add", "block3.relu"]
    assert isinstance(names["block2.shortcut"], nn.Identity) and isinstance(names["block2.add"], models.Add)
    names = dict(_eval(models.preset("mini-inception", 3, 32, 8)).named_modules())
    assert [n for n in names if n.startswith("inc2.branch3x3.")] == [
        "inc2.branch3x3.conv1", "inc2.branch3x3.bn1", "inc2.branch3x3.relu1", "inc2.branch3x3.conv2",
        "inc2.branch3x3.bn2", "inc2.branch3x3.relu2"]
    assert {"inc2.branch1x1.conv1", "inc2.branchpool.pool", "inc2.concat"} <= set(names)
    spec = ModelSpec(3, 16, 4, [ResidualBlock(8, pool="max", dropout=0.1), InceptionBlock(2, 2, 2, 2, 2, 2,
                                                                                       pool="avg")])
    assert [n for n, _ in _eval(spec).named_children()] == ["block1", "pool1", "drop1", "inc2", "pool2", "flatten",
                                                            "fc"]


def test_spec_json_with_every_block_type_round_trips():
    spec = ModelSpec(3, 32, 8, [ConvBlock(8), ResidualBlock(16, stride=2, batchnorm=False),
                                InceptionBlock(4, 4, 8, 2, 4, 4, pool="max", dropout=0.25)], global_pool=True)
    d = json.loads(json.dumps(spec.to_dict()))
    assert [b["type"] for b in d["blocks"]] == ["conv", "residual", "inception"]
    assert d["blocks"][1] == {"type": "residual", "channels": 16, "stride": 2, "batchnorm": False, "pool": "none",
                              "pool_size": 2, "dropout": 0.0}
    assert ModelSpec.from_dict(d) == spec


def test_an_old_spec_dict_without_types_loads_as_conv_blocks():
    old = {"in_channels": 3, "image_size": 32, "num_classes": 10, "hidden": 64, "head_dropout": 0.0,
           "global_pool": False, "blocks": [
               {"channels": 16, "kernel": 3, "padding": 1, "stride": 1, "activation": "relu", "pool": "max",
                "pool_size": 2, "batchnorm": True, "dropout": 0.0},
               {"channels": 32, "kernel": 5, "padding": 2, "stride": 1, "activation": "gelu", "pool": "avg",
                "pool_size": 2, "batchnorm": False, "dropout": 0.1}]}
    spec = ModelSpec.from_dict(old)
    assert spec.blocks == [ConvBlock(16, batchnorm=True), ConvBlock(32, 5, 2, 1, "gelu", "avg", 2, False, 0.1)]
    assert list(_eval(spec).state_dict()) == [
        "conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var", "bn1.num_batches_tracked",
        "conv2.weight", "conv2.bias", "fc1.weight", "fc1.bias", "fc.weight", "fc.bias"]


@pytest.mark.parametrize("block, words", [
    ({"type": "transformer", "channels": 8}, "block 2: 'type' must be 'conv' or 'residual' or 'inception', got "
                                            "'transformer'"),
    ({"type": None}, "block 2: 'type' must be"),
    ({"type": "residual", "channels": 8, "kernel": 3}, "block 2: unknown field 'kernel'"),
    ({"type": "residual"}, "block 2: 'channels' is missing"),
    ({"type": "residual", "channels": 8, "stride": 3}, "block 2: 'stride' must be 1 or 2, got 3"),
    ({"type": "residual", "channels": 8, "batchnorm": "yes"}, "block 2: 'batchnorm' must be true or false"),
    ({"type": "inception", "ch1x1": 8}, "block 2: 'ch3x3red' is missing"),
    ({"type": "inception", "ch1x1": 0, "ch3x3red": 1, "ch3x3": 1, "ch5x5red": 1, "ch5x5": 1, "pool_proj": 1},
     "block 2: 'ch1x1' must be a whole number from 1 to 256, got 0"),
    ({"type": "inception", "ch1x1": 100, "ch3x3red": 1, "ch3x3": 100, "ch5x5red": 1, "ch5x5": 50, "pool_proj": 7},
     "block 2: the Inception block's branches give 257 channels together; the limit is 256"),
])
def test_graph_block_fields_checked(block, words):
    good = models.preset("mini-resnet", 3, 32, 8).to_dict()
    good["blocks"][1] = block
    with pytest.raises(SpecError, match=__import__("re").escape(words)):
        ModelSpec.from_dict(good)


def test_costs_of_graph_blocks_by_hand():
    # residual 4 → 8 channels, stride 2, on 1×8×8 → 4×8×8 (conv1) → 8×4×4
    spec = ModelSpec(1, 8, 2, [ConvBlock(4, pool="none"), ResidualBlock(8, stride=2)], global_pool=True)
    params = (1 * 4 * 9 + 4) + (4 * 8 * 9 + 16 + 8 * 8 * 9 + 16 + 4 * 8 + 16) + (8 + 1) * 2
    macs = 4 * 9 * 64 + (4 * 8 * 9 + 8 * 8 * 9 + 4 * 8) * 16 + 8 * 2
    cost = models.check(spec)
    assert (cost.params, cost.macs) == (params, macs) == (models.count_params(_eval(spec)), macs)
    # the values a step keeps: input 64, conv1/relu1 256 each, block2: 9 layers of 8×4×4, gap 8, flatten 8, fc 2
    assert cost.train_bytes == 2 * 4 * models.TRAIN_BATCH * (64 + 2 * 256 + 9 * 128 + 8 + 8 + 2) + 16 * params
    # Inception from 2 channels on 4×4 maps: every conv (no bias) + its batchnorm
    spec = ModelSpec(1, 8, 2, [ConvBlock(2), InceptionBlock(1, 2, 3, 1, 2, 1)])
    convs = [(2, 1, 1), (2, 2, 1), (2, 3, 9), (2, 1, 1), (1, 2, 25), (2, 1, 1)]  # (in, out, kernel²)
    params = (1 * 2 * 9 + 2) + sum(i * o * k + 2 * o for i, o, k in convs) + (7 * 16 + 1) * 2
    assert models.check(spec).params == params == models.count_params(_eval(spec))
    assert models.check(spec).macs == 9 * 2 * 64 + sum(i * o * k for i, o, k in convs) * 16 + 7 * 16 * 2


def test_presets_cost_what_the_built_models_count():
    for name in ("mini-vgg", "mini-resnet", "mini-inception", "plain-20", "resnet-20"):
        for channels, size, classes in ((3, 32, 8), (1, 28, 10)):
            spec = models.preset(name, channels, size, classes)
            model = _eval(spec)
            assert models.check(spec).params == models.count_params(model), name
            with torch.no_grad():
                assert model(torch.zeros(2, channels, size, size)).shape == (2, classes)


def test_plain_20_and_resnet_20_have_the_same_19_convolutions_on_the_main_path():
    def convs(name: str) -> list[tuple]:
        model = _eval(models.preset(name, 3, 32, 8))
        return [(m.in_channels, m.out_channels, m.kernel_size, m.stride) for n, m in model.named_modules()
                if isinstance(m, nn.Conv2d) and "shortcut" not in n]

    plain, residual = convs("plain-20"), convs("resnet-20")
    assert plain == residual and len(plain) == 19
    blocks = models.preset("resnet-20", 3, 32, 8).blocks
    assert sum(isinstance(b, ResidualBlock) for b in blocks) == 9


# --- hostile specs ------------------------------------------------------------------------------------------------

_values = st.one_of(st.integers(-3, 300), st.sampled_from([0.0, 0.5, 1.0, float("nan"), True, None, "max", "relu",
                                                           "none", "avg", "2", 10 ** 30, [], {}]))
_fields = st.sampled_from(["channels", "stride", "pool", "pool_size", "dropout", "batchnorm", "kernel", "padding",
                           "activation", "ch1x1", "ch3x3red", "ch3x3", "ch5x5red", "ch5x5", "pool_proj", "type",
                           "bogus"])


@st.composite
def _block_dicts(draw) -> dict:
    kind = draw(st.sampled_from(["conv", "residual", "inception", None, "dense"]))
    good = {"conv": {"channels": draw(st.integers(1, 12))}, "residual": {"channels": draw(st.integers(1, 12))},
            "inception": {k: draw(st.integers(1, 6)) for k in ("ch1x1", "ch3x3red", "ch3x3", "ch5x5red", "ch5x5",
                                                                "pool_proj")}}.get(kind, {})
    block = {**({} if kind is None else {"type": kind}), **good}
    for _ in range(draw(st.integers(0, 1))):  # a field set to anything, valid or not
        block[draw(_fields)] = draw(_values)
    return block


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blocks=st.lists(_block_dicts(), min_size=1, max_size=4), size=st.sampled_from([8, 13, 32]),
       global_pool=st.booleans())
def test_any_block_dicts_give_a_working_model_or_a_spec_error(blocks, size, global_pool):
    d = {"in_channels": 3, "image_size": size, "num_classes": 4, "global_pool": global_pool, "blocks": blocks}
    try:
        spec = ModelSpec.from_dict(d)
    except SpecError:
        return
    cost = models.check(spec)  # known before any layer exists: the allocation is bounded by the limits
    assert cost.params <= models.MAX_PARAMS and cost.train_bytes <= models.MAX_TRAIN_BYTES
    model = _eval(spec)
    assert models.count_params(model) == cost.params
    rows = models.summary(spec)
    records = probe.run(model, torch.zeros(1, 3, size, size))
    assert [r.name for r in rows[1:]] == list(records)
    assert [r.output_shape for r in rows[1:]] == [rec.shape for rec in records.values()]
    assert records["fc"].output.shape == (1, 4)


def test_a_hostile_200_kb_spec_is_refused_cheaply(monkeypatch):
    made = []
    for cls in (nn.Linear, nn.Conv2d, nn.BatchNorm2d, models.Residual, models.Inception):
        monkeypatch.setattr(cls, "__init__", lambda self, *a, **k: made.append(a))
    inception = {"type": "inception", **{k: 256 for k in ("ch1x1", "ch3x3red", "ch3x3", "ch5x5red", "ch5x5",
                                                           "pool_proj")}}
    hostile = [
        {"in_channels": 3, "image_size": 32, "num_classes": 8, "blocks": [inception] * 6000},
        {"in_channels": 3, "image_size": 32, "num_classes": 8,
         "blocks": [{"type": "residual", "channels": 8, **{f"x{i}": i for i in range(20_000)}}]},
        {"in_channels": 3, "image_size": 32, "num_classes": 8, "blocks": [{"type": "r" * 200_000, "channels": 8}]},
        {"in_channels": 3, "image_size": 256, "num_classes": 8, "blocks": [{"type": "residual", "channels": 256}] * 24},
    ]
    for d in hostile:
        assert len(json.dumps(d)) > 150_000 or d["image_size"] == 256
        start = time.perf_counter()
        with pytest.raises(SpecError) as e:
            ModelSpec.from_dict(json.loads(json.dumps(d)))
        assert time.perf_counter() - start < 0.1 and len(str(e.value)) < 300
    assert made == []


# --- the other views on graph models -------------------------------------------------------------------------------

@pytest.mark.parametrize("name, layers", [
    ("mini-resnet", ["block2.add", "block2.relu", "block3.conv2", "block3.shortcut.conv"]),
    ("mini-inception", ["inc3.concat", "inc2.branch3x3.relu2", "inc3.branchpool.conv1"]),
])
def test_gradcam_works_inside_graph_blocks(name, layers):
    model = _eval(models.preset(name, 3, 32, 8))
    x = torch.randn(1, 3, 32, 32)
    for layer in layers:
        cam = gradcam.compute(model, x, layer=layer, target=2)
        assert cam.heatmap.shape == (32, 32) and cam.layer == layer and torch.isfinite(cam.heatmap).all()
        assert all(not m._forward_hooks for m in model.modules())
    assert gradcam.default_layer(model) in dict(model.named_modules())


def test_graph_models_learn_a_batch_of_shapes():
    x, y, _ = shapes.generate(64, seed=3)
    x = data.normalize(x, data.info("shapes"))
    for name in ("mini-resnet", "mini-inception"):
        model = models.build(models.preset(name, 3, 32, 8), seed=0).train()
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        losses = []
        for _ in range(25):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert losses[-1] < 0.5 * losses[0], (name, losses)


# --- the diagram and the words ------------------------------------------------------------------------------------

def _diagram_specs() -> list[ModelSpec]:
    return [models.preset(name, 3, 32, 8) for name in models.PRESETS] + [
        ModelSpec(1, 28, 10, [ResidualBlock(8, pool="max", dropout=0.1), InceptionBlock(2, 2, 4, 1, 2, 2,
                                                                                        dropout=0.2),
                              ConvBlock(8, kernel=5, padding=0, activation="gelu", stride=2, pool="avg")],
                  hidden=16, head_dropout=0.5)]


def test_diagram_nodes_hold_the_built_models_shapes_and_parameters():
    for spec in _diagram_specs():
        g = diagram.graph(spec)
        model = _eval(spec)
        records = probe.run(model, torch.zeros(1, spec.in_channels, spec.image_size, spec.image_size))
        modules = dict(model.named_modules())
        for node in g.nodes[1:]:
            assert node.shape == records[node.layers[-1]].shape, node.id
            assert node.params == sum(p.numel() for n in node.layers for p in modules[n].parameters()), node.id
        # every layer in exactly one node, in the order they run
        assert [n for node in g.nodes for n in node.layers] == list(records)
        assert sum(node.params for node in g.nodes) == models.count_params(model)
        ids = [node.id for node in g.nodes]
        assert len(set(ids)) == len(ids) and all(e.source in ids and e.target in ids for e in g.edges)
        assert g.nodes[0].shape == (spec.in_channels, spec.image_size, spec.image_size) and g.nodes[-1].id == "fc"


def test_diagram_draws_skips_and_branches():
    g = diagram.graph(models.preset("mini-resnet", 3, 32, 8))
    assert g.node("block2.shortcut").label == "identity: x as it is"
    assert g.node("block3.shortcut").label == "1×1 conv, 32 · bn" and g.node("block3.shortcut").params == 16 * 32 + 64
    assert {(e.source, e.target) for e in g.edges if e.skip} == {
        ("conv1", "block2.shortcut"), ("block2.shortcut", "block2.add"),
        ("block2.add", "block3.shortcut"), ("block3.shortcut", "block3.add")}
    assert ("block2", "block2.add") in {(e.source, e.target) for e in g.edges}
    g = diagram.graph(models.preset("mini-inception", 3, 32, 8))
    branches = [n for n in g.nodes if n.kind == "branch" and n.id.startswith("inc2.")]
    assert [n.label for n in branches] == ["1×1 conv, 8", "1×1 conv, 8 → 3×3 conv, 16", "1×1 conv, 4 → 5×5 conv, 8",
                                           "3×3 max pool → 1×1 conv, 8"]
    assert sum(n.shape[0] for n in branches) == g.node("inc2.concat").shape[0] == 40
    assert [e.source for e in g.edges if e.target == "inc2.concat"] == [n.id for n in branches]
    assert {n.level for n in branches} == {g.node("inc2.concat").level - 1} and [n.lane for n in branches] == [0, 1,
                                                                                                                 2, 3]
    fig = diagram.figure(g, title="mini-inception")
    ax = fig.axes[0]
    assert len(ax.patches) == len(g.nodes) + len(g.edges)
    assert any("inc2.branch5x5" in t.get_text() and "888 params" in t.get_text() for t in ax.texts)
    assert figures.to_png(fig)[:4] == b"\x89PNG"
    with pytest.raises(SpecError, match="at most 24 blocks"):
        diagram.graph(ModelSpec(3, 32, 8, [ConvBlock(4, pool="none")] * 25))


def test_words_for_a_residual_block_and_an_inception_block_are_measured():
    model = _eval(models.preset("mini-resnet", 3, 32, 8))
    records = probe.run(model, torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    view = probe.residual(records, "block3")
    words = explain.residual(view)
    ratio = float(view.fx.pow(2).mean().sqrt() / view.shortcut.pow(2).mean().sqrt())
    zeroed = float((view.sum <= 0).float().mean())
    assert f"F(x) is {ratio:.2f} times as large as x" in words and f"{zeroed:.0%} of the cells" in words
    assert "made 32 maps of 16×16 by the shortcut's 1×1 convolution" in words
    assert "passed on unchanged" in explain.residual(probe.residual(records, "block2"))
    model = _eval(models.preset("mini-inception", 3, 32, 8))
    view = probe.branches(probe.run(model, torch.randn(1, 3, 32, 32)), "inc3")
    means = {path.rpartition(".")[2]: float(t.mean()) for path, t in view.branches.items()}
    words = explain.branches(view)
    strongest = max(means, key=means.get)
    assert f"most active branch is {explain._BRANCHES[strongest]} (mean activation {means[strongest]:.2f})" in words
    assert "stacked into 56 maps of 16×16" in words and "then 5×5 (12 maps)" in words


@pytest.mark.parametrize("name, role", [
    ("block2.add", "in residual block 2, the sum x + F(x)"),
    ("block12.shortcut.conv", "in residual block 12, the shortcut's 1×1 convolution, which gives x the shape of F(x)"),
    ("inc3.branch3x3.conv1", "in Inception block 3, the first convolution of the 3×3 branch"),
    ("inc3.branch5x5.relu2", "in Inception block 3, the ReLU after the second convolution of the 5×5 branch"),
    ("inc3.concat", "in Inception block 3, the four branches' maps stacked"),
    ("conv1", ""), ("layer1.0.conv1", ""), ("block2.add.x", ""), ("inc3.branch7x7", ""),
])
def test_layer_roles(name, role):
    assert explain.layer_role(name) == role
