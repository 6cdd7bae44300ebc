import threading

import pytest
import torch

from cnnviz import models, train


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
    assert [e["step"] for e in h.epochs] == [2, 4] and 0 <= h.epochs[-1]["val_acc"] <= 1
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
