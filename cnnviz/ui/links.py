"""Shareable links: a view's settings live in the URL's query parameters, so a link opens the same state.

A page calls :func:`restore` before its widgets (values from the URL become the widgets' starting values when they
are valid) and :func:`publish` after them (the current values go back into the URL).
"""

from __future__ import annotations

from typing import Callable

import streamlit as st


def flag(text: str) -> bool:
    return text.lower() in ("1", "true", "yes", "on")


# The settings of each page that a link carries: widget key → parser of its URL text.
TRAIN = {"train_dataset": str, "train_size": str, "train_preset": str, "train_epochs": int, "train_batch": int,
         "train_lr": float, "train_opt": str, "train_seed": int, "train_augment": flag}
EXPLORE = {"explore_filter_layer": str, "explore_filter_index": int, "explore_map_layer": str, "explore_channel": int,
           "explore_pool_layer": str, "explore_pool_channel": int, "explore_cam_method": str,
           "explore_cam_layer": str, "explore_cam_class": int, "explore_cam_alpha": float, "explore_resize": str,
           "explore_invert": str}
CONVOLUTION = {"conv_layer": str, "conv_channel": int, "conv_row": int, "conv_col": int, "pool_layer": str,
               "pool_channel": int, "pool_row": int, "pool_col": int}
HIERARCHY = {"hier_layer": str}
# Widget values kept when the user goes to another page and back.
KEPT = (*TRAIN, *EXPLORE, *CONVOLUTION, *HIERARCHY, "explore_source", "explore_class")


def keep() -> None:
    """Keep widget values across pages. Streamlit forgets a widget's value after a run that does not draw it;
    writing the value back as plain session state at the top of every run (app.py) stops that."""
    for key in KEPT:
        if key in st.session_state:
            st.session_state[key] = st.session_state[key]


def restore(params: dict[str, Callable[[str], object]]) -> None:
    """Seed widget keys from ``?key=value``: ``params`` maps a key to a parser (``int``, ``str``, …).

    Only keys without a value yet read the URL, so the user's later choices win. A value that does not parse is
    ignored.
    """
    for key, parse in params.items():
        if key in st.session_state or key not in st.query_params:
            continue
        try:
            st.session_state[key] = parse(st.query_params[key])
        except (TypeError, ValueError):
            pass


def valid(key: str, options: list) -> None:
    """Drop a restored value that is not among a widget's options (e.g. a layer the current model lacks)."""
    if key in st.session_state and st.session_state[key] not in options:
        del st.session_state[key]


def publish(keys: list[str]) -> None:
    """Write the current values of ``keys`` into the URL."""
    for key in keys:
        if key in st.session_state and st.session_state[key] is not None:
            value = st.session_state[key]
            if str(value) != st.query_params.get(key):
                st.query_params[key] = str(value)
