"""Links (cnnviz/ui/links.py): every value a URL carries is checked against its widget's type and range, and every
page renders whatever a link says (Hypothesis writes the links, AppTest drives the pages)."""

from __future__ import annotations

import ast
import hashlib
import math
import re
from functools import cache
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, Phase, example, given, settings, strategies as st
from streamlit.testing.v1 import AppTest

from cnnviz import checkpoint, maximize
from cnnviz.text import md
from cnnviz.ui import lessonviews, links, state
from cnnviz.ui.links import SPECS, Choice, Flag, Float, Int, Text

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")
HUGE = "1" + "0" * 30  # the seed that reached torch.Generator().manual_seed and overflowed


# --- the specs, with known answers ------------------------------------------------------------------------------

@pytest.mark.parametrize("spec, text, value", [
    (Int(0, 10), "0", 0), (Int(0, 10), "10", 10), (Int(0, 10), "+3", 3), (Int(0, 10), "-0", 0),
    (Int(-1, 5), "-1", -1), (Int(0, 10), "007", 7),
    (Float(0, 1), "0.25", 0.25), (Float(0, 1), ".5", 0.5), (Float(0, 1), "1", 1.0), (Float(0, 1), "5e-1", 0.5),
    (Float(0, 1), "1.", 1.0), (Float(0, 1), "0", 0.0),
    (SPECS["train_batch"], "64", 64), (SPECS["train_lr"], "5e-4", 0.0005), (SPECS["train_lr"], "2", 2.0),
    (SPECS["train_opt"], "adam", "adam"), (SPECS["train_size"], "1,000", "1,000"),
    (SPECS["explore_class"], "horizontal stripes", "horizontal stripes"),
    (SPECS["hier_layer"], "layer2.0.conv1", "layer2.0.conv1"), (SPECS["lesson"], "gradcam", "gradcam"),
    (Flag(), "1", True), (Flag(), "TRUE", True), (Flag(), "on", True), (Flag(), "True", True),
    (Flag(), "0", False), (Flag(), "Off", False), (Flag(), "no", False),
])
def test_spec_reads_valid_text(spec, text, value):
    got = spec(text)
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize("spec, text", [
    *[(Int(0, 10), t) for t in ("11", "-1", "3.0", "1e3", " 3", "3 ", "1_0", "٣", "0x1", "", "+", "three", HUGE)],
    *[(Float(0, 1), t) for t in ("nan", "NaN", "inf", "-inf", "Infinity", "1e400", "1.5", "-0.1", "0x1", "1_0",
                                 "", ".", "e5", " 0.5", "٠.5", "0.5\n")],
    (SPECS["train_batch"], "64.0"), (SPECS["train_batch"], "65"), (SPECS["train_lr"], "0.3"),
    (SPECS["train_lr"], "nan"), (SPECS["train_opt"], "Adam"), (SPECS["train_epochs"], "0"),
    (SPECS["train_epochs"], "51"), (SPECS["train_seed"], "10001"), (SPECS["explore_cam_alpha"], "5"),
    (SPECS["explore_cam_alpha"], "nan"), (SPECS["explore_seed"], HUGE), (SPECS["explore_seed"], "-1"),
    (SPECS["explore_class"], ""), (SPECS["explore_class"], "a\nb"), (SPECS["explore_class"], "x" * 65),
    (SPECS["explore_class"], "\x00"), (SPECS["hier_layer"], "[x](http://evil)"), (SPECS["hier_layer"], "<img src=x>"),
    (SPECS["hier_layer"], "**b**"), (SPECS["hier_layer"], "conv 1"), (SPECS["lesson"], "nope"),
    (SPECS["step"], "-1"), (Flag(), "maybe"), (Flag(), ""),
])
def test_spec_refuses_bad_text(spec, text):
    with pytest.raises(ValueError):
        spec(text)


def test_minus_zero_reads_as_plus_zero():
    assert math.copysign(1.0, Float(-1, 1)("-0")) == 1.0 and math.copysign(1.0, Float(-1, 1)("-0.0")) == 1.0


