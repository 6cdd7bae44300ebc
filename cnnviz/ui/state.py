"""Per-session state (the current model, the training job) and the shared read-only resources behind it.

Each session gets its own copy of its model, so hooks and gradients in one student's view never touch another's.
Datasets and the shipped model's bytes are shared (read-only) through ``st.cache_resource``.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from cnnviz import checkpoint, data, train
from cnnviz.checkpoint import Checkpoint
from cnnviz.data import DatasetError, Split

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_MODEL = ROOT / "assets" / "shapes_model.pt"


@dataclass
class SessionModel:
    """The model this session is looking at; ``model_id`` changes whenever the weights do (a cache key)."""

    ckpt: Checkpoint
    model_id: str
    source: str  # in words: "the built-in shapes model", "trained here", "uploaded: my.pt"


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
    return SessionModel(ck, "shipped-" + hashlib.sha1(raw).hexdigest()[:12], "the built-in shapes model")


def remeasure(ck: Checkpoint) -> None:
    """Replace the accuracy a loaded file reports with one measured on the test set, when the test set is at hand
    (otherwise the figures stay marked as the file's own)."""
    try:
        split = dataset(ck.info.name, train=False)
    except DatasetError:
        return
    ev = train.evaluate(ck.model, split)
    ck.metrics, ck.metrics_from_file = {"test_accuracy": ev.accuracy, "per_class": ev.per_class}, False


def current() -> SessionModel:
    """This session's model; the shipped shapes model until the user trains or loads one."""
    if "model" not in st.session_state:
        st.session_state.model = _shipped()
    return st.session_state.model


def set_current(ckpt: Checkpoint, source: str) -> SessionModel:
    st.session_state.model = SessionModel(ckpt, f"{source}-{uuid.uuid4().hex[:12]}", source)
    return st.session_state.model


@st.cache_resource(show_spinner="Loading the dataset…", max_entries=8)
def dataset(name: str, train: bool = False, data_dir: str | None = None) -> Split:
    """A dataset split, loaded once per server and shared read-only (training only reads it)."""
    return data.load(name, train=train, data_dir=data_dir)
