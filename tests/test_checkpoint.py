import io
import re
import zipfile

import pytest
import torch

import cnnviz
from cnnviz import assets, checkpoint, data, models, shapes, train
from cnnviz.train import History


def _ckpt():
    info = data.info("mnist")
    spec = models.preset("tiny", 1, 28, 10)
    model = models.build(spec, seed=0).eval()
    return checkpoint.Checkpoint(model, spec, info, History(status="finished", seconds=1.5), {"test_accuracy": 0.9})


def test_round_trip_through_public_api(tmp_path):
    ck = _ckpt()
    path = checkpoint.save(ck, tmp_path / "m.pt")
    back = cnnviz.load_checkpoint(path)
    assert back.dataset == "mnist" and back.class_names == tuple(str(i) for i in range(10))
    assert back.spec == ck.spec and back.history.status == "finished" and back.metrics["test_accuracy"] == 0.9
    assert back.model.training is False
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(back.model(x), ck.model(x))


def test_loads_from_bytes_and_file_objects():
    raw = checkpoint.to_bytes(_ckpt())
    assert checkpoint.load(raw).info.size == 28
    assert checkpoint.load(io.BytesIO(raw)).spec.num_classes == 10


def test_file_holds_only_plain_data():
    payload = torch.load(io.BytesIO(checkpoint.to_bytes(_ckpt())), weights_only=True)
    assert payload["format"] == "cnnviz-checkpoint" and isinstance(payload["spec"], dict)


@pytest.mark.parametrize("raw, words", [
    (b"", "empty"),
    (b"hello, I am a text file\n", "not a cnnviz model"),
    (b"\x89PNG\r\n\x1a\n" + bytes(100), "not a cnnviz model"),
])
def test_foreign_files_refused(raw, words):
    with pytest.raises(checkpoint.CheckpointError, match=words):
        checkpoint.load(raw)