def test_choice_gives_the_option_itself():
    options = SPECS["train_lr"].options
    assert SPECS["train_lr"]("5e-4") is options[options.index(0.0005)]
    assert Choice((32, 64))("+64") == 64


def test_parse_uses_the_registry_before_the_pages_parser():
    assert links.parse("explore_cam_alpha", "0.35", float) == 0.35
    with pytest.raises(ValueError):
        links.parse("explore_cam_alpha", "5", float)  # float("5") works; the slider's range is [0, 1]
    with pytest.raises(ValueError):
        links.parse("explore_seed", HUGE, int)


def test_unknown_keys_keep_their_parser_and_drop_what_it_refuses():
    assert links.parse("other_n", "7", int) == 7
    assert links.parse("other_text", "anything", str) == "anything"
    for text in ("seven", "1" * 5000):  # int() refuses both (the second: CPython's digit limit, or our length)
        with pytest.raises(ValueError):
            links.parse("other_n", text, int)
    with pytest.raises(ValueError):
        links.parse("other_text", "x" * (links.MAX_TEXT + 1), str)  # too long for any key


def test_largest_seed_still_works_after_another_shuffle():
    assert SPECS["explore_seed"](str(links.MAX_SEED)) == links.MAX_SEED
    torch.Generator().manual_seed(links.MAX_SEED + 1)  # "Another one" adds 1
    assert torch.tensor(links.MAX_SEED + 1, dtype=torch.int64).item() == links.MAX_SEED + 1


def _widget_bounds() -> dict[str, tuple]:
    """Each widget in pages/*.py with a ``key=`` literal and literal bounds or options: key → (kind, bounds)."""
    found = {}
    for path in sorted((ROOT / "pages").glob("*.py")):
        tree = ast.parse(path.read_text())
        names = {t.id: node.value for node in tree.body if isinstance(node, ast.Assign)
                 for t in node.targets if isinstance(t, ast.Name)}
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            key = next((k.value.value for k in node.keywords if k.arg == "key" and isinstance(k.value, ast.Constant)),
                       None)
            if key not in SPECS:
                continue
            args = [names.get(a.id, a) if isinstance(a, ast.Name) else a for a in node.args]
            try:
                literals = [ast.literal_eval(a) for a in args[1:3]]
            except ValueError:  # bounds computed from the model: the page checks them with links.valid
                continue
            if node.func.attr in ("number_input", "slider") and len(literals) == 2:
                found[key] = ("range", tuple(literals))
            elif node.func.attr in ("selectbox", "radio", "select_slider") and literals:
                found[key] = ("options", tuple(literals[0]))
    return found


def test_registry_bounds_are_the_widgets_own():
    bounds = _widget_bounds()
    assert {"train_epochs", "train_seed", "train_batch", "train_lr", "explore_cam_alpha",
            "explore_invert"} <= set(bounds)
    for key, (kind, value) in bounds.items():
        spec = SPECS[key]
        if kind == "range":
            assert (spec.lo, spec.hi) == value, key
        else:
            assert spec.options == value, key


def test_every_key_restored_by_a_page_is_registered():
    sources = "".join(p.read_text() for p in [*(ROOT / "pages").glob("*.py"), ROOT / "cnnviz/ui/widgets.py"])
    literal_keys = set(re.findall(r'"(\w+)": (?:int|str|float|links\.flag)\b', sources))
    assert literal_keys <= set(SPECS), literal_keys - set(SPECS)
    # the image picker's f"{key}_class" with key="explore"
    assert {"explore_source", "explore_class", "explore_seed"} <= set(SPECS)


def _restore_script():
    import streamlit as st

    from cnnviz.ui import links

    st.session_state.setdefault("conv_channel", 9)  # a value the user chose already wins over the link
    links.restore({"explore_cam_alpha": float, "explore_seed": int, "train_lr": float, "train_epochs": int,
                   "conv_channel": int, "other_n": int, "other_bad": int, "presenter": links.flag})
    for key in ("explore_cam_alpha", "explore_seed", "train_lr", "train_epochs", "conv_channel", "other_n",
                "other_bad", "presenter"):
        st.text(f"{key}={st.session_state[key]!r}" if key in st.session_state else f"{key} absent")


