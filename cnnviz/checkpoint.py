"""Save and load a trained model: spec + weights + dataset + history, as plain dicts and tensors.

Loading uses ``torch.load(weights_only=True)``, which never unpickles arbitrary objects, and every field is checked
before a model is built, so a wrong, truncated or foreign file gets one clear :class:`CheckpointError`.
"""

from __future__ import annotations

import io
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO

import torch
from torch import nn

from cnnviz.data import DATASETS, DatasetInfo
from cnnviz.models import ModelSpec, SpecError, build
from cnnviz.train import History

FORMAT = "cnnviz-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """The file is not a usable cnnviz checkpoint; the message says why in plain words."""


@dataclass
class Checkpoint:
    """A trained model with everything needed to use and explain it."""

    model: nn.Module  # in eval mode
    spec: ModelSpec
    info: DatasetInfo
    history: History = field(default_factory=History)
    metrics: dict = field(default_factory=dict)  # e.g. test_accuracy, per_class
    filter_frames: list[tuple[int, torch.Tensor]] = field(default_factory=list)  # (step, first conv's weights)

    @property
    def dataset(self) -> str:
        return self.info.name

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.info.class_names


def to_bytes(ckpt: Checkpoint) -> bytes:
    """The checkpoint as the bytes :func:`save` writes (for a download button)."""
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "spec": ckpt.spec.to_dict(),
        "dataset": asdict(ckpt.info),
        "state_dict": {k: v.detach().cpu().clone() for k, v in ckpt.model.state_dict().items()},
        "history": ckpt.history.to_dict(),
        "metrics": ckpt.metrics,
        "filter_frames": {"steps": [s for s, _ in ckpt.filter_frames],
                          "weights": [w.detach().cpu().clone() for _, w in ckpt.filter_frames]},
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    return buf.getvalue()


def save(ckpt: Checkpoint, path: str | os.PathLike) -> Path:
    """Write ``ckpt`` to ``path`` (usually ``*.pt``) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(to_bytes(ckpt))
    return path


def load(source: str | os.PathLike | bytes | BinaryIO) -> Checkpoint:
    """Read a checkpoint from a path, bytes or a binary file object; raise :class:`CheckpointError` if unusable."""
    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise CheckpointError("The file is empty.")
        source = io.BytesIO(source)
    try:
        payload = torch.load(source, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"There is no file at {source}.") from None
    except Exception as e:  # torch.load fails on foreign bytes in many ways (pickle, struct, zip, EOF, OS…)
        raise CheckpointError(
            "This file is not a cnnviz model: it could not be read as a PyTorch checkpoint "
            f"(it may be truncated or another kind of file). Details: {str(e).splitlines()[0][:200]}"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            "This file is a PyTorch file but not a cnnviz model (save models from cnnviz's Train page or "
            "`cnnviz train --out`)."
        )
    if payload.get("version", 0) > VERSION:
        raise CheckpointError("This model was saved by a newer cnnviz; upgrade cnnviz to open it.")
    try:
        spec = ModelSpec.from_dict(payload["spec"])
        ds = dict(payload["dataset"])
        info = DatasetInfo(**{**ds, "class_names": tuple(ds["class_names"]), "mean": tuple(ds["mean"]),
                              "std": tuple(ds["std"])})
        model = build(spec)
        model.load_state_dict(payload["state_dict"])
        history = History.from_dict(payload.get("history") or {})
        frames = payload.get("filter_frames") or {"steps": [], "weights": []}
        filter_frames = [(int(s), w) for s, w in zip(frames["steps"], frames["weights"])]
    except (KeyError, TypeError, ValueError, RuntimeError, SpecError) as e:
        raise CheckpointError(
            f"This cnnviz model file is damaged or inconsistent: {str(e).splitlines()[0][:200]}"
        ) from None
    if spec.num_classes != info.num_classes:
        raise CheckpointError("This cnnviz model file is inconsistent: its classes do not match its output layer.")
    if (spec.in_channels, spec.image_size) != (info.channels, info.size):
        raise CheckpointError("This cnnviz model file is inconsistent: its input shape does not match its dataset.")
    if info.name not in DATASETS:
        raise CheckpointError(f"This model was trained on '{info.name}', a dataset this version of cnnviz does not "
                              f"know ({', '.join(DATASETS)}).")
    model.eval()
    return Checkpoint(model, spec, info, history, dict(payload.get("metrics") or {}), filter_frames)
