"""Per-session state (the model being explained, the session's own data, the training job) and the shared read-only
resources behind it.

Whatever its source (the shipped model, one trained or uploaded here, a torchvision model, the user's own code), the
model a page explains is one :class:`SessionModel`; no page branches on where it came from. Each session has its own
module objects, so hooks and gradients in one student's view never touch another's; a big shared model (a zoo model,
the user's code) lends its weights to every session's copy without a second copy in memory
(:func:`cnnviz.sharing.session_copy`). Built-in datasets are shared read-only through ``st.cache_resource``; a
dataset made from a user's own images belongs to their session only.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import threading
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

import streamlit as st
import torch
from PIL import Image
from torch import nn
from torchvision.transforms.v2 import functional as TF

from cnnviz import checkpoint, data, devices, images, probe, sharing, train, usercode, zoo
from cnnviz.checkpoint import Checkpoint
from cnnviz.data import DatasetError, DatasetInfo, Split

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_MODEL = ROOT / "assets" / "shapes_model.pt"

OWN = "own"  # the model choice for the session's own model (shipped, trained here or uploaded)
CODE = "code"  # the model choice for the model given by `cnnviz app --model` or `cnnviz.show(model)`


@dataclass
class SessionModel:
    """What the pages explain: a model in eval mode, its input and classes, and where it came from.

    ``model_id`` changes whenever the weights do (a cache key). Sessions looking at the same weights share the id,
    so one student's Grad-CAM is another's cache hit.
    """

    model: nn.Module
    info: DatasetInfo
    model_id: str
    source: str  # in words: "the built-in shapes model", "trained here", "uploaded: my.pt", "torchvision"
    ckpt: Checkpoint | None = None  # a cnnviz model (spec, history, filter frames): it can be saved and retrained
    accuracy: float | None = None  # test accuracy in [0, 1], when known
    accuracy_from: str = ""  # "" when measured here; else whose figure it is, e.g. "as reported by the file"
    note: str = ""  # something to say beside the model everywhere it appears (e.g. "random weights: untrained")

    @property
    def title(self) -> str:
        return self.info.title


def device() -> torch.device:
    """Where this server puts each session's model: ``$CNNVIZ_DEVICE`` (``cnnviz app --device`` sets it), else the
    CPU. Probing, Grad-CAM and maximisation follow the model there."""
    return devices.resolve(os.environ.get(devices.ENV) or "cpu")


_placing = threading.Lock()


def _on_device(model: nn.Module) -> nn.Module:
    """Move a model every session shares (a zoo model, the user's code) to :func:`device`, once: sessions are threads
    of one process, and their copies (:func:`cnnviz.sharing.session_copy`) share its weights wherever they are."""
    target = device()
    with _placing:
        here = probe.device_of(model)
        if here.type != target.type or (target.index is not None and here.index != target.index):
            model.to(target)
    return model


def _from_checkpoint(ck: Checkpoint, model_id: str, source: str) -> SessionModel:
    ck.model.to(device())  # the session's own module tree: moved in place
    acc = ck.metrics.get("test_accuracy")
    return SessionModel(ck.model, ck.info, model_id, source, ckpt=ck, accuracy=acc,
                        accuracy_from="as reported by the file, not measured here" if ck.metrics_from_file else "")


@st.cache_resource(show_spinner=False)
def shipped_bytes() -> bytes:
    return SHIPPED_MODEL.read_bytes()


@st.cache_resource(show_spinner=False)
def shipped_metrics() -> dict:
    """The shipped model's test-set figures, measured once per server (not copied from its file)."""
    ck = checkpoint.load(shipped_bytes())
    remeasure(ck)
    return ck.metrics


def _shipped() -> SessionModel:
    raw = shipped_bytes()
    ck = checkpoint.load(raw)
    ck.metrics, ck.metrics_from_file = dict(shipped_metrics()), False
    # Same bytes, same id: every session's copy of the shipped model shares cached results.
    return _from_checkpoint(ck, "shipped-" + hashlib.sha1(raw).hexdigest()[:12], "the built-in shapes model")


def remeasure(ck: Checkpoint) -> None:
    """Replace the accuracy a loaded file reports with one measured on the test set, when the test set is at hand
    (otherwise the figures stay marked as the file's own)."""
    try:
        split = test_split(ck.info)
    except DatasetError:
        return
    ev = train.evaluate(ck.model, split)
    ck.metrics, ck.metrics_from_file = {"test_accuracy": ev.accuracy, "per_class": ev.per_class}, False


def own() -> SessionModel:
    """This session's own model: the shipped shapes model until the user trains or loads one."""
    if "model" not in st.session_state:
        st.session_state.model = _shipped()
    return st.session_state.model


def choices() -> list[str]:
    """The models a session may look at: its own, the user's code (when the server was given one), the zoo."""
    try:
        code = usercode.registered() is not None
    except usercode.UserModelError:  # `cnnviz app --model` refuses to serve such a model; a bare server goes on
        log.exception("the model named by the CNNVIZ_MODEL variables could not be loaded")
        code = False
    return [OWN, *([CODE] if code else []), *zoo.NAMES]


def current() -> SessionModel:
    """The model the pages explain now: the session's choice (its own model unless it picked another)."""
    choice = st.session_state.get("model_choice", OWN)
    if choice == OWN or choice not in choices():
        return own()
    borrowed: dict[str, SessionModel] = st.session_state.setdefault("_borrowed", {})
    key = (choice, st.session_state.get(f"zoo_weights_{choice}"))
    if borrowed.get(choice) is None or borrowed[choice].model_id != _shared_id(*key):
        borrowed[choice] = _borrow(*key)
    return borrowed[choice]


def _shared_id(choice: str, uploaded: str | None) -> str:
    if choice == CODE:
        return f"code-{id(usercode.registered())}"
    if uploaded:
        return f"zoo-{choice}-upload-{uploaded}"
    return f"zoo-{choice}-{zoo_model(choice).weights}"


def _borrow(choice: str, uploaded: str | None) -> SessionModel:
    """This session's own module tree over a shared model's weights (see :func:`cnnviz.sharing.session_copy`)."""
    if choice == CODE:
        um = usercode.registered()
        return SessionModel(sharing.session_copy(_on_device(um.model)), um.info, _shared_id(choice, None), um.source)
    zm = uploaded_zoo(choice, uploaded) if uploaded else zoo_model(choice)
    acc = zoo.reported_accuracy(zm.name) if zm.weights == "imagenet" else None
    return SessionModel(sharing.session_copy(_on_device(zm.model)), zm.info, _shared_id(choice, uploaded),
                        f"torchvision {zm.label}", accuracy=acc,
                        accuracy_from="ImageNet top-1 as reported by torchvision, not measured here", note=zm.note)


@st.cache_resource(show_spinner="Loading the model…")
def zoo_model(name: str) -> zoo.ZooModel:
    """A torchvision model, once per server, shared read-only by every session (its weights, if cached here)."""
    return zoo.shared(name)


# An uploaded state dict is kept per server by its digest, a few at a time: a class loading the same file shares it.
@st.cache_resource(show_spinner="Loading your weights…", max_entries=2)
def _uploaded_zoo(name: str, digest: str, _raw: bytes) -> zoo.ZooModel:
    return zoo.load_state_dict(name, _raw)


def uploaded_zoo(name: str, digest: str) -> zoo.ZooModel:
    raw = st.session_state.get(f"zoo_weights_raw_{name}")
    if raw is None or hashlib.sha1(raw).hexdigest() != digest:
        raise zoo.ZooError("The uploaded weights are no longer here; upload them again.")
    return _uploaded_zoo(name, digest, raw)


def set_current(ckpt: Checkpoint, source: str) -> SessionModel:
    """Make a trained or loaded model the session's own, and look at it."""
    st.session_state.model = _from_checkpoint(ckpt, f"{source}-{uuid.uuid4().hex[:12]}", source)
    st.session_state._look_at_own = True  # the model choice widget switches to it on its next run
    return st.session_state.model


@st.cache_resource(show_spinner="Loading the dataset…", max_entries=8)
def dataset(name: str, train: bool = False, data_dir: str | None = None) -> Split:
    """A built-in dataset's split, loaded once per server and shared read-only (training only reads it)."""
    return data.load(name, train=train, data_dir=data_dir)


def own_data() -> data.Loaded | None:
    """The dataset this session made from its own images, if any (never shared with another session)."""
    return st.session_state.get("own_data")


def has_test_set(info: DatasetInfo) -> bool:
    """Whether a model's test images can be had here (a built-in dataset may still need its download)."""
    mine = own_data()
    return info.name in data.DATASETS or (mine is not None and mine.test.info.name == info.name)


def test_split(info: DatasetInfo) -> Split:
    """The test images of a model's dataset: a built-in one's, or this session's own; else ``DatasetError``."""
    if info.name in data.DATASETS:
        return dataset(info.name, train=False)
    mine = own_data()
    if mine is not None and mine.test.info.name == info.name:
        return mine.test
    if info.name == "imagenet":
        raise DatasetError("ImageNet's test images are not here: bring your own pictures (upload or camera).")
    if info.name == usercode.NAME:
        raise DatasetError("The images your model was trained on are not here: bring your own pictures (upload or "
                           "camera) to Explore, or train a model here to see the views that need a test set.")
    raise DatasetError(f"The test images of {info.title} are not here: a dataset of someone's own pictures lives "
                       f"only in the browser session that made it, while it is that session's dataset.")


BROUGHT = 16  # pictures of the user's own kept per session, for the pages that search images (a few MB at most)


def bring(key: str, image: Image.Image) -> None:
    """Keep a small copy (at most ``images.SHOWN_MAX`` px a side) of a picture the user brought (upload, camera),
    the last :data:`BROUGHT` of them: a model without its test images here is explored on those."""
    brought: dict[str, bytes] = st.session_state.setdefault("brought", {})
    if key in brought:
        return
    small = image.copy()
    small.thumbnail((images.SHOWN_MAX, images.SHOWN_MAX))
    buf = io.BytesIO()
    # JPEG for a photo: a PNG of a noisy 512-px photo took ~0.12 s of the server per upload (py-spy, a class of 8).
    if small.mode in ("RGB", "L"):
        small.save(buf, format="JPEG", quality=90)
    else:
        small.save(buf, format="PNG")
    brought[key] = buf.getvalue()
    while len(brought) > BROUGHT:
        del brought[next(iter(brought))]


def brought_split(info: DatasetInfo) -> Split | None:
    """The pictures the user brought, prepared as ``info``'s model sees them (uint8 ``(N, C, S, S)``, labels 0), as a
    split named for its content; None when there are none yet."""
    brought: dict[str, bytes] = st.session_state.get("brought") or {}
    if not brought:
        return None
    key = (info.name, info.size, info.channels, info.resize, info.resize_to, tuple(brought))
    made = st.session_state.get("_brought_split")
    if made is None or made[0] != key:
        x = torch.stack([TF.pil_to_tensor(images.prepare(images.load(raw), info, resize=info.resize).display)
                         for raw in brought.values()])
        name = "brought-" + hashlib.sha1(repr(key).encode()).hexdigest()[:12]
        made = (key, Split(replace(info, name=name, title="your pictures"), x, torch.zeros(len(x), dtype=torch.int64)))
        st.session_state._brought_split = made
    return made[1]