def test_truncated_file_refused():
    raw = checkpoint.to_bytes(_ckpt())
    with pytest.raises(checkpoint.CheckpointError, match="truncated"):
        checkpoint.load(raw[: len(raw) // 2])


def test_other_pytorch_file_refused():
    buf = io.BytesIO()
    torch.save({"weight": torch.zeros(3)}, buf)
    with pytest.raises(checkpoint.CheckpointError, match="not a cnnviz model"):
        checkpoint.load(buf.getvalue())


def test_pickled_object_is_never_executed(tmp_path):
    class Evil:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    buf = io.BytesIO()
    torch.save({"format": "cnnviz-checkpoint", "x": Evil()}, buf)
    with pytest.raises(checkpoint.CheckpointError):
        checkpoint.load(buf.getvalue())
    assert not (tmp_path / "pwned").exists()


def test_weights_that_do_not_match_spec_refused():
    ck = _ckpt()
    payload = torch.load(io.BytesIO(checkpoint.to_bytes(ck)), weights_only=True)
    payload["spec"]["blocks"][0]["channels"] = 7
    buf = io.BytesIO()
    torch.save(payload, buf)
    with pytest.raises(checkpoint.CheckpointError, match="damaged or inconsistent"):
        checkpoint.load(buf.getvalue())


def test_missing_path_refused(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match="no file"):
        checkpoint.load(tmp_path / "nope.pt")


@pytest.mark.parametrize("raw", [b"junk", b"\x80\x02junk", b"PK\x03\x04" + bytes(30), bytes(range(256)) * 4])
def test_arbitrary_bytes_give_checkpoint_error(raw):
    with pytest.raises(checkpoint.CheckpointError):
        checkpoint.load(raw)


def _payload(ck=None) -> dict:
    return torch.load(io.BytesIO(checkpoint.to_bytes(ck or _ckpt())), weights_only=True)


def _saved(payload: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(payload, buf)
    return buf.getvalue()


def test_shipped_model_still_loads_and_its_metrics_are_marked_as_the_files():
    ck = checkpoint.load(assets.SHIPPED)
    assert ck.dataset == "shapes" and len(ck.filter_frames) == 33 and ck.history.status == "finished"
    assert 0.9 < ck.metrics["test_accuracy"] <= 1 and len(ck.metrics["per_class"]) == 8
    assert ck.metrics_from_file is True
    assert _ckpt().metrics_from_file is False  # made in this process: measured here


def test_accuracy_given_as_text_is_refused_with_a_clear_message():
    payload = _payload()
    payload["metrics"]["test_accuracy"] = "99.9"
    with pytest.raises(checkpoint.CheckpointError,
                       match=r"damaged or inconsistent: its test accuracy must be a finite number from 0 to 1, "
                             r"got '99.9'\."):
        checkpoint.load(_saved(payload))


@pytest.mark.parametrize("metrics, words", [
    ({"test_accuracy": 99.9}, "test accuracy must be a finite number from 0 to 1, got 99.9"),
    ({"test_accuracy": float("nan")}, "got nan"),
    ({"test_accuracy": True}, "got True"),
    ({"per_class": [0.5] * 9}, "per-class accuracy must be a list of 10 items, got a list of 9"),
    ({"per_class": [0.5] * 9 + [-0.1]}, "test accuracy of class 10 must be a finite number from 0 to 1, got -0.1"),
    ([0.9], "its metrics must be a mapping, got a list"),
])
def test_metrics_checked(metrics, words):
    payload = _payload()
    payload["metrics"] = metrics
    with pytest.raises(checkpoint.CheckpointError, match=re.escape(words)):
        checkpoint.load(_saved(payload))


def test_unknown_metrics_dropped_and_known_ones_kept_as_floats():
    payload = _payload()
    payload["metrics"] = {"test_accuracy": 1, "per_class": [1] * 10, "bleu": "high"}
    ck = checkpoint.load(_saved(payload))
    assert ck.metrics == {"test_accuracy": 1.0, "per_class": [1.0] * 10}
    assert type(ck.metrics["test_accuracy"]) is float


@pytest.mark.parametrize("change, words", [
    (dict(class_names=["x" * 41] + [str(i) for i in range(9)]), "class name 1 must be non-empty printable text"),
    (dict(class_names=["a\nb"] + [str(i) for i in range(9)]), "class name 1 must be non-empty printable text"),
    (dict(class_names=["\x1b[31m"] + [str(i) for i in range(9)]), "class name 1"),
    (dict(class_names=[" "] + [str(i) for i in range(9)]), "class name 1"),
    (dict(class_names=[7] + [str(i) for i in range(9)]), "class name 1 must be non-empty printable text of at most "
                                                         "40 characters, got 7"),
    (dict(class_names=["1"] + [str(i) for i in range(1, 10)]), "two of its classes have the same name"),
    (dict(class_names="0123456789"), "its class names must be a list of at most 1,000 items, got '0123456789'"),
    (dict(std=(0.0,)), "standard deviation of channel 1 must be a finite number from 0.001 to 1, got 0.0"),
    (dict(std=(0.3, 0.3)), "its standard deviation must be a list of 1 items, got a tuple of 2"),
    (dict(mean=(float("inf"),)), "the mean of channel 1 must be a finite number from 0 to 1, got inf"),
    (dict(title="# Hi\n![x](http://e.vil/x.png)"), "its dataset title must be non-empty printable text"),
    (dict(title="t" * 81), "its dataset title"),
    (dict(description=b"bytes"), "its description must be printable text"),
    (dict(invert="no"), "'invert' must be true or false, got 'no'"),
    (dict(preset="huge"), "its preset must be one of gap, tiny, tinyvgg, deep, got 'huge'"),
    (dict(epochs=0), "its number of epochs must be a whole number from 1 to 1,000, got 0"),
])
def test_dataset_fields_checked(change, words):
    payload = _payload()
    payload["dataset"].update(change)
    with pytest.raises(checkpoint.CheckpointError, match=re.escape(words)):
        checkpoint.load(_saved(payload))


def test_class_names_with_markdown_load_as_plain_text():
    payload = _payload()
    names = ["**bold**", "[link](http://x)", "<b>x</b>", ":red[x]", "$x$", "ünï", "😀", "a b", "#", "`"]
    payload["dataset"]["class_names"] = names
    assert checkpoint.load(_saved(payload)).class_names == tuple(names)


def test_dataset_must_fit_the_registered_dataset_of_that_name():
    payload = _payload(checkpoint.Checkpoint(models.build(models.preset("tiny", 3, 32, 10)).eval(),
                                             models.preset("tiny", 3, 32, 10), data.info("cifar10")))
    payload["dataset"]["name"] = "mnist"  # the app would measure it on 1×28×28 digits
    with pytest.raises(checkpoint.CheckpointError, match="MNIST digits has 10 classes of 1×28×28 images, but this "
                                                         "model takes 3×32×32 images"):
        checkpoint.load(_saved(payload))


def test_spec_beyond_the_limits_refused_before_anything_is_built(monkeypatch):
    payload = _payload()
    payload["spec"]["hidden"] = 2_000_000  # ~440 MB of weights if it were built
    made = []
    monkeypatch.setattr(torch.nn.Linear, "__init__", lambda self, *a, **k: made.append(a))
    with pytest.raises(checkpoint.CheckpointError, match="cannot be used here: 'hidden' must be a whole number from "
                                                         "0 to 4096, got 2000000"):
        checkpoint.load(_saved(payload))
    assert made == []


@pytest.mark.parametrize("mutate, words", [
    (lambda p: p["spec"].update(kernel=3), "unknown field 'kernel'"),
    (lambda p: p["spec"]["blocks"][0].update(channels="16"), "block 1: 'channels' must be a whole number"),
    (lambda p: p.update(version="1"), "its format version must be a whole number, got '1'"),
    (lambda p: p["state_dict"].update({"conv1.weight": p["state_dict"]["conv1.weight"].double()}),
     "the weights 'conv1.weight' must be a float32 tensor of shape (16, 1, 3, 3), got a float64 tensor"),
    (lambda p: p["state_dict"].update({"fc.bias": [0.0] * 10}), "the weights 'fc.bias' must be a float32 tensor"),
    (lambda p: p["state_dict"]["fc.bias"].fill_(float("nan")), "the weights 'fc.bias' hold infinite or missing"),
    (lambda p: p["state_dict"]["bn1.running_var"].fill_(-1), "the variances 'bn1.running_var' must not be negative"),
    (lambda p: p["state_dict"].update(extra=torch.zeros(1)), "unexpected: 'extra'"),
    (lambda p: p["state_dict"].pop("fc.bias"), "missing: fc.bias"),
    (lambda p: [p["state_dict"][k].fill_(3e38) for k in ("fc1.bias", "fc.weight")],
     "outputs are infinite or missing (NaN) even for a blank"),
    (lambda p: p["history"].update(status="exploded"), "its training status must be one of"),
    (lambda p: p["history"].update(steps=[{"step": 1, "epoch": 0.1, "loss": "low", "acc": 0.5, "lr": 0.1}]),
     "its training steps, row 1: 'loss' must be a finite number, got 'low'"),
    (lambda p: p["history"].update(steps=[{"step": 1.0, "epoch": 0.1, "loss": 1.0, "acc": 0.5, "lr": 0.1}]),
     "its training steps, row 1: 'step' must be a whole number from 0 to 10,000,000, got 1.0"),
    (lambda p: p["history"].update(epochs=[{"step": 1, "val_loss": 1.0}]),
     "its validations, row 1 must hold step, val_loss, val_acc"),
    (lambda p: p["history"].update(seconds=-1.0), "its training time must be a finite number of at least 0"),
    (lambda p: p["history"].update(reason="x" * 501), "the reason its training ended"),
    (lambda p: p["filter_frames"].update(steps=[0, 0], weights=[torch.zeros(16, 1, 3, 3)] * 2),
     "steps of its filter history must be whole numbers from 0 to 10,000,000 in increasing order, got 0"),
    (lambda p: p["filter_frames"].update(steps=[0], weights=[torch.zeros(16, 1, 5, 5)]),
     "the filters of step 0 must be a float tensor of shape (16, 1, 3, 3)"),
    (lambda p: p["filter_frames"].update(steps=[0], weights=[]),
     "the filters of its filter history must be a list of 1 items, got a list of 0"),
    (lambda p: p["filter_frames"].update(steps=list(range(101)), weights=[torch.zeros(16, 1, 3, 3)] * 101),
     "the steps of its filter history must be a list of at most 100 items, got a list of 101"),
])
def test_fields_checked_for_type_and_range(mutate, words):
    payload = _payload()
    payload["filter_frames"] = {"steps": [0, 5], "weights": [torch.zeros(16, 1, 3, 3), torch.ones(16, 1, 3, 3)]}
    mutate(payload)
    with pytest.raises(checkpoint.CheckpointError, match=re.escape(words)):
        checkpoint.load(_saved(payload))


def test_filter_frames_and_history_round_trip():
    ck = _ckpt()
    ck.filter_frames = [(0, torch.zeros(16, 1, 3, 3)), (7, torch.ones(16, 1, 3, 3))]
    ck.history.steps = [{"step": 1, "epoch": 0.5, "loss": 2.3, "acc": 0.1, "lr": 0.001}]
    ck.history.epochs = [{"epoch": 1.0, "step": 1, "val_loss": 2.2, "val_acc": 0.12, "seconds": 0.5}]
    back = checkpoint.load(checkpoint.to_bytes(ck))
    assert [s for s, _ in back.filter_frames] == [0, 7]
    assert torch.equal(back.filter_frames[1][1], torch.ones(16, 1, 3, 3))
    assert back.history == ck.history


def test_zero_stride_giant_tensor_refused_without_touching_its_values():
    payload = _payload()
    giant = torch.zeros(1).expand(10**12)  # a view of 4 bytes that claims 10¹² values
    payload["filter_frames"] = {"steps": [0], "weights": [giant]}
    with pytest.raises(checkpoint.CheckpointError, match=r"filters of step 0 must be a float tensor of shape "
                                                         r"\(16, 1, 3, 3\) like the model's first layer, got a "
                                                         r"float32 tensor of shape \(1000000000000,\)"):
        checkpoint.load(_saved(payload))


def test_files_over_the_size_limit_refused_before_reading(tmp_path):
    big = checkpoint.MAX_BYTES + 1
    with pytest.raises(checkpoint.CheckpointError, match="The file is 20.0 MB; the limit for a model file is 20 MB"):
        checkpoint.load(bytes(big))
    sparse = tmp_path / "big.pt"
    with open(sparse, "wb") as f:
        f.truncate(big)  # a sparse file: no disk used
    with pytest.raises(checkpoint.CheckpointError, match="limit for a model file is 20 MB"):
        checkpoint.load(sparse)
    class Watched(io.FileIO):
        reads = 0

        def read(self, n=-1):
            Watched.reads += 1
            return super().read(n)

    with Watched(sparse, "rb") as f, pytest.raises(checkpoint.CheckpointError, match="limit for a model file is 20"):
        checkpoint.load(f)
    assert Watched.reads == 0  # refused from the file's size alone


def test_compressed_records_refused():
    raw = checkpoint.to_bytes(_ckpt())
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(raw)) as src, zipfile.ZipFile(out, "w") as dst:
        for r in src.infolist():
            dst.writestr(r.filename, src.read(r), compress_type=zipfile.ZIP_DEFLATED)
    assert torch.load(io.BytesIO(out.getvalue()), weights_only=True)["format"] == "cnnviz-checkpoint"  # torch would
    with pytest.raises(checkpoint.CheckpointError, match="compressed"):
        checkpoint.load(out.getvalue())


def test_legacy_pickle_format_refused():
    buf = io.BytesIO()
    torch.save(_payload(), buf, _use_new_zipfile_serialization=False)
    with pytest.raises(checkpoint.CheckpointError, match="not a cnnviz model"):
        checkpoint.load(buf.getvalue())


@pytest.mark.parametrize("source", [3, None, io.StringIO("text")])
def test_sources_that_are_not_files_refused(source):
    with pytest.raises(checkpoint.CheckpointError):  # 3 must never be opened as file descriptor 3
        checkpoint.load(source)


def test_a_real_short_run_round_trips_with_everything_training_records():
    x, y, _ = shapes.generate(96, seed=0)
    info = data.info("shapes")
    tr, val = data.Split(info, x[:64], y[:64]), data.Split(info, x[64:], y[64:])
    spec = models.preset("gap", info.channels, info.size, info.num_classes)
    model = models.build(spec, seed=0)
    frames = [(0, model.conv1.weight.detach().clone())]
    history = train.fit(model, tr, train.TrainConfig(epochs=2, batch_size=32, min_steps=0), val=val,
                        on_step=lambda s: frames.append((s.step, model.conv1.weight.detach().clone())))
    ev = train.evaluate(model, val)
    ck = checkpoint.Checkpoint(model, spec, info, history, {"test_accuracy": ev.accuracy, "per_class": ev.per_class},
                               frames)
    back = checkpoint.load(checkpoint.to_bytes(ck))
    assert back.history == history and back.metrics == ck.metrics and len(history.steps) == 4 and history.epochs
    assert [s for s, _ in back.filter_frames] == [0, 1, 2, 3, 4]


# --- a model trained on a user's own images ------------------------------------------------------------------------

OWN = data.DatasetInfo("yours-0123456789ab", "My pets", ("cats", "dogs", "hamsters"), 3, 24, (0.4, 0.5, 0.6),
                       (0.2, 0.25, 0.3), description="40 of your own images in 3 classes.", epochs=50, resize="pad")


def _own_payload() -> dict:
    spec = models.preset("tiny", 3, 24, 3)
    return _payload(checkpoint.Checkpoint(models.build(spec, seed=0).eval(), spec, OWN))


def test_a_model_of_your_own_images_round_trips():
    back = checkpoint.load(_saved(_own_payload()))
    assert back.info == OWN and back.dataset == "yours-0123456789ab"
    assert back.class_names == ("cats", "dogs", "hamsters")


def test_files_from_before_resize_policies_load_as_squash():
    payload = _own_payload()
    del payload["dataset"]["resize"]
    assert checkpoint.load(_saved(payload)).info.resize == "squash"
    payload = _payload()
    del payload["dataset"]["resize"]
    assert checkpoint.load(_saved(payload)).info.resize == "squash"


@pytest.mark.parametrize("name", ["yours-", "yours-0123456789AB", "yours-0123456789a", "yours-0123456789abc",
                                  "yours-0123456789ag", "yours-../../x", "mine-0123456789ab", " yours-0123456789ab",
                                  "yours-0123456789ab\n"])
def test_only_names_of_the_own_form_are_known(name):
    payload = _own_payload()
    payload["dataset"]["name"] = name
    with pytest.raises(checkpoint.CheckpointError, match="a dataset this version of cnnviz does not know"):
        checkpoint.load(_saved(payload))


@pytest.mark.parametrize("change, words", [
    (dict(class_names=["cats", "dogs"]), "its classes do not match its output layer"),
    (dict(class_names=["cats", "dogs", "Dogs\x00"]), "class name 3 must be non-empty printable text"),
    (dict(class_names=["cats", "dogs", "x" * 41]), "class name 3"),
    (dict(class_names=["cats", "dogs", "dogs"]), "two of its classes have the same name"),
    (dict(channels=1), "its input shape does not match its dataset"),
    (dict(channels=4), "its number of image channels must be a whole number from 1 to 3, got 4"),
    (dict(size=300), "its image size must be a whole number from 8 to 256, got 300"),
    (dict(size=28), "its input shape does not match its dataset"),
    (dict(mean=(0.4, 0.5)), "its mean must be a list of 3 items"),
    (dict(mean=(0.4, 0.5, 1.5)), "the mean of channel 3 must be a finite number from 0 to 1, got 1.5"),
    (dict(std=(0.2, 0.0, 0.3)), "the standard deviation of channel 2 must be a finite number from 0.001 to 1"),
    (dict(resize="stretch"), "its resize policy must be one of squash, crop, pad, got 'stretch'"),
    (dict(resize=None), "its resize policy must be one of"),
    (dict(invert=1), "'invert' must be true or false"),
    (dict(title="\u202eevil"), "its dataset title must be non-empty printable text"),
    (dict(epochs=1001), "its number of epochs must be a whole number from 1 to 1,000"),
])
def test_own_dataset_fields_are_checked_one_by_one(change, words):
    payload = _own_payload()
    payload["dataset"].update(change)
    with pytest.raises(checkpoint.CheckpointError, match=re.escape(words)):
        checkpoint.load(_saved(payload))


def test_an_own_dataset_may_have_any_shape_a_built_in_name_may_not():
    payload = _own_payload()
    payload["dataset"]["name"] = "cifar10"  # 10 classes of 3×32×32: this model's 3 classes of 3×24×24 do not fit
    with pytest.raises(checkpoint.CheckpointError, match="CIFAR-10 has 10 classes of 3×32×32 images"):
        checkpoint.load(_saved(payload))
