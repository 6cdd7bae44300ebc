"""Real networks: torchvision's ImageNet classifiers, with their own weights, random ones or a user's file.

Weights come the way torchvision fetches them: ``torch.hub`` keeps each file under
``<torch hub dir>/checkpoints/<name from the URL>`` (``$TORCH_HOME/hub/checkpoints``, ``~/.cache/torch/hub/checkpoints``
by default) and reads it from there without the network. With no file and no download allowed, a model is the same
architecture with seeded random weights and a note saying which file to put where, so the app works offline.

A model shared between sessions comes from :func:`shared`, loaded once per process; each session explains it through
:func:`cnnviz.sharing.session_copy`, never through the shared object itself.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models import Weights

from cnnviz import files, text
from cnnviz.data import DatasetInfo

log = logging.getLogger(__name__)

NAMES = ("resnet18", "vgg16", "alexnet", "googlenet", "mobilenet_v3_small")  # torchvision's own model names
TITLES = {
    "resnet18": "ResNet-18",
    "vgg16": "VGG-16",
    "alexnet": "AlexNet",
    "googlenet": "GoogLeNet (Inception v1)",
    "mobilenet_v3_small": "MobileNetV3-Small",
}
# Where a ZooModel's weights came from: torchvision's published file (its SHA-256 checked), seeded random ones, a
# user's upload, or a file in the cache under torchvision's name whose contents are not the published ones.
WEIGHTS = ("imagenet", "random", "uploaded", "unverified")

# Pinned rather than DEFAULT: the file name (and so the file an offline server was given) must not change when a
# newer torchvision makes another set of weights the default.
_TAG = "IMAGENET1K_V1"
SEED = 0  # random weights are the same on every server and every run

# torchvision builds a GoogLeNet with weights with auxiliary classifiers, loads them and then drops them; inference
# runs without them, on inputs it converts to the original Inception normalisation (transform_input). Random and
# uploaded GoogLeNets are that same inference network; init_weights given explicitly, as torchvision asks.
_INFERENCE_KWARGS: dict[str, dict[str, Any]] = {
    "googlenet": {"aux_logits": False, "transform_input": True, "init_weights": True},
}
_AUX_PREFIXES = ("aux1.", "aux2.")

MB = 1024 * 1024
# An upload may be a little larger than the architecture's own float32 state dict (the zip's headers and 64-byte
# alignment), never more: a bigger file cannot be weights for it. VGG-16's is 528 MB, so the largest limit is about
# 555 MB; the server's upload limit (server.maxUploadSize) must be at least as large for such a file to arrive.
UPLOAD_SLACK = 0.05
UPLOAD_OVERHEAD = 1 * MB


class ZooError(ValueError):
    """A zoo model or a weights file for one could not be used; the message says why in plain words."""


@dataclass
class ZooModel:
    """A torchvision classifier ready to explain: ``model`` maps ``(N, 3, 224, 224)`` ImageNet-normalised images to
    ``(N, 1000)`` logits, in eval mode, its parameters frozen (``requires_grad`` False)."""

    name: str  # torchvision's name, one of NAMES
    title: str  # e.g. "ResNet-18"
    model: nn.Module
    info: DatasetInfo
    weights: str  # one of WEIGHTS: torchvision's ImageNet weights, seeded random ones, or a user's file
    note: str = ""  # one sentence on where the weights came from or how to get real ones; "" for ImageNet weights

    @property
    def pretrained(self) -> bool:
        """True when the weights were trained (torchvision's or the user's), False for random weights."""
        return self.weights != "random"

    @property
    def label(self) -> str:
        """The title, saying when the weights are not torchvision's: "ResNet-18 (untrained)"."""
        suffix = {"imagenet": "", "random": " (untrained)", "uploaded": " (your weights)",
                  "unverified": " (weights not torchvision's)"}[self.weights]
        return self.title + suffix


_rng_lock = threading.Lock()
_shared_lock = threading.Lock()
_name_locks: dict[str, threading.Lock] = {}
_SHARED: dict[str, ZooModel] = {}
_SHARED_SEEN: dict[str, tuple[int, int] | None] = {}  # the weights file's (size, mtime) when the copy was loaded


def _check_name(name: object) -> str:
    if name not in NAMES:
        raise ZooError(f"There is no model called {text.brief(name)} here; choose one of {', '.join(NAMES)}.")
    return name  # type: ignore[return-value]


