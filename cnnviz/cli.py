"""The ``cnnviz`` command: ``cnnviz app``, ``cnnviz train`` and ``cnnviz inspect``."""

from __future__ import annotations

import argparse
import gc
import json
import re
import sys
import time
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cnnviz import data, models, train

if TYPE_CHECKING:
    from PIL import Image
    from torch import nn

# What a command needs is imported when it runs: torchvision's model zoo (with torch._dynamo, which it imports),
# matplotlib and the figures cost seconds, more than a whole `inspect` of the shipped model needs.

MAX_MAPS = 64  # feature maps per layer in `inspect`'s figures: a 512-channel layer would take a minute to draw
MAX_FOLDER_NAME = 80  # characters of an image's result folder name, before a "-2" that tells two files apart
FOLDER_SIZE = 32  # side of a folder dataset's images: small enough to train on a CPU in seconds
MODEL_OPTIONS = ("weights", "classes", "input_size", "mean", "std")  # they describe a --model


def _defaults(field: str) -> str:
    """Each dataset's default ``field`` (epochs, batch_size, lr), for --help: "shapes 1, parts 2, …"."""
    return ", ".join(f"{name} {getattr(info, field):g}" for name, info in data.DATASETS.items())


def batch_and_lr(args: argparse.Namespace) -> tuple[int, float]:
    """``train``'s batch size and peak learning rate: as given, else the dataset's own (``DatasetInfo``; a folder or
    zip of the user's takes the general defaults)."""
    info = data.DATASETS.get(args.dataset)
    batch, lr = (info.batch_size, info.lr) if info else (data.DatasetInfo.batch_size, data.DatasetInfo.lr)
    return args.batch_size or batch, args.lr or lr


def _train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from cnnviz import checkpoint

    start = time.perf_counter()
    skipped: list[dict[str, str]] = []
    try:
        if args.dataset in data.DATASETS:
            full_train = data.load(args.dataset, True, args.data_dir, seed=args.seed)
            test_split = data.load(args.dataset, False, args.data_dir, seed=args.seed)
        else:
            loaded = data.from_folder(Path(args.dataset), size=args.size or FOLDER_SIZE, seed=args.seed)
            full_train, test_split = loaded.train, loaded.test
            skipped = [{"file": s.name, "reason": s.reason} for s in loaded.skipped]
            for s in skipped:
                print(f"cnnviz: skipped {s['file']}: {s['reason']}", file=sys.stderr)
            for warning in loaded.warnings:
                print(f"cnnviz: {warning}", file=sys.stderr)
    except data.DatasetError as e:
        print(f"cnnviz: {e}", file=sys.stderr)
        return 1
    # Validate on training images held out from training; the test set is used once, at the end.
    n_val = min(train.VAL_IMAGES, len(full_train) // 10)
    train_split, val_split = data.holdout(full_train, None, n_val, args.seed) if n_val else (full_train, None)
    del full_train
    info = train_split.info
    args.preset = args.preset or info.preset
    spec = models.preset(args.preset, info.channels, info.size, info.num_classes)
    model = models.build(spec, seed=args.seed)
    epochs = args.epochs or info.epochs
    batch, lr = batch_and_lr(args)
    config = train.TrainConfig(epochs=epochs, batch_size=batch, lr=lr, seed=args.seed,
                               augment=args.augment)
    bar = tqdm(total=config.total_steps(len(train_split)), desc=f"{args.dataset}/{args.preset}", unit="step",
               file=sys.stderr, dynamic_ncols=True)

    def on_step(s: train.Step) -> None:
        bar.update(1)
        if s.step % 10 == 0 or s.step == s.total_steps:
            bar.set_postfix(loss=f"{s.loss:.3f}", acc=f"{s.acc:.3f}", img_s=f"{s.images_per_s:.0f}")

    history = train.fit(model, train_split, config, val=val_split, on_step=on_step, device=args.device)
    bar.close()
    ev = train.evaluate(model, test_split)
    total = time.perf_counter() - start
    failed = history.status in ("diverged", "stuck")
    if failed:
        print(f"cnnviz: training {'diverged' if history.status == 'diverged' else 'got stuck'}: {history.reason}",
              file=sys.stderr)
    ckpt = checkpoint.Checkpoint(model, spec, info, history, {"test_accuracy": ev.accuracy,
                                                               "per_class": ev.per_class})
    if args.out:
        checkpoint.save(ckpt, args.out)
    last_val = history.epochs[-1] if history.epochs else None
    result = {
        "dataset": args.dataset, "preset": args.preset, "epochs": epochs, "steps": len(history.steps),
        "params": models.count_params(model), "train_images": len(train_split), "val_images": history.val_images,
        "val_accuracy": round(last_val["val_acc"], 4) if last_val else None, "test_accuracy": round(ev.accuracy, 4),
        "train_seconds": round(history.seconds, 2), "total_seconds": round(total, 2),
        "images_per_s": round(history.images_per_s), "status": history.status, "reason": history.reason,
        "checkpoint": str(args.out) if args.out else None, "skipped": skipped, "device": str(args.device),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.dataset}/{args.preset}: test accuracy {ev.accuracy:.2%} after {history.seconds:.1f} s of "
              f"training ({history.images_per_s:.0f} images/s on {args.device})"
              + (f"; saved to {args.out}" if args.out else ""))
    return 1 if failed else 0


