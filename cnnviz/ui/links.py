"""Shareable links: a view's settings live in the URL's query parameters, so a link opens the same state.

A page calls :func:`restore` before its widgets (values from the URL become the widgets' starting values when they
are valid) and :func:`publish` after them (the current values go back into the URL).
"""

from __future__ import annotations

from typing import Callable

import streamlit as st


def restore(params: dict[str, Callable[[str], object]], defaults: dict[str, object] | None = None) -> None:
    """Seed widget keys from ``?key=value``: ``params`` maps a key to a parser (``int``, ``str``, …).

    Only the first run of a page in a session reads the URL, so the user's later choices win. A value that does not
    parse is ignored. ``defaults`` are set for keys that have neither a URL value nor a state yet.
    """
    for key, parse in params.items():
        if key in st.session_state:
            continue
        if key in st.query_params:
            try:
                st.session_state[key] = parse(st.query_params[key])
                continue
            except (TypeError, ValueError):
                pass
        if defaults and key in defaults:
            st.session_state[key] = defaults[key]


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


def flag(text: str) -> bool:
    return text.lower() in ("1", "true", "yes", "on")