def _weights(name: str) -> Weights:
    return torchvision.models.get_model_weights(name)[_TAG]


def info(name: str) -> DatasetInfo:
    """What the model ``name`` expects as input: ImageNet's 1,000 classes and its resize, crop and normalisation."""
    return _info(_check_name(name))


@functools.cache
def _info(name: str) -> DatasetInfo:
    weights = _weights(name)
    preset = weights.transforms()  # torchvision's ImageClassification: resize, centre crop, normalise
    size, resize = preset.crop_size[0], preset.resize_size[0]
    classes = tuple(weights.meta["categories"])
    return DatasetInfo(
        name="imagenet", title="ImageNet", class_names=classes, channels=3, size=size,
        mean=tuple(preset.mean), std=tuple(preset.std),
        description=(f"About 1.3 million photos of {len(classes):,} kinds of object. Each photo is resized so its "
                     f"shorter side is {resize} pixels, and the model sees the centre {size}×{size}."),
        # torchvision's evaluation: the shorter side to resize_to, then the centre size×size ("crop").
        resize="crop", resize_to=resize,
    )


def reported_accuracy(name: str) -> float:
    """Top-1 ImageNet accuracy in [0, 1] of the model's weights, as torchvision's metadata reports it."""
    return _weights(_check_name(name)).meta["_metrics"]["ImageNet-1K"]["acc@1"] / 100


def weights_file(name: str) -> Path:
    """Where torchvision keeps the ImageNet weights of ``name``: ``<torch hub dir>/checkpoints/<file from the URL>``.

    The hub dir follows ``$TORCH_HOME`` as it is when this is called.
    """
    url = _weights(_check_name(name)).url
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def load(name: str, *, download: bool = False, progress: bool = True) -> ZooModel:
    """The model ``name`` with torchvision's ImageNet weights when their file is cached or ``download`` is True (a
    progress bar on stderr when ``progress``); otherwise, or when downloading or reading the file fails, the same
    architecture with seeded random weights and a note saying how to get the real ones. Never downloads unless asked.
    """
    title = TITLES[_check_name(name)]
    path = weights_file(name)
    if not (download or path.is_file()):
        return _random(name, f"No ImageNet weights for {title} here: put {path.name} in {path.parent} (downloaded "
                             f"from {_weights(name).url}), or let cnnviz download it; until then this {title} has "
                             f"random weights (untrained).")
    try:
        model = torchvision.models.get_model(name, weights=_weights(name), progress=progress)
    except Exception as e:  # noqa: BLE001  (no network, a refused hash, a damaged file: each fails in its own way)
        log.warning("ImageNet weights for %s could not be loaded from %s: %s", name, path, e)
        if path.is_file():
            why = (f"The ImageNet weights file for {title}, {path}, could not be read (it may be damaged or "
                   f"incomplete): delete it and download it again from {_weights(name).url}")
        else:
            why = (f"Could not download the ImageNet weights for {title} ({_reason(e)}): put {path.name} in "
                   f"{path.parent} (downloaded from {_weights(name).url})")
        return _random(name, f"{why}; until then this {title} has random weights (untrained).")
    if not published(name, path):
        return ZooModel(name, title, _frozen(model), info(name), "unverified", (
            f"The file {path.name} in {path.parent} holds weights for {title}, but not torchvision's published ones "
            f"(its SHA-256 does not start with {_hash_prefix(name)}): it is shown as it is, and no ImageNet accuracy "
            f"is quoted for it."))
    return ZooModel(name, title, _frozen(model), info(name), "imagenet")


def _hash_prefix(name: str) -> str:
    """The start of the SHA-256 of torchvision's file, as its name carries it: ``resnet18-f37072fd.pth`` → f37072fd."""
    return weights_file(name).stem.rsplit("-", 1)[-1]


@functools.lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    """The SHA-256 of a file, remembered while its size and modification time stay the same."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def published(name: str, path: Path) -> bool:
    """Whether the file at ``path`` is torchvision's published weights file for ``name``: its SHA-256 starts with the
    prefix torchvision puts in the file's name (the check ``torch.hub`` makes on download with ``check_hash``)."""
    seen = _stat(path)
    return seen is not None and _sha256(str(path), *seen).startswith(_hash_prefix(name))


