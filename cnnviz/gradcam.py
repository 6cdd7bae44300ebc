"""Class activation maps: where in the image a model finds its evidence for a class.

One pipeline, as pytorch-grad-cam's ``BaseCAM``: hook one layer, forward, backpropagate the target's score, turn the
layer's activations and gradients into a map, ReLU, upsample to the input size, scale to [0, 1]. The methods differ
only in that one mapping step (``METHODS``); adding a method means adding one small function.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from numbers import Integral

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnviz import models, probe

Target = int | Callable[[Tensor], Tensor]  # a class index, or logits (1, K) → scalar score

# Kinds of layer whose output is usually a (N, C, h, w) map; named in error messages.
_MAP_KINDS = ("conv", "activation", "pool", "norm")


@dataclass
class CamResult:
    """One map for one image; tensors live on the model's device."""

    heatmap: Tensor  # (H, W) float in [0, 1] at input resolution; all zeros when nothing speaks for the target
    raw: Tensor  # (h, w) at the layer's resolution, after the ReLU, before upsampling and scaling
    target: int | None  # the class index used; None when a callable target chose the score
    layer: str  # the layer's name, or "input" for methods that read the image itself
    method: str
    score: float  # the target's pre-softmax score (the logit y^c)


def _gradcam_weights(activations: Tensor, gradients: Tensor) -> Tensor:
    """Grad-CAM channel weights (C,): spatial mean of dy^c/dA^k (Selvaraju et al. 2017, eq. 1)."""
    return gradients.mean(dim=(1, 2))


def _gradcam_pp_weights(activations: Tensor, gradients: Tensor) -> Tensor:
    """Grad-CAM++ channel weights (C,) (Chattopadhay et al. 2018, eq. 19).

    The closed form for an exponential output Y = exp(S) writes the 2nd and 3rd derivatives as powers of the first;
    as in pytorch-grad-cam we use those powers of dS/dA directly, without the exp.
    """
    g2 = gradients.pow(2)
    g3 = g2 * gradients
    total = activations.sum(dim=(1, 2), keepdim=True)  # (C, 1, 1)
    alpha = g2 / (2 * g2 + total * g3 + 1e-6)
    # Where the gradient is 0 the cell has no say; the formula's 0/0 there is noise.
    alpha = torch.where(gradients != 0, alpha, torch.zeros_like(alpha))
    return (alpha * gradients.clamp(min=0)).sum(dim=(1, 2))


def _channel_weighted(weights: Callable[[Tensor, Tensor], Tensor]) -> Callable[[Tensor, Tensor], Tensor]:
    """A CAM from a channel-weighting rule: sum_k w_k A^k, (C, h, w) → (h, w)."""

    def cam(activations: Tensor, gradients: Tensor) -> Tensor:
        return torch.einsum("c,chw->hw", weights(activations, gradients), activations)

    return cam


def _hirescam(activations: Tensor, gradients: Tensor) -> Tensor:
    """HiResCAM (h, w): sum_k dy^c/dA^k * A^k, cell by cell (Draelos & Carin 2020, "Use HiResCAM instead of
    Grad-CAM for faithful explanations"). Without Grad-CAM's spatial averaging of the gradient, it shows the cells
    the score really depends on; where the gradient is the same at every cell of a channel (maps that reach the
    classifier through a global average pool, see :func:`global_average_pooled`) it equals Grad-CAM."""
    return (gradients * activations).sum(dim=0)


def _saliency(activations: Tensor, gradients: Tensor) -> Tensor:
    """Saliency map (H, W): |dy^c/dx| maximised over colour channels (Simonyan et al. 2014, sec. 3.1)."""
    return gradients.abs().amax(dim=0)


@dataclass(frozen=True)
class Method:
    """How one method turns activations and gradients (C, h, w) into a map (h, w)."""

    map: Callable[[Tensor, Tensor], Tensor]
    on_input: bool = False  # reads the input image instead of a layer


METHODS: dict[str, Method] = {
    "gradcam": Method(_channel_weighted(_gradcam_weights)),
    "gradcam++": Method(_channel_weighted(_gradcam_pp_weights)),
    "hirescam": Method(_hirescam),
    "saliency": Method(_saliency, on_input=True),
}


