"""Backpropagation for one weight: the chain rule from the loss back to one number of one filter, step by step.

For one image and its label, the loss is ``L = -log p_label`` with ``p = softmax(logits)``, so ``∂L/∂logits = p -
onehot(label)``. Each layer after the chosen one hands the gradient at its output back to its input: a
vector-Jacobian product, computed here layer by layer with ``torch.autograd.grad`` on that layer alone. At the chosen
convolution, the gradient of one weight ``w[o, i, ky, kx]`` is a sum over the output positions ``(y, x)`` of the
gradient arriving there times the input value that weight multiplied there:

    ∂L/∂w[o, i, ky, kx] = Σ_y Σ_x ∂L/∂out[o, y, x] · in_padded[i, y·s + ky·d, x·s + kx·d]

(stride ``s``, dilation ``d``). The result is checked against autograd's gradient of the whole network. Then one
step of gradient descent, ``w ← w - lr · ∂L/∂w``, on that weight alone or on all of them, lowers the loss for a small
enough learning rate, by about ``lr · (∂L/∂w)²`` (Rumelhart, Hinton & Williams 1986, "Learning representations by
back-propagating errors").

The chain follows the top-level layers of an ``nn.Sequential`` (``conv1, relu1, pool1, …, flatten, fc``); a block
(``block2`` holding ``block2.conv1``) is one step back to the chosen layer's output, whatever its skips and branches;
any other module is one step from its logits back to the chosen layer. Everything is computed in float64 on the CPU,
on a copy of the model in eval mode, so the numbers are the mathematics' and the model is left as it was.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnviz import probe

TOLERANCE = 1e-6  # the chain rule's gradient and autograd's agree to this relative difference (float64: ~1e-15)
MAX_PARAMS = 30_000_000  # the float64 copy: 240 MB


@dataclass(frozen=True)
class Weight:
    """One weight: ``layer``'s ``weight[out_channel, in_channel, ky, kx]`` (a Linear layer's ``[out, in]``, ky = kx
    = 0). ``in_channel`` counts the input channels of the filter, which for grouped convolutions is a group's."""

    layer: str
    out_channel: int
    in_channel: int = 0
    ky: int = 0
    kx: int = 0


@dataclass
class ChainStep:
    """One vector-Jacobian product: the gradient at ``layer``'s output, handed back to ``wrt``."""

    layer: str  # the top-level layer (or block) whose Jacobian this applies
    module_type: str
    wrt: str  # what the new gradient is taken with respect to, in words: "the input of fc"
    output_shape: tuple[int, ...]  # without the batch dim
    input_shape: tuple[int, ...]
    grad_output_norm: float  # ‖∂L/∂output‖
    grad_input_norm: float  # ‖∂L/∂input‖
    grad_input: Tensor  # ∂L/∂input, float32, input_shape


@dataclass
class Chain:
    """Every number of the chain rule for one weight and one image, from the loss to the weight."""

    weight: Weight
    label: int
    loss: float  # -log p[label]
    logits: Tensor  # (K,) float32, as are the tensors below
    probs: Tensor  # (K,) softmax of the logits
    grad_logits: Tensor  # (K,) ∂L/∂logits = probs - onehot(label)
    steps: list[ChainStep]  # from the logits back to the chosen layer's output, in that order
    upstream: Tensor  # (H_out, W_out) ∂L/∂out[o] at the chosen layer's output channel ((1, 1) for a Linear layer)
    inputs: Tensor  # (H_out, W_out) the input value the weight multiplied at each output position
    terms: Tensor  # (H_out, W_out) upstream × inputs
    gradient: float  # Σ terms, computed in float64
    autograd: float  # ∂L/∂w from autograd on the whole network
    weight_value: float

    @property
    def relative_error(self) -> float:
        scale = max(abs(self.gradient), abs(self.autograd))
        return abs(self.gradient - self.autograd) / scale if scale > 0 else 0.0

    @property
    def agrees(self) -> bool:
        return self.relative_error <= TOLERANCE

    def top_terms(self, k: int = 5) -> list[tuple[int, int, float, float, float]]:
        """The ``k`` largest terms of the sum by size: ``(y, x, upstream, input, product)`` each."""
        flat = self.terms.flatten()
        order = flat.abs().argsort(descending=True)[:k].tolist()
        width = self.terms.shape[1]
        return [(i // width, i % width, self.upstream.flatten()[i].item(), self.inputs.flatten()[i].item(),
                 flat[i].item()) for i in order]


