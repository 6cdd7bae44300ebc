"""The plain words under each view, built from the records so they always describe what is on screen."""

from __future__ import annotations

from cnnviz.probe import PoolPair, Record


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


def prediction(top: list[tuple[str, float]]) -> str:
    (best, p), rest = top[0], top[1:]
    certain = "very sure" if p > 0.9 else "fairly sure" if p > 0.6 else "unsure"
    runner = f" The runner-up is **{rest[0][0]}** ({rest[0][1]:.0%})." if rest else ""
    return (f"The network is {certain}: **{best}** with {p:.0%}.{runner} These percentages come from the last "
            f"layer's scores passed through a softmax, so they always add up to 100 % — even for an image that "
            f"looks like none of the classes.")


def filters(name: str, weight_shape: tuple[int, ...], first: bool) -> str:
    out_c, in_c, kh, kw = weight_shape
    what = ("Each small square is one filter: a pattern of weights the layer slides over its input. "
            + ("In colour, a filter shows the colour pattern it responds to; grey means weight 0. "
               if first and in_c == 3 else
               "Red weights add where the input is bright, blue ones subtract. ")
            + "Side by side, they show what the layer looks for — edges of a certain direction, spots, colours.")
    if first:
        detail = (f" This is the first layer, so its {out_c} filters of {kh}×{kw} pixels look straight at the image "
                  f"and are easy to read: they are the network's first detectors of edges"
                  f"{' and colours' if in_c == 3 else ''}.")
    else:
        detail = (f" {name} has {out_c} filters, each {kh}×{kw} over the {in_c} maps of the layer before, not over "
                  f"pixels; what is shown is their average over those maps, so they are harder to read than the "
                  f"first layer's. Feature maps and the Hierarchy page show better what they detect.")
    return what + detail


def feature_maps(record: Record, depth: int, total: int) -> str:
    shape = tuple(record.output.shape[1:])
    where = ("early" if depth <= total / 3 else "in the middle" if depth <= 2 * total / 3 else "late")
    meaning = {
        "early": "Layers this early respond to simple things: edges, corners, patches of colour.",
        "in the middle": "Layers in the middle combine edges into textures and simple parts.",
        "late": "Late layers respond to whole parts or objects; their maps are small but each cell sees a lot.",
    }[where]
    return (f"**{record.name}** gives {shape_words(shape)}. Each tile is one channel: bright where that channel's "
            f"filter found its pattern in the image, dark where it did not. {meaning}")


def pooling(pair: PoolPair) -> str:
    c, h, w = pair.input.shape
    _, oh, ow = pair.output.shape
    factor = (h * w) / max(1, oh * ow)
    how = ("keeps only the largest value of each window (marked)" if pair.argmax is not None
           else "keeps the average of each window")
    return (f"Pooling ({pair.name}) shrinks each map from {h}×{w} to {oh}×{ow} — {factor:.0f}× fewer numbers — and "
            f"{how}. The strongest responses survive while their exact position matters less, so the next layer "
            f"works on a smaller, more robust summary.")


def gradcam(method: str, layer: str, target: str, score: float) -> str:
    if method == "saliency":
        return ("Saliency shows how much the score for "
                f"**{target}** would change if each input pixel changed a little: speckled, but exact about single "
                "pixels. Red means 'this pixel matters a lot' (for or against the class), blue means it hardly "
                "matters.")
    else:
        name = {"gradcam++": "Grad-CAM++", "hirescam": "HiResCAM"}.get(method, "Grad-CAM")
        weigh = ("multiplies each map of **{layer}**, cell by cell, by how much that cell raised the class's score "
                 if method == "hirescam" else
                 "weighs each map of **{layer}** by how much it raised that class's score ").format(layer=layer)
        how = (f"{name} asks: which parts of the image made the network say **{target}**? It {weigh}(the "
               f"gradient), adds them up and keeps the positive part.")
    return (how + " Red means 'this region spoke for the class', blue means it did not. Each heatmap is stretched "
                  "to its own maximum, so compare classes by their scores, not by how red they look.")


def receptive_field(name: str, size: int, jump: int, image_size: int) -> str:
    share = min(1.0, size * size / (image_size * image_size))
    return (f"One cell of **{name}** sees a {size}×{size} pixel window of the input ({share:.0%} of the image); "
            f"neighbouring cells look {jump} pixel{'s' if jump != 1 else ''} apart. Deeper layers see more, which is "
            f"why they can respond to bigger parts of an object.")
