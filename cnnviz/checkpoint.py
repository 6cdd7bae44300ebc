"""Save and load a trained model: spec + weights + dataset + history, as plain dicts and tensors.

A checkpoint may come from anyone (the app's model uploader), so loading trusts nothing in it. The file is at most
:data:`MAX_BYTES`, in PyTorch's own zip format with uncompressed records (so nothing in it expands in memory), read
with ``torch.load(weights_only=True)``, which never unpickles arbitrary objects. The spec is checked against
:func:`cnnviz.models.check` before a layer is built, and every other field for type and range before it is used, so a
wrong, truncated, foreign or hostile file gets one clear :class:`CheckpointError` and nothing else.
"""

from __future__ import annotations

import io
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO

import torch
from torch import nn

from cnnviz import files, text
from cnnviz.data import DATASETS, DatasetInfo, is_own
from cnnviz.images import RESIZE_POLICIES
from cnnviz.models import IMAGE_SIZES, NUM_CLASSES, PRESETS, ModelSpec, SpecError, build
from cnnviz.train import History

log = logging.getLogger(__name__)

FORMAT = "cnnviz-checkpoint"
# 2: a spec's blocks say their type and may be residual or Inception blocks. Version 1 files (conv blocks without a
# type) load as they always did; a version 2 file in an older cnnviz asks for an upgrade instead of failing on a field.
VERSION = 2

MB = 1024 * 1024
MAX_BYTES = 20 * MB  # the server's upload limit (server.maxUploadSize) and the image cap are 20 MB too
MAX_RECORDS = 1_000  # records in the zip, one per tensor: the largest model with all its filter frames has ~150
MAX_FRAMES = 100  # filter frames; training keeps about 32
MAX_STEPS = 200_000  # rows of the per-step history: 50 epochs of CIFAR-10 at batch 32 are 78,000 steps
MAX_EVALUATIONS = 10_000  # rows of the validation history
MAX_STEP = 10_000_000  # the largest step number a row or frame may carry
MAX_CLASS_NAME = 40  # characters
MAX_TITLE = 80
MAX_TEXT = 500  # a dataset's description, the reason a run ended
MIN_STD = 1e-3  # a pixel spread below 0.1 % of the range would blow normalised inputs up a thousandfold
STATUSES = ("not started", "finished", "stopped", "diverged", "stuck")  # History.status of a run that has ended


class CheckpointError(ValueError):
    """The file is not a usable cnnviz checkpoint; the message says why in plain words."""


@dataclass
class Checkpoint:
    """A trained model with everything needed to use and explain it."""

    model: nn.Module  # in eval mode
    spec: ModelSpec
    info: DatasetInfo
    history: History = field(default_factory=History)
    metrics: dict = field(default_factory=dict)  # test_accuracy: float in [0, 1]; per_class: one such per class
    # (step, the weights of the first conv layer the model runs: conv1, or block1.conv1 when a graph block comes first)
    filter_frames: list[tuple[int, torch.Tensor]] = field(default_factory=list)
    metrics_from_file: bool = False  # True: the metrics are what a loaded file reports, not measured here

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
    """Read a checkpoint from a path, bytes or a binary file object; raise :class:`CheckpointError` (and no other
    exception) if it is unusable. The metrics of the result are marked as the file's own (``metrics_from_file``)."""
    try:
        return _checkpoint(_unpack(_read(source)))
    except CheckpointError:
        raise
    except Exception:  # a case the checks below missed must still not break the session that uploaded the file
        log.exception("a model file passed the checks and still failed to load")
        raise CheckpointError("This file could not be loaded as a cnnviz model.") from None


# --- the bytes -----------------------------------------------------------------------------------------------------

def _too_big(n_bytes: int) -> CheckpointError:
    return CheckpointError(f"The file is {n_bytes / MB:.1f} MB; the limit for a model file is {MAX_BYTES // MB} MB.")


def _read(source: object) -> bytes:
    """The bytes of ``source``, refusing more than :data:`MAX_BYTES` without reading them all into memory."""
    path = isinstance(source, (str, os.PathLike))
    try:
        return files.read_capped(source, MAX_BYTES)
    except files.TooBig as e:
        if e.size is not None:
            raise _too_big(e.size) from None
        raise CheckpointError(f"The file is larger than the limit of {MAX_BYTES // MB} MB for a model file.") from None
    except FileNotFoundError:
        raise CheckpointError(f"There is no file at {os.fspath(source)}.") from None
    except OSError as e:
        if path:
            raise CheckpointError(f"Could not open {os.fspath(source)}: {e.strerror or e}.") from None
        raise CheckpointError(f"Could not read the file: {e}.") from None
    except TypeError as e:
        if callable(getattr(source, "read", None)):
            raise CheckpointError("Could not read the file: it was opened as text, not as bytes.") from None
        raise CheckpointError(f"Expected a path, bytes or a binary file to read a model from, got a "
                              f"{type(source).__name__}.") from e