def _reason(e: Exception) -> str:
    """A short reason for a failed download: the first line of the error, not a traceback's worth of detail."""
    reason = getattr(e, "reason", None) or e  # urllib's URLError keeps the socket's error in .reason
    lines = str(reason).splitlines()
    return lines[0][:120] if lines else type(reason).__name__


def _random(name: str, note: str) -> ZooModel:
    """The inference architecture of ``name`` with torchvision's initialisation, seeded."""
    # One build at a time: the seed is set on the global generator, which a concurrent build would advance.
    with _rng_lock, torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = torchvision.models.get_model(name, weights=None, **_INFERENCE_KWARGS.get(name, {}))
    return ZooModel(name, TITLES[name], _frozen(model), info(name), "random", note)


def _frozen(model: nn.Module) -> nn.Module:
    """Evaluation mode, no gradients for the weights, and the weights in channels-last order: oneDNN's convolutions
    on the CPU run ResNet-18 at 224×224 on one thread in 72 ms instead of 83 (measured here), every input unchanged
    (a plain one is converted on the way)."""
    model.eval()
    model.requires_grad_(False)
    return model.to(memory_format=torch.channels_last)


def shared(name: str, *, download: bool = False) -> ZooModel:
    """One :func:`load`\\ ed copy of ``name`` per process, for every session to read and never change (probe a
    :func:`cnnviz.sharing.session_copy` of its ``model``).

    A copy with random weights is replaced when asked to download, or when its weights file has appeared or changed
    since; sessions holding the old copy keep it. Thread-safe: a name is loaded by one thread at a time.
    """
    _check_name(name)
    with _shared_lock:
        lock = _name_locks.setdefault(name, threading.Lock())
    with lock:
        cached = _SHARED.get(name)
        seen = _stat(weights_file(name))
        if cached is None or (cached.weights in ("random", "unverified")
                               and (download or seen != _SHARED_SEEN.get(name))):
            cached = load(name, download=download)
            _SHARED[name] = cached
            _SHARED_SEEN[name] = _stat(weights_file(name))
        return cached


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


# --- a user's weights ----------------------------------------------------------------------------------------------

def upload_limit(name: str) -> int:
    """The largest weights file accepted for ``name``, in bytes: its float32 state dict (GoogLeNet's with the
    auxiliary classifiers torchvision's own file has) plus :data:`UPLOAD_SLACK` and :data:`UPLOAD_OVERHEAD`."""
    size = sum(t.numel() * t.element_size() for t in _expected(_check_name(name), name == "googlenet").values())
    return math.ceil(size * (1 + UPLOAD_SLACK)) + UPLOAD_OVERHEAD


def load_state_dict(name: str, raw: bytes) -> ZooModel:
    """The model ``name`` with the weights in ``raw``, the bytes of a file saved by ``torch.save(model.state_dict())``.

    The file is checked before anything is built: at most :func:`upload_limit` bytes, PyTorch's zip format with plain
    records, read with ``torch.load(weights_only=True)``, a mapping of every key of the architecture to a tensor of the
    right shape and kind. A GoogLeNet file may hold the auxiliary classifiers (torchvision's own file does); they are
    checked and then dropped, as torchvision does. Raises :class:`ZooError`, and no other exception, for a file that
    cannot be used. The outputs keep ImageNet's class names.
    """
    title = TITLES[_check_name(name)]
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        raise ZooError(f"Expected the bytes of a weights file, got a {type(raw).__name__}.")
    try:
        state = _unpack(name, bytes(raw))
        model = _model(name, state)
    except ZooError:
        raise
    except Exception:  # a case the checks missed must still not break the session that uploaded the file
        log.exception("a weights file for %s passed the checks and still failed to load", name)
        raise ZooError(f"This file could not be loaded as weights for {title}.") from None
    note = f"These are the weights from your file; {title}'s {info(name).num_classes:,} outputs keep ImageNet's names."
    return ZooModel(name, title, _frozen(model), info(name), "uploaded", note)


def _skeleton(name: str, *, aux: bool = False) -> nn.Module:
    """The architecture of ``name`` on the meta device: shapes without memory or initialisation."""
    kwargs = dict(_INFERENCE_KWARGS.get(name, {}))
    if aux:
        kwargs.update(aux_logits=True, init_weights=False)
    with torch.device("meta"):
        return torchvision.models.get_model(name, weights=None, **kwargs)


