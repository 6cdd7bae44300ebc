"""The ``cnnviz`` command: ``cnnviz app``, ``cnnviz train`` and ``cnnviz inspect``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from torch import nn

from cnnviz import data, models, train, usercode, zoo

MAX_MAPS = 64  # feature maps per layer in `inspect`'s figures: a 512-channel layer would take a minute to draw
FOLDER_SIZE = 32  # side of a folder dataset's images: small enough to train on a CPU in seconds
MODEL_OPTIONS = ("weights", "classes", "input_size", "mean", "std")  # they describe a --model


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
    config = train.TrainConfig(epochs=epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                               augment=args.augment)
    bar = tqdm(total=config.total_steps(len(train_split)), desc=f"{args.dataset}/{args.preset}", unit="step",
               file=sys.stderr, dynamic_ncols=True)

    def on_step(s: train.Step) -> None:
        bar.update(1)
        if s.step % 10 == 0 or s.step == s.total_steps:
            bar.set_postfix(loss=f"{s.loss:.3f}", acc=f"{s.acc:.3f}", img_s=f"{s.images_per_s:.0f}")

    history = train.fit(model, train_split, config, val=val_split, on_step=on_step)
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
        "checkpoint": str(args.out) if args.out else None, "skipped": skipped,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.dataset}/{args.preset}: test accuracy {ev.accuracy:.2%} after {history.seconds:.1f} s of "
              f"training ({history.images_per_s:.0f} images/s)" + (f"; saved to {args.out}" if args.out else ""))
    return 1 if failed else 0


def _inspect(args: argparse.Namespace) -> int:
    import numpy as np

    from cnnviz import checkpoint, figures, gradcam, images, probe
    from cnnviz.inspection import inspect

    try:
        model, info, label, resize = _open_model(args)
        image = images.load(args.image)
    except (checkpoint.CheckpointError, usercode.UserModelError, zoo.ZooError, images.ImageError) as e:
        print(f"cnnviz: {e}", file=sys.stderr)
        return 1
    ins = inspect(model, info, image, resize=resize)
    try:
        cam = gradcam.compute(model, ins.x, layer=args.layer, target=_class_index(args.target, info))
    except (KeyError, ValueError) as e:
        print(f"cnnviz: {str(e).strip(chr(34))}", file=sys.stderr)
        return 2
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    top = ins.top(info, k=min(5, info.num_classes))
    (out / "prediction.json").write_text(json.dumps({
        "model": label, "dataset": info.name,
        "top": [{"class": c, "index": info.class_names.index(c), "probability": round(p, 6)} for c, p in top],
        "gradcam": {"layer": cam.layer, "target": info.class_names[cam.target], "target_index": cam.target},
    }, indent=2))
    np.save(out / "input.npy", ins.x.numpy())
    maps_dir = out / "feature_maps"
    maps_dir.mkdir(exist_ok=True)
    for name, rec in ins.records.items():
        if rec.output.ndim == 4:
            maps = rec.output[0]  # (C, h, w)
            shown = min(len(maps), MAX_MAPS)
            fig = figures.feature_grid(maps[:shown], title=f"{name}: {tuple(rec.output.shape[1:])}",
                                       channels=range(shown), of=len(maps))
            # Named by module path (layer1.0.conv1.png), so every layer inside a block or a branch has its own file.
            (maps_dir / f"{name.replace(probe.CALL_SEPARATOR, '_')}.png").write_bytes(figures.to_png(fig))
    weights = probe.filters(model)
    first = next(iter(weights))
    shown = min(len(weights[first]), MAX_MAPS)
    (out / "filters.png").write_bytes(figures.to_png(figures.filter_grid(weights[first][:shown], title=first,
                                                                         channels=range(shown))))
    pairs = probe.pooling_pairs(ins.records)
    if pairs:
        (out / "pooling.png").write_bytes(figures.to_png(figures.pooling_pair(pairs[0], 0)))
    (out / "gradcam.png").write_bytes(figures.to_png(figures.overlay(
        ins.prepared.display, cam.heatmap, title=f"Grad-CAM for '{info.class_names[cam.target]}' at {cam.layer}")))
    np.save(out / "gradcam.npy", cam.heatmap.numpy().astype(np.float32))
    written = ["prediction.json", "input.npy", "feature_maps/", "filters.png"] + (["pooling.png"] if pairs else [])
    print(f"{top[0][0]} ({top[0][1]:.1%}); wrote {', '.join(written)}, gradcam.png and gradcam.npy to {out}")
    return 0


def _open_model(args: argparse.Namespace) -> tuple[nn.Module, data.DatasetInfo, str, str]:
    """The model ``inspect`` looks at, from a checkpoint, user code or the zoo: (model, info, label, resize policy).

    ImageNet models see the centre of the image, as they were evaluated; the others the whole image, squashed, as
    their training images were made. ``--resize`` overrides either.
    """
    from cnnviz import checkpoint

    if args.checkpoint is not None:
        ck = checkpoint.load(args.checkpoint)
        return ck.model, ck.info, f"checkpoint {args.checkpoint.name}", args.resize or "squash"
    if args.model is not None:
        user = usercode.load(args.model, weights=args.weights, classes=args.classes,
                             input_size=args.input_size or 224, mean=args.mean, std=args.std)
        return user.model, user.info, user.source, args.resize or "squash"
    found = zoo.load(args.zoo, download=True)
    if found.note:
        print(f"cnnviz: {found.note}", file=sys.stderr)
    return found.model, found.info, found.label, args.resize or "crop"


def _class_index(target: str | None, info) -> int | None:
    """A class given by name or index → its index (None = the predicted class)."""
    if target is None:
        return None
    if target in info.class_names:
        return info.class_names.index(target)
    if target.isdigit() and int(target) < info.num_classes:
        return int(target)
    raise ValueError(f"unknown class {target!r}; choose one of: {', '.join(info.class_names)}")


def _app(args: argparse.Namespace) -> int:
    from cnnviz.ui import launch

    env = {}
    if args.model is not None:
        env = usercode.to_env(args.model, weights=args.weights, classes=args.classes, input_size=args.input_size,
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
    try:
        return usercode.parse_numbers(text, "the values")
    except usercode.UserModelError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


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
                   help="passes over the training data (default: the dataset's own, e.g. 2 for shapes and mnist)")
    t.add_argument("--batch-size", type=_positive_int, default=128)
    t.add_argument("--lr", type=_learning_rate, default=0.005, help="peak learning rate (one-cycle schedule)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--augment", action="store_true", help="random shifts, rotations and zooms while training")
    t.add_argument("--out", type=Path, default=None, help="save the trained model here (.pt)")
    t.add_argument("--json", action="store_true", help="print one JSON object with the results on stdout")
    t.set_defaults(func=_train)

    i = sub.add_parser("inspect", help="look inside a model on one image; write figures and arrays to a folder")
    source = i.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="a model saved by `cnnviz train --out` or the app")
    source.add_argument("--zoo", choices=zoo.NAMES, help=(
        "a torchvision ImageNet model; its weights are downloaded once (into $TORCH_HOME), and without them it is "
        "untrained"))
    _add_model_options(i, source)
    i.add_argument("--image", required=True, type=Path)
    i.add_argument("--out", required=True, type=Path, help="folder for the results (created if missing)")
    i.add_argument("--layer", default=None, help="layer for Grad-CAM (default: the last conv block)")
    i.add_argument("--target", default=None, help="class name or index for Grad-CAM (default: the predicted one)")
    i.add_argument("--resize", default=None, choices=["squash", "crop", "pad"],
                   help="how the image becomes a square (default: crop for --zoo models, as ImageNet models were "
                        "evaluated; squash otherwise)")
    i.set_defaults(func=_inspect)

    a = sub.add_parser("app", help="start the web app")
    a.add_argument("--port", type=int, default=8501)
    _add_model_options(a)
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
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
