"""A session's runs: FLOPs counted by hand, the bounds on count and bytes, the table and the overlaid curves."""

import json

import pytest
from torch import nn

from cnnviz import charts, models, runs
from cnnviz.train import History


def _tiny() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Dropout(0.5), nn.Flatten(), nn.Linear(2 * 3 * 3, 4))


def test_flops_of_a_tiny_conv_and_linear_model_counted_by_hand():
    model = _tiny().train()
    # conv: 2 filters × 3·3 output positions × (1 channel × 3·3 kernel) = 162 multiply-adds;
    # linear: 18 inputs × 4 outputs = 72 multiply-adds; 2 FLOPs each (ReLU, dropout and biases are not counted).
    assert runs.flops_per_image(model, (1, 5, 5)) == 2 * (2 * 9 * 9 + 18 * 4) == 468
    assert model.training  # measured in eval mode, then put back
    with pytest.raises(ValueError, match="input shape"):
        runs.flops_per_image(model, (5, 5))


def test_counted_flops_match_the_multiply_adds_a_spec_computes():
    spec = models.preset("tiny", 3, 32, 8)
    assert runs.flops_per_image(models.build(spec), (3, 32, 32)) == 2 * models.check(spec).macs


def _history(steps: int, accs=(0.5, 0.9)) -> History:
    return History(steps=[dict(step=i, epoch=i / 10, loss=2.0 / i, acc=min(1.0, i / steps), lr=0.01)
                          for i in range(1, steps + 1)],
                   epochs=[dict(epoch=1.0, step=steps // 2, val_loss=1.0, val_acc=accs[0], seconds=1.0),
                           dict(epoch=2.0, step=steps, val_loss=0.5, val_acc=accs[1], seconds=2.0)],
                   status="finished", seconds=12.5, images_per_s=100.0, val_images=50)


def test_a_run_is_measured_and_its_curves_thinned():
    kept = runs.Runs()
    run = kept.add(_tiny(), "mini-vgg", "shapes", (1, 5, 5), _history(1000), 0.875, {"lr": 0.005})
    assert (run.id, run.label, run.params, run.flops, run.seconds) == (1, "mini-vgg #1", 2 * 10 + 18 * 4 + 4, 468, 12.5)
    steps = run.history["steps"]
    assert len(steps) == charts.MAX_POINTS and steps[0]["step"] == 1 and steps[-1]["step"] == 1000
    # Smoothed over every step before thinning, as the training chart does.
    full = charts._ema([2.0 / i for i in range(1, 1001)], 0.9)
    assert [s["smooth_loss"] for s in steps] == pytest.approx([full[s["step"] - 1] for s in steps])
    assert kept.table() == [{"run": "mini-vgg #1", "architecture": "mini-vgg", "dataset": "shapes",
                             "parameters": 96, "MFLOPs per image": 468e-6, "training (s)": 12.5, "steps": 300,
                             "test accuracy (%)": 87.5, "status": "finished"}]
    assert json.loads(json.dumps(run.to_dict()))["config"] == {"lr": 0.005}
    with pytest.raises(ValueError, match="test accuracy"):
        kept.add(_tiny(), "x", "shapes", (1, 5, 5), _history(3), 87.5)


def test_runs_are_bounded_by_count_and_by_bytes_oldest_first():
    kept = runs.Runs(max_runs=3)
    for i in range(5):
        kept.add(_tiny(), f"net{i}", "shapes", (1, 5, 5), _history(10), None)
    assert [r.id for r in kept] == [3, 4, 5] and len(kept) == 3
    kept.remove(4)
    assert [r.architecture for r in kept] == ["net2", "net4"]

    one = runs.Runs().add(_tiny(), "net", "shapes", (1, 5, 5), _history(1000), 0.5)
    size = len(json.dumps(one.to_dict()))
    small = runs.Runs(max_bytes=int(2.5 * size))
    for i in range(4):
        small.add(_tiny(), "net", "shapes", (1, 5, 5), _history(1000), 0.5)
    assert [r.id for r in small] == [3, 4] and small.nbytes <= small.max_bytes
    with pytest.raises(ValueError, match="more than the"):
        runs.Runs(max_bytes=size // 2).add(_tiny(), "net", "shapes", (1, 5, 5), _history(1000), 0.5)
    small.clear()
    assert small.table() == [] and small.nbytes == 0


def test_curves_overlay_every_run_in_its_own_colour():
    kept = runs.Runs()
    kept.add(_tiny(), "mini-vgg", "shapes", (1, 5, 5), _history(50), 0.9)
    kept.add(_tiny(), "<b>mine</b>", "shapes", (1, 5, 5), History(steps=[dict(step=1, epoch=0.1, loss=2.0, acc=0.1,
                                                                                lr=0.01)]), None)
    fig = runs.curves(kept)
    names = [t.name for t in fig.data]
    assert names == ["mini-vgg #1", "mini-vgg #1", "mini-vgg #1, validation", "&lt;b&gt;mine&lt;/b&gt; #2",
                     "&lt;b&gt;mine&lt;/b&gt; #2"]  # no validation curve where none was measured; names escaped
    assert {t.line.color for t in fig.data[:3]} == {runs.COLOURS[0]} and fig.data[3].line.color == runs.COLOURS[1]
    assert list(fig.data[2].y) == [50.0, 90.0] and list(fig.data[1].x) == list(range(1, 51))
    assert fig.data[1].y[-1] == pytest.approx(100 * charts._ema([min(1.0, i / 50) for i in range(1, 51)], 0.9)[-1])
    assert not runs.curves([]).data and runs.curves([]).layout.annotations[-1].text.startswith("No runs yet")
