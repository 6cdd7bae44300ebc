"""Backpropagation for one weight: a tiny network computed by hand, autograd's agreement everywhere, one SGD step."""

import copy
import math
from collections import OrderedDict

import pytest
import torch
from hypothesis import given, settings, strategies as st
import torch.nn.functional as F
from torch import nn

from cnnviz import backprop, probe


def _hand_model(inplace: bool = False) -> nn.Sequential:
    """1×3×3 input → 2×2 conv (1 filter) → ReLU → flatten (4) → linear (2 classes), weights set by hand."""
    model = nn.Sequential(OrderedDict(conv1=nn.Conv2d(1, 1, 2, bias=False), relu1=nn.ReLU(inplace=inplace),
                                      flatten=nn.Flatten(), fc=nn.Linear(4, 2)))
    with torch.no_grad():
        model.conv1.weight.copy_(torch.tensor([[[[1.0, 0.0], [-1.0, 1.0]]]]))
        model.fc.weight.copy_(torch.tensor([[0.5, 0.0, 1.0, 0.0], [0.0, 0.25, 0.0, -1.0]]))
        model.fc.bias.zero_()
    return model


X = torch.tensor([[[1.0, 2.0, 0.0], [0.0, 1.0, 3.0], [2.0, 1.0, 1.0]]])  # (1, 3, 3)


def test_the_chain_rule_on_a_network_computed_by_hand():
    # Forward: conv = [[2, 4], [-1, 1]] (e.g. top-left: 1·1 + 0·2 - 1·0 + 1·1 = 2); ReLU zeroes the -1;
    # flattened h = (2, 4, 0, 1); logits z0 = 0.5·2 + 1·0 = 1, z1 = 0.25·4 - 1·1 = 0.
    p0 = math.e / (math.e + 1)  # softmax of (1, 0)
    loss = math.log(1 + math.e)  # -log p1 with p1 = 1 / (e + 1)
    grad_logits = [p0, (1 - p0) - 1]  # p - onehot(1)
    grad_h = [0.5 * grad_logits[0], 0.25 * grad_logits[1], 1.0 * grad_logits[0], -1.0 * grad_logits[1]]  # Vᵀ g
    grad_conv = [[grad_h[0], grad_h[1]], [0.0, grad_h[3]]]  # the ReLU passes the gradient only where conv > 0
    inputs = [[1.0, 3.0], [1.0, 1.0]]  # X[y + 1, x + 1]: what w[0, 0, 1, 1] multiplies at each output position
    gradient = sum(grad_conv[y][x] * inputs[y][x] for y in range(2) for x in range(2))  # 0.75 p0

    model = _hand_model()
    c = backprop.chain(model, X, 1, backprop.Weight("conv1", 0, 0, 1, 1))
    assert c.loss == pytest.approx(loss, rel=1e-12)
    assert c.logits.tolist() == pytest.approx([1.0, 0.0])
    assert c.probs.tolist() == pytest.approx([p0, 1 - p0])
    assert c.grad_logits.tolist() == pytest.approx(grad_logits)
    assert [(s.layer, s.wrt) for s in c.steps] == [("fc", "the input of fc"), ("flatten", "the input of flatten"),
                                                   ("relu1", "the input of relu1")]
    assert c.steps[0].grad_input.tolist() == pytest.approx(grad_h)
    assert c.steps[0].grad_output_norm == pytest.approx(math.hypot(*grad_logits))
    assert c.steps[1].input_shape == (1, 2, 2) and c.steps[1].output_shape == (4,)
    flat = [g for row in grad_conv for g in row]
    assert c.steps[2].grad_input.flatten().tolist() == pytest.approx(flat)
    assert c.upstream.flatten().tolist() == pytest.approx(flat)
    assert c.inputs.tolist() == inputs
    assert c.gradient == pytest.approx(gradient, rel=1e-12) and gradient == pytest.approx(0.75 * p0)
    assert c.autograd == pytest.approx(gradient, rel=1e-12) and c.agrees and c.relative_error < 1e-12
    assert c.weight_value == 1.0
    top = c.top_terms(2)  # the largest products: 1 · 0.73 at (1, 1), then 3 · (-0.18) at (0, 1)
    assert [t[:2] for t in top] == [(1, 1), (0, 1)]
    assert [v for t in top for v in t[2:]] == pytest.approx([grad_conv[1][1], 1.0, grad_conv[1][1],
                                                             grad_conv[0][1], 3.0, 3 * grad_conv[0][1]])


