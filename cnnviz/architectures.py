"""The VGG and Inception lessons, counted and measured on the model itself.

VGG (Simonyan & Zisserman 2015, "Very Deep Convolutional Networks for Large-Scale Image Recognition", section 2.3):
a stack of small kernels sees as far as one big kernel, with fewer weights and more non-linearities. ``n`` stacked
3×3 convolutions see ``(2n + 1) × (2n + 1)`` pixels; with ``C`` channels in and out they hold ``9 n C²`` weights
where one kernel of that size holds ``(2n + 1)² C²``. :func:`receptive_growth` counts it for each conv layer of a
model, from the receptive fields :func:`cnnviz.receptive.receptive_fields` follows through its forward pass.

Inception (Szegedy et al. 2015, "Going Deeper with Convolutions"): a block runs 1×1, 3×3 and 5×5 convolutions and a
pooling branch side by side, because the right kernel size depends on how large the thing to see is.
:func:`branch_response` measures it: each branch's mean activation on images binned by the size of their object.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from cnnviz import data, models, probe, receptive, shapes

SIZE_BINS = 4  # object-size bins of the Inception table, each with the same number of images
ZOOMS = (1.0, 1.25, 1.5)  # sized_shapes: objects 1×, 1.25× and 1.5× the size shapes draws them
BATCH = 256  # images per forward pass when measuring branches


def stacked_field(n: int, kernel: int = 3) -> int:
    """The side of the input square that ``n`` stacked ``kernel × kernel`` convolutions (stride 1) see."""
    if n < 1 or kernel < 1:
        raise ValueError(f"expected n >= 1 convolutions of kernel >= 1, got n={n}, kernel={kernel}")
    return n * (kernel - 1) + 1


@dataclass(frozen=True)
class FieldRow:
    """One conv layer of the VGG lesson: how far it sees and what that costs, against one big kernel."""

    layer: str
    kernel: int
    channels: int  # its output channels
    convs: int  # conv layers run from the input to here, this one included
    activations: int  # non-linearities run before this layer's output
    field: int  # side of the input square one unit sees (receptive field), in pixels
    jump: int  # input pixels between neighbouring units (grows with strides and pooling)
    weights: int  # the model's conv weights from the input to here (biases aside)
    single_weights: int  # one conv from the image's channels to this layer's with a field × field kernel
    stack_weights_same: int  # the kernels so far if every layer had this layer's channels: Σ k² · C²
    single_weights_same: int  # one field × field kernel at those channels: field² · C²


def receptive_growth(model: nn.Module | models.ModelSpec, input_size: int | None = None) -> list[FieldRow]:
    """One :class:`FieldRow` per conv layer of ``model`` (or of the model a spec builds), in the order they run.

    ``input_size`` defaults to a spec's image size (a module needs it). Convolutions are counted in the order they
    run, which is the path from the input for a chain (VGG); in a network with branches a row's field is still
    that layer's, but "so far" counts every branch run before it.
    """
    if isinstance(model, models.ModelSpec):
        input_size = input_size or model.image_size
        model = models.build(model)
    if input_size is None:
        raise ValueError("give the input size (pixels of the square image) for a module")
    fields = receptive.receptive_fields(model, input_size)
    in_channels = next((m.in_channels for m in model.modules() if isinstance(m, nn.Conv2d)), 1)
    rows, convs, activations, weights, kernels = [], 0, 0, 0, 0
    for rf in fields:
        module = probe.get_module(model, rf.name)
        if not isinstance(module, nn.Conv2d):
            activations += probe.kind_of(module) == "activation"
            continue
        convs += 1
        k = max(module.kernel_size)
        weights += module.weight.numel()
        kernels += module.kernel_size[0] * module.kernel_size[1]
        c = module.out_channels
        rows.append(FieldRow(rf.name, k, c, convs, activations, rf.size, rf.jump, weights,
                             rf.size ** 2 * in_channels * c, kernels * c * c, rf.size ** 2 * c * c))
    return rows


@dataclass
class BranchTable:
    """Each branch's mean activation per object-size bin: ``mean[b][j]`` for bin ``b`` and branch ``branches[j]``.

    ``relative`` divides each branch's means by its mean over all images, so branches of different scales compare:
    above 1, the branch fires more on objects of that size than on average. ``strongest`` names, per bin, the
    branch with the highest relative response.
    """

    block: str
    branches: list[str]
    edges: list[float]  # bin b holds object sizes in [edges[b], edges[b + 1]) (the last bin includes its end), px
    counts: list[int]  # images per bin
    mean: list[list[float]]
    relative: list[list[float]]
    strongest: list[str]

    def rows(self) -> list[dict]:
        """One row per size bin, for a table: the size range, the images and each branch's relative response."""
        return [{"object size (px)": f"{lo:.1f}–{hi:.1f}", "images": n, **dict(zip(self.branches, rel)),
                 "fires most": best}
                for lo, hi, n, rel, best in zip(self.edges, self.edges[1:], self.counts, self.relative,
                                                self.strongest)]


