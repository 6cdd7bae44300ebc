"""The Learn page "Backpropagation and architectures", driven through AppTest: its numbers are the back end's, its
links are checked, and the residual lesson is computed once for everyone."""

from __future__ import annotations

import json
import threading
import time

import pytest
import streamlit
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings, strategies as hs
from streamlit.testing.v1 import AppTest

from cnnviz import architectures as arch
from cnnviz import backprop, data, models, probe, shapes, train
from cnnviz.ui import lessonviews as lv
from cnnviz.ui import state
from test_pages import APP, texts

PAGE = "pages/architectures.py"


@pytest.fixture(autouse=True)
def registered(monkeypatch):
    """Register the page with app.py's navigation, as its line in app.py does (added here while it is missing)."""
    real = streamlit.navigation

    def navigation(pages, **kw):
        listed = [p for group in (pages.values() if isinstance(pages, dict) else [pages]) for p in group]
        if not any(str(getattr(p, "_page", "")).endswith(PAGE) for p in listed):
            page = streamlit.Page(PAGE, title="Backpropagation and architectures")
            pages = {**pages, "Learn": [*pages["Learn"], page]}
        return real(pages, **kw)

    monkeypatch.setattr(streamlit, "navigation", navigation)


def open_page(query: dict[str, str] | None = None, model: state.SessionModel | None = None) -> AppTest:
    """A new session on the page, opened from a link with ``query``, looking at ``model`` (default: the shipped)."""
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params.update(query or {})
    if model is not None:
        at.session_state["model"] = model
    at.run()
    at.switch_page(PAGE).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def view(at: AppTest, name: str) -> AppTest:
    at.session_state["arch_view"] = name
    return at.run()


def number(at: AppTest, label: str) -> float:
    return float(next(m for m in at.metric if m.label == label).value)


def test_page_renders_the_backpropagation_lesson_on_the_default_model():
    at = open_page()
    assert not at.error
    assert at.session_state.arch_view == "Backpropagation" and at.session_state.bp_layer == "conv1"
    assert {c.proto.id for c in at.get("plotly_chart")}  # the logits, the chain and the terms are drawn
    assert len(at.get("plotly_chart")) == 3
    assert any("agree" in s.value for s in at.success), texts(at)
    assert at.query_params["arch_view"] == "Backpropagation"


def _autograd(model: torch.nn.Module, split: data.Split, index: int, w: backprop.Weight) -> tuple[float, float]:
    """The loss of one test image and ∂L/∂w by autograd on the model itself (float64 copy)."""
    work = __import__("copy").deepcopy(model).double().eval()
    x = data.normalize(split.x[index: index + 1], split.info).double()
    loss = F.cross_entropy(work(x), split.y[index: index + 1])
    weight = probe.get_module(work, w.layer).weight
    return loss.item(), torch.autograd.grad(loss, weight)[0][w.out_channel, w.in_channel, w.ky, w.kx].item()


def test_the_backprop_section_shows_autograds_gradient_and_a_step_that_lowers_the_loss():
    at = open_page()
    at.number_input(key="bp_image").set_value(5)
    at.selectbox(key="bp_layer").set_value("conv2").run()  # then the weight, within conv2's bounds
    at.number_input(key="bp_out").set_value(3)
    at.number_input(key="bp_in").set_value(7)
    at.number_input(key="bp_ky").set_value(0)
    at.number_input(key="bp_kx").set_value(2).run()
    assert not at.exception, [e.value for e in at.exception]
    split = state.test_split(at.session_state.model.info)
    loss, grad = _autograd(at.session_state.model.model, split, 5, backprop.Weight("conv2", 3, 7, 0, 2))
    assert number(at, "Chain rule, step by step") == pytest.approx(grad, rel=1e-5, abs=1e-9)
    assert number(at, "Autograd") == pytest.approx(grad, rel=1e-5, abs=1e-9)
    assert f"L = −log p = **{loss:.4g}**" in texts(at)
    # The chain goes back from fc through the layers after conv2: as many rows as steps.
    table = next(d.value for d in at.dataframe if "gradient handed back to" in d.value.columns)
    assert list(table["layer"])[0] == "fc" and list(table["layer"])[-1] == "bn2"

    at.select_slider(key="bp_lr").set_value(100.0)
    at.button(key="bp_sgd").click().run()
    before, after = number(at, "Loss before"), number(at, "Loss after")
    assert before == pytest.approx(loss, rel=1e-5)
    step = backprop.sgd_step(at.session_state.model.model, data.normalize(split.x[5], split.info), int(split.y[5]),
                             backprop.Weight("conv2", 3, 7, 0, 2), 100.0)
    assert after == pytest.approx(step.loss_after, rel=1e-5)
    assert f"{step.loss_before:.6g} → {step.loss_after:.6g}" in texts(at)