@dataclass(frozen=True)
class SGDStep:
    """One step of gradient descent, ``θ ← θ - lr · ∂L/∂θ``, on the chosen weight or on every parameter."""

    lr: float
    everything: bool  # every parameter moved, not only the chosen weight
    loss_before: float
    loss_after: float
    prob_before: float  # the label's probability
    prob_after: float
    gradient: float  # ∂L/∂w of the chosen weight
    weight_before: float
    weight_after: float
    predicted_change: float  # first-order prediction of loss_after - loss_before: -lr · Σ (∂L/∂θ)²

    @property
    def change(self) -> float:
        return self.loss_after - self.loss_before


def chain(model: nn.Module, x: Tensor, label: int, weight: Weight) -> Chain:
    """The chain rule from the loss of image ``x`` (``(C, H, W)`` or ``(1, C, H, W)``, normalised as the model
    expects) with class ``label`` back to ``weight``, each step's numbers, and autograd's answer beside it.

    Raises ``ValueError`` (``probe.UnknownLayerError`` for an unknown layer) saying what was expected.
    """
    work, x, target = _prepare(model, x, label, weight)
    # What Sequential.forward runs, in order, a module placed twice included (named_children lists it once).
    stages = [(name, m) for name, m in work.named_modules(remove_duplicate=False) if name and "." not in name
              ] if isinstance(work, nn.Sequential) else []
    at = next((i for i, (name, _) in enumerate(stages) if weight.layer == name or weight.layer.startswith(name + ".")),
              None)
    if at is None:  # not a Sequential: the whole network is one step
        stages, at = [(type(work).__name__, work)], 0

    seen: list[tuple[Tensor, Tensor]] = []  # the chosen layer's (input copy, output) at its one call

    def hook(_: nn.Module, args: tuple, output: Tensor) -> Tensor:
        seen.append((args[0].detach().clone(), output))
        return output.clone()  # the rest gets a copy: a later in-place op cannot change the output we keep

    leaves, outputs, a = [], [], x
    handle = target.register_forward_hook(hook)  # for the whole pass: a second call anywhere is refused below
    try:
        for i, (_, stage) in enumerate(stages):
            if i < at:
                with torch.no_grad():
                    a = stage(a)
                continue
            leaf = a.detach().requires_grad_(True)
            a = stage(leaf.clone())  # a clone, so that an in-place first op does not write into the leaf
            leaves.append(leaf)
            outputs.append(a)
    finally:
        handle.remove()
    if len(seen) != 1:
        raise ValueError(f"layer {weight.layer!r} ran {len(seen)} times in one forward pass; pick a layer that "
                         f"runs once")
    logits = _logits(a, label).detach()
    probs = logits.softmax(1)
    grad = probs - F.one_hot(torch.tensor([label]), probs.shape[1]).to(probs.dtype)  # (1, K)
    loss = -probs[0, label].log().item()

    steps, g = [], grad
    for i in range(len(stages) - 1, at, -1):
        name, stage = stages[i]
        g_in = _vjp(outputs[i - at], leaves[i - at], g)
        steps.append(_step(name, stage, f"the input of {name}", g, g_in))
        g = g_in
    name, stage = stages[at]
    patch_source, out = seen[0]
    if stage is not target:
        g_in = _vjp(outputs[0], out, g)
        steps.append(_step(name, stage, f"the output of {weight.layer}", g, g_in))
        g = g_in

    upstream, inputs = _factors(target, weight, g, patch_source)
    terms = upstream * inputs
    loss_again = F.cross_entropy(work(x), torch.tensor([label]))
    auto = torch.autograd.grad(loss_again, target.weight)[0][_index(target, weight)].item()
    return Chain(weight, label, loss, logits[0].float(), probs[0].float(), grad[0].float(), steps,
                 upstream.detach().float(), inputs.float(), terms.detach().float(), terms.sum().item(), auto,
                 target.weight[_index(target, weight)].item())


