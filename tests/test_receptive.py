"""Tests for cnnviz.receptive: hand-checked architectures, and the gradient of one unit as the ground truth."""

import threading
import types
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.ops.misc import SqueezeExcitation

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


# Graphs: residual additions, concatenated branches, functional code and the torchvision zoo.


class TinyResidual(nn.Module):
    """A stem, a residual block whose two paths see different windows, and a ReLU module called twice."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 2, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        # 'same' with an even kernel pads one more pixel after than before: these windows lean right and down.
        self.branch = nn.Sequential(nn.Conv2d(2, 2, 2, padding="same"), nn.Conv2d(2, 2, 2, padding="same"))
        self.skip = nn.Conv2d(2, 2, 3, padding=1)
        self.head = nn.Linear(2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu(self.stem(x)))
        x = self.relu(self.branch(x) + self.skip(x))
        return self.head(x.mean((2, 3)))


class TinyInception(nn.Module):
    """Four branches of different windows concatenated along channels (Szegedy et al. 2015, Fig. 2b), in functional
    style, then a pool and a flatten."""

    def __init__(self) -> None:
        super().__init__()
        self.b1 = nn.Conv2d(1, 2, 1)
        self.b3 = nn.Sequential(nn.Conv2d(1, 2, 1), nn.Conv2d(2, 2, 3, padding=1))
        self.b5 = nn.Conv2d(1, 2, 5, padding=2)
        self.bpool = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), nn.Conv2d(1, 2, 1))
        self.fc = nn.Linear(8 * 6 * 6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.b1(x), self.b3(x), self.b5(x), self.bpool(x)], dim=1)
        x = F.max_pool2d(F.relu(x), 2)
        return self.fc(torch.flatten(x, 1))


def test_residual_block_known_answer():
    # stem 3×3: 3 px; pool 2: 4 px, jump 2, centre 0.5. Branch 2×2 'same' twice: 6 then 8 px, centres 1.5 then 2.5
    # (pixels -1..4, then -1..6). Skip 3×3: 8 px centred at 0.5 (pixels -3..4). Their sum sees -3..6: 10 px, 1.5.
    fields = receptive_fields(TinyResidual(), 16)
    assert _table(fields) == [
        ("stem", 3, 1, 0.0, 16), ("relu", 3, 1, 0.0, 16), ("pool", 4, 2, 0.5, 8),
        ("branch.0", 6, 2, 1.5, 8), ("branch.1", 8, 2, 2.5, 8), ("skip", 8, 2, 0.5, 8), ("relu#2", 10, 2, 1.5, 8),
    ]
    assert window(fields[-1], 0, 0, 16) == (0, 0, 7, 7) and window(fields[-1], 7, 7, 16) == (11, 11, 16, 16)


def test_concatenated_branches_known_answer():
    fields = receptive_fields(TinyInception(), 12)
    # The concatenation sees what its widest branch sees (5×5); the functional max pool 2 then adds 1 px at jump 1.
    assert _table(fields) == [
        ("b1", 1, 1, 0.0, 12), ("b3.0", 1, 1, 0.0, 12), ("b3.1", 3, 1, 0.0, 12), ("b5", 5, 1, 0.0, 12),
        ("bpool.0", 3, 1, 0.0, 12), ("bpool.1", 3, 1, 0.0, 12),
    ]
    model = nn.Sequential(TinyInception().requires_grad_(False))  # the same graph one level down: same names below
    assert [f.name for f in receptive_fields(model, 12)] == [f"0.{f.name}" for f in fields]


def test_functional_code_as_in_the_pytorch_mnist_example():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(1, 32, 3, 1), nn.Conv2d(32, 64, 3, 1)
            self.fc1 = nn.Linear(9216, 10)

        def forward(self, x):
            x = F.relu(self.conv2(F.relu(self.conv1(x))))
            x = F.dropout(F.max_pool2d(x, 2), 0.25, self.training)
            return F.log_softmax(self.fc1(x.view(x.size(0), -1)), dim=1)

    assert _table(receptive_fields(Net(), 28)) == [("conv1", 3, 1, 1.0, 26), ("conv2", 5, 1, 2.0, 24)]


def test_squeeze_excitation_gate_keeps_the_main_paths_field():
    # MobileNetV3's SE block multiplies each channel by a number pooled from the whole map; by the convention in
    # cnnviz.receptive the gate is left out, so the product keeps the main path's 3×3 field.
    class SE(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Conv2d(4, 4, 1)
            self.act = nn.Hardswish()

        def forward(self, x):
            x = self.conv(x)
            x = x * torch.sigmoid(self.fc(self.pool(x)))
            return self.act(x) * self.fc(x.mean((2, 3), keepdim=True)).flatten(1)[:, :, None, None]

    assert _table(receptive_fields(SE(), 8)) == [
        ("conv", 3, 1, 0.0, 8), ("pool", 10, 8, 3.5, 1), ("fc", 10, 8, 3.5, 1), ("act", 3, 1, 0.0, 8),
        ("fc#2", 10, 8, 3.5, 1),
    ]


def test_a_childless_custom_module_is_read_from_its_own_forward():
    class Swish(nn.Module):
        def forward(self, x):
            return x * torch.sigmoid(x)

    class Crop(nn.Module):
        def forward(self, x):
            return x[..., 1:, 1:]

    model = nn.Sequential(nn.Conv2d(1, 1, 3), Swish(), nn.MaxPool2d(2))
    assert _table(receptive_fields(model, 10)) == [("0", 3, 1, 1.0, 8), ("1", 3, 1, 1.0, 8), ("2", 4, 2, 1.5, 4)]
    with pytest.raises(ValueError, match=r"layer '1' \(Crop\).*getitem.*indexes or crops"):
        receptive_fields(nn.Sequential(nn.Conv2d(1, 1, 3), Crop()), 10)


def test_graph_errors_name_the_node():
    class Untraceable(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x

    class Jumps(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fine, self.coarse = nn.Conv2d(1, 1, 9), nn.Conv2d(1, 1, 1, stride=2)

        def forward(self, x):
            return self.fine(x) + self.coarse(x)  # both 8×8 for a 16×16 input, 1 and 2 pixels apart

    class Resize(nn.Module):
        def forward(self, x):
            return F.interpolate(x, scale_factor=2)

    with pytest.raises(ValueError, match="forward pass of Untraceable could not be followed.*pixels' values"):
        receptive_fields(Untraceable(), 8)
    with pytest.raises(ValueError, match=r"operation 'add' in 'block' merges maps whose units are \[1, 2\] input"):
        receptive_fields(nn.Sequential(OrderedDict(block=Jumps())), 16)
    with pytest.raises(ValueError, match=r"operation 'interpolate' is not an operation whose receptive field"):
        receptive_fields(Resize(), 8)
    with pytest.raises(ValueError, match="adaptive pooling from 7×7 to 2×2"):
        receptive_fields(nn.Sequential(nn.AdaptiveMaxPool2d(2)), 7)


def test_other_threads_running_the_model_meanwhile_are_undisturbed():
    # Streamlit serves every session from a thread of one process: receptive fields for one session must not touch
    # what another session's forward passes see (torch.fx tracing would: it patches nn.Module.__call__ globally).
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x)
    errors, done = [], threading.Event()

    def forward() -> None:
        try:
            while not done.is_set():
                calls = []
                handle = model.layer1[0].relu.register_forward_hook(lambda *_: calls.append(1))
                try:
                    with torch.no_grad():
                        assert torch.equal(model(x), expected)
                finally:
                    handle.remove()
                assert len(calls) == 2
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    def fields() -> None:
        try:
            for _ in range(4):
                assert receptive_fields(model, 64)[-2].size == 435  # layer4.1.relu#2, whatever the input size
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    workers = [threading.Thread(target=forward)]  # one: two would see each other's hooks
    tracers = [threading.Thread(target=fields) for _ in range(2)]
    for t in workers + tracers:
        t.start()
    for t in tracers:
        t.join()
    done.set()
    for t in workers:
        t.join()
    assert errors == []
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_the_model_is_left_as_it_was():
    model = torchvision.models.resnet18(num_classes=10).train()
    model.fc.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    receptive_fields(model, 64)
    assert all(m.training for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == [not n.startswith("fc.") for n, _ in
                                                             model.named_parameters()]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # BN statistics too
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_published_fields_of_the_zoo():
    # Araujo, Norris & Sim 2019, Table 1: AlexNet 195, VGG-16 212 px. ResNet-18 by hand: conv1 7 (jump 2), maxpool
    # 11 (jump 4), then 2 × 3×3 per block: layer1 +4·2·4 = 43, layer2 +16 at jump 4 then +48 at jump 8 = 99,
    # layer3 +32 +96 = 211, layer4 +64 +192 = 435 (jump 32).
    last = {name: receptive_fields(_zoo(name), 224) for name in ("alexnet", "vgg16", "resnet18")}  # weights unread
    assert _table([next(f for f in last["alexnet"] if f.name == "features.12")]) == [("features.12", 195, 32, 31.0, 6)]
    assert _table([next(f for f in last["vgg16"] if f.name == "features.30")]) == [("features.30", 212, 32, 15.5, 7)]
    resnet = {f.name: f for f in last["resnet18"]}
    assert _table([resnet["layer4.1.relu#2"]]) == [("layer4.1.relu#2", 435, 32, 0.0, 7)]
    assert [resnet[f"layer{i}.1.relu#2"].size for i in (1, 2, 3)] == [43, 99, 211]


def test_resnet18_layer4_sees_435_pixels_by_its_gradient():
    # Unit (0, 0) of layer4 is centred on pixel 0 and sees 217 pixels either side: rows and columns 0..217.
    model = _positive(_zoo("resnet18"))
    rf = {f.name: f for f in receptive_fields(model, 224)}["layer4.1.relu#2"]
    assert window(rf, 0, 0, 224) == (0, 0, 218, 218)
    (support,) = _supports(model, [("layer4.1.relu#2", 0, 0)], 224)
    assert _box(support) == (0, 0, 218, 218)


# Input sizes small enough for a quick backward pass per layer; VGG and AlexNet end in adaptive pools to 7×7 and 6×6
# that need a 224² input, so their fields come from 224², which is the same for every layer before that pool.
ZOO_SIZES = {"resnet18": 64, "googlenet": 64, "mobilenet_v3_small": 64, "vgg16": 48, "alexnet": 64}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ZOO_SIZES))
def test_zoo_fields_match_the_gradient_of_one_unit_of_every_layer(name):
    """The second method: in a copy with positive weights, average pools for max pools and no clipping, the input
    gradient of a unit is non-zero exactly on the in-image part of its receptive field."""
    size = ZOO_SIZES[name]
    model = _positive(_zoo(name))
    field_size = 224 if name in ("vgg16", "alexnet") else size
    fields = [f for f in receptive_fields(model, field_size) if field_size == size or f.name.startswith("features")]
    records = probe.run(model, torch.ones(1, 3, size, size))
    assert [f.name for f in fields] == [n for n in records if records[n].output.ndim == 4][:len(fields)]
    if field_size == size:
        assert [f.out_size for f in fields] == [records[f.name].output.shape[-1] for f in fields]
    # Unit (0, last) of each layer: its bottom edge and its left edge are inside the image for all but the
    # widest fields, so one unit pins both the size and the offset.
    cells = []
    for f in fields:
        last = records[f.name].output.shape[-1] - 1
        cells.append((f.name, 0, last))
    supports = _supports(model, cells, size)
    for f, (_, row, col), support in zip(fields, cells, supports):
        rf = RF(f.name, f.size, f.jump, f.start, records[f.name].output.shape[-1])
        assert _box(support) == window(rf, row, col, size), f.name


def _zoo(name: str) -> nn.Module:
    """The architecture with uninitialised weights (on the meta device: no memory): :func:`_positive` fills them.

    As cnnviz.zoo builds them for inference: GoogLeNet without its training-only auxiliary classifiers."""
    kwargs = {"aux_logits": False, "transform_input": True, "init_weights": False} if name == "googlenet" else {}
    with torch.device("meta"):  # skips torchvision's random initialisation, seconds for VGG-16's 138 M weights
        return torchvision.models.get_model(name, weights=None, **kwargs).eval().requires_grad_(False)


def _positive(model: nn.Module) -> nn.Module:
    """Weights that average (so nothing overflows), BN as the identity, max pools as average pools (a max passes
    its gradient to one winner only), ReLUs that never clip and squeeze-excitation gates without a gradient."""
    model.to_empty(device="cpu")
    for module in list(model.modules()):
        for child_name, child in module.named_children():
            if isinstance(child, nn.MaxPool2d):
                setattr(module, child_name, nn.AvgPool2d(child.kernel_size, child.stride, child.padding,
                                                         child.ceil_mode))
            if isinstance(child, SqueezeExcitation):
                child._scale = types.MethodType(_detached_scale, child)  # bound: copies of the model rebind it
        if hasattr(module, "inplace"):
            module.inplace = False  # the hooks below read layer outputs after the forward pass
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                module.weight.fill_(1 / module.weight[0].numel())
                if module.bias is not None:
                    module.bias.zero_()
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.zero_(), module.running_var.fill_(1), module.weight.fill_(1), module.bias.zero_()
            if isinstance(module, nn.Linear):  # after the maps: it only has to hold numbers
                module.weight.zero_(), module.bias.zero_()
    return model


def _detached_scale(self: SqueezeExcitation, x: torch.Tensor) -> torch.Tensor:
    return SqueezeExcitation._scale(self, x).detach()


def _supports(model: nn.Module, cells: list[tuple[str, int, int]], size: int) -> torch.Tensor:
    """|d units / d input| summed over colours, (B, size, size), for the units at (row, col) of all channels of each
    layer: a layer's field is the union over its channels (after a concatenation, each branch's channels see their
    branch's own window).

    One forward and one backward pass for all: image b of the batch only feeds the units asked for in cells[b]."""
    x = torch.ones(len(cells), 3, size, size, requires_grad=True)
    wanted: dict[str, list[int]] = {}
    for b, (name, _, _) in enumerate(cells):
        wanted.setdefault(name, []).append(b)
    units, calls = [], {}

    def hook(path: str):
        def keep(module, args, output):
            calls[path] = calls.get(path, 0) + 1
            name = path if calls[path] == 1 else f"{path}#{calls[path]}"
            for b in wanted.get(name, []):
                units.append(output[b, :, cells[b][1], cells[b][2]].sum())
        return keep

    paths = {probe.split_name(name)[0] for name in wanted}
    handles = [m.register_forward_hook(hook(p)) for p, m in model.named_modules() if p in paths]
    try:
        with torch.enable_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    assert len(units) == len(cells)
    (grad,) = torch.autograd.grad(torch.stack(units).sum(), x)
    return grad.abs().sum(1)


def _box(support: torch.Tensor) -> tuple[int, int, int, int]:
    """Bounding box (top, left, bottom, right) of the non-zero entries of (H, W)."""
    rows, cols = support.nonzero(as_tuple=True)
    return int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1


# The graph blocks of cnnviz.models: a residual sum sees what its wider path sees, a concatenation its widest branch.

def test_spec_built_residual_and_inception_blocks_known_answers():
    # stem 3×3 (3 px), pool 2 (4 px, jump 2, centre 0.5); each 3×3 conv adds 2 × 2 px and a 5×5 one 4 × 2 px
    rf = {f.name: (f.size, f.jump, f.out_size) for f in receptive_fields(
        models.build(models.preset("mini-resnet", 3, 32, 8)), 32)}
    assert rf["block2.conv1"] == (8, 2, 16) and rf["block2.conv2"] == (12, 2, 16)
    assert rf["block2.shortcut"] == (4, 2, 16)  # the identity: x as it came in
    assert rf["block2.add"] == rf["block2.relu"] == (12, 2, 16)
    assert rf["block3.shortcut.conv"] == (12, 2, 16) and rf["block3.add"] == (20, 2, 16)
    assert rf["gap"] == (20 + 15 * 2, 32, 1)
    rf = {f.name: (f.size, f.jump, f.out_size) for f in receptive_fields(
        models.build(models.preset("mini-inception", 3, 32, 8)), 32)}
    assert [rf[f"inc2.{b}"][0] for b in ("branch1x1.relu1", "branch3x3.relu2", "branch5x5.relu2",
                                         "branchpool.relu1", "concat")] == [4, 8, 12, 8, 12]
    assert rf["inc3.branch5x5.relu2"] == rf["inc3.concat"] == (20, 2, 16)
    strided = ModelSpec(1, 16, 2, [ConvBlock(2, pool="none"), models.ResidualBlock(4, stride=2)])
    rf = {f.name: (f.size, f.jump, f.out_size) for f in receptive_fields(models.build(strided), 16)}
    assert rf["block2.conv1"] == (5, 2, 8) and rf["block2.conv2"] == (9, 2, 8)
    assert rf["block2.shortcut.conv"] == (3, 2, 8) and rf["block2.add"] == (9, 2, 8)


@pytest.mark.parametrize("name", ["mini-resnet", "mini-inception"])
def test_spec_built_graph_fields_match_the_gradient_of_one_unit_of_every_layer(name):
    size = 32
    model = _positive(models.build(models.preset(name, 3, size, 8)).eval())
    fields = receptive_fields(model, size)
    records = probe.run(model, torch.ones(1, 3, size, size))
    assert [f.name for f in fields] == [n for n in records if records[n].output.ndim == 4]
    cells = [(f.name, 0, f.out_size - 1) for f in fields]
    for f, (_, row, col), support in zip(fields, cells, _supports(model, cells, size)):
        assert _box(support) == window(f, row, col, size), f.name
