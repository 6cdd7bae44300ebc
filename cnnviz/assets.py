"""Make the shipped model (``assets/shapes_model.pt``) reproducibly: ``make assets`` or ``python -m cnnviz.assets``."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from cnnviz import checkpoint, data, models, train

SHIPPED = Path(__file__).resolve().parent.parent / "assets" / "shapes_model.pt"
FRAMES = 30


def build_shipped(path: Path = SHIPPED, seed: int = 0) -> checkpoint.Checkpoint:
    """Train shapes' default preset on shapes from ``seed`` and save it, with its filter history, to ``path``."""
    tr, te = data.load("shapes", True, seed=seed), data.load("shapes", False, seed=seed)
    spec = models.preset(tr.info.preset, tr.info.channels, tr.info.size, tr.info.num_classes)
    model = models.build(spec, seed=seed)
    config = train.TrainConfig(epochs=tr.info.epochs, seed=seed)
    every = max(1, config.total_steps(len(tr)) // FRAMES)
    frames = [(0, model.conv1.weight.detach().clone(memory_format=torch.contiguous_format))]

    def on_step(s: train.Step) -> None:
        if s.step % every == 0 or s.step == s.total_steps:
            frames.append((s.step, model.conv1.weight.detach().clone(memory_format=torch.contiguous_format)))

    history = train.fit(model, tr, config, val=te, on_step=on_step)
    ev = train.evaluate(model, te)
    ckpt = checkpoint.Checkpoint(model, spec, tr.info, history,
                                 {"test_accuracy": ev.accuracy, "per_class": ev.per_class}, frames)
    checkpoint.save(ckpt, path)
    return ckpt


if __name__ == "__main__":
    ck = build_shipped()
    print(f"wrote {SHIPPED} ({SHIPPED.stat().st_size / 1e6:.2f} MB): test accuracy "
          f"{ck.metrics['test_accuracy']:.2%}", file=sys.stderr)