def sgd_step(model: nn.Module, x: Tensor, label: int, weight: Weight, lr: float,
             everything: bool = False) -> SGDStep:
    """One step of plain gradient descent with learning rate ``lr`` on a copy of ``model``: on ``weight`` alone, or
    on every parameter with ``everything``; the loss of ``(x, label)`` before and after."""
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"expected a learning rate > 0, got {lr!r}")
    work, x, target = _prepare(model, x, label, weight)
    y = torch.tensor([label])
    index = _index(target, weight)
    params = list(work.parameters()) if everything else [target.weight]
    logits = _logits(work(x), label)
    loss = F.cross_entropy(logits, y)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    grads = [g if g is not None else torch.zeros_like(p) for p, g in zip(params, grads)]
    gradient = next(g for p, g in zip(params, grads) if p is target.weight)[index].item()
    before = target.weight[index].item()
    with torch.no_grad():
        if everything:
            for p, g in zip(params, grads):
                p -= lr * g
            predicted = -lr * sum((g ** 2).sum().item() for g in grads)
        else:
            target.weight[index] -= lr * gradient
            predicted = -lr * gradient ** 2
        after_logits = work(x)
    return SGDStep(float(lr), everything, loss.item(), F.cross_entropy(after_logits, y).item(),
                   logits.softmax(1)[0, label].item(), after_logits.softmax(1)[0, label].item(), gradient, before,
                   target.weight[index].item(), predicted)


def _prepare(model: nn.Module, x: Tensor, label: int, weight: Weight) -> tuple[nn.Module, Tensor, nn.Module]:
    """A float64 CPU copy of ``model`` in eval mode with no hooks, ``x`` as ``(1, C, H, W)`` float64, and the copy's
    chosen layer; every argument checked."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"expected an nn.Module, got {type(model).__name__}")
    if not isinstance(x, Tensor) or x.ndim not in (3, 4) or (x.ndim == 4 and x.shape[0] != 1):
        raise ValueError(f"expected one image (C, H, W) or (1, C, H, W), got "
                         f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
    if not x.is_floating_point() or not torch.isfinite(x).all():
        raise ValueError("expected a float image with finite values (normalised as the model expects)")
    if not isinstance(weight, Weight):
        raise ValueError(f"expected a backprop.Weight, got {type(weight).__name__}")
    params = sum(p.numel() for p in model.parameters())
    if params > MAX_PARAMS:
        raise ValueError(f"this lesson copies the model in double precision; {params:,} parameters is more than "
                         f"the {MAX_PARAMS:,} it allows")
    module = probe.get_module(model, weight.layer)
    if not isinstance(module, (nn.Conv2d, nn.Linear)):
        raise ValueError(f"layer {weight.layer!r} is a {type(module).__name__}; pick a Conv2d or Linear layer, "
                         f"which have weights")
    limits = tuple(module.weight.shape) + ((1, 1) if isinstance(module, nn.Linear) else ())
    wanted = (weight.out_channel, weight.in_channel, weight.ky, weight.kx)
    names = ("out_channel", "in_channel", "ky", "kx")
    for name, value, limit in zip(names, wanted, limits):
        if type(value) is not int or not 0 <= value < limit:
            raise ValueError(f"{name} of {weight.layer!r} must be a whole number from 0 to {limit - 1}, got "
                             f"{value!r}")
    if type(label) is not int or label < 0:
        raise ValueError(f"expected a class index >= 0, got {label!r}")

    memo: dict[int, object] = {}
    for t in (*model.parameters(), *model.buffers()):
        double = t.detach().to("cpu", torch.float64 if t.is_floating_point() else t.dtype).clone()
        # Every parameter of the copy requires gradients, frozen ones too: the lesson asks for them.
        memo[id(t)] = nn.Parameter(double) if isinstance(t, nn.Parameter) else double
    work = copy.deepcopy(model, memo).eval()
    for m in work.modules():
        for hooks in (m._forward_pre_hooks, m._forward_hooks, m._backward_hooks, m._backward_pre_hooks):
            hooks.clear()  # another session's hooks were copied too; they must not see this pass
    x = x.detach().to("cpu", torch.float64).reshape(1, *x.shape[-3:])
    return work, x, probe.get_module(work, weight.layer)


def _logits(out: object, label: int) -> Tensor:
    """The model's output, checked to be logits ``(1, K)`` with ``label < K``."""
    if not isinstance(out, Tensor) or out.ndim != 2 or out.shape[0] != 1:
        raise ValueError(f"expected the model to return logits (1, K), got "
                         f"{tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__}")
    if label >= out.shape[1]:
        raise ValueError(f"expected a class index from 0 to {out.shape[1] - 1}, got {label}")
    return out