def test_restore_keeps_good_values_and_drops_bad_ones_silently():
    at = AppTest.from_function(_restore_script, default_timeout=60)
    at.query_params.update({"explore_cam_alpha": "nan", "explore_seed": HUGE, "train_lr": "5e-4",
                            "train_epochs": "3.0", "conv_channel": "2", "other_n": "12", "other_bad": "x",
                            "presenter": "maybe"})
    at.run()
    assert not at.exception and not at.error
    assert [t.value for t in at.text] == [
        "explore_cam_alpha absent", "explore_seed absent", "train_lr=0.0005", "train_epochs absent",
        "conv_channel=9", "other_n=12", "other_bad absent", "presenter absent"]


# --- every page, whatever the link says ---------------------------------------------------------------------------

SHIPPED = checkpoint.load(state.SHIPPED_MODEL.read_bytes())
LAYERS = [n for n, _ in SHIPPED.model.named_modules() if n]
PICKER = ("explore_source", "explore_class", "explore_seed")
PAGES = {
    "pages/home.py": ("presenter",),
    "pages/train.py": (*links.TRAIN, "presenter"),
    "pages/explore.py": (*links.EXPLORE, *PICKER, "presenter"),
    "pages/convolution.py": (*links.CONVOLUTION, *PICKER, "presenter"),
    "pages/hierarchy.py": (*links.HIERARCHY, "presenter"),
    "pages/lessons.py": ("lesson", "step", "presenter"),
    "pages/architectures.py": (*lessonviews.LINKS, "presenter"),
}
HOSTILE = st.one_of(
    st.sampled_from(["", " ", "[x](http://evil)", "<img src=x>", "**b**", "<script>alert(1)</script>",
                     "![i](http://evil/i.png)", ":red[red]", "$\\sqrt{x}$", "`x`", "a\nb", "\x00", "é", "日本語",
                     "🙂", "conv1 ", "x" * 65, "9" * 5000]),
    st.sampled_from(["nan", "NaN", "inf", "-inf", "Infinity", "-0", "-0.0", "1e400", "-1e400", "3.0", "1e3", "0x10",
                     "1_000", " 7", "٣", "+5", "-1", "4.9e-324", HUGE, "-" + "9" * 25]),
    st.integers(-10**40, 10**40).map(str), st.floats().map(str), st.text(max_size=12),
    st.text(min_size=links.MAX_TEXT + 1, max_size=200),
)


def _valid(key: str) -> st.SearchStrategy[str]:
    """Texts the key's spec accepts, biased to values the shipped model's widgets can show."""
    spec = SPECS[key]
    if key == "train_dataset":
        return st.just("shapes")  # the other datasets would need a download
    if key == "explore_class":
        return st.sampled_from(SHIPPED.info.class_names)
    if key == "hier_layer":  # each new layer costs an activation maximisation: a few layers are enough
        return st.sampled_from(["conv1", "pool1", "layer2.0.conv1"])
    if isinstance(spec, Text):
        return st.sampled_from([*LAYERS, "layer2.0.conv1"])
    if isinstance(spec, Int):
        return st.one_of(st.integers(spec.lo, min(spec.hi, spec.lo + 40)), st.just(spec.hi)).map(str)
    if isinstance(spec, Float):
        return st.floats(spec.lo, spec.hi).map(str)
    if isinstance(spec, Choice):
        return st.sampled_from([str(o) for o in spec.options])
    return st.sampled_from(["1", "0", "true", "False", "on", "OFF", "yes", "no"])


def queries(page: str) -> st.SearchStrategy[dict[str, str]]:
    return st.fixed_dictionaries({}, optional={k: st.one_of(_valid(k), HOSTILE) for k in PAGES[page]})