def _unpack(raw: bytes) -> object:
    """What ``torch.load(weights_only=True)`` reads from ``raw``, once the zip's records are known to be plain."""
    if not raw:
        raise CheckpointError("The file is empty.")
    try:
        return files.load_torch(raw, MAX_RECORDS)
    except files.NotPlainTorch as e:
        if e.reason == "records":
            raise CheckpointError(f"This file is not a cnnviz model: it holds {e.records:,} records (a model has at "
                                  f"most {MAX_RECORDS:,}).") from None
        if e.reason == "compressed":
            raise CheckpointError("This file is not a cnnviz model: its contents are compressed or misdescribed, "
                                  "which files saved by PyTorch never are.") from None
        raise CheckpointError("This file is not a cnnviz model: it could not be read as a PyTorch checkpoint (it "
                              "may be truncated or another kind of file).") from None


# --- the fields ----------------------------------------------------------------------------------------------------

def _bad(what: str) -> CheckpointError:
    return CheckpointError(f"This cnnviz model file is damaged or inconsistent: {what}.")


def _number(v: object, what: str, low: float = -math.inf, high: float = math.inf) -> float:
    """``v`` as a float when it is a finite real number in ``[low, high]`` (not a bool, not a string)."""
    if not ((type(v) is float and math.isfinite(v)) or (type(v) is int and abs(v) < 2 ** 63)) or not low <= v <= high:
        expected = (f" from {low:g} to {high:g}" if math.isfinite(high) else
                    f" of at least {low:g}" if math.isfinite(low) else "")
        raise _bad(f"{what} must be a finite number{expected}, got {text.brief(v)}")
    return float(v)


def _whole(v: object, what: str, low: int, high: int) -> int:
    if type(v) is not int or not low <= v <= high:
        raise _bad(f"{what} must be a whole number from {low:,} to {high:,}, got {text.brief(v)}")
    return v


def _text(v: object, what: str, limit: int, *, empty: bool = False) -> str:
    """``v`` when it is printable text (no control characters or line breaks) of at most ``limit`` characters."""
    if type(v) is not str or len(v) > limit or not v.isprintable() or not (empty or v.strip()):
        raise _bad(f"{what} must be {'' if empty else 'non-empty '}printable text of at most {limit} characters, "
                   f"got {text.brief(v)}")
    return v


def _sequence(v: object, what: str, n: int | None = None, limit: int | None = None) -> list | tuple:
    """``v`` when it is a list or tuple of exactly ``n`` items, or of at most ``limit``."""
    size = len(v) if isinstance(v, (list, tuple)) else None
    if size is None or (n is not None and size != n) or (limit is not None and size > limit):
        count = f"{n}" if n is not None else f"at most {limit:,}"
        raise _bad(f"{what} must be a list of {count} items, got {text.brief(v)}{'' if size is None else f' of {size:,}'}")
    return v


def _mapping(v: object, what: str) -> dict:
    if not isinstance(v, dict):
        raise _bad(f"{what} must be a mapping, got {text.brief(v)}")
    return v


def _checkpoint(payload: object) -> Checkpoint:
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError("This file is a PyTorch file but not a cnnviz model (save models from cnnviz's Train "
                              "page or `cnnviz train --out`).")
    version = payload.get("version")
    if type(version) is not int or version < 1:
        raise _bad(f"its format version must be a whole number, got {text.brief(version)}")
    if version > VERSION:
        raise CheckpointError("This model was saved by a newer cnnviz; upgrade cnnviz to open it.")
    try:
        spec = ModelSpec.from_dict(payload.get("spec"))
    except SpecError as e:
        raise CheckpointError(f"This file's model cannot be used here: {e}.") from None
    info = _dataset(payload.get("dataset"), spec)
    model = _model(spec, payload.get("state_dict"))
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))  # every spec has a conv layer
    return Checkpoint(model, spec, info, _history(payload.get("history")),
                      _metrics(payload.get("metrics"), spec.num_classes),
                      _frames(payload.get("filter_frames"), tuple(first_conv.weight.shape)), metrics_from_file=True)


