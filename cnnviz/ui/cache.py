"""Cached computations for the pages, shared by every session of the server and bounded in bytes.

Results are pure, so a cache keeps them across reruns and sessions: moving a slider never re-runs the forward pass,
and thirty students on the same test image share one. A server many students share must not grow without bound,
so each cache holds at most a budget of **bytes** (every tensor, array, PIL image and byte string reachable in its
values, see :func:`nbytes`), drops the least recently used entries beyond it, and forgets entries after
:data:`TTL` seconds. An entry larger than its whole budget is computed and returned but not kept.

The total is ``$CNNVIZ_CACHE_MB`` megabytes (default :data:`DEFAULT_MB`), split between the caches by
:data:`SHARES`.

Values are shared, not copied (``st.cache_data`` pickled a copy for each caller; that copy of a full inspection on
every rerun is what we no longer pay for): **callers must treat them as read-only**. The pages only read them, and
the figure functions they pass them to clone before changing anything.

Keys are built like ``st.cache_data``'s: every argument whose name starts with ``_`` is left out (a model, a
dataset: pass a hashable id beside it); byte strings are replaced by their SHA-256 so a key never holds an upload.
Two sessions asking for the same key at once compute it once; a computation runs outside the cache's lock, so a
slow one never holds up other keys.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import inspect as pyinspect
import os
import sys
import threading
import time
from typing import Any, Callable, Hashable, Sequence, TypeVar

import cachetools
import numpy as np
import streamlit as st
import torch
from matplotlib.figure import Figure
from PIL import Image
from torch import nn

from cnnviz import dissect, figures, gradcam, images, maximize
from cnnviz.data import DatasetInfo, Split
from cnnviz.inspection import Inspection, inspect

MB = 1024 * 1024
TTL = 3600
DEFAULT_MB = 256
# How the total budget is split. Inspections hold the probe's records and a ≤ 512 px copy of the upload (~1 MB each
# for our models); figures are PNGs of ~50–300 kB; Grad-CAM maps and test-set patches are small.
SHARES = {"inspection": 0.45, "figure_png": 0.22, "web_images": 0.03, "cam": 0.1, "top_patches": 0.1, "dissection": 0.1}

T = TypeVar("T")


def total_budget() -> int:
    """The bytes all caches may hold together: ``$CNNVIZ_CACHE_MB`` MB, else :data:`DEFAULT_MB` MB."""
    raw = os.environ.get("CNNVIZ_CACHE_MB", "").strip()
    try:
        mb = float(raw) if raw else DEFAULT_MB
    except ValueError:
        raise ValueError(f"CNNVIZ_CACHE_MB must be a number of megabytes, got {raw!r}") from None
    if not mb > 0 or mb == float("inf"):
        raise ValueError(f"CNNVIZ_CACHE_MB must be a positive number of megabytes, got {raw!r}")
    return int(mb * MB)


# Bytes per pixel as Pillow stores an image in memory: multi-band modes (RGB included) take 4 bytes a pixel.
_PIL_PIXEL_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}


def nbytes(obj: Any) -> int:
    """Bytes held by ``obj``: tensors, arrays, PIL images and byte strings reachable through dataclasses, dicts,
    lists, tuples and sets, each object counted once; other objects count their own ``sys.getsizeof``.

    A tensor or array counts its own elements (a view counts its size, not the storage it looks into). A dataclass
    field marked ``metadata={"shared": True}`` is left out: what it holds is shared by many values and kept elsewhere.
    """
    seen: set[int] = set()
    total = 0
    stack = [obj]
    while stack:
        o = stack.pop()
        if id(o) in seen:
            continue
        seen.add(id(o))
        if isinstance(o, torch.Tensor):
            total += o.nelement() * o.element_size()
        elif isinstance(o, np.ndarray):
            total += o.nbytes
        elif isinstance(o, Image.Image):
            total += o.width * o.height * _PIL_PIXEL_BYTES.get(o.mode, 4)
        elif isinstance(o, (bytes, bytearray, str)):
            total += sys.getsizeof(o)
        elif isinstance(o, memoryview):
            total += o.nbytes
        elif isinstance(o, dict):
            total += sys.getsizeof(o)
            stack.extend(o.keys())
            stack.extend(o.values())
        elif isinstance(o, (list, tuple, set, frozenset)):
            total += sys.getsizeof(o)
            stack.extend(o)
        elif dataclasses.is_dataclass(o) and not isinstance(o, type):
            total += sys.getsizeof(o)
            # A field marked shared (metadata {"shared": True}) is held elsewhere for everyone: not this value's.
            stack.extend(getattr(o, f.name) for f in dataclasses.fields(o) if not f.metadata.get("shared"))
        else:
            total += sys.getsizeof(o)
    return total


class _Pending:
    """A computation in progress: others asking for the same key wait on it instead of repeating it."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.ok = False
        self.value: Any = None