def object_sizes(masks: Tensor) -> Tensor:
    """Each object's size in pixels ``(N,)`` from its mask ``(N, H, W)``: the side of a square of the same area."""
    if not isinstance(masks, Tensor) or masks.ndim != 3:
        raise ValueError(f"expected masks (N, H, W), got {tuple(masks.shape) if isinstance(masks, Tensor) else masks}")
    return masks.flatten(1).float().sum(1).sqrt()


def sized_shapes(n: int, size: int = shapes.DEFAULT_SIZE, zooms: Sequence[float] = ZOOMS, seed: int = 0) -> data.Split:
    """Shapes images ``(n, 3, size, size)`` with masks, their objects drawn at each of ``zooms`` (an equal share
    each): drawn on a ``size × zoom`` canvas, then the ``size × size`` window around the object is cut out, so a
    zoomed object is larger in the image and its background the same kind. A zoom much above 1.5 cuts objects off
    at the window's edge (their mask, and so their measured size, is what remains)."""
    if n < len(zooms) or not zooms or any(not 1 <= z <= 4 for z in zooms):
        raise ValueError(f"expected zooms from 1 to 4 and at least one image per zoom, got {n} images, zooms {zooms}")
    xs, ys, ms = [], [], []
    for i, zoom in enumerate(zooms):
        count = n // len(zooms) + (i < n % len(zooms))
        canvas = round(size * zoom)
        x, y, masks = shapes.generate(count, seed=seed * len(zooms) + i, size=canvas)
        rows, cols = torch.arange(canvas).float(), torch.arange(canvas).float()
        area = masks.flatten(1).sum(1).clamp(min=1)
        centre_y = (masks.sum(2).float() * rows).sum(1) / area
        centre_x = (masks.sum(1).float() * cols).sum(1) / area
        top = (centre_y - size / 2 + 0.5).round().long().clamp(0, canvas - size)
        left = (centre_x - size / 2 + 0.5).round().long().clamp(0, canvas - size)
        for j in range(count):
            t, l_ = top[j].item(), left[j].item()
            xs.append(x[j, :, t: t + size, l_: l_ + size])
            ms.append(masks[j, t: t + size, l_: l_ + size])
        ys.append(y)
    info = replace(data.info("shapes"), size=size)
    return data.Split(info, torch.stack(xs), torch.cat(ys), torch.stack(ms))