def _dataset(d: object, spec: ModelSpec) -> DatasetInfo:
    """The dataset description, checked against the spec, and against the registered dataset of that name when it is
    a built-in one; a dataset of a user's own images (``yours-…``) is checked field by field alone."""
    d = _mapping(d, "its dataset description")
    name = d.get("name")
    if not (type(name) is str and (name in DATASETS or is_own(name))):
        raise CheckpointError(f"This model was trained on {text.brief(name)}, a dataset this version of cnnviz does "
                              f"not know ({', '.join(DATASETS)}, or your own images).")
    known = DATASETS.get(name)
    names = _sequence(d.get("class_names"), "its class names", limit=NUM_CLASSES[1])
    names = tuple(_text(n, f"class name {i + 1}", MAX_CLASS_NAME) for i, n in enumerate(names))
    if len(set(names)) != len(names):
        raise _bad("two of its classes have the same name")
    channels = _whole(d.get("channels"), "its number of image channels", 1, 3)
    size = _whole(d.get("size"), "its image size", *IMAGE_SIZES)
    if spec.num_classes != len(names):
        raise CheckpointError("This cnnviz model file is inconsistent: its classes do not match its output layer.")
    if (spec.in_channels, spec.image_size) != (channels, size):
        raise CheckpointError("This cnnviz model file is inconsistent: its input shape does not match its dataset.")
    if known and (channels, size, len(names)) != (known.channels, known.size, known.num_classes):
        # The app measures and shows the model on that dataset's images: they must fit it.
        raise CheckpointError(
            f"This cnnviz model file is inconsistent: {known.title} has {known.num_classes} classes of "
            f"{known.channels}×{known.size}×{known.size} images, but this model takes {channels}×{size}×{size} "
            f"images and has {len(names)} classes.")
    mean = tuple(_number(m, f"the mean of channel {i + 1}", 0, 1)
                 for i, m in enumerate(_sequence(d.get("mean"), "its mean", channels)))
    std = tuple(_number(s, f"the standard deviation of channel {i + 1}", MIN_STD, 1)
                for i, s in enumerate(_sequence(d.get("std"), "its standard deviation", channels)))
    default = known or DatasetInfo(name, "", names, channels, size, mean, std)  # the field defaults of a dataset
    invert = d.get("invert", default.invert)
    if type(invert) is not bool:
        raise _bad(f"'invert' must be true or false, got {text.brief(invert)}")
    preset = d.get("preset", default.preset)
    if type(preset) is not str or preset not in PRESETS:
        raise _bad(f"its preset must be one of {', '.join(PRESETS)}, got {text.brief(preset)}")
    resize = d.get("resize", default.resize)  # files from before resize policies were recorded lack it
    if type(resize) is not str or resize not in RESIZE_POLICIES:
        raise _bad(f"its resize policy must be one of {', '.join(RESIZE_POLICIES)}, got {text.brief(resize)}")
    return DatasetInfo(name, _text(d.get("title"), "its dataset title", MAX_TITLE), names, channels, size, mean, std,
                       invert=invert, description=_text(d.get("description", ""), "its description", MAX_TEXT,
                                                        empty=True),
                       epochs=_whole(d.get("epochs", default.epochs), "its number of epochs", 1, 1_000), preset=preset,
                       resize=resize, batch_size=default.batch_size, lr=default.lr)  # training defaults: not from files


def _model(spec: ModelSpec, state: object) -> nn.Module:
    """The spec's model (within the limits of :func:`cnnviz.models.check`) with the file's weights, in eval mode."""
    state = _mapping(state, "its weights")
    model = build(spec)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    if missing or extra:
        raise _bad(f"its weights do not match its architecture (missing: {', '.join(missing[:3]) or 'none'}; "
                   f"unexpected: {', '.join(text.brief(k) for k in extra[:3]) or 'none'})")
    for k, want in expected.items():
        got = state[k]
        # Shape first: a tensor in a file can be a huge zero-stride view of a few bytes, so nothing else is looked
        # at before its size is known to be the model's own.
        if not isinstance(got, torch.Tensor) or got.layout != torch.strided or got.shape != want.shape or \
                got.dtype != want.dtype:
            raise _bad(f"the weights '{k}' must be a {str(want.dtype).removeprefix('torch.')} tensor of shape "
                       f"{tuple(want.shape)}, got {text.brief(got)}")
        if got.is_floating_point() and not bool(torch.isfinite(got).all()):
            raise _bad(f"the weights '{k}' hold infinite or missing (NaN) values")
        if k.endswith("running_var") and bool((got < 0).any()):
            raise _bad(f"the variances '{k}' must not be negative")
    model.load_state_dict(state)
    model.eval()
    with torch.no_grad():
        out = model(torch.zeros(1, spec.in_channels, spec.image_size, spec.image_size))
    if not bool(torch.isfinite(out).all()):
        raise _bad("its model's outputs are infinite or missing (NaN) even for a blank image")
    return model


