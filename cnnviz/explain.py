"""The plain words under each view, built from the records so they always describe what is on screen."""

from __future__ import annotations

import math
import re

from torch import Tensor

from cnnviz.probe import BranchView, PoolPair, Record, ResidualView
from cnnviz.text import md


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def shape_words(shape: tuple[int, ...]) -> str:
    """``(16, 14, 14)`` → "16 maps of 14×14"; ``(10,)`` → "10 numbers"."""
    if len(shape) == 3:
        return f"{_plural(shape[0], 'map')} of {shape[1]}×{shape[2]}"
    return _plural(shape[-1], "number")


def preprocessing(steps: list[str], size: int, channels: int) -> str:
    colour = "one grey channel" if channels == 1 else "three colour channels (red, green, blue)"
    return (f"The network only ever sees {size}×{size} pixels with {colour}, so every image is turned into exactly "
            f"that first ({' → '.join(steps)}). The last picture is what the network really gets; its numbers are "
            f"shifted and scaled the way the training images were (normalised), which the picture cannot show.")


def _listed(names: tuple[str, ...] | list[str], limit: int = 12) -> str:
    """Outside names as a Markdown-inert list: "a, b and c"; past ``limit``, the first ones and how many more."""
    shown = [md(n) for n in names[:limit]]
    if len(names) > limit:
        return f"{', '.join(shown)} and {len(names) - limit} more"
    return shown[0] if len(shown) == 1 else f"{', '.join(shown[:-1])} and {shown[-1]}"


def prediction(top: list[tuple[str, float]], class_names: tuple[str, ...]) -> str:
    """The prediction in words, and what any picture gets from a model that knows only ``class_names``."""
    (best, p), rest = top[0], top[1:]
    if not all(math.isfinite(q) for _, q in top):
        return ("The network's output is not a number (NaN or infinity) for this picture: its weights make the "
                "numbers overflow somewhere on the way, so it has no prediction. Random weights often do that.")
    certain = "very sure" if p > 0.9 else "fairly sure" if p > 0.6 else "unsure"
    runner = f" The runner-up is **{md(rest[0][0])}** ({rest[0][1]:.0%})." if rest else ""
    return (f"The network is {certain}: **{md(best)}** with {p:.0%}.{runner} It knows only its "
            f"{len(class_names)} classes ({_listed(class_names)}) and must put every picture into one of them: the "
            f"percentages always add up to 100 %, so a picture unlike its training images still gets an answer, "
            f"sometimes a confident one.")


def filters(name: str, weight_shape: tuple[int, ...], first: bool) -> str:
    out_c, in_c, kh, kw = weight_shape
    what = ("Each small square is one filter: a pattern of weights the layer slides over its input. "
            + ("In colour, a filter shows the colour pattern it responds to; grey means weight 0. "
               if first and in_c == 3 else
               "Red weights add where the input is bright, blue ones subtract. "))
    if first:
        detail = (f"This is the first layer, so its {out_c} filters of {kh}×{kw} pixels look straight at the image: "
                  f"a filter responds most where the image looks like it.")
    else:
        detail = (f"{name} has {out_c} filters, each {kh}×{kw} over the {in_c} maps of the layer before, not over "
                  f"pixels; what is shown is their average over those maps, so they are harder to read than the "
                  f"first layer's. Feature maps and the Hierarchy page show better what they respond to.")
    return what + detail


def _window(size: int, image_size: int) -> str:
    """"a 5×5 pixel window of the image (2 % of it)", or the whole image."""
    if size >= image_size:
        return "the whole image"
    return f"a {size}×{size} pixel window of the image ({size * size / image_size ** 2:.0%} of it)"


def feature_maps(record: Record, window: int | None, image_size: int) -> str:
    """The maps of one layer in words; ``window`` is the side of the input square one cell sees (None: unknown)."""
    shape = tuple(record.output.shape[1:])
    sees = f" Each cell of these maps sees {_window(window, image_size)}." if window is not None else ""
    role = layer_role(record.name)
    return (f"**{md(record.name)}**{f' ({role})' if role else ''} gives {shape_words(shape)}. Each tile is one "
            f"channel: bright where that channel's filter found its pattern in the image, dark where it did "
            f"not.{sees}")


