"""Cached computations for the pages, keyed on the model's id and the image's bytes.

Results are small (our models are small) and pure, so ``st.cache_data`` keeps them across reruns: moving a slider
never re-runs the forward pass. ``max_entries`` and ``ttl`` bound memory on a server many students share.
"""

from __future__ import annotations

from typing import Callable

import streamlit as st
import torch
from matplotlib.figure import Figure
from torch import nn

from cnnviz import figures, gradcam, images, maximize
from cnnviz.data import DatasetInfo, Split
from cnnviz.inspection import Inspection, inspect

TTL = 3600


@st.cache_data(max_entries=64, ttl=TTL, show_spinner=False)
def inspection(_model: nn.Module, model_id: str, _info: DatasetInfo, image_bytes: bytes, resize: str,
               invert: bool | None) -> Inspection:
    """Prepare an image and probe every layer; ``image_bytes`` must be what :func:`images.load` accepts."""
    return inspect(_model, _info, images.load(image_bytes), resize=resize, invert=invert)


@st.cache_data(max_entries=256, ttl=TTL, show_spinner=False)
def cam(_model: nn.Module, model_id: str, _x: torch.Tensor, image_key: str, layer: str | None, target: int,
        method: str) -> gradcam.CamResult:
    """Grad-CAM (or a friend) for one input ``(1, C, H, W)``; ``image_key`` stands for ``_x`` in the cache key."""
    return gradcam.compute(_model, _x, layer=layer, target=target, method=method)


@st.cache_data(max_entries=32, ttl=TTL, show_spinner="Searching the test set…")
def top_patches(_model: nn.Module, model_id: str, _split: Split, dataset: str, layer: str, k: int
                ) -> dict[int, list[maximize.Patch]]:
    """Each channel's ``k`` strongest test-set patches at ``layer`` (see :func:`maximize.top_patches`)."""
    return maximize.top_patches(_model, _split, layer, k=k)


@st.cache_data(max_entries=512, ttl=TTL, show_spinner=False)
def figure_png(key: tuple, _make: Callable[[], Figure]) -> bytes:
    """PNG bytes of the figure ``_make()`` builds; ``key`` names everything the figure depends on."""
    return figures.to_png(_make())
