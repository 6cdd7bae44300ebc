import math
import threading

import pytest
import torch

from cnnviz import data, devices, models, probe, train


def test_model_learns_shapes(trained_shapes):
    model, _, tr, te = trained_shapes
    ev = train.evaluate(model, te)
    assert ev.accuracy > 0.8, ev.accuracy  # 8 classes: chance is 12.5 %
    assert model.training is False


def test_evaluate_confusion_matrix_known_answer(shapes_small):
    _, te = shapes_small
    te = te.subset(40)
    k = te.info.num_classes

    class Always(torch.nn.Module):
        def forward(self, x):
            out = torch.zeros(x.shape[0], k)
            out[:, 2] = 1.0
            return out

    ev = train.evaluate(Always(), te)
    counts = torch.bincount(te.y, minlength=k)
    assert torch.equal(ev.confusion[:, 2], counts) and ev.confusion.sum() == 40
    assert ev.accuracy == pytest.approx(counts[2].item() / 40)
    assert ev.per_class[2] == 1.0 and set(ev.mistakes.tolist()) == set((te.y != 2).nonzero().squeeze(1).tolist())


def test_same_seed_same_result(shapes_small):
    tr, _ = shapes_small
    spec = models.preset("tiny", 3, 32, tr.info.num_classes)
    cfg = train.TrainConfig(epochs=1, min_steps=0, max_steps=5, batch_size=32)
    runs = []
    for _ in range(2):
        m = models.build(spec, seed=1)
        h = train.fit(m, tr, cfg)
        runs.append((m.state_dict(), [s["loss"] for s in h.steps]))
    assert runs[0][1] == runs[1][1]
    assert all(torch.equal(runs[0][0][k], runs[1][0][k]) for k in runs[0][0])


def test_history_callbacks_and_validation(shapes_small):
    tr, te = shapes_small
    tr = tr.subset(256)
    m = models.build(models.preset("tiny", 3, 32, tr.info.num_classes), seed=0)
    seen = []
    h = train.fit(m, tr, train.TrainConfig(epochs=2, min_steps=0, batch_size=128), val=te.subset(100),
                  on_step=seen.append)
    assert [s.step for s in seen] == [1, 2, 3, 4] and seen[-1].total_steps == 4
    assert h.status == "finished" and len(h.steps) == 4
    assert [e["step"] for e in h.epochs] == [2, 4] and 0 <= h.epochs[-1]["val_acc"] <= 1 and h.val_images == 100
    assert h.images_per_s > 0 and seen[-1].eta == 0


def test_small_dataset_is_scheduled_by_steps(shapes_small):
    cfg = train.TrainConfig(epochs=2, batch_size=128, min_steps=300)
    assert cfg.total_steps(60_000) == 2 * 469
    assert cfg.total_steps(2_000) == 300


def test_stop_event_ends_run_after_current_step(shapes_small):
    tr, _ = shapes_small
    m = models.build(models.preset("tiny", 3, 32, tr.info.num_classes), seed=0)
    stop = threading.Event()

    def on_step(s):
        if s.step == 3:
            stop.set()

    h = train.fit(m, tr, train.TrainConfig(epochs=5, batch_size=32), on_step=on_step, stop=stop)
    assert h.status == "stopped" and len(h.steps) == 3


def test_divergence_stops_with_reason_and_keeps_last_good_weights(shapes_small):
    tr, _ = shapes_small
    m = models.build(models.preset("tiny", 3, 32, tr.info.num_classes), seed=0)
    snapshots = []

    def on_step(s):
        snapshots.append({k: v.clone() for k, v in m.state_dict().items()})
        if s.step == 2:
            with torch.no_grad():
                m.fc.weight.fill_(float("nan"))  # the next forward pass gives a NaN loss

    h = train.fit(m, tr, train.TrainConfig(epochs=1, batch_size=32), on_step=on_step)
    assert h.status == "diverged" and "learning rate" in h.reason and len(h.steps) == 2
    # The NaN was written after step 2's snapshot was taken by fit, so the model is back to step 2's weights.
    assert torch.isfinite(m.fc.weight).all()
    assert torch.equal(m.conv1.weight, snapshots[1]["conv1.weight"])