def _inspect(args: argparse.Namespace) -> int:
    """Exit status: 0 when at least one image was inspected; 1 when none was (each failure is reported), or the
    model could not be opened; 2 for arguments that cannot work with this model (layer, class, --maps)."""
    from cnnviz import images

    files, problems = _image_files(args.image)
    for problem in problems:
        print(f"cnnviz: {problem}", file=sys.stderr)
    try:
        subject = _open_model(args)
        target = _class_index(args.target, subject.info)
    except _Unusable as e:
        print(f"cnnviz: {e}", file=sys.stderr)
        return 1
    except ValueError as e:
        print(f"cnnviz: {e}", file=sys.stderr)
        return 2
    subject.model.to(args.device)
    # One image named once writes into --out itself, as before; several (or a folder) get a folder each.
    one = len(args.image) == 1 and len(files) == 1 and not args.image[0].is_dir()
    folders = [args.out] if one else [args.out / name for name in unique_names([folder_name(f) for f in files])]
    results = []
    for path, folder in zip(files, folders):
        try:
            image = images.load(path)
        except images.ImageError as e:
            print(f"cnnviz: {path}: {e}", file=sys.stderr)
            results.append({"image": str(path), "error": str(e)})
            continue
        try:
            result = _inspect_one(subject, image, args, target, folder)
        except (KeyError, ValueError) as e:  # the layer or --maps: the same for every image, so stop here
            print(f"cnnviz: {str(e).strip(chr(34))}", file=sys.stderr)
            return 2
        results.append({"image": str(path), **result})
        if not (args.json or one):
            print(f"{path}: {_top_text(result)} → {folder}")
    done = [r for r in results if "error" not in r]
    failed = len(results) - len(done) + len(problems)
    if done:  # the model's own figure, once: the same for every image
        _draw_filters(subject.model, args.out)
    if args.json:
        print(json.dumps({"model": subject.label, "dataset": subject.info.name, "device": str(args.device),
                          "out": str(args.out), "files": ["filters.png"] if done else [], "inspected": len(done),
                          "failed": failed, "images": results}))
    elif one and done:
        print(f"{_top_text(done[0])}; wrote {', '.join(done[0]['files'])} and filters.png to {args.out}")
    elif not one:
        print(f"inspected {len(done)} of {len(done) + failed} image{'s' * (len(done) + failed != 1)}" +
              (f" ({failed} could not be: see above)" if failed else "") +
              (f"; the model's filters.png and a folder per image are in {args.out}" if done else ""))
    return 0 if done else 1


def _top_text(result: dict) -> str:
    top = result["top"][0]
    return f"{top['class']} ({top['probability']:.1%})"