@functools.cache
def _expected(name: str, aux: bool) -> dict[str, Tensor]:
    """The state dict of :func:`_skeleton`: meta tensors with the shape and dtype of every key."""
    return _skeleton(name, aux=aux).state_dict()


def _unpack(name: str, raw: bytes) -> object:
    """What ``torch.load(weights_only=True)`` reads from ``raw``, once its size and zip records are known to be
    plain."""
    title, limit = TITLES[name], upload_limit(name)
    if not raw:
        raise ZooError("The file is empty.")
    if len(raw) > limit:
        raise ZooError(f"The file is {len(raw) / MB:,.1f} MB; weights for {title} take at most {limit / MB:,.1f} MB.")
    # One record per tensor storage plus a few of torch.save's own (data.pkl, version, byteorder, …).
    most = len(_expected(name, name == "googlenet")) + 16
    try:
        return files.load_torch(raw, most)
    except files.NotPlainTorch as e:
        if e.reason == "records":
            raise ZooError(f"These weights are not for {title}: the file holds {e.records:,} records (about one per "
                           f"tensor), {title}'s weights at most {most:,}.") from None
        if e.reason == "compressed":
            raise ZooError("This file's contents are compressed or misdescribed, which files saved by PyTorch never "
                           "are.") from None
        raise ZooError(f"This file is not a PyTorch weights file (it may be truncated or another kind of file); "
                       f"save {title}'s weights with torch.save(model.state_dict(), path).") from None


def _model(name: str, state: object) -> nn.Module:
    """The architecture of ``name`` holding ``state``, once every key, shape and kind of tensor is checked."""
    title = TITLES[name]
    if not isinstance(state, Mapping):
        raise ZooError(f"This file holds {text.brief(state)}, not a state dict (a mapping of layer names to "
                       f"tensors); save {title}'s weights with torch.save(model.state_dict(), path).")
    if any(not isinstance(k, str) for k in state):
        bad = next(k for k in state if not isinstance(k, str))
        raise ZooError(f"A state dict maps layer names to tensors; this file has the key {text.brief(bad)}.")
    for wrapper in ("state_dict", "model"):
        if isinstance(state.get(wrapper), Mapping):
            raise ZooError(f"This file holds a training checkpoint, with the weights under {wrapper!r}; save "
                           f"checkpoint[{wrapper!r}] on its own with torch.save.")
    aux = name == "googlenet" and any(k.startswith(_AUX_PREFIXES) for k in state)
    expected = _expected(name, aux)
    missing = [k for k in expected if k not in state]
    if missing:
        raise ZooError(f"These weights are not for {title}: it has a layer tensor {missing[0]!r} that the file lacks "
                       f"({len(missing):,} missing in all).")
    extra = [k for k in state if k not in expected]
    if extra:
        raise ZooError(f"These weights are not for {title}: the file has a tensor {text.brief(extra[0])} that "
                       f"{title} has no place for ({len(extra):,} such in all).")
    for key, want in expected.items():
        _check_tensor(title, key, want, state[key])
    # Uninitialised memory, then every tensor from the file: no time spent on an initialisation that would be
    # overwritten (seconds for VGG-16). Every buffer of these networks is persistent, so none is left unfilled.
    model = _skeleton(name, aux=aux).to_empty(device="cpu")
    model.load_state_dict(state, strict=True)
    if aux:  # what torchvision's googlenet builder does after loading its own file
        model.aux_logits = False
        model.aux1 = None
        model.aux2 = None
    return model


def _check_tensor(title: str, key: str, want: Tensor, got: object) -> None:
    if not isinstance(got, Tensor):
        raise ZooError(f"In this file, {key!r} is {text.brief(got)}, not a tensor.")
    if got.layout != torch.strided or got.is_complex() or got.is_floating_point() != want.is_floating_point():
        kind = "floating-point numbers" if want.is_floating_point() else "whole numbers"
        raise ZooError(f"In this file, {key!r} holds {got.dtype} values ({got.layout}); {title} expects a dense "
                       f"tensor of {kind}.")
    if got.shape != want.shape:
        raise ZooError(f"In this file, {key!r} has shape {tuple(got.shape)}; {title} expects {tuple(want.shape)}.")
    if got.is_floating_point() and not bool(torch.isfinite(got).all()):
        raise ZooError(f"In this file, {key!r} holds values that are not finite numbers (NaN or infinity).")