def branch_activations(model: nn.Module, block: str, x: Tensor,
                       branches: Sequence[str] | None = None) -> tuple[list[str], Tensor]:
    """Each branch's mean activation (over its channels and positions) for every image of ``x`` ``(N, C, H, W)``:
    the branches' names and a ``(N, branches)`` tensor.

    A branch is a direct child of the module ``block`` that reads the block's own input (an Inception block's
    1×1, 3×3, 5×5 and pooling branches; not the concatenation after them), or the children named in ``branches``.
    Eval mode, no gradients; hooks removed and modes restored afterwards.
    """
    parent = probe.get_module(model, block)
    children = dict(parent.named_children())
    if branches is not None:
        unknown = [b for b in branches if b not in children]
        if unknown or not branches:
            raise ValueError(f"{block!r} has no branch named {', '.join(map(repr, unknown)) or 'at all'}; its parts "
                             f"are {', '.join(children) or 'none'}")
    if not isinstance(x, Tensor) or x.ndim != 4:
        raise ValueError(f"expected images (N, C, H, W), got {tuple(x.shape) if isinstance(x, Tensor) else x}")
    device = probe.device_of(model)
    block_input: list[Tensor] = []
    found: dict[str, list[Tensor]] = {}

    def enter(_: nn.Module, args: tuple) -> None:
        block_input[:] = args[:1]

    def make_hook(name: str):
        def hook(_: nn.Module, args: tuple, output: object) -> None:
            reads_input = bool(args) and bool(block_input) and args[0] is block_input[0]
            if isinstance(output, Tensor) and (name in branches if branches is not None else reads_input):
                found.setdefault(name, []).append(output.flatten(1).float().mean(1).cpu())

        return hook

    handles = [parent.register_forward_pre_hook(enter)]
    handles += [child.register_forward_hook(make_hook(name)) for name, child in children.items()]
    try:
        with probe.evaluating(model), torch.no_grad():
            for i in range(0, len(x), BATCH):
                model(x[i: i + BATCH].to(device))
    finally:
        for handle in handles:
            handle.remove()
    names = [name for name in children if name in found and len(found[name]) == len(range(0, len(x), BATCH))]
    if not names:
        raise ValueError(f"no part of {block!r} reads the block's input; name its branches (its parts are "
                         f"{', '.join(children) or 'none'})")
    return [f"{block}.{name}" for name in names], torch.stack([torch.cat(found[name]) for name in names], 1)


def branch_table(block: str, branches: list[str], activations: Tensor, sizes: Tensor,
                 bins: int | Sequence[float] = SIZE_BINS) -> BranchTable:
    """Bin images by object size ``sizes`` ``(N,)`` (``bins`` bins of equal counts, or these edges) and average
    each branch's activations ``(N, branches)`` per bin."""
    if activations.ndim != 2 or len(activations) != len(sizes) or activations.shape[1] != len(branches):
        raise ValueError(f"expected activations (N, {len(branches)}) and sizes (N,), got "
                         f"{tuple(activations.shape)} and {tuple(sizes.shape)}")
    if len(sizes) == 0:
        raise ValueError("expected at least one image")
    sizes = sizes.float()
    if isinstance(bins, int):
        if bins < 1:
            raise ValueError(f"expected at least one bin, got {bins}")
        edges = torch.quantile(sizes, torch.linspace(0, 1, bins + 1)).unique()
        edges = edges if len(edges) > 1 else edges.repeat(2)
    else:
        edges = torch.tensor([float(e) for e in bins])
        if len(edges) < 2 or (edges.diff() <= 0).any():
            raise ValueError(f"expected increasing bin edges, at least two, got {list(bins)}")
    which = torch.bucketize(sizes, edges[1:-1], right=True)
    inside = (sizes >= edges[0]) & (sizes <= edges[-1])
    acts = activations.double()
    overall = acts[inside].mean(0)
    counts, means = [], []
    for b in range(len(edges) - 1):
        chosen = inside & (which == b)
        counts.append(int(chosen.sum()))
        means.append(acts[chosen].mean(0) if chosen.any() else torch.full((len(branches),), float("nan")))
    mean = torch.stack(means)
    relative = mean / overall
    strongest = [branches[int(row.nan_to_num(float("-inf")).argmax())] if n else "" for row, n in
                 zip(relative, counts)]
    return BranchTable(block, list(branches), edges.tolist(), counts, mean.tolist(), relative.tolist(), strongest)


def branch_response(model: nn.Module, block: str, split: data.Split, bins: int | Sequence[float] = SIZE_BINS,
                    branches: Sequence[str] | None = None) -> BranchTable:
    """Which branch of ``block`` fires for which object size, measured on ``split`` (uint8 images with object masks,
    such as :func:`sized_shapes`), normalised with the split's statistics."""
    if split.masks is None:
        raise ValueError("these images have no object masks, so their objects' sizes are unknown; use shapes")
    names, acts = branch_activations(model, block, data.normalize(split.x, split.info), branches)
    return branch_table(block, names, acts, object_sizes(split.masks), bins)