def test_one_sgd_step_lowers_the_loss_by_about_what_the_gradient_predicts():
    model = _hand_model()
    weight = backprop.Weight("conv1", 0, 0, 1, 1)
    g = 0.75 * math.e / (math.e + 1)
    step = backprop.sgd_step(model, X, 1, weight, lr=0.1)
    assert step.gradient == pytest.approx(g) and step.weight_after == pytest.approx(1.0 - 0.1 * g)
    assert step.loss_before == pytest.approx(math.log(1 + math.e))
    assert step.loss_after < step.loss_before and step.prob_after > step.prob_before
    assert step.predicted_change == pytest.approx(-0.1 * g ** 2)
    assert step.change == pytest.approx(step.predicted_change, rel=0.1)  # first order: close for a small step
    everything = backprop.sgd_step(model, X, 1, weight, lr=0.1, everything=True)
    assert everything.change < step.change < 0  # every weight moving downhill lowers the loss more
    assert model.conv1.weight[0, 0, 1, 1].item() == 1.0  # the model itself was not changed
    with pytest.raises(ValueError, match="learning rate"):
        backprop.sgd_step(model, X, 1, weight, lr=0.0)


class _Residual(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU()
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(x + self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x))))))


class _Inception(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.branch1x1 = nn.Conv2d(c, 2, 1)
        self.branch3x3 = nn.Sequential(nn.Conv2d(c, 2, 1), nn.ReLU(), nn.Conv2d(2, 3, 3, padding=1))
        self.branchpool = nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.Conv2d(c, 1, 1))

    def forward(self, x):
        return torch.cat([self.branch1x1(x), self.branch3x3(x), self.branchpool(x)], 1)


def _blocks_model() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(3, 4, 3, padding=1), relu1=nn.ReLU(inplace=True), block1=_Residual(4), inc1=_Inception(4),
        pool=nn.MaxPool2d(2), gap=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(), fc=nn.Linear(6, 5)))
    for m in model.modules():  # batch-norm statistics that are not the identity
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model


@pytest.mark.parametrize("layer, steps", [
    ("conv1", ["fc", "flatten", "gap", "pool", "inc1", "block1", "relu1"]),
    ("block1.conv1", ["fc", "flatten", "gap", "pool", "inc1", "block1"]),
    ("block1.conv2", ["fc", "flatten", "gap", "pool", "inc1", "block1"]),
    ("inc1.branch3x3.2", ["fc", "flatten", "gap", "pool", "inc1"]),
    ("fc", []),
])
def test_blocks_and_branches_agree_with_autograd(layer, steps):
    model = _blocks_model()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(1))
    c = backprop.chain(model, x, 3, backprop.Weight(layer, 1))
    assert [s.layer for s in c.steps] == steps and c.agrees
    # The weight whose gradient is largest, from autograd on a copy: a check that cannot pass on zeros.
    twin = copy.deepcopy(model).eval()
    loss = F.cross_entropy(twin(x[None]), torch.tensor([3]))
    grad = torch.autograd.grad(loss, probe.get_module(twin, layer).weight)[0]
    index = [int(i) for i in torch.unravel_index(grad.abs().argmax(), grad.shape)]
    c = backprop.chain(model, x, 3, backprop.Weight(layer, *index))
    assert c.agrees and c.autograd == pytest.approx(grad[tuple(index)].item(), rel=1e-5) and abs(c.autograd) > 1e-3
    if "." in layer:
        assert c.steps[-1].wrt == f"the output of {layer}"
    # The model is as it was: weights, statistics, mode, gradients and hooks.
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert model.training and all(p.grad is None for p in model.parameters())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize("conv", [
    nn.Conv2d(4, 6, 3, stride=2, padding=1),
    nn.Conv2d(4, 6, 3, padding="same", dilation=2),
    nn.Conv2d(4, 6, (3, 2), padding=(2, 1), stride=(1, 2)),
    nn.Conv2d(4, 6, 3, groups=2, padding=1, padding_mode="reflect"),
    nn.Conv2d(4, 6, 4, padding="same", padding_mode="circular"),
])
def test_strides_padding_dilation_and_groups(conv):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Tanh(), conv, nn.Flatten(), nn.LazyLinear(4))
    x = torch.randn(1, 3, 9, 9)
    model(x)  # materialise the lazy layer
    for weight in (backprop.Weight("2", 5, 1, 1, 1), backprop.Weight("2", 0, 0, 0, 0)):
        c = backprop.chain(model, x, 2, weight)
        assert c.agrees, (weight, c.gradient, c.autograd)
        assert c.upstream.shape == c.inputs.shape == model[2](model[1](model[0](x))).shape[-2:]


