import base64
import io
import re
import zipfile
import zlib

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
    (dict(preset="huge"), f"its preset must be one of {', '.join(models.PRESETS)}, got 'huge'"),
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


# Files from before graph blocks, and models with graph blocks.

# A checkpoint written by cnnviz at commit ab8d39b (before graph blocks: format version 1, conv blocks without a
# "type"), zlib-compressed and base64-encoded here, made by:
#   spec = models.ModelSpec(1, 8, 2, [models.ConvBlock(2, batchnorm=True),
#                                     models.ConvBlock(3, kernel=1, padding=0, pool="none")], global_pool=True)
#   info = data.DatasetInfo("yours-0123456789ab", "Old", ("a", "b"), 1, 8, (0.5,), (0.25,))
#   m = models.build(spec, seed=0); bn1's running mean and variance drawn from U(-1, 1) and U(0.5, 2) after
#   torch.manual_seed(0); m.eval(); saved with a one-step history, metrics and one filter frame.
OLD_CHECKPOINT = (
    "eNrVWG1sHEcZXvsSf1wcf7WunTSEpAG6hti5T99d7fjgCOc0mybOJQ3Xgrvs7c55F593792ds2uXoynBTgwtSfkoaUsLoYG0BAkkKkUi5Cr+0ipq"
    "kYD+AIoEhFb9QQBVUAkJZmbP5921Ejf2D8Rap9udnedj3nfmnTmPCr51HNfUxC272rlOTjJlVZtCuxQJS/3FiUI61crd77qO1ZeB47MNBJA3zEkJ"
    "Q122gzzIuj6lzfbJKpInioamY6jPNpL2KWRamqGDT6jLEmHOKiIZ1pVhPZ/dQB41XZRVSddRwYIG0sVP2yalcSRa2iyCRqGJddNLk6JckCwLWdAk"
    "1DP5XMGQJyxoHgM/X4YNfJaOqUbWUu01gUzyDBsFH7NTlBRF08ehlWjR1xY2NQVBW1VakrE2JWFquJ3ZNVGhBB3stmgYBejM+sjtpPQg3JJtrjba"
    "Vm8lgrQlJ2FZ1UlooOskk1RMo2iUMNw2shjpUhm6ebVF8KkbhTq1VeBUoq+2qx1qJ1PSDR1Bj0oY1a4F1YFDzLOqKQrSYZPAZVvoI5IUcVFkc60z"
    "i9t4wchJBZFZv/1kyfZDcmshDFvK8D7e1pMmEWzNdpLbGaNkWn2BYCgciQ7E4gkpB+/PricvsIYLCLax4R8sKLCd8bOciBRvwR3ZOhpB2MG+c/CB"
    "efggGWQ17TREHyLZpA+TSNLhzpHkH2ync8AzWgsr0DuSfHWx9cNstJpOphCGjywwQQVZsqkVWYZ2Zmk/6GPdUNGQVQv6q2kvmoiOcRfTw5o+AwHW"
    "Tpqpk6CdfChJlgohljf7jYgNCAtcic0GC0sYiYomY4iUIcqzcMuGPhXsn0bauIphQMYGWTL9YglrBcsvmihX0gqKiJFuGaY4FfJDjOdZ2C3Sk8xr"
    "iNsQf7pgSPiw3eiHBAtaAO5ikZCLJRgUOjEMHRI4XqgX6gSf4MOwmxeayR9ZSxiGF2TZKBSQTGNh+Q+aCjKRsoeY9UOyNwMfxfCxDKTYQHJ6zfHH"
    "VWJIjau2YBD2qINCPYZPECGhfg7SQt0cjCyolGEvhrszsI+tK8qQ0yQLBBc+BPtt/D1V/AGKP2jjRzEcykAm217FmyVdJ2tPZOk/7OIJwxGb594q"
    "z1HK80mbJ4vhvgzcn23z8ExJJnzKRROBT9s0Y1WaByiNaNN8BoOUgVy2u0pDawpbrMgSsSnJE0gB2aarpmi/oY/XMqQwhSggokDCnycKvb028zgG"
    "NQNabXqEFoP9WZe7AZgg2AYMBZZVH8sroZq0M8zudZvRwFDMALDk2Yws+KaLLwYW4SPTAtPR+uagREc7ZTNMY3gwAzNsauflRUOzLoI4PGQb+hwL"
    "l+CbhzKdXPPweZvkYQzHMvAIm7+EhHn4gosiAcftiH+xGvE56mHehp/AcDIDC3bZUTW6AmbgS2X4Ms9KioVR0YJHx+CxMnzFrkS0CU6RmrF+cUnD"
    "6VqdYD0KhmXB4yPJq3l2seUiyTJ8dalbPe1mwtdGkqO5e375txf+XZLU/jH4erXgS7hkwTfYrM5rumapJO9PVIuDZJG68k21z16xiIReseDMEnXL"
    "4vZkiUVkihY8uVRvaa6mSLG138NTtIo0smpH9hjZgqfL8C0+u5HWI2RhkZgukVk3A8+MJN+sUrAdhfCysgrPjsG3+Zr2SPKafYNKjCSvFTDpmjdZ"
    "8f1OGc7yKonldwVOYrJ2xi14bgzO1VJGQxMMwPdUVl2+764u5x3V5Xk7gy9g+EEGLkilUv+o0Ni06zd7fv4uIaef0eseJLq5VO0g0W8fEsTqMSCd"
    "GvacJ272ClIfF//62+N09tHP9X1s5mJLPqrlV5QK2rg+iXScToVXY2UgQg0kp+EtGsv6Gxro4JI1A7kZjAxao9OpwbWEoKBhshFTD3O7/7iJztqG"
    "G3po5YZdp7pdgXTqrjUYOPrYjkv87bFhZfrRytHwQ5UD077K1baLuy9or19649CJ4SeO/P1n+XMv7j598MplITB/+dUNz1V62nKVp19sqVw4sG/o"
    "7WsNwy9f2T9MR9D7u1d+tJd43LvCCIbcIwimU/FVj4DjjiXph+qfPtTwKyrYdHP6obXp2xfV1964A61CP7wm/SPvXHrgSDMb/9svhy+uQj+yFv0f"
    "v7s9ue0nIaY/uOnU46vQj/6P4z+wFv3fF9+pzJ9/pnL+4ePD/xy9LfkXX1dlttTI4nH2+KlYD1HsWcHPTrefWDrFv2c/WyfeuhwdenL32Td3MM07"
    "/+RfR3e1lhU0427NeDoVWVUMZrY0v3St+6eVvT/sqrxi5Su/yP9n+NxTL1WoF+W+8PZVjD9xM+Mv3nKyMjR3hekd7vzH1ZXz38YNeuoPKaEx7v+m"
    "fjr917bhVfsP+6nya8+O37vy/reVCy1twCx0FjI1sgPPsp/YoqakU/03aSQYSwzEI6FoPB6KDATC0UgiHAqEI4FEPBEOJKL0PhaLBqPU5b4/n7iV"
    "Jz545rKOmq35dB5l2pc59/4fxIt2HkC6Xci7m7jrHX68JM5DxGYXyWtOkmUnFy+P8yDQ4eLJNHPLDyBeuHMWtbrgv27mPGcHL9a5g7qxZ/webNCL"
    "dVZfN7Zngwcb8mKdO5dH14sNe7HOXcej2+LBRt675zNebNSLdVZ3j+5GD3bAi3VWaTf2eS825sU6q6obu6XVg417sc4K6dH1YhM3mldt7vG2eefG"
    "sonlLDBu8OsO8HUWlnPdb3UviHZuhYo0KjQ07FysX74+x1ne/c2vs7//1b54nmigv7q4bV32s/3TZH2Djelg/e2+/wWnvVKD"
)
# Its logits for torch.linspace(-1, 1, 64).view(1, 1, 8, 8), printed by the code that wrote it.
OLD_LOGITS = [[-0.39739754796028137, -0.5781737565994263]]