def test_a_link_opens_the_chain_through_a_residual_block():
    info = data.info("shapes")
    model = models.build(models.preset("mini-resnet", 3, 32, info.num_classes), seed=0).eval()
    sm = state.SessionModel(model, info, "test-mini-resnet", "built in a test")
    weight = backprop.Weight("block2.conv2", 5, 4, 2, 0)
    at = open_page({"bp_image": "17", "bp_layer": weight.layer, "bp_out": "5", "bp_in": "4", "bp_ky": "2",
                    "bp_kx": "0"}, model=sm)
    assert not at.error
    _, grad = _autograd(model, state.test_split(info), 17, weight)
    assert number(at, "Chain rule, step by step") == pytest.approx(grad, rel=1e-5, abs=1e-9)
    table = next(d.value for d in at.dataframe if "gradient handed back to" in d.value.columns)
    # Back from fc to the block, then inside it from the block's output to block2.conv2's.
    assert list(table["layer"])[0] == "fc"
    assert list(table["gradient handed back to"])[-1] == "the output of block2.conv2"
    assert at.query_params["bp_layer"] == "block2.conv2" and at.query_params["bp_image"] == "17"


HOSTILE = {  # a value for each shared key that its widget must not take
    "arch_view": "Everything", "bp_image": "123456789", "bp_layer": "layer2.0.conv1", "bp_out": "4000",
    "bp_in": "-1", "bp_ky": "nan", "bp_kx": "[x](http://evil)", "bp_lr": "0.3", "bp_all": "maybe",
    "vgg_model": "<img src=x>", "inc_block": "conv1",
}


@pytest.mark.parametrize("shown", lv.VIEWS)
def test_a_hostile_value_for_each_shared_key_is_dropped(shown):
    assert set(HOSTILE) == set(lv.LINKS)
    at = open_page({**HOSTILE, "arch_view": shown})
    assert not at.error and at.session_state.arch_view == shown
    for key in lv.SECTION_LINKS[shown]:
        assert str(at.session_state[key]) != HOSTILE[key] if key in at.session_state else True, key
        assert at.query_params.get(key) in (None, HOSTILE[key]) or at.query_params[key] == str(at.session_state[key])
    if shown == "Backpropagation":
        assert at.session_state.bp_layer == "conv1" and at.session_state.bp_out == 0 and at.session_state.bp_lr == 10.0
        beyond = open_page({"bp_image": "99999", "bp_out": "16", "bp_in": "3"})  # valid numbers, beyond this model
        assert (beyond.session_state.bp_image, beyond.session_state.bp_out, beyond.session_state.bp_in) == (0, 0, 0)
    assert not any(HOSTILE[key] in texts(at) for key in lv.SECTION_LINKS[shown] if not HOSTILE[key].isalnum()
                   and len(HOSTILE[key]) > 4)  # markup and names, not numbers the page may show anyway
    bad = open_page({"arch_view": "Everything"})
    assert bad.session_state.arch_view == "Backpropagation"


HOSTILE_TEXT = hs.one_of(
    hs.sampled_from(["", " ", "[x](http://evil)", "<script>x</script>", ":red[r]", "$x$", "a\nb", "\x00", "日本",
                     "nan", "-inf", "1e400", "-0", "3.0", "0x10", "1_000", "٣", "9" * 80]),
    hs.integers(-10**20, 10**20).map(str), hs.text(max_size=12))


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(query=hs.fixed_dictionaries({}, optional={key: HOSTILE_TEXT for key in lv.LINKS}))
def test_any_link_opens_the_page(query):
    at = open_page(query)
    assert not at.error
    for key in lv.LINKS:
        if key in at.session_state:  # what a widget holds makes a valid link again
            assert lv.LINKS[key](str(at.session_state[key])) == at.session_state[key], key


def _small_shapes(name, train=False, data_dir=None):
    """Shapes splits small enough for a test (the server's are 20,000 and 2,000 images)."""
    x, y, masks = shapes.generate(400 if train else 100, seed=7 if train else 8)
    return data.Split(data.info(name), x, y, masks)


def test_the_residual_lesson_draws_its_plot_and_says_what_it_measured(monkeypatch):
    monkeypatch.setattr(state, "dataset", _small_shapes)
    monkeypatch.setattr(lv, "RESIDUAL_STEPS", 4)
    monkeypatch.setattr(lv, "RESIDUAL_TRAIN", 256)
    monkeypatch.setattr(lv, "RESIDUAL_TEST", 64)
    at = view(open_page(), "Residual connections")
    assert not at.get("plotly_chart") and at.button(key="res_go")
    at.button(key="res_go").click().run()
    assert not at.exception, [e.value for e in at.exception]
    lesson = lv.residual(*lv.residual_key())  # the server's shared result: computed by the click above
    assert lesson.steps == 4 and lesson.train_images == 256 and lesson.test_images == 64
    charts_ = at.get("plotly_chart")
    assert len(charts_) == 5  # the depth profile, two heatmaps, two sets of curves
    depth = json.loads(charts_[0].proto.spec)["data"]  # the plot: each weight layer's gradient, plain and residual
    for trace, run in zip(depth, (lesson.plain, lesson.residual)):
        assert trace["y"] == pytest.approx([g for g, k in zip(run.grad_norm, run.kinds) if k in ("conv", "linear")])
    body = texts(at)
    p, r = lesson.plain, lesson.residual
    assert (f"The first conv layer of the plain net ({p.first_layer}) gets {p.first_over_last:.3g}× the gradient "
            f"of its last ({p.last_layer}); with skips, {r.first_layer} gets {r.first_over_last:.3g}×") in body
    assert f"plain **{p.test_accuracy:.1%}**, with skips **{r.test_accuracy:.1%}**" in body
    assert number(at, "plain-20: first ÷ last layer's gradient") == float(f"{p.first_over_last:.3g}")
    assert (f"Both nets have the same {p.params:,} parameters" if p.params == r.params else
            f"The plain net has {p.params:,} parameters, the residual one {r.params:,}") in body
    assert "takes up to a minute" not in body  # the button and its words are gone once pressed
    # Another student opening the page now sees the result without training again.
    again = view(open_page(), "Residual connections")
    assert not [b for b in again.button if b.key == "res_go"]
    assert len(again.get("plotly_chart")) == 5 and lv.residual(*lv.residual_key()) is lesson