def _inspect_one(subject: _Subject, image: Image.Image, args: argparse.Namespace, target: int | None,
                 out: Path) -> dict:
    """Inspect one image and write its files into ``out``: prediction, input, Grad-CAM, and the feature maps of the
    layers ``--maps`` names (with a close-up of the first pooling step among them). Returns what ``prediction.json``
    holds, its folder and the files written."""
    import numpy as np

    from cnnviz import figures, gradcam, pictures, probe
    from cnnviz.inspection import inspect

    model, info = subject.model, subject.info
    ins = inspect(model, info, image, resize=subject.resize)
    cam = gradcam.compute(model, ins.x, layer=args.layer, target=target)
    drawn = _map_layers(args.maps, ins.map_layers(), cam.layer)
    top = ins.top(info, k=min(5, info.num_classes))
    result = {
        "top": [{"class": c, "index": info.class_names.index(c), "probability": round(p, 6)} for c, p in top],
        "gradcam": {"layer": cam.layer, "target": info.class_names[cam.target], "target_index": cam.target},
        "feature_maps": drawn,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "prediction.json").write_text(json.dumps({"model": subject.label, "dataset": info.name, **result},
                                                     indent=2))
    np.save(out / "input.npy", ins.x.cpu().numpy())
    np.save(out / "gradcam.npy", cam.heatmap.cpu().numpy().astype(np.float32))
    (out / "gradcam.png").write_bytes(figures.to_png(figures.overlay(
        ins.prepared.display, cam.heatmap, title=f"Grad-CAM for '{info.class_names[cam.target]}' at {cam.layer}")))
    written = ["prediction.json", "input.npy", "gradcam.npy", "gradcam.png"]
    # The first pooling step, up close, with the maps of its layer: what goes into it and what comes out.
    pairs = [pair for pair in probe.pooling_pairs(ins.records) if pair.name in drawn][:1]
    if pairs:
        (out / "pooling.png").write_bytes(figures.to_png(figures.pooling_pair(pairs[0], 0)))
        written.append("pooling.png")
    if drawn:
        (out / "feature_maps").mkdir(exist_ok=True)
        written.append("feature_maps/")
    for name in drawn:
        output = ins.records[name].output
        maps = output[0]  # (C, h, w)
        shown = min(len(maps), MAX_MAPS)
        fig = pictures.feature_grid(maps[:shown], title=f"{name}: {tuple(output.shape[1:])}", channels=range(shown),
                                   of=len(maps))
        # Named by module path (layer1.0.conv1.png), so every layer inside a block or a branch has its own file.
        (out / "feature_maps" / f"{name.replace(probe.CALL_SEPARATOR, '_')}.png").write_bytes(figures.to_png(fig))
    return {"folder": str(out), **result, "files": written}


def _draw_filters(model: nn.Module, out: Path) -> None:
    """``filters.png``: the first conv layer's filters (at most :data:`MAX_MAPS`), which no image changes."""
    from cnnviz import figures, probe

    weights = probe.filters(model)
    first = next(iter(weights))
    shown = min(len(weights[first]), MAX_MAPS)
    (out / "filters.png").write_bytes(figures.to_png(figures.filter_grid(weights[first][:shown], title=first,
                                                                         channels=range(shown))))


def _map_layers(asked: str | tuple[str, ...] | None, layers: list[str], cam_layer: str) -> list[str]:
    """The layers whose feature maps ``inspect`` draws: ``--maps all``, ``none`` or names; by default the Grad-CAM
    layer's (the maps its heatmap is a weighted sum of). An unknown name raises ``ValueError`` listing the others."""
    if asked is None:
        return [cam_layer] if cam_layer in layers else []
    if asked == "all":
        return layers
    if asked == "none":
        return []
    unknown = [name for name in asked if name not in layers]
    if unknown:
        raise ValueError(f"--maps: no layer with feature maps called {', '.join(map(repr, unknown))}; "
                         f"layers with maps: {', '.join(layers)}")
    return list(asked)