def test_a_checkpoint_written_before_graph_blocks_still_loads():
    raw = zlib.decompress(base64.b64decode(OLD_CHECKPOINT))
    assert torch.load(io.BytesIO(raw), weights_only=True)["version"] == 1
    ck = checkpoint.load(raw)
    assert ck.spec.blocks == [models.ConvBlock(2, batchnorm=True), models.ConvBlock(3, 1, 0, pool="none")]
    assert ck.class_names == ("a", "b") and ck.metrics == {"test_accuracy": 0.75, "per_class": [0.5, 1.0]}
    assert [n for n, _ in ck.model.named_children()][:3] == ["conv1", "bn1", "relu1"]
    assert ck.filter_frames[0][1].shape == (2, 1, 3, 3) and ck.history.steps[0]["loss"] == 0.7
    with torch.no_grad():
        logits = ck.model(torch.linspace(-1, 1, 64).view(1, 1, 8, 8))
    assert torch.allclose(logits, torch.tensor(OLD_LOGITS), atol=1e-6)
    again = checkpoint.load(checkpoint.to_bytes(ck))  # and saved again in today's format
    assert again.spec == ck.spec and torch.equal(again.model(torch.ones(1, 1, 8, 8)), ck.model(torch.ones(1, 1, 8, 8)))


