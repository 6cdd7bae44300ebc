"""Text from outside (file, class and dataset names, URL values) made safe to show inside our own sentences.

Streamlit renders ``st.markdown``, ``st.caption``, ``st.error``, toasts and widget labels as Markdown (links, images,
HTML-like tags, ``:red[...]`` colour directives and ``:icon:`` shortcodes), Plotly renders a subset of HTML (links
included) in labels, and matplotlib reads ``$...$`` in a title as mathematics. Outside text goes through :func:`md`,
:func:`plotly` or :func:`mpl` before it is put in a sentence or label, so it is shown exactly as written and never
interpreted.
"""

from __future__ import annotations

import html
import re

# Every ASCII punctuation character may be backslash-escaped in CommonMark; escaping them all is simplest and safe.
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()<>#+\-.!|~:$&=\"'^])")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def md(text: object) -> str:
    """``text`` as a Markdown-inert string: punctuation escaped, control characters and newlines as spaces."""
    return _MD_SPECIAL.sub(r"\\\1", _CONTROL.sub(" ", str(text)))


def mpl(text: object) -> str:
    """``text`` for a matplotlib label: dollar signs escaped (no mathtext), control characters as spaces."""
    return _CONTROL.sub(" ", str(text)).replace("$", r"\$")


def plotly(text: object) -> str:
    """``text`` for a Plotly label or hover text: HTML special characters as entities, control characters as spaces."""
    return html.escape(_CONTROL.sub(" ", str(text)), quote=False)


def brief(value: object) -> str:
    """A short description of a value from outside, for an error message (never the whole of a long value)."""
    if type(value) is int and value.bit_length() > 64:
        return "a very large whole number"
    if isinstance(value, (bool, int, float, type(None))):
        return repr(value)
    if isinstance(value, str):
        return repr(value) if len(value) <= 40 else repr(value[:40]) + "…"
    if hasattr(value, "shape") and hasattr(value, "dtype"):  # a tensor or an array
        kind = "array" if type(value).__name__ == "ndarray" else "tensor"
        return f"a {str(value.dtype).removeprefix('torch.')} {kind} of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"
