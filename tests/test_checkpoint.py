import io

import pytest
import torch

import cnnviz
from cnnviz import checkpoint, data, models
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