@pytest.mark.parametrize("name, kind", [("mini-resnet", "residual"), ("mini-inception", "inception")])
def test_graph_models_round_trip_with_their_first_convs_filters(name, kind):
    spec = models.preset(name, 3, 24, 3)
    model = models.build(spec, seed=1).eval()
    frames = [(0, model.conv1.weight.detach().clone())]
    raw = checkpoint.to_bytes(checkpoint.Checkpoint(model, spec, OWN, filter_frames=frames))
    payload = torch.load(io.BytesIO(raw), weights_only=True)
    assert payload["version"] == checkpoint.VERSION == 2
    assert {b["type"] for b in payload["spec"]["blocks"]} == {"conv", kind}
    back = checkpoint.load(raw)
    x = torch.randn(2, 3, 24, 24)
    assert back.spec == spec and torch.equal(back.model(x), model(x))
    assert torch.equal(back.filter_frames[0][1], frames[0][1])


def test_a_spec_that_starts_with_a_graph_block_keeps_that_blocks_first_filters():
    spec = models.ModelSpec(3, 24, 3, [models.ResidualBlock(4), models.InceptionBlock(2, 2, 2, 2, 2, 2)],
                            global_pool=True)
    model = models.build(spec, seed=0).eval()
    frames = [(0, model.block1.conv1.weight.detach().clone())]
    back = checkpoint.load(checkpoint.to_bytes(checkpoint.Checkpoint(model, spec, OWN, filter_frames=frames)))
    assert torch.equal(back.filter_frames[0][1], frames[0][1]) and back.filter_frames[0][1].shape == (4, 3, 3, 3)


@pytest.mark.parametrize("mutate, words", [
    (lambda p: p.update(version=3), "saved by a newer cnnviz"),
    (lambda p: p["spec"]["blocks"][1].update(type="attention"),
     "cannot be used here: block 2: 'type' must be 'conv' or 'residual' or 'inception', got 'attention'"),
    (lambda p: p["spec"]["blocks"][1].update(stride=4), "block 2: 'stride' must be 1 or 2, got 4"),
    (lambda p: p["state_dict"].pop("block2.shortcut.conv.weight"), "missing: block2.shortcut.conv.weight"),
    (lambda p: p["state_dict"]["block2.bn2.running_var"].fill_(-1), "'block2.bn2.running_var' must not be negative"),
])
def test_graph_model_files_are_checked(mutate, words):
    spec = models.ModelSpec(3, 24, 3, [models.ConvBlock(4), models.ResidualBlock(8)], global_pool=True)
    payload = _payload(checkpoint.Checkpoint(models.build(spec, seed=0).eval(), spec, OWN))
    mutate(payload)
    with pytest.raises(checkpoint.CheckpointError, match=re.escape(words)):
        checkpoint.load(_saved(payload))
