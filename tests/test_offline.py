"""The test suite's own guard rails: no network, and the Markdown-safe text helpers."""

from __future__ import annotations

import socket
import urllib.request

import pytest
from hypothesis import given, settings, strategies as st

from cnnviz import text


def test_a_download_fails_instead_of_touching_the_network():
    with pytest.raises(OSError, match="never touch the network"):
        urllib.request.urlopen("https://download.pytorch.org/models/resnet18-f37072fd.pth", timeout=5)
    with pytest.raises(OSError, match="never touch the network"):
        socket.create_connection(("93.184.216.34", 80), timeout=5)


def test_loopback_still_works():
    server = socket.create_server(("127.0.0.1", 0))
    try:
        client = socket.create_connection(server.getsockname(), timeout=5)
        client.close()
    finally:
        server.close()


def test_md_escapes_links_images_html_and_streamlit_directives():
    hostile = "[click](http://evil) ![x](http://evil/x.png) <b>hi</b> :red[alarm] **bold** # title\nnext"
    out = text.md(hostile)
    for raw in ("[click]", "](", "![", "<b>", ":red[", "**", "\n"):
        assert raw not in out
    assert out.replace("\\", "") == hostile.replace("\n", " ")


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_md_keeps_every_visible_character_and_leaves_nothing_active(s):
    out = text.md(s)
    # Removing the escapes gives back the text (control characters shown as spaces) ...
    assert out.replace("\\\\", "\0").replace("\\", "").replace("\0", "\\") == text._CONTROL.sub(" ", s)
    # ... and every Markdown-active ASCII character in the result is escaped.
    i = 0
    while i < len(out):
        if out[i] == "\\":
            assert i + 1 < len(out) and not out[i + 1].isalnum()
            i += 2
            continue
        assert out[i] not in "[]()<>*_`#!|~:$\\\n"
        i += 1


def test_mpl_escapes_dollars():
    assert text.mpl("cost $5 to $10") == r"cost \$5 to \$10"


def test_plotly_labels_show_html_as_text():
    assert text.plotly('<a href="http://evil">x</a> & <b>') == '&lt;a href="http://evil"&gt;x&lt;/a&gt; &amp; &lt;b&gt;'


def test_charts_escape_class_names():
    import torch

    from cnnviz import charts

    names = ["<a href='http://evil'>cat</a>", "dog"]
    cm = charts.confusion_matrix(torch.tensor([[1, 0], [0, 1]]), names)
    assert all("<a" not in n for n in cm.data[0].x)


def test_brief_describes_without_quoting_everything():
    import torch

    assert text.brief(3) == "3" and text.brief(10**30) == "a very large whole number"
    assert text.brief("x" * 100) == repr("x" * 40) + "…"
    assert text.brief(torch.zeros(2, 3, dtype=torch.float64)) == "a float64 tensor of shape (2, 3)"
    assert text.brief({"a": 1}) == "a dict"
