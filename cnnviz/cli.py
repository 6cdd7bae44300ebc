"""The ``cnnviz`` command: ``cnnviz app``, ``cnnviz train`` and ``cnnviz inspect``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from cnnviz import data, models


def _train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from cnnviz import checkpoint, train

    start = time.perf_counter()
    try:
        train_split = data.load(args.dataset, True, args.data_dir, seed=args.seed)
        test_split = data.load(args.dataset, False, args.data_dir, seed=args.seed)
    except data.DatasetError as e:
        print(f"cnnviz: {e}", file=sys.stderr)
        return 1
    info = train_split.info
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

    history = train.fit(model, train_split, config, on_step=on_step)
    bar.close()
    ev = train.evaluate(model, test_split)
    total = time.perf_counter() - start
    if history.status == "diverged":
        print(f"cnnviz: training diverged: {history.reason}", file=sys.stderr)
    ckpt = checkpoint.Checkpoint(model, spec, info, history, {"test_accuracy": ev.accuracy,
                                                               "per_class": ev.per_class})
    if args.out:
        checkpoint.save(ckpt, args.out)
    result = {
        "dataset": args.dataset, "preset": args.preset, "epochs": epochs, "steps": len(history.steps),
        "params": models.count_params(model), "test_accuracy": round(ev.accuracy, 4),
        "train_seconds": round(history.seconds, 2), "total_seconds": round(total, 2),
        "images_per_s": round(history.images_per_s), "status": history.status,
        "checkpoint": str(args.out) if args.out else None,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.dataset}/{args.preset}: test accuracy {ev.accuracy:.2%} after {history.seconds:.1f} s of "
              f"training ({history.images_per_s:.0f} images/s)" + (f"; saved to {args.out}" if args.out else ""))
    return 0 if history.status != "diverged" else 1


def _app(args: argparse.Namespace) -> int:
    from streamlit.web import cli as stcli

    app = Path(__file__).resolve().parent.parent / "app.py"
    sys.argv = ["streamlit", "run", str(app), "--server.port", str(args.port), "--server.headless", "true"]
    return stcli.main()


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {value}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cnnviz", description="Train a small CNN and see what it does.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model and report its test accuracy")
    t.add_argument("--dataset", required=True, choices=list(data.DATASETS))
    t.add_argument("--data-dir", type=Path, default=None,
                   help="where datasets live (default: $CNNVIZ_DATA_DIR or ~/.cache/cnnviz/data)")
    t.add_argument("--preset", default=models.DEFAULT_PRESET, choices=list(models.PRESETS))
    t.add_argument("--epochs", type=_positive_int, default=None,
                   help="passes over the training data (default: the dataset's own, e.g. 4 for shapes, 2 for mnist)")
    t.add_argument("--batch-size", type=_positive_int, default=128)
    t.add_argument("--lr", type=_positive_float, default=0.005, help="peak learning rate (one-cycle schedule)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--augment", action="store_true", help="random shifts, rotations and zooms while training")
    t.add_argument("--out", type=Path, default=None, help="save the trained model here (.pt)")
    t.add_argument("--json", action="store_true", help="print one JSON object with the results on stdout")
    t.set_defaults(func=_train)

    a = sub.add_parser("app", help="start the web app")
    a.add_argument("--port", type=int, default=8501)
    a.set_defaults(func=_app)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