# The layers of a spec-built model's graph blocks (cnnviz.models), and what each one is, in words.
_RESIDUAL_LAYER = re.compile(r"block(\d+)\.(conv1|bn1|relu1|conv2|bn2|shortcut|shortcut\.conv|shortcut\.bn|add|relu)")
_INCEPTION_LAYER = re.compile(
    r"inc(\d+)\.(?:concat|(branch1x1|branch3x3|branch5x5|branchpool)(?:\.(pool|(conv|bn|relu)([12])))?)")
_RESIDUAL_ROLES = {
    "conv1": "the first 3×3 convolution of F(x)", "bn1": "the batch norm after F(x)'s first convolution",
    "relu1": "the ReLU between F(x)'s two convolutions", "conv2": "the second 3×3 convolution of F(x)",
    "bn2": "the batch norm that ends F(x)", "shortcut": "the shortcut, which passes x on unchanged",
    "shortcut.conv": "the shortcut's 1×1 convolution, which gives x the shape of F(x)",
    "shortcut.bn": "the batch norm of the shortcut's projection", "add": "the sum x + F(x)",
    "relu": "the block's output, ReLU(x + F(x))",
}
_BRANCHES = {"branch1x1": "the 1×1 branch", "branch3x3": "the 3×3 branch", "branch5x5": "the 5×5 branch",
             "branchpool": "the pooling branch"}
_BRANCH_PATHS = {"branch1x1": "a 1×1 convolution", "branch3x3": "a 1×1 convolution that reduces the maps, then 3×3",
                 "branch5x5": "a 1×1 convolution that reduces the maps, then 5×5",
                 "branchpool": "a 3×3 max pooling, then a 1×1 convolution"}


def layer_role(name: str) -> str:
    """What a layer inside a residual or Inception block of a spec-built model is, in words ("in residual block 2,
    the sum x + F(x)"); "" for any other layer."""
    if m := _RESIDUAL_LAYER.fullmatch(name):
        return f"in residual block {m[1]}, {_RESIDUAL_ROLES[m[2]]}"
    m = _INCEPTION_LAYER.fullmatch(name)
    if not m:
        return ""
    block, branch, layer, kind, n = m.groups()
    if branch is None:
        return f"in Inception block {block}, the four branches' maps stacked"
    what = _BRANCHES[branch]
    if layer == "pool":
        what = f"the max pooling of {what}"
    elif layer:
        conv = f"the {'first' if n == '1' else 'second'} convolution of {what}"
        what = conv if kind == "conv" else f"the {'batch norm' if kind == 'bn' else 'ReLU'} after {conv}"
    return f"in Inception block {block}, {what}"


def _rms(t: Tensor) -> float:
    return float(t.detach().float().pow(2).mean().sqrt())


def residual(view: ResidualView) -> str:
    """A residual block's sum in words, measured on the first image of ``view``."""
    x, shortcut, fx, total = view.x[0], view.shortcut[0], view.fx[0], view.sum[0]
    carried = (f"made {shape_words(tuple(shortcut.shape))} by the shortcut's 1×1 convolution, because the block "
               f"changes the number or the size of the maps" if view.projection else "passed on unchanged")
    ratio = _rms(fx) / max(_rms(shortcut), 1e-12)
    zeroed = float((total <= 0).float().mean())
    return (f"**{md(view.block)}** adds two things cell by cell: x, its input ({shape_words(tuple(x.shape))}, "
            f"{carried}), and F(x), what its two 3×3 convolutions compute from x. So the block only has to learn the "
            f"change to make to x, and in training the gradient reaches the layers before it through the "
            f"shortcut, past the convolutions. Here F(x) is {ratio:.2f} times as large as x (root mean square). "
            f"Then a ReLU sets the negative sums to 0: {zeroed:.0%} of the cells of x + F(x).")