def _image_files(given: list[Path]) -> tuple[list[Path], list[str]]:
    """The images to inspect, in the order given, a folder's files by name (hidden ones and subfolders left out),
    each file once; and the problems with what was given (an empty folder), in words."""
    files, problems = [], []
    for path in given:
        if not path.is_dir():
            files.append(path)
            continue
        inside = sorted((p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")),
                        key=lambda p: p.name)
        if not inside:
            problems.append(f"{path}: the folder holds no files to inspect")
        files += inside
    return list(dict.fromkeys(files)), problems


# Names Windows keeps for devices: a folder cannot be called that there, whatever its extension.
_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)), *(f"lpt{i}" for i in range(1, 10))}


def folder_name(path: Path) -> str:
    """A safe name for an image's result folder, from its file name: the name without its extension, every run of
    characters other than letters, digits, ``-``, ``_`` and ``.`` as one ``_``, no leading dot, at most
    :data:`MAX_FOLDER_NAME` characters; ``image`` when nothing is left."""
    name = re.sub(r"[^\w.-]+", "_", unicodedata.normalize("NFC", path.stem)).strip("._")[:MAX_FOLDER_NAME]
    name = name.rstrip(".") or "image"
    return f"{name}_" if name.lower() in _RESERVED else name


def unique_names(names: list[str]) -> list[str]:
    """``names`` made distinct by adding ``-2``, ``-3``, … to repeats, compared without case (macOS and Windows
    file systems do not tell ``Cat`` from ``cat``)."""
    taken: set[str] = set()
    unique = []
    for name in names:
        candidate, k = name, 1
        while candidate.casefold() in taken:
            k += 1
            candidate = f"{name}-{k}"
        taken.add(candidate.casefold())
        unique.append(candidate)
    return unique


@dataclass
class _Subject:
    """The model ``inspect`` looks at: the module, its data's description, its name in words, the resize policy."""

    model: nn.Module
    info: data.DatasetInfo
    label: str
    resize: str


class _Unusable(Exception):
    """The model named on the command line cannot be opened; the message says why."""


def _open_model(args: argparse.Namespace) -> _Subject:
    """The model ``inspect`` looks at, from a checkpoint, user code or the zoo.

    ImageNet models see the centre of the image, as they were evaluated; the others the whole image, squashed, as
    their training images were made. ``--resize`` overrides either. Only the source given is imported: torchvision's
    model zoo alone takes longer to import than a checkpoint takes to inspect.
    """
    if args.checkpoint is not None:
        from cnnviz import checkpoint

        try:
            ck = checkpoint.load(args.checkpoint)
        except checkpoint.CheckpointError as e:
            raise _Unusable(str(e)) from None
        return _Subject(ck.model, ck.info, f"checkpoint {args.checkpoint.name}", args.resize or "squash")
    if args.model is not None:
        from cnnviz import usercode

        try:
            user = usercode.load(args.model, weights=args.weights, classes=args.classes,
                                 input_size=args.input_size or 224, mean=args.mean, std=args.std)
        except usercode.UserModelError as e:
            raise _Unusable(str(e)) from None
        return _Subject(user.model, user.info, user.source, args.resize or "squash")
    from cnnviz import zoo

    try:
        found = zoo.load(args.zoo, download=True)
    except zoo.ZooError as e:
        raise _Unusable(str(e)) from None
    if found.note:
        print(f"cnnviz: {found.note}", file=sys.stderr)
    return _Subject(found.model, found.info, found.label, args.resize or "crop")


def _class_index(target: str | None, info) -> int | None:
    """A class given by name or index → its index (None = the predicted class)."""
    if target is None:
        return None
    if target in info.class_names:
        return info.class_names.index(target)
    if target.isdigit() and int(target) < info.num_classes:
        return int(target)
    raise ValueError(f"unknown class {target!r}; choose one of: {', '.join(info.class_names)}")