def default_layer(model: nn.Module) -> str:
    """The layer Grad-CAM looks at unless told otherwise: the last ``Conv2d``, after its activation where simple.

    When the last conv sits in an ``nn.Sequential`` (whose order is its execution order) and is followed there by
    norm/activation layers, the last of those activations is returned (``conv3 → bn3 → relu3`` gives ``relu3``):
    the paper's maps are the last conv layer's rectified features. Otherwise (torchvision's ResNet, whose blocks
    reuse one ReLU) it is the conv itself.
    """
    convs = probe.layer_names(model, "conv")
    if not convs:
        raise ValueError(f"{type(model).__name__} has no Conv2d layer; pass layer= explicitly")
    last = convs[-1]
    # Inside one of our residual or Inception blocks the last conv registered is a shortcut's or a branch's, not
    # the block's output: the block's own output is (its final ReLU; the concatenation of its branches).
    for path in _prefixes(last):
        block = probe.get_module(model, path)
        if isinstance(block, models.Residual):
            return f"{path}.relu"
        if isinstance(block, models.Inception):
            return f"{path}.concat"
    parent_path, _, child = last.rpartition(".")
    parent = probe.get_module(model, parent_path)
    if not isinstance(parent, nn.Sequential):
        return last
    prefix = f"{parent_path}." if parent_path else ""
    children = list(parent.named_children())
    after = [name for name, _ in children].index(child) + 1
    chosen = last
    for name, module in children[after:]:
        kind = probe.kind_of(module)
        if kind not in ("norm", "activation"):
            break
        if kind == "activation":
            chosen = prefix + name
    return chosen