def branches(view: BranchView) -> str:
    """An Inception block's branches in words, measured on the first image of ``view``."""
    parts, means = [], {}
    for path, out in view.branches.items():
        kind = path.rpartition(".")[2]
        parts.append(f"{_BRANCH_PATHS.get(kind, md(kind))} ({_plural(out.shape[1], 'map')})")
        means[kind] = float(out[0].float().mean())
    strongest, weakest = max(means, key=means.get), min(means, key=means.get)
    listed = f"{'; '.join(parts[:-1])}; and {parts[-1]}" if len(parts) > 1 else parts[0]
    return (f"**{md(view.block)}** looks at the same {shape_words(tuple(view.input.shape[1:]))} in "
            f"{len(parts)} ways at once: {listed}. Their maps keep the same size and are stacked into "
            f"{shape_words(tuple(view.output.shape[1:]))}, so the next layer can use whichever window size fits. "
            f"For this image the most active branch is {_BRANCHES.get(strongest, md(strongest))} (mean activation "
            f"{means[strongest]:.2f}), the least {_BRANCHES.get(weakest, md(weakest))} ({means[weakest]:.2f}).")


def pooling(pair: PoolPair) -> str:
    c, h, w = pair.input.shape
    _, oh, ow = pair.output.shape
    factor = (h * w) / max(1, oh * ow)
    how = ("keeps only the largest value of each window (marked), so the strongest response in each window "
           "survives" if pair.argmax is not None else "keeps the average of each window")
    return (f"Pooling ({pair.name}) shrinks each map from {h}×{w} to {oh}×{ow} — {factor:.0f}× fewer numbers — and "
            f"{how}. The next layer works on the smaller map, so each of its cells sees a wider part of the "
            f"image.")


def _hirescam_here(layer: str, pooled: bool | None) -> str:
    if pooled:
        return (f"Here HiResCAM and Grad-CAM give the same map: {layer}'s maps reach the classifier through a global average pool, "
                f"so every cell of a map gets the same gradient.")
    if pooled is False:
        return (f"Here HiResCAM and Grad-CAM can differ: {layer}'s maps do not go straight into a global average "
                f"pool, so cells of one map can get different gradients, and HiResCAM then shows which cells the "
                f"score really depends on.")
    return f"Whether HiResCAM and Grad-CAM differ here depends on what lies between {layer} and the classifier."


def hirescam_help(layer: str, pooled: bool | None) -> str:
    """What HiResCAM adds over Grad-CAM at ``layer`` of this model; ``pooled`` is
    :func:`cnnviz.gradcam.global_average_pooled` for that layer."""
    return ("HiResCAM multiplies each cell of a map by its own gradient, where Grad-CAM uses the average gradient of "
            "the whole map. " + _hirescam_here(layer, pooled))


def gradcam(method: str, layer: str, target: str, score: float, pooled: bool | None = None) -> str:
    """A CAM in words for the class named ``target``; ``pooled`` as for :func:`hirescam_help`."""
    target = md(target)
    if method == "saliency":
        return ("Saliency shows how much the score for "
                f"**{target}** would change if each input pixel changed a little: speckled, but exact about single "
                "pixels. Red means 'this pixel matters a lot' (for or against the class), blue means it hardly "
                "matters.")
    name = {"gradcam++": "Grad-CAM++", "hirescam": "HiResCAM"}.get(method, "Grad-CAM")
    weigh = ("multiplies each map of **{layer}**, cell by cell, by how much that cell raised the class's score "
             if method == "hirescam" else
             "weighs each map of **{layer}** by how much it raised that class's score ").format(layer=layer)
    how = (f"{name} asks: which parts of the image made the network say **{target}**? It {weigh}(the "
           f"gradient), adds them up and keeps the positive part.")
    if method == "hirescam":
        how += " " + _hirescam_here(layer, pooled)
    return (how + " Red means 'this region spoke for the class', blue means it did not. Each heatmap is stretched "
                  "to its own maximum, so compare classes by their scores, not by how red they look.")