@pytest.fixture(scope="module", autouse=True)
def watched():
    """Record which keys the pages restore; and compute each layer's activation maximisation once for all the
    examples (the page would redo it in every new session)."""
    restored: set[str] = set()
    real_restore, real_maximize, done = links.restore, maximize.maximize_layer, {}

    def restore(params):
        restored.update(params)
        real_restore(params)

    def maximize_once(model, layer, input_shape, channels=None, **kw):
        weights = hashlib.sha1(b"".join(p.detach().numpy().tobytes() for p in model.state_dict().values()))
        key = (weights.hexdigest(), layer, tuple(input_shape), tuple(channels or ()))
        if key not in done:
            done[key] = real_maximize(model, layer, input_shape, channels, **kw)
        return done[key]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(links, "restore", restore)
        mp.setattr(maximize, "maximize_layer", maximize_once)
        yield restored


def _open(page: str, query: dict[str, str]) -> AppTest:
    """A new session opened from a link to ``page``. AppTest keeps query parameters across runs, and after
    switch_page it runs the page file alone (it sees the project's pages/ folder), so: app.py once, then the page."""
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params.update(query)
    at.run()
    if page != "pages/home.py":
        at.switch_page(page).run()
    return at


def _shown(at: AppTest) -> str:
    """Every string the page puts on screen: text elements, labels, options, widget values."""
    parts: list[str] = []

    def walk(node) -> None:
        for child in getattr(node, "children", {}).values():
            walk(child)
        for attr in ("value", "label", "help", "options", "caption", "placeholder"):
            try:
                got = getattr(node, attr)
            except Exception:  # noqa: BLE001 - an element type without that attribute
                continue
            parts.extend(map(str, got) if isinstance(got, (list, tuple)) else [str(got)])

    walk(at.main)
    walk(at.sidebar)
    return "\n".join(parts)


@cache
def _plain(page: str) -> str:
    return _shown(_open(page, {}))


def _distinctive(text: str) -> bool:
    """Text that cannot turn up on a page by chance: markup, non-ASCII, or long."""
    return len(text) >= 16 or (len(text) >= 5 and re.search(r"[^A-Za-z0-9_.,+\- ]", text) is not None)


MISSING = object()


def check(page: str, query: dict[str, str], restored: set[str]) -> None:
    restored.clear()
    at = _open(page, query)
    assert not at.exception, (query, [e.value for e in at.exception])
    assert not at.error, (query, [e.value for e in at.error])  # dropped silently, never shown
    assert restored <= set(PAGES[page]) <= set(SPECS), restored - set(PAGES[page])  # every key the page reads
    kept = {}
    for key in PAGES[page]:
        if key in at.session_state:
            value = at.session_state[key]
            assert links.parse(key, str(value)) == value, (key, value)  # the widget's value makes a valid link
            kept[key] = value
    shown = _shown(at)
    for key, text in query.items():
        try:
            dropped = links.parse(key, text) != kept.get(key, MISSING)
        except ValueError:
            dropped = True
        if not dropped:
            continue
        for form in {text, md(text)}:  # shown neither as written nor escaped as text
            if _distinctive(form) and form not in _plain(page) and not any(form in str(v) for v in kept.values()):
                assert form not in shown, (key, text)


def test_a_kept_value_is_shown_and_a_dropped_one_is_not():
    query = {"explore_class": "horizontal stripes", "explore_cam_layer": "<img src=x>", "explore_cam_alpha": "0.35",
             "explore_view": "Grad-CAM"}
    at = _open("pages/explore.py", query)
    assert not at.exception
    assert at.slider(key="explore_cam_alpha").value == 0.35
    shown = _shown(at)
    assert "a horizontal stripes" in shown  # the test image's caption: _shown reads the page's text
    assert "<img src=x>" not in shown and md("<img src=x>") not in shown
    assert at.selectbox(key="explore_cam_layer").value in LAYERS