def _dissect(args: argparse.Namespace) -> int:
    from cnnviz import checkpoint, dissect

    try:
        ck = checkpoint.load(args.checkpoint)
    except (checkpoint.CheckpointError, OSError) as e:
        print(f"cnnviz dissect: {e}", file=sys.stderr)
        return 1
    if ck.info.name != "parts":
        print(f"cnnviz dissect: this model was trained on {ck.info.title}; dissection needs one trained on parts, "
              f"whose scenes carry the masks it measures (cnnviz train --dataset parts --out FILE)", file=sys.stderr)
        return 1
    model = dissect.untrained(ck.model, seed=args.seed) if args.untrained else ck.model
    found = dissect.dissect(model, images=args.images or dissect.IMAGES)
    if args.json:
        print(json.dumps(found.to_json()))
        return 0
    print(f"{'layer':<12}{'units':>6}  detectors (IoU ≥ {found.iou_threshold:g})      best concept, any IoU")
    for layer in found.layers:
        rule = ", ".join(f"{k} {v}" for k, v in layer.detectors.items())
        best = ", ".join(f"{k} {v}" for k, v in layer.best.items())
        print(f"{layer.name:<12}{len(layer.units):>6}  {rule:<36}{best}")
    print(f"{len(found.scenes):,} scenes in {found.seconds:.1f} s" + (" (untrained control)" * args.untrained))
    return 0


def _app(args: argparse.Namespace) -> int:
    from cnnviz import devices, usercode
    from cnnviz.ui import launch

    env = {devices.ENV: str(args.device)}  # where the server puts each session's model (cnnviz.ui.state)
    if args.ray:
        env["CNNVIZ_RAY_ADDRESS"] = args.ray  # cnnviz.cluster.ADDRESS_ENV (not imported here: it stays light)
    if args.model is not None:
        env |= usercode.to_env(args.model, weights=args.weights, classes=args.classes, input_size=args.input_size,
                               mean=args.mean, std=args.std)
    launch.serve(args.port, env)  # the server's process loads the model before it serves, and exits if it cannot
    return 0  # not reached: serve replaces this process


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _learning_rate(text: str) -> float:
    value = float(text)
    if not 0 < value < 10:
        raise argparse.ArgumentTypeError(f"must be between 0 and 10, got {value}")
    return value


def _numbers(text: str) -> tuple[float, ...]:
    from cnnviz import usercode

    try:
        return usercode.parse_numbers(text, "the values")
    except usercode.UserModelError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _device(text: str):
    """``--device``: a name → the ``torch.device`` it stands for here; one this machine lacks is a usage error."""
    from cnnviz import devices

    try:
        return devices.resolve(text)
    except devices.DeviceError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _maps(text: str) -> str | tuple[str, ...]:
    """``--maps``: ``all``, ``none`` or layer names separated by commas (checked against the model later)."""
    if text in ("all", "none"):
        return text
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    if not names:
        raise argparse.ArgumentTypeError(f"expected all, none or layer names separated by commas, got {text!r}")
    return names


class _ZooNames(Sequence):
    """``zoo.NAMES``, imported only when argparse reads it (a --zoo given, or help): importing the zoo imports
    torchvision's models, which costs more than the whole inspection of a checkpoint."""

    def __getitem__(self, i):
        from cnnviz import zoo

        return zoo.NAMES[i]

    def __len__(self) -> int:
        from cnnviz import zoo

        return len(zoo.NAMES)


def _dataset(text: str) -> str:
    """A built-in dataset's name or an existing folder or zip; a built-in name wins (write ./mnist for a folder)."""
    if text in data.DATASETS or Path(text).exists():
        return text
    raise argparse.ArgumentTypeError(f"expected a built-in dataset ({', '.join(data.DATASETS)}) or an existing "
                                     f"folder or .zip of class folders, got {text!r}")


def _folder_size(text: str) -> int:
    from cnnviz import folders

    value = int(text)
    low, high = models.IMAGE_SIZES[0], folders.MAX_SIZE
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"must be between {low} and {high} pixels, got {value}")
    return value