def test_augmentation_keeps_shapes_and_changes_images(shapes_small):
    tr, _ = shapes_small
    x = torch.randn(4, 3, 32, 32)
    out = train._augment(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and not torch.allclose(out, x)


def test_bad_config_refused():
    with pytest.raises(ValueError, match="learning rate"):
        train.TrainConfig(lr=0).check()
    with pytest.raises(ValueError, match="optimiser"):
        train.TrainConfig(optimizer="rmsprop").check()


def test_training_layout_does_not_leak_out_of_fit(shapes_small):
    """fit trains channels-last (faster on a CPU) and hands the model back in the usual layout, also on an error."""
    tr, _ = shapes_small
    spec = models.preset("gap", 3, 32, tr.info.num_classes)
    model = models.build(spec, seed=0)
    seen = []

    def record_layout(step):
        seen.append(model.conv2.weight.is_contiguous(memory_format=torch.channels_last))

    train.fit(model, tr, train.TrainConfig(max_steps=3, batch_size=32), on_step=record_layout)
    assert seen == [True] * 3
    assert all(p.is_contiguous() for p in model.parameters())

    def fail(step):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        train.fit(model, tr, train.TrainConfig(max_steps=3, batch_size=32), on_step=fail)
    assert all(p.is_contiguous() for p in model.parameters())


def test_overfitting_lesson_validates_a_bounded_number_of_times(shapes_small, monkeypatch):
    """The 200-image lesson (30 epochs; an epoch every 2 steps, 300 steps) validated 150 times on 1,000 images."""
    full, _ = shapes_small
    tr, val = data.holdout(full, 200, 1000, seed=0)
    evaluated = []
    real = train.evaluate

    def counting(model, split, *args, **kwargs):
        evaluated.append(len(split))
        return real(model, split, *args, **kwargs)

    monkeypatch.setattr(train, "evaluate", counting)
    # A linear model: the schedule of validations does not depend on the architecture, and this one is quick.
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, tr.info.num_classes))
    h = train.fit(model, tr, train.TrainConfig(epochs=30), val=val)
    assert h.status == "finished" and len(h.steps) == 300
    val_steps = [e["step"] for e in h.epochs]
    assert len(evaluated) == len(val_steps) <= train.VAL_EVALS and val_steps[-1] == 300
    assert all(b - a >= 300 / train.VAL_EVALS for a, b in zip([0] + val_steps[:-2], val_steps[:-1]))
    assert all(s % 2 == 0 for s in val_steps)  # at epoch ends
    assert set(evaluated) == {train.VAL_IMAGES} and h.val_images == train.VAL_IMAGES


def test_history_from_an_older_checkpoint_still_loads():
    old = dict(steps=[dict(step=1, epoch=0.5, loss=2.0, acc=0.1, lr=0.001)], epochs=[], status="finished",
               reason="", seconds=1.0, images_per_s=10.0)  # saved before val_images existed
    h = train.History.from_dict(old)
    assert h.status == "finished" and h.val_images == 0 and h.steps == old["steps"]
    assert train.History.from_dict(h.to_dict()) == h


def _lesson_start(lr: float, seed: int, stop_at: int | None = None) -> train.History:
    """Train the default shapes preset with the default optimiser on 1,000 shapes, as the Train page does."""
    full = data.load("shapes", train=True, seed=0)
    tr = data.holdout(full, 1000, 500, seed=seed)[0]
    info = tr.info
    model = models.build(models.preset(info.preset, info.channels, info.size, info.num_classes), seed=seed)
    stop = threading.Event()
    config = train.TrainConfig(lr=lr, seed=seed)
    assert config.optimizer == "adam" and info.preset == "gap"  # the defaults the hint is about
    return train.fit(model, tr, config, stop=stop,
                     on_step=lambda s: stop.set() if stop_at is not None and s.step >= stop_at else None)