def test_a_class_link_opens_explore_on_the_uploader():
    """A teacher chooses Upload and shares the address: it opens each student's Explore on the uploader, with no
    test image drawn first; choosing another source rewrites the address; an unknown source is dropped."""
    at = _open("pages/explore.py", {"explore_source": "Upload"})
    assert not at.exception and not at.error
    assert at.pills(key="explore_source").value == "Upload"
    assert [u.label for u in at.get("file_uploader")] == ["Upload an image (PNG, JPEG, GIF, BMP, TIFF, WebP)"]
    assert "explore_class" not in [s.key for s in at.selectbox]  # the test set's class choice is not drawn
    assert "Choose an image on the left" in "".join(i.value for i in at.info)
    at.pills(key="explore_source").set_value("Draw").run()
    assert at.query_params["explore_source"] == "Draw"
    at = _open("pages/explore.py", {"explore_source": "Webcam"})
    assert not at.exception and not at.error
    assert at.pills(key="explore_source").value == "Test set"
    assert not at.get("file_uploader") and at.query_params["explore_source"] == "Test set"


# AppTest runs take seconds each on two cores: few examples, no deadline, and no shrinking (dozens more runs).
PAGE_SETTINGS = settings(max_examples=8, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate],
                         suppress_health_check=[HealthCheck.too_slow])
REGRESSIONS = [{"explore_cam_alpha": "5"}, {"explore_cam_alpha": "nan"}, {"explore_seed": HUGE}]


@pytest.mark.slow
@PAGE_SETTINGS
@given(query=queries("pages/home.py"))
@example(query={"presenter": "<img src=x>"})
def test_home_renders_any_link(query, watched):
    check("pages/home.py", query, watched)


@pytest.mark.slow
@PAGE_SETTINGS
@given(query=queries("pages/train.py"))
@example(query={"train_epochs": "51", "train_batch": "64.0", "train_lr": "nan", "train_seed": "-1",
                "train_size": "[x](http://evil)", "train_augment": "maybe", "train_dataset": "<img src=x>"})
def test_train_renders_any_link(query, watched):
    check("pages/train.py", query, watched)


@pytest.mark.slow
@PAGE_SETTINGS
@given(query=queries("pages/explore.py"))
@example(query=REGRESSIONS[0])
@example(query=REGRESSIONS[1])
@example(query=REGRESSIONS[2])
@example(query={"explore_class": "[x](http://evil)", "explore_channel": "1e400", "explore_cam_class": "99"})
def test_explore_renders_any_link(query, watched):
    check("pages/explore.py", query, watched)


@pytest.mark.slow
@PAGE_SETTINGS
@given(query=queries("pages/convolution.py"))
@example(query=REGRESSIONS[2])
@example(query={"conv_layer": "pool1", "conv_row": "4096", "pool_channel": "-0", "explore_class": "**b**"})
def test_convolution_renders_any_link(query, watched):
    check("pages/convolution.py", query, watched)


@pytest.mark.slow
@PAGE_SETTINGS
@given(query=queries("pages/hierarchy.py"))
@example(query={"hier_layer": "<img src=x>"})
def test_hierarchy_renders_any_link(query, watched):
    check("pages/hierarchy.py", query, watched)


@pytest.mark.slow
@PAGE_SETTINGS
@given(query=queries("pages/lessons.py"))
@example(query={"lesson": "gradcam", "step": HUGE})
@example(query={"lesson": "**b**", "step": "nan"})
def test_lessons_render_any_link(query, watched):
    check("pages/lessons.py", query, watched)


@pytest.mark.slow
@PAGE_SETTINGS
@given(query=queries("pages/architectures.py"))
@example(query={"arch_view": "Backpropagation", "bp_out": "4096", "bp_ky": "-1", "bp_layer": "<img src=x>"})
@example(query={"arch_view": "**b**", "bp_lr": "nan", "vgg_model": "[x](http://evil)"})
def test_architectures_renders_any_link(query, watched):
    check("pages/architectures.py", query, watched)