def _fraction(v: object, what: str) -> float:
    return _number(v, what, 0, 1)


def _metrics(d: object, num_classes: int) -> dict:
    """Test accuracy and per-class accuracy, each a fraction in [0, 1]; keys this version does not use are dropped."""
    if d is None:
        return {}
    d = _mapping(d, "its metrics")
    out = {}
    if "test_accuracy" in d:
        out["test_accuracy"] = _fraction(d["test_accuracy"], "its test accuracy")
    if "per_class" in d:
        out["per_class"] = [_fraction(a, f"the test accuracy of class {i + 1}")
                            for i, a in enumerate(_sequence(d["per_class"], "its per-class accuracy", num_classes))]
    return out


def _rows(v: object, what: str, limit: int, keys: tuple[str, ...], fractions: tuple[str, ...]) -> list[dict]:
    """History rows: mappings from short names to finite numbers holding at least ``keys``; ``step`` a whole number."""
    rows = _sequence(v, what, limit=limit)
    for i, row in enumerate(rows):
        where = f"{what}, row {i + 1}"
        row = _mapping(row, where)
        if len(row) > 16 or any(k not in row for k in keys):
            raise _bad(f"{where} must hold {', '.join(keys)}")
        for k, x in row.items():
            if type(k) is not str or len(k) > 40:
                raise _bad(f"{where} has a field named {text.brief(k)}")
            if k == "step":
                _whole(x, f"{where}: 'step'", 0, MAX_STEP)
            else:
                _number(x, f"{where}: '{k}'", *((0, 1) if k in fractions else ()))
    return list(rows)


def _history(d: object) -> History:
    """The training history; fields this version does not know are dropped."""
    if d is None:
        return History()
    d = _mapping(d, "its training history")
    status = d.get("status", "not started")
    if type(status) is not str or status not in STATUSES:
        raise _bad(f"its training status must be one of {', '.join(STATUSES)}, got {text.brief(status)}")
    fields = dict(
        steps=_rows(d.get("steps", []), "its training steps", MAX_STEPS, ("step", "epoch", "loss", "acc", "lr"),
                    ("acc",)),
        epochs=_rows(d.get("epochs", []), "its validations", MAX_EVALUATIONS, ("step", "val_loss", "val_acc"),
                     ("val_acc",)),
        status=status,
        reason=_text(d.get("reason", ""), "the reason its training ended", MAX_TEXT, empty=True),
        seconds=_number(d.get("seconds", 0.0), "its training time", 0),
        images_per_s=_number(d.get("images_per_s", 0.0), "its training speed", 0),
    )
    if "val_images" in d:  # files from before validation sizes were recorded lack it
        fields["val_images"] = _whole(d["val_images"], "its number of validation images", 0, MAX_STEP)
    return History(**fields)


def _frames(d: object, shape: tuple[int, ...]) -> list[tuple[int, torch.Tensor]]:
    """Filter frames: increasing steps, each with a finite float32 copy of weights shaped like the first conv's."""
    if d is None:
        return []
    d = _mapping(d, "its filter history")
    steps = _sequence(d.get("steps"), "the steps of its filter history", limit=MAX_FRAMES)
    weights = _sequence(d.get("weights"), "the filters of its filter history", len(steps))
    frames: list[tuple[int, torch.Tensor]] = []
    for step, w in zip(steps, weights):
        if type(step) is not int or not (frames[-1][0] if frames else -1) < step <= MAX_STEP:
            raise _bad(f"the steps of its filter history must be whole numbers from 0 to {MAX_STEP:,} in increasing "
                       f"order, got {text.brief(step)}")
        if not isinstance(w, torch.Tensor) or w.layout != torch.strided or tuple(w.shape) != shape or \
                not w.is_floating_point():
            raise _bad(f"the filters of step {step} must be a float tensor of shape {shape} like the model's first "
                       f"layer, got {text.brief(w)}")
        w = w.detach().to(torch.float32).clone(memory_format=torch.contiguous_format)
        if not bool(torch.isfinite(w).all()):
            raise _bad(f"the filters of step {step} hold infinite or missing (NaN) values")
        frames.append((step, w))
    return frames