def test_any_module_is_one_step():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(1, 2, 3), nn.Linear(2, 3)

        def forward(self, x):
            return self.fc(self.conv(x).relu().mean((2, 3)))

    torch.manual_seed(0)
    c = backprop.chain(Net(), torch.randn(1, 5, 5), 0, backprop.Weight("conv", 1, 0, 2, 1))
    assert [(s.layer, s.wrt) for s in c.steps] == [("Net", "the output of conv")] and c.agrees


def test_a_layer_called_twice_is_refused():
    relu = nn.ReLU()
    model = nn.Sequential(nn.Conv2d(1, 1, 1), relu, nn.Conv2d(1, 1, 1), relu, nn.Flatten(), nn.Linear(4, 2))
    c = backprop.chain(model, torch.ones(1, 2, 2), 0, backprop.Weight("2", 0))
    assert c.agrees
    shared = nn.Conv2d(1, 1, 1)
    twice = nn.Sequential(OrderedDict(a=shared, b=nn.ReLU()))
    twice.add_module("c", shared)
    twice.add_module("f", nn.Flatten())
    twice.add_module("fc", nn.Linear(4, 2))
    with pytest.raises(ValueError, match="ran 2 times"):
        backprop.chain(nn.Sequential(OrderedDict(net=twice)), torch.ones(1, 2, 2), 0, backprop.Weight("net.a", 0))
    with pytest.raises(ValueError, match="ran 2 times"):  # used again in a later top-level layer
        backprop.chain(twice, torch.ones(1, 2, 2), 0, backprop.Weight("a", 0))


def test_in_place_relu_after_the_layer():
    c = backprop.chain(_hand_model(inplace=True), X, 1, backprop.Weight("conv1", 0, 0, 1, 1))
    assert c.gradient == pytest.approx(0.75 * math.e / (math.e + 1)) and c.agrees


def test_bad_choices_are_refused_in_words():
    model = _hand_model()
    with pytest.raises(probe.UnknownLayerError, match="valid layer names"):
        backprop.chain(model, X, 1, backprop.Weight("conv9", 0))
    with pytest.raises(ValueError, match="pick a Conv2d or Linear"):
        backprop.chain(model, X, 1, backprop.Weight("relu1", 0))
    with pytest.raises(ValueError, match="ky of 'conv1' must be a whole number from 0 to 1, got 2"):
        backprop.chain(model, X, 1, backprop.Weight("conv1", 0, 0, 2, 0))
    with pytest.raises(ValueError, match="class index from 0 to 1, got 2"):
        backprop.chain(model, X, 2, backprop.Weight("conv1", 0))
    with pytest.raises(ValueError, match="one image"):
        backprop.chain(model, X.expand(2, 1, 3, 3), 1, backprop.Weight("conv1", 0))
    with pytest.raises(ValueError, match="finite"):
        backprop.chain(model, torch.full((1, 3, 3), math.nan), 1, backprop.Weight("conv1", 0))


@settings(max_examples=60, deadline=None)
@given(layer=st.sampled_from(["conv1", "fc", "relu1", "", "conv1.x", "fc#2"]),
       index=st.tuples(*[st.one_of(st.integers(-3, 5), st.floats(allow_nan=True), st.none(), st.booleans())] * 4),
       label=st.one_of(st.integers(-2, 3), st.floats(), st.text(max_size=2)))
def test_hostile_choices_give_a_value_error_or_an_agreeing_gradient(layer, index, label):
    try:
        c = backprop.chain(_hand_model(), X, label, backprop.Weight(layer, *index))
    except ValueError:
        return
    assert c.agrees and math.isfinite(c.gradient)