def receptive_field(name: str, size: int, jump: int, image_size: int, object_side: float | None = None) -> str:
    """How much of the image one cell of ``name`` sees; ``object_side``: the objects' mean bounding-box side."""
    share = min(1.0, size * size / (image_size * image_size))
    objects = (f" The objects in the test images are on average {object_side:.0f} pixels across, so the window of "
               f"{name} is {'at least as big as' if size >= object_side else 'smaller than'} an average object."
               if object_side is not None else "")
    return (f"One cell of **{name}** sees a {size}×{size} pixel window of the input ({share:.0%} of the image); "
            f"neighbouring cells look {jump} pixel{'s' if jump != 1 else ''} apart. Each conv or pooling layer "
            f"widens the window of the layer before.{objects}")


def maximized(layer: str, window: int | None, image_size: int) -> str:
    """The caption of synthesised inputs for ``layer`` (``window``: the side one cell sees, None: unknown)."""
    sees = (f" One cell of {layer} sees {_window(window, image_size)}, so a pattern it responds to is at most that "
            f"big. The goal was the channel's average over all cells, so the picture may repeat the pattern." if window is not None else "")
    return ("Starting from noise, each picture was changed step by step to make one channel fire as strongly as "
            f"possible (activation maximisation, Erhan et al. 2009).{sees}")


def overview(levels: list[tuple[str, int]], image_size: int) -> str:
    """The caption of the one-row-per-layer overview; ``levels`` are (layer, window side) from first to last."""
    (first, a), (last, b) = levels[0], levels[-1]
    return (f"One row per layer, first layer at the top; each patch is the window one cell sees, cut from the test "
            f"images where the layer's busiest channel fired hardest. The windows grow from {a}×{a} pixels at {first} "
            f"to {min(b, image_size)}×{min(b, image_size)} at {last}: compare what the rows have in common.")


def pointing(n: int, model: tuple[float, float], centre: tuple[float, float]) -> str:
    """The pointing game in words: ``model`` and ``centre`` are (strict, within 1 pixel) hit rates on ``n`` images."""
    gain = (model[0] - centre[0]) * 100
    verdict = (f"{gain:.0f} percentage points better than the centre" if gain >= 1 else
               f"{-gain:.0f} percentage points worse than the centre" if gain <= -1 else "no better than the centre")
    return (f"On the first {n} test images, the hottest point of the Grad-CAM heatmap for the predicted class lies on "
            f"the object in {model[0]:.0%} of them. A pointer that always picks the image's centre pixel lies on it in "
            f"{centre[0]:.0%}: that, not zero, is the score to beat. Grad-CAM "
            f"is {verdict}. Within 1 pixel of the object: {model[1]:.0%} against {centre[1]:.0%}.")


def wrong_class(gaps: list[float]) -> str:
    """Caption for heatmaps of classes not predicted; ``gaps``: predicted score minus the shown class's score."""
    return (f"On these {len(gaps)} images the class shown scored between {min(gaps):.1f} and {max(gaps):.1f} below "
            f"the predicted class (raw scores, before the softmax). Each heatmap is stretched to its own maximum, so "
            f"the colours alone do not show how much weaker that evidence is.")


def evolution(steps: list[int], drift: Tensor, i: int) -> str:
    """The filter replay in words, at frame ``i``; ``drift`` (T, filters) from :func:`cnnviz.probe.filter_drift`."""
    start = ("At step 0 the filters hold the random numbers they started from" if steps[0] == 0 else
             f"The first recorded frame is at step {steps[0]}")
    if i == 0:
        return f"{start}. Slide to the right to see how training changed them."
    now, mean = drift[i], drift.mean(dim=1).tolist()
    half = next(s for s, d in zip(steps, mean) if d >= mean[-1] / 2)
    return (f"{start}. After {steps[i]} steps they are on average {mean[i]:.0%} of their starting size away "
            f"from it (filter #{int(now.argmin())} moved least, {float(now.min()):.0%}; #{int(now.argmax())} most, "
            f"{float(now.max()):.0%}). Half of the whole run's change (to step {steps[-1]}) was made by step "
            f"{half}. Nobody set these numbers: training on the images did.")