@pytest.mark.slow
def test_learning_rate_2_fails_and_says_so_while_the_default_does_not():
    """The Train page says a very high learning rate makes training fail; try 2.0. Really train at 2.0."""
    h = _lesson_start(2.0, seed=0)
    # Measured: at 2.0 Adam sits at chance (loss ≈ ln 8) from the first steps; it is stopped at the first check.
    assert h.status == "stuck" and len(h.steps) == train.STUCK_AFTER
    assert "ln(8) = 2.08" in h.reason and "guessing at chance" in h.reason and "too high" in h.reason
    assert abs(sum(s["loss"] for s in h.steps[-25:]) / 25 - math.log(8)) < train.STUCK_LOSS
    # The default learning rate is well past chance by then: the run is not flagged and goes on until stopped.
    h = _lesson_start(train.TrainConfig.lr, seed=0, stop_at=train.STUCK_AFTER)
    assert h.status == "stopped" and len(h.steps) == train.STUCK_AFTER
    assert sum(s["acc"] for s in h.steps[-25:]) / 25 > 0.5


def test_stuck_needs_chance_loss_and_accuracy_and_waits_for_the_warm_up(shapes_small, monkeypatch):
    steps = [dict(loss=math.log(8) + 0.05, acc=0.13)] * train.STUCK_WINDOW
    high, low = train.TrainConfig(lr=2.0), train.TrainConfig(lr=0.001)
    assert "too high" in train._stuck(steps, 8, high) and "2.13 ≈ ln(8) = 2.08" in train._stuck(steps, 8, high)
    assert "not high" in train._stuck(steps, 8, low)
    assert train._stuck([dict(loss=1.5, acc=0.13)] * 25, 8, high) == ""  # the loss moved off chance
    assert train._stuck([dict(loss=2.08, acc=0.3)] * 25, 8, high) == ""  # better than guessing
    # A run whose every batch looks stuck is judged only after STUCK_AFTER steps and the warm-up.
    monkeypatch.setattr(train, "STUCK_LOSS", math.inf)
    monkeypatch.setattr(train, "STUCK_ACC", 1.0)
    monkeypatch.setattr(train, "STUCK_AFTER", 3)
    tr, _ = shapes_small
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, tr.info.num_classes))
    h = train.fit(model, tr, train.TrainConfig(min_steps=40, batch_size=50, epochs=1))
    assert h.status == "stuck" and len(h.steps) == 10  # the warm-up is a quarter of the 40 steps
    assert not model.training


def test_device_cpu_trains_exactly_as_before_and_keeps_the_model_there(shapes_small):
    tr, te = shapes_small
    tr = tr.subset(96)
    spec = models.preset("tiny", 3, 32, tr.info.num_classes)
    cfg = train.TrainConfig(epochs=1, min_steps=0, max_steps=6, batch_size=32, augment=True)
    runs = []
    for device in (None, "cpu", torch.device("cpu"), "auto"):  # auto is the CPU on a machine without a GPU
        if device == "auto" and devices.available()[0] != "cpu":
            continue
        m = models.build(spec, seed=3)
        h = train.fit(m, tr, cfg, val=te.subset(50), device=device)
        ev = train.evaluate(m, te.subset(50))
        runs.append((m.state_dict(), [s["loss"] for s in h.steps], h.epochs[-1]["val_acc"], ev.confusion))
        assert probe.device_of(m).type == "cpu" and ev.confusion.device.type == "cpu"
    first = runs[0]
    for state, losses, val_acc, confusion in runs[1:]:
        assert losses == first[1] and val_acc == first[2] and torch.equal(confusion, first[3])
        assert all(torch.equal(state[k], first[0][k]) for k in state)


def test_after_backward_sees_each_steps_gradients_before_the_optimiser(shapes_small):
    tr, _ = shapes_small
    tr = tr.subset(64)
    m = models.build(models.preset("tiny", 3, 32, tr.info.num_classes), seed=0)
    before = {k: v.detach().clone() for k, v in m.named_parameters()}
    seen = []

    def after_backward(model, step):
        grads = [p.grad for p in model.parameters()]
        assert model is m and all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
        seen.append(step)
        for p in model.parameters():  # zero gradients: Adam then moves nothing, if it runs after this
            p.grad.zero_()

    h = train.fit(m, tr, train.TrainConfig(epochs=2, min_steps=0, max_steps=5, batch_size=16),
                  after_backward=after_backward)
    assert seen == [1, 2, 3, 4, 5] == [s["step"] for s in h.steps]
    assert all(torch.equal(v, before[k]) for k, v in m.named_parameters())  # the hook ran before every step
