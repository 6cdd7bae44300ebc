"""The benchmark suite's own arithmetic: correlation, the race to 99 %, verdicts, exit status and the docs writer."""

import math

import pytest
import torch
from torch import nn

import benchmarks.__main__ as bench
from benchmarks import docs, libraries, recipe
from benchmarks.report import Result, Row, at_least, at_most, fmt


def test_pearson_known_answers():
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert libraries.pearson(a, a) == pytest.approx(1)
    assert libraries.pearson(a, 3 * a + 7) == pytest.approx(1)  # scale and shift do not matter
    assert libraries.pearson(a, -a) == pytest.approx(-1)
    assert libraries.pearson([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    assert math.isnan(libraries.pearson([1, 1, 1], [1, 2, 3]))  # a constant map has no correlation
    with pytest.raises(ValueError, match="one shape"):
        libraries.pearson([1, 2], [1, 2, 3])


def test_race_time_to_first_evaluation_at_goal():
    race = recipe.Race(evals=[(1, 10.0, 0.985), (2, 21.0, 0.991), (3, 30.0, 0.989), (4, 41.0, 0.995)])
    assert race.time_to(0.99) == 21.0 and race.epochs_to(0.99) == 2
    assert race.time_to(0.995) == 41.0
    assert race.time_to(0.999) is None and race.best == 0.995


def test_verdicts_and_formats():
    assert Row("a", 3.0, "s", at_most(2)).verdict == "MISS"
    assert Row("a", 1.0, "s", at_most(2)).verdict == "PASS"
    assert Row("a", None, "×", at_least(8)).verdict == "MISS"  # not measured: the target is not met
    assert Row("a", float("nan"), "r", at_least(0.99)).verdict == "MISS"
    assert Row("a", None, "×", at_least(8), checked=False).verdict == "(quick)"
    assert Row("a", None, "s").verdict == ""
    assert fmt(0.9999991, "r") == "0.999999" and at_least(0.99).text("r") == "≥ 0.99"
    assert fmt(12.5, "×") == "12.50×" and fmt(1234.56, "GFLOP/s") == "1,234.6 GFLOP/s"


def test_accuracy_is_measured_in_eval_mode_and_puts_the_mode_back():
    model = nn.Sequential(nn.Dropout(0.9))  # identity in eval mode: the logits are the inputs
    x = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    model.train()
    assert recipe.test_accuracy(model, x, torch.tensor([1, 0, 0, 0]), batch=3) == 0.75
    assert model.training


def test_recipe_network_flops_per_image():
    # conv1 26²·32·9, conv2 24²·64·32·9, fc1 9216·128, fc2 128·10 multiply-adds, 2 FLOPs each.
    forward, step = recipe.flops_per_image(recipe.recipe_net(), (1, 1, 28, 28), 4, torch.device("cpu"),
                                           log_softmax=True)
    assert forward == 2 * (26 * 26 * 32 * 9 + 24 * 24 * 64 * 32 * 9 + 9216 * 128 + 128 * 10)
    assert 2 * forward < step < 3 * forward  # the backward skips the gradient of the input image


def _digits(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 1, 28, 28), generator=g, dtype=torch.uint8), torch.arange(n) % 10


def _accuracies(*values: float):
    """A stand-in for the test evaluation: these accuracies, one per call."""
    it = iter(values)
    return lambda model: next(it)


@pytest.mark.parametrize("race", ["recipe", "cnnviz"])
def test_both_races_stop_at_the_goal_and_at_the_cap(race):
    from cnnviz import data

    x, y = _digits(200)
    cpu = torch.device("cpu")

    def run(accuracy, cap):
        if race == "recipe":
            return recipe.race_recipe(x, y, accuracy, cap, cpu)[0]
        return recipe.race_cnnviz(data.Split(data.info("mnist"), x, y), accuracy, cap, cpu)[0]

    reached = run(_accuracies(0.5, 0.995, 0.0), cap=600)
    assert [acc for _, _, acc in reached.evals] == [0.5, 0.995]  # one evaluation per epoch, until the goal
    assert [e for e, _, _ in reached.evals] == [1, 2] and not reached.capped
    assert reached.time_to(recipe.GOAL) == reached.evals[1][1] > reached.evals[0][1] > 0
    capped = run(_accuracies(0.3, 0.0), cap=0)
    assert capped.capped and len(capped.evals) == 1 and capped.time_to(recipe.GOAL) is None
    assert 0 < capped.evals[0][0] < 1 and 0 < capped.images < 200  # stopped within the first epoch


def _result(section: str, verdict_value: float, seconds: float = 12.0, **kw) -> Result:
    return Result(section, [Row("speed | ratio", verdict_value, "×", at_least(2), note="a | b")], seconds, **kw)


def _part(result: Result) -> str:
    info = {"cpu_model": "Test CPU", "cpus": 2, "gpu": None, "torch": "2.x", "python": "3.x", "torch_threads": 2}
    return docs.part(result, "What it measures.", info, "2026-12-01 10:00 UTC", (0.5, 1.25))


def test_docs_parts_are_replaced_kept_and_ordered():
    order = ["one", "two", "three"]
    run = dict(command="python -m benchmarks", when="2026-12-01 10:00 UTC", usage="python -m benchmarks")
    first = docs.render("# hand-written\n\n## old notes\n\ntext\n", {"two": _part(_result("two", 3.0, 95.4))},
                        order, set(), **run)
    assert first.startswith("# Benchmarks\n") and "hand-written" not in first and "old notes" not in first
    assert "| speed \\| ratio | 3.00× | ≥ 2× | PASS | a \\| b |" in first
    assert "Test CPU (2 cores)" in first and "the section took 95 s" in first
    assert "This file covers: `two` (2026-12-01). Not measured yet: `one`, `three`." in first
    second = docs.render(first, {"three": _part(_result("three", 1.0)), "one": _part(_result("one", 5.0))},
                         order, set(), **run)
    _, parts = docs.split(second)
    assert list(parts) == order and parts["two"] == docs.split(first)[1]["two"]
    assert "In all: 2 PASS, 1 MISS." in second
    assert docs.previous_seconds(second) == {"one": 12.0, "two": 95.0, "three": 12.0}
    skipped = Result("two", skipped="MNIST not found")
    kept = docs.render(second, {"two": _part(skipped)}, order, {"two"}, **run)
    assert docs.split(kept)[1]["two"] == parts["two"]  # a skip does not erase earlier figures
    fresh = docs.render("", {"two": _part(skipped)}, order, {"two"}, **run)
    assert "Skipped: MNIST not found" in fresh


def test_a_missed_target_fails_the_run_and_a_quick_run_leaves_the_docs_alone(monkeypatch, tmp_path):
    monkeypatch.setattr(docs, "DOCS", tmp_path / "benchmarks.md")
    monkeypatch.setattr(bench, "SECTIONS", {"good": lambda o: [Row("r", 3.0, "×", at_least(2))],
                                            "bad": lambda o: [Row("r", 1.0, "×", at_least(2), checked=not o.quick)]})
    assert bench.main(["good", "--device", "cpu"]) == 0
    assert "## good" in docs.DOCS.read_text()
    assert bench.main(["good", "bad", "--device", "cpu"]) == 1
    text = docs.DOCS.read_text()
    assert "## good" in text and "## bad" in text and "| MISS |" in text
    assert bench.main(["bad", "--quick", "--device", "cpu"]) == 0  # not judged in a smoke run
    assert docs.DOCS.read_text() == text


def test_the_library_comparison_skips_without_the_bench_extra(monkeypatch):
    from benchmarks.common import Options
    from benchmarks.report import Skip

    monkeypatch.setattr(libraries, "_importable", lambda module: module != "torchcam")
    with pytest.raises(Skip, match=r"torchcam not installed: pip install -e '\.\[bench\]'"):
        libraries.gradcam_libs(Options())


def test_zoo_home_holds_weights_under_torchvisions_names_and_puts_torch_home_back(monkeypatch):
    import os

    import torchvision

    from benchmarks import yours
    from cnnviz import zoo

    monkeypatch.setenv("TORCH_HOME", "/nowhere/of/ours")
    with yours.zoo_home(("alexnet",)):
        inside = os.environ["TORCH_HOME"]
        path = zoo.weights_file("alexnet")
        assert path.is_relative_to(inside) and path.exists()
        assert set(torch.load(path, weights_only=True)) == set(torchvision.models.alexnet().state_dict())
    assert os.environ["TORCH_HOME"] == "/nowhere/of/ours" and not os.path.exists(inside)