def test_a_class_pressing_at_once_trains_the_two_nets_once(monkeypatch):
    calls = []

    def slow(*args, **kw):
        calls.append(1)
        time.sleep(0.3)
        return object()

    monkeypatch.setattr(lv.gradients, "residual_lesson", slow)
    monkeypatch.setattr(state, "dataset", _small_shapes)
    key = ("plain-20", "resnet-20", "shapes", 2, 8, 16, 16, 12345)  # a key no other test uses
    got = []
    threads = [threading.Thread(target=lambda: got.append(lv.residual(*key))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(got) == 8 and all(g is got[0] for g in got)


def test_the_vgg_lesson_counts_the_models_own_layers():
    at = view(open_page(), "VGG")
    assert not at.exception and not at.error
    rows = arch.receptive_growth(at.session_state.model.model, 32)
    body = texts(at)
    last = rows[-1]
    assert f"One unit of {last.layer}, after {last.convs} convolutions" in body
    assert f"{last.stack_weights_same:,} weights" in body and f"{last.single_weights_same:,}" in body
    at.session_state["vgg_model"] = "mini-vgg"
    at.run()
    vgg = arch.receptive_growth(models.preset("mini-vgg", 3, 32, 8))
    body = texts(at)
    assert f"one unit of {vgg[1].layer} sees 5×5 pixels" in body
    assert f"One unit of {vgg[-1].layer}, after {vgg[-1].convs} convolutions" in body
    assert len(at.get("plotly_chart")) == 2


def test_the_inception_lesson_needs_inception_blocks_and_links_to_the_train_page():
    at = view(open_page(), "Inception")
    assert "needs a model with Inception blocks" in texts(at)
    at.button(key="inc_train_none").click().run()
    assert at.title[0].value == "Train a CNN"
    assert at.radio(key="train_preset").value == "mini-inception"
    assert at.selectbox(key="train_dataset").value == "shapes"


def test_the_inception_lesson_measures_a_mini_inception():
    x, y, masks = shapes.generate(512, seed=3)
    info = data.info("shapes")
    model = models.build(models.preset("mini-inception", 3, 32, info.num_classes), seed=0)
    train.fit(model, data.Split(info, x, y, masks), train.TrainConfig(batch_size=64, max_steps=8, min_steps=8))
    model.eval()
    sm = state.SessionModel(model, info, "test-mini-inception", "trained in a test")
    at = view(open_page(model=sm), "Inception")
    assert not at.exception and not at.error, [e.value for e in at.exception]
    assert at.session_state.inc_block == "inc2"
    table = arch.branch_response(model, "inc2", arch.sized_shapes(lv.INCEPTION_IMAGES, size=32, seed=0))
    heat = at.get("plotly_chart")[0]
    assert "inc2" in heat.proto.spec  # the branches × sizes heatmap
    body = texts(at)
    for lo, hi, n, best in zip(table.edges, table.edges[1:], table.counts, table.strongest):
        assert f"Objects of {lo:.1f}–{hi:.1f} px ({n} images): **{best}** fires most" in body


def test_the_residual_lesson_without_batchnorm_is_its_own_run(monkeypatch):
    monkeypatch.setattr(state, "dataset", _small_shapes)
    monkeypatch.setattr(lv, "RESIDUAL_STEPS", 3)
    monkeypatch.setattr(lv, "RESIDUAL_TRAIN", 128)
    monkeypatch.setattr(lv, "RESIDUAL_TEST", 32)
    at = open_page()
    at.session_state["res_bn"] = "without"
    at = view(at, "Residual connections")
    go = at.button(key="res_go")
    assert "without batch norm" in go.label
    go.click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert lv.residual_ready(False) and not lv.residual_ready(True)  # each choice is its own shared run
    lesson = lv.residual(*lv.residual_key(False))
    body = texts(at)
    assert f"Both nets trained for 3 steps on the same {lesson.train_images:,} shapes images, with the same " \
           "batches and seed, without batch norm" in body
    assert "Both use batch norm" not in body
    assert "Guessing would get 12.5%" in body  # shapes has 8 classes
    p = lesson.plain
    assert number(at, "plain-20: first ÷ last layer's gradient") == float(f"{p.first_over_last:.3g}")