def _vjp(output: Tensor, wrt: Tensor, grad: Tensor) -> Tensor:
    """``grad``ᵀ · ∂output/∂wrt; zeros where ``output`` does not depend on ``wrt``."""
    g = torch.autograd.grad(output, wrt, grad, retain_graph=True, allow_unused=True)[0]
    return g if g is not None else torch.zeros_like(wrt)


def _step(name: str, module: nn.Module, wrt: str, g_out: Tensor, g_in: Tensor) -> ChainStep:
    return ChainStep(name, type(module).__name__, wrt, tuple(g_out.shape[1:]), tuple(g_in.shape[1:]),
                     g_out.norm().item(), g_in.norm().item(), g_in[0].detach().float())


def _index(layer: nn.Module, weight: Weight) -> tuple[int, ...]:
    if isinstance(layer, nn.Linear):
        return weight.out_channel, weight.in_channel
    return weight.out_channel, weight.in_channel, weight.ky, weight.kx


def _factors(layer: nn.Module, weight: Weight, upstream: Tensor, source: Tensor) -> tuple[Tensor, Tensor]:
    """The two factors of the weight's gradient at each output position: ``∂L/∂out[o]`` and the input value the
    weight multiplied there, ``(H_out, W_out)`` each."""
    o = weight.out_channel
    if isinstance(layer, nn.Linear):
        if source.ndim != 2:
            raise ValueError(f"layer {weight.layer!r} gets a {tuple(source.shape)} input; only (1, features) "
                             f"inputs of a Linear layer are followed here")
        return upstream[0, o].reshape(1, 1), source[0, weight.in_channel].reshape(1, 1)
    per_group = layer.out_channels // layer.groups
    channel = (o // per_group) * (layer.in_channels // layer.groups) + weight.in_channel
    padded = F.pad(source, _padding(layer), mode="constant" if layer.padding_mode == "zeros" else layer.padding_mode)
    (sy, sx), (dy, dx) = layer.stride, layer.dilation
    h, w = upstream.shape[-2:]
    top, left = weight.ky * dy, weight.kx * dx
    inputs = padded[0, channel, top: top + sy * (h - 1) + 1: sy, left: left + sx * (w - 1) + 1: sx]
    return upstream[0, o], inputs


def _padding(layer: nn.Conv2d) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) as ``F.pad`` takes them, for int, tuple, ``"valid"`` or ``"same"`` padding."""
    if layer.padding == "valid":
        return 0, 0, 0, 0
    if layer.padding == "same":  # as torch pads it: the odd pixel goes to the right and the bottom
        (ty, tx) = (d * (k - 1) for d, k in zip(layer.dilation, layer.kernel_size))
        return tx // 2, tx - tx // 2, ty // 2, ty - ty // 2
    py, px = layer.padding
    return px, px, py, py