def _add_device(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--device", type=_device, default="auto", metavar="auto|cpu|cuda|mps", help=(
        f"where {what} (default: auto, a CUDA GPU, else Apple's MPS, when there is one, else the CPU); a device "
        f"this machine lacks is an error"))


def _add_model_options(p: argparse.ArgumentParser, model_in=None) -> None:
    """``--model module:function`` (in ``model_in``, a group of alternatives, when given) and the options that
    describe it (``--weights``, ``--classes``, …)."""
    (model_in or p).add_argument("--model", metavar="MODULE:FUNCTION", default=None, help=(
        "your own model: a function, in a module importable from here or from PYTHONPATH, that returns an nn.Module"))
    p.add_argument("--weights", type=Path, default=None,
                   help="a state dict for --model, saved with torch.save(model.state_dict(), path)")
    p.add_argument("--classes", type=Path, default=None,
                   help="a text file of --model's class names, one per line (default: class 0, class 1, …)")
    p.add_argument("--input-size", type=int, default=None, metavar="N",
                   help="--model takes N×N images (default: 224)")
    p.add_argument("--mean", type=_numbers, default=None, metavar="A,B,C",
                   help="per-channel mean its training images were normalised with (default: ImageNet's)")
    p.add_argument("--std", type=_numbers, default=None, metavar="A,B,C",
                   help="per-channel standard deviation, as --mean (default: ImageNet's)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cnnviz", description="Train a small CNN and see what it does.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model and report its test accuracy", epilog=(
        f"It validates on up to {train.VAL_IMAGES} training images held out from training, and measures the test "
        f"set once, at the end. Exit status: 0 when training finished; 1 when the data could not be loaded, or when "
        f"training diverged or got stuck at chance (the reason goes to stderr; the results and the model are still "
        f"written); 2 for bad arguments."))
    t.add_argument("--dataset", required=True, type=_dataset, metavar="NAME|FOLDER|ZIP",
                   help=f"a built-in dataset ({', '.join(data.DATASETS)}), or a folder or .zip with one folder of "
                        f"images per class (files that are not usable images are skipped and listed)")
    t.add_argument("--size", type=_folder_size, default=None,
                   help=f"side of the square images a folder dataset is resized to (default: {FOLDER_SIZE})")
    t.add_argument("--data-dir", type=Path, default=None,
                   help="where datasets live (default: $CNNVIZ_DATA_DIR or ~/.cache/cnnviz/data)")
    t.add_argument("--preset", default=None, choices=list(models.PRESETS),
                   help="architecture (default: the dataset's own: gap for shapes, tiny for the others)")
    t.add_argument("--epochs", type=_positive_int, default=None,
                   help=f"passes over the training data (default: the dataset's own: {_defaults('epochs')})")
    t.add_argument("--batch-size", type=_positive_int, default=None,
                   help=f"default: the dataset's own: {_defaults('batch_size')}")
    t.add_argument("--lr", type=_learning_rate, default=None,
                   help=f"peak learning rate of the one-cycle schedule (default: the dataset's own: {_defaults('lr')})")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--augment", action="store_true", help="random shifts, rotations and zooms while training")
    t.add_argument("--out", type=Path, default=None, help="save the trained model here (.pt)")
    t.add_argument("--json", action="store_true", help="print one JSON object with the results on stdout")
    _add_device(t, "to train: the model and the training images go there")
    t.set_defaults(func=_train)

    i = sub.add_parser("inspect", help="look inside a model on images; write figures and arrays to a folder",
                       epilog=(
        "Each image's folder holds prediction.json (top classes, the Grad-CAM layer and class), input.npy, "
        "gradcam.npy, gradcam.png, feature_maps/<layer>.png for the layers --maps names, and pooling.png, one "
        "channel of the first pooling layer among them, window by window; --out holds "
        "filters.png, the model's first filters, drawn once. The model is loaded once for all the images. An image "
        "that cannot be used is reported on stderr (and in --json's output) and the others go on. Exit status: 0 "
        "when at least one image was inspected; 1 when none was, or the model could not be loaded; 2 for bad "
        "arguments (a layer, class or device that is not there)."))
    source = i.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="a model saved by `cnnviz train --out` or the app")
    source.add_argument("--zoo", choices=_ZooNames(), metavar="NAME", help=(
        "a torchvision ImageNet model (%(choices)s); its weights are downloaded once (into $TORCH_HOME), and "
        "without them it is untrained"))
    _add_model_options(i, source)
    i.add_argument("--image", required=True, type=Path, action="append", metavar="FILE|FOLDER", help=(
        "an image, or a folder of them (the files in it, not in its subfolders); repeat for more. One file: the "
        "results go into --out itself; several: each into a folder of --out named after the file"))
    i.add_argument("--out", required=True, type=Path, help="folder for the results (created if missing)")
    i.add_argument("--layer", default=None, help="layer for Grad-CAM (default: the last conv block)")
    i.add_argument("--target", default=None, help="class name or index for Grad-CAM (default: the predicted one)")
    i.add_argument("--resize", default=None, choices=["squash", "crop", "pad"],
                   help="how the image becomes a square (default: crop for --zoo models, as ImageNet models were "
                        "evaluated; squash otherwise)")
    i.add_argument("--maps", type=_maps, default=None, metavar="all|none|LAYER,…", help=(
        "the layers whose feature maps are drawn into feature_maps/ (default: the Grad-CAM layer's, the maps its "
        "heatmap is made of; all: every layer's, and pooling.png); each figure takes a fraction of a second, and a "
        "ResNet has 60 layers"))
    i.add_argument("--json", action="store_true",
                   help="print one JSON object on stdout: each image's folder, top classes and files, or its error")
    _add_device(i, "the model runs")
    i.set_defaults(func=_inspect)

    d = sub.add_parser("dissect", help="measure what each conv layer detects (network dissection on parts)",
                       epilog="Prints one JSON object with --json: per conv layer its units, detectors by category "
                              "(colour, texture, part, object) and each unit's best concept and IoU.")
    d.add_argument("--checkpoint", type=Path, required=True, help="a model trained on parts (cnnviz train "
                                                                  "--dataset parts --out FILE)")
    d.add_argument("--images", type=_positive_int, default=None, help="scenes to dissect (default: 2000)")
    d.add_argument("--untrained", action="store_true",
                   help="dissect the same architecture with fresh random weights instead (the control)")
    d.add_argument("--seed", type=int, default=0, help="the random weights' seed for --untrained")
    d.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    d.set_defaults(func=_dissect)

    a = sub.add_parser("app", help="start the web app")
    a.add_argument("--port", type=int, default=8501)
    a.add_argument("--ray", metavar="ADDRESS", default=None,
                   help="train on this Ray cluster (ray://HOST:10001, HOST:6379 or auto; needs pip install "
                        "'cnnviz[ray]'); default: $CNNVIZ_RAY_ADDRESS, else local processes")
    _add_model_options(a)
    _add_device(a, "each session's model and its training run")
    a.set_defaults(func=_app)
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if getattr(args, "model", None) is None:
        given = [f"--{name.replace('_', '-')}" for name in MODEL_OPTIONS if getattr(args, name, None) is not None]
        if given:
            p.error(f"{', '.join(given)} describe{'s' if len(given) == 1 else ''} a --model; give --model too")
    if args.command == "train" and args.size is not None and args.dataset in data.DATASETS:
        p.error(f"--size is for folder datasets; {args.dataset} has its own size")
    if argv is not None:  # called from Python: the caller's objects stay as they were
        return args.func(args)
    # The command line's own process, which ends with the command. Importing torch leaves ~180,000 objects that every
    # full garbage collection walks, the last one at exit too (0.3-0.9 s of a 5 s `inspect`, measured): frozen, they
    # are skipped. Memory is still freed as usual; only cycles among frozen objects would stay, and the process ends.
    gc.freeze()
    code = args.func(args)
    gc.freeze()  # what the command imported and made since (matplotlib, figures)
    return code


if __name__ == "__main__":
    sys.exit(main())
