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