class BytesCache:
    """A thread-safe LRU cache bounded in bytes (by :func:`nbytes`) whose entries expire ``ttl`` seconds after
    they were stored. ``timer`` is the clock (seconds), replaceable in tests."""

    def __init__(self, max_bytes: int, ttl: float = TTL, timer: Callable[[], float] = time.monotonic) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.max_bytes = max_bytes
        self._cache: cachetools.TTLCache = cachetools.TTLCache(max_bytes, ttl, timer=timer, getsizeof=nbytes)
        self._lock = threading.Lock()
        self._pending: dict[Hashable, _Pending] = {}

    @property
    def currsize(self) -> int:
        """Bytes held now (expired entries that were not yet dropped included)."""
        with self._lock:
            return self._cache.currsize

    def __len__(self) -> int:
        with self._lock:
            self._cache.expire()
            return len(self._cache)

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()

    def get_or_compute(self, key: Hashable, compute: Callable[[], T]) -> T:
        """The value stored under ``key``, else ``compute()``'s, stored; concurrent callers of one key compute once.

        If the computation raises, the exception goes to its caller and nothing is stored; a caller that was waiting
        for it then computes the value itself (so it gets its own exception, in its own thread).
        """
        while True:
            with self._lock:
                try:
                    return self._cache[key]
                except KeyError:
                    pass
                pending = self._pending.get(key)
                owner = pending is None
                if owner:
                    pending = self._pending[key] = _Pending()
            if not owner:
                pending.done.wait()
                if pending.ok:
                    return pending.value
                continue
            try:
                pending.value = compute()
                pending.ok = True
            finally:
                with self._lock:
                    if pending.ok:
                        # nbytes walks the value's objects, never its data: cheap enough under the lock.
                        with contextlib.suppress(ValueError):  # larger than the whole budget: returned, not kept
                            self._cache[key] = pending.value
                    del self._pending[key]
                pending.done.set()
            return pending.value


def _key_part(value: Any) -> Hashable:
    """A small hashable stand-in for an argument: byte strings by their SHA-256, containers element by element."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return ("sha256", hashlib.sha256(value).hexdigest())
    if isinstance(value, (tuple, list)):
        return (type(value).__name__, *map(_key_part, value))
    return value


def cached(share: str, spinner: str | None = None) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Decorate a pure function with its own :class:`BytesCache` of ``SHARES[share]`` of the total budget.

    Arguments whose name starts with ``_`` are left out of the key; ``spinner`` is shown while computing.
    """

    def decorate(fn: Callable[..., T]) -> Callable[..., T]:
        signature = pyinspect.signature(fn)
        store = BytesCache(max(1, int(total_budget() * SHARES[share])))

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> T:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            key = tuple(_key_part(v) for name, v in bound.arguments.items() if not name.startswith("_"))

            def compute() -> T:
                if spinner is None:
                    return fn(*args, **kwargs)
                with st.spinner(spinner):
                    return fn(*args, **kwargs)

            return store.get_or_compute(key, compute)

        wrapper.cache = store  # type: ignore[attr-defined]
        return wrapper

    return decorate


@cached("inspection")
def inspection(_model: nn.Module, model_id: str, _info: DatasetInfo, image_bytes: bytes, resize: str,
               invert: bool | None) -> Inspection:
    """Prepare an image and probe every layer; ``image_bytes`` must be what :func:`images.load` accepts.

    The inspection keeps the upload only as a copy of at most :data:`images.SHOWN_MAX` px a side (its first step).
    """
    return inspect(_model, _info, images.load(image_bytes), resize=resize, invert=invert)


@cached("cam")
def cam(_model: nn.Module, model_id: str, _x: torch.Tensor, image_key: str, layer: str | None, target: int,
        method: str) -> gradcam.CamResult:
    """Grad-CAM (or a friend) for one input ``(1, C, H, W)``; ``image_key`` stands for ``_x`` in the cache key."""
    return gradcam.compute(_model, _x, layer=layer, target=target, method=method)


@cached("top_patches", spinner="Searching the test set…")
def top_patches(_model: nn.Module, model_id: str, _split: Split, dataset: str, layer: str, k: int
                ) -> dict[int, list[maximize.Patch]]:
    """Each channel's ``k`` strongest test-set patches at ``layer`` (see :func:`maximize.top_patches`)."""
    return maximize.top_patches(_model, _split, layer, k=k)


@cached("figure_png")
def figure_png(key: tuple, _make: Callable[[], Figure | Image.Image]) -> bytes:
    """PNG bytes of the figure (or :mod:`cnnviz.pictures` picture) ``_make()`` builds; ``key`` names everything the
    figure depends on."""
    return figures.to_png(_make())


@cached("web_images")
def web_images(key: tuple, _make: Callable[[], Sequence[Image.Image]]) -> tuple[bytes, ...]:
    """PNG bytes of the pictures ``_make()`` gives (:func:`figures.web_image`), kept across reruns like a figure's:
    a slider move does not encode them again; ``key`` names everything they depend on."""
    return tuple(figures.web_image(image) for image in _make())


DISSECTION_CONTROL_SEED = 0  # the untrained control's weights: the same for every student
dissecting = threading.Lock()  # one dissection at a time per server: it uses every core it gets; two only slow both


@cached("dissection")
def dissection(_model: nn.Module, model_id: str, untrained: bool, images: int,
               _progress: Callable[[float], None]) -> dissect.Dissection:
    """Network dissection of ``_model`` (or of its architecture with fresh random weights, the control)."""
    model = dissect.untrained(_model, seed=DISSECTION_CONTROL_SEED) if untrained else _model
    with dissecting:
        return dissect.dissect(model, images=images, progress=_progress)