def _prefixes(name: str) -> list[str]:
    """The module paths that hold ``name``, outermost first: ``a.b.c`` gives ``a`` and ``a.b``."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


# Layers that change each channel by one affine map in eval mode, the same at every cell: between a layer and a
# global average pool they keep dy/dA the same at every cell of a channel. Dropout is the identity in eval mode.
_PER_CHANNEL_AFFINE = (nn.BatchNorm2d, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                       nn.Identity)


def global_average_pooled(model: nn.Module, layer: str) -> bool | None:
    """Whether ``layer``'s maps (N, C, h, w) reach the rest of ``model`` only through a global average pool, after
    nothing but per-channel affine layers (BatchNorm in eval mode, dropout).

    Then dy^c/dA^k is the same at every cell of channel k, for every image, so HiResCAM's map equals Grad-CAM's
    (Draelos & Carin 2020): the CAM architecture (Zhou et al. 2016) and our "gap" preset. With a flatten
    and a dense layer instead (the "tiny" preset) the gradient differs from cell to cell and so can the maps.
    ``None`` when the model is not a chain of layers (an ``nn.Sequential``, nested ones followed) or the layer is
    called more than once: what follows a layer cannot be read from the structure then.
    """
    probe.get_module(model, layer)  # an unknown name raises, listing the valid ones
    path, call = probe.split_name(layer)
    chain = _chain(model) if isinstance(model, nn.Sequential) else []
    names = [name for name, _ in chain]
    if path not in names or call != 1:
        return None
    start = names.index(path)
    for i, (_, module) in enumerate(chain[start:]):
        if isinstance(module, nn.AdaptiveAvgPool2d) and module.output_size in (1, (1, 1)):
            return True  # also for the pool itself: its maps are one cell per channel
        if i == 0:
            continue
        if isinstance(module, nn.AvgPool2d):
            return None  # global or not depends on the size of the maps, which the structure does not say
        if not isinstance(module, _PER_CHANNEL_AFFINE):
            return False
    return False


def _chain(model: nn.Sequential, prefix: str = "") -> list[tuple[str, nn.Module]]:
    """The layers of a Sequential in execution order, named by module path, nested Sequentials followed."""
    found = []
    for name, module in model.named_children():
        if isinstance(module, nn.Sequential):
            found += _chain(module, f"{prefix}{name}.")
        else:
            found.append((prefix + name, module))
    return found


def compute(
    model: nn.Module,
    x: Tensor,
    layer: str | None = None,
    target: Target | None = None,
    method: str = "gradcam",
) -> CamResult:
    """Class activation map of ``x`` (1, C, H, W) for ``target`` at ``layer``, in eval mode.

    Grad-CAM (Selvaraju et al. 2017, "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
    Localization"): ReLU(sum_k alpha_k A^k) with alpha_k the spatial mean of dy^c/dA^k, y^c the pre-softmax score.
    Grad-CAM++ (Chattopadhay et al. 2018) weights the channels by positive gradients instead. Saliency (Simonyan et
    al. 2014, "Deep Inside Convolutional Networks") is |dy^c/dx|, max over channels; it ignores ``layer``.

    Args:
        model: any classifier returning logits (1, K).
        x: one image (1, C, H, W), float; neither it nor the model is changed (mode, hooks, grads, requires_grad).
        layer: a module path (``"layer4.1.conv2"``), ``"path#k"`` for its k-th call, or None for ``default_layer``.
            Its output must be a (1, C, h, w) map.
        target: a class index, a callable logits (1, K) → scalar score, or None for the predicted class.
        method: a key of ``METHODS``.

    Returns:
        ``CamResult`` with ``heatmap`` (H, W) in [0, 1] and ``raw`` (h, w).
    """
    if method not in METHODS:
        raise ValueError(f"expected method in {sorted(METHODS)}, got {method!r}")
    if not isinstance(x, Tensor) or x.ndim != 4 or x.shape[0] != 1 or not x.is_floating_point():
        got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"expected one float image (1, C, H, W), got {got}")
    spec = METHODS[method]
    layer = "input" if spec.on_input else (layer or default_layer(model))
    module, call = (None, 0) if spec.on_input else _map_layer(model, layer)

    # Our own copy: gradients flow to it (saliency), never to the caller's tensor, and no parameter .grad is touched
    # because only the tensor we name is asked for (autograd.grad, not backward).
    image = x.detach().to(probe.device_of(model), copy=True).requires_grad_(spec.on_input)
    captured: dict[str, Tensor] = {}
    calls = 0

    def hook(hooked: nn.Module, args: tuple, output: object) -> Tensor | None:
        nonlocal calls
        calls += 1
        if calls != call:
            return None
        if not isinstance(output, Tensor) or output.ndim != 4:
            got = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
            raise ValueError(f"layer {layer!r} outputs {got}; a CAM needs a (N, C, h, w) map: {_map_names(model)}")
        # The map becomes a leaf of its own, and the pass records what the gradient needs from here on only: the
        # layers before it ran without autograd (TorchCAM-like speed), and backpropagation stops at the layer.
        leaf = output.detach().requires_grad_(True)
        captured["activations"] = leaf
        torch.set_grad_enabled(True)  # thread-local; the enclosing set_grad_enabled restores it after the pass
        # The rest of the network gets a copy: a later in-place layer (ReLU(inplace=True)) changes the copy, never
        # the map whose gradient we ask for.
        return leaf.clone()

    handle = module.register_forward_hook(hook) if module is not None else None
    try:
        with probe.evaluating(model), torch.set_grad_enabled(spec.on_input):
            logits = model(image)
            if not isinstance(logits, Tensor) or logits.ndim != 2:
                raise ValueError("expected the model to return logits (1, num_classes)")
            score, index = _score(logits, target)
            if module is not None and "activations" not in captured:
                raise ValueError(f"layer {layer!r} was called {calls} time(s) in the forward pass, not {call}")
            wrt = image if spec.on_input else captured["activations"]
            # A score computed without the map (a layer off the path to the output) has no graph back to it.
            (grad,) = torch.autograd.grad(score, wrt, allow_unused=True) if score.requires_grad else (None,)
    finally:
        if handle is not None:
            handle.remove()

    if grad is None:
        raise ValueError(f"layer {layer!r} does not lead to the model's output")
    activations, gradients = wrt.detach()[0], grad[0]
    # ReLU: keep only what speaks for the class (Selvaraju et al. 2017, eq. 2).
    raw = spec.map(activations, gradients).clamp(min=0)  # (h, w)
    heatmap = F.interpolate(raw[None, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
    peak = heatmap.max()
    heatmap = heatmap / peak if peak > 0 else torch.zeros_like(heatmap)
    return CamResult(heatmap=heatmap, raw=raw, target=index, layer=layer, method=method, score=float(score.detach()))


def _score(logits: Tensor, target: Target | None) -> tuple[Tensor, int | None]:
    """The scalar to explain, and the class index it belongs to (None for a callable target)."""
    if callable(target):
        score = target(logits)
        if not isinstance(score, Tensor) or score.numel() != 1:
            raise ValueError(f"expected the target callable to return a scalar tensor, got {score!r}")
        return score.reshape(()), None
    num_classes = logits.shape[1]
    if target is None:
        index = int(logits[0].argmax())
    elif isinstance(target, Integral) and 0 <= int(target) < num_classes:
        index = int(target)
    else:
        raise ValueError(f"expected a class index in [0, {num_classes}), a callable or None, got {target!r}")
    return logits[0, index], index


def _map_layer(model: nn.Module, name: str) -> tuple[nn.Module, int]:
    """The module behind a layer name and which of its calls to hook (1 for a plain path)."""
    path, call = probe.split_name(name)
    modules = dict(model.named_modules())
    if path not in modules:
        raise probe.UnknownLayerError(f"no layer named {name!r}; conv, activation, pool and norm layers: {_map_names(model)}")
    return modules[path], call


def _map_names(model: nn.Module) -> str:
    """The leaf layers whose output is usually a map, comma-separated, for error messages."""
    maps = {name for kind in _MAP_KINDS for name in probe.layer_names(model, kind)}
    return ", ".join(name for name in probe.layer_names(model) if name in maps)


@dataclass
class PointingResult:
    """How often the heatmap's peak lands on the object: ``hits`` of ``total`` images."""

    hits: int
    total: int

    @property
    def rate(self) -> float:
        return self.hits / self.total if self.total else 0.0


def peaks(model: nn.Module, x: Tensor, targets: Tensor | None = None, *, layer: str | None = None,
          method: str = "gradcam") -> Tensor:
    """Where each heatmap is hottest: flat indices ``(N,)`` into ``H * W`` for inputs ``x`` (N, C, H, W) and
    ``targets`` (N,) classes to explain (default: each image's predicted class)."""
    x = x.to(probe.device_of(model))  # once, not image by image (compute would move each)
    found = []
    for i in range(x.shape[0]):
        target = None if targets is None else int(targets[i])
        found.append(int(compute(model, x[i: i + 1], layer=layer, target=target, method=method).heatmap.argmax()))
    return torch.tensor(found, dtype=torch.long)


def hits(peak: Tensor, masks: Tensor, tolerance: int = 0) -> PointingResult:
    """Score :func:`peaks` against bool ``masks`` (N, H, W), each grown by ``tolerance`` pixels."""
    grown = masks.float()
    if tolerance > 0:
        grown = F.max_pool2d(grown[:, None], 2 * tolerance + 1, stride=1, padding=tolerance)[:, 0]
    on_object = grown.flatten(1).gather(1, peak[:, None])[:, 0] > 0
    return PointingResult(int(on_object.sum()), len(peak))


def centre_hits(masks: Tensor, tolerance: int = 0) -> PointingResult:
    """The pointing game's baseline: a pointer that always picks the centre pixel ``(H // 2, W // 2)``, scored
    against bool ``masks`` (N, H, W) as :func:`hits` scores a heatmap's peak."""
    if masks.ndim != 3:
        raise ValueError(f"expected masks (N, H, W), got {tuple(masks.shape)}")
    n, h, w = masks.shape
    return hits(torch.full((n,), (h // 2) * w + w // 2, dtype=torch.long), masks, tolerance)


def pointing_game(model: nn.Module, x: Tensor, masks: Tensor, targets: Tensor | None = None, *,
                  layer: str | None = None, method: str = "gradcam", tolerance: int = 0) -> PointingResult:
    """The pointing game (Zhang et al. 2016, "Top-down Neural Attention by Excitation Backprop"): a hit when the
    heatmap's maximum falls inside the object's mask.

    ``x`` (N, C, H, W) normalised inputs, ``masks`` bool (N, H, W), ``targets`` (N,) classes to explain (default:
    each image's predicted class). ``tolerance`` grows each mask by that many pixels, as the original game allows
    (15 px at ImageNet scale) so a peak just beside a thin object still counts.
    """
    if masks.shape != (x.shape[0], *x.shape[-2:]):
        raise ValueError(f"expected masks of shape {(x.shape[0], *x.shape[-2:])}, got {tuple(masks.shape)}")
    return hits(peaks(model, x, targets, layer=layer, method=method), masks, tolerance)
