import json
import subprocess
import sys

import pytest

from cnnviz import checkpoint, cli


def test_bad_arguments_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--dataset", "imagenet"])
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--dataset", "shapes", "--epochs", "0"])
    assert e.value.code == 2


def test_missing_dataset_is_one_line_not_a_traceback(tmp_path, monkeypatch, capsys):
    import torchvision.datasets as tvd

    monkeypatch.setattr(tvd.MNIST, "download", lambda self: (_ for _ in ()).throw(OSError("offline")))
    assert cli.main(["train", "--dataset", "mnist", "--data-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "MNIST/raw" in err


@pytest.mark.slow
def test_train_shapes_json_and_checkpoint(tmp_path):
    out = tmp_path / "m.pt"
    proc = subprocess.run(
        [sys.executable, "-m", "cnnviz.cli", "train", "--dataset", "shapes", "--epochs", "1", "--json",
         "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert {"dataset", "preset", "epochs", "params", "test_accuracy", "train_seconds", "status", "reason"} <= result.keys()
    assert result["status"] == "finished" and result["val_images"] == 500 and result["train_images"] == 19_500
    assert result["dataset"] == "shapes" and result["test_accuracy"] > 0.85
    assert "step" in proc.stderr  # the progress bar
    assert checkpoint.load(out).dataset == "shapes"


def _shipped():
    from pathlib import Path

    return Path(__file__).resolve().parent.parent / "assets" / "shapes_model.pt"


def test_inspect_writes_every_output(tmp_path):
    import numpy as np
    from PIL import Image

    from cnnviz import shapes

    x, y, _ = shapes.generate(1, seed=5)
    img = tmp_path / "shape.png"
    Image.fromarray(x[0].permute(1, 2, 0).numpy()).save(img)
    out = tmp_path / "out"
    assert cli.main(["inspect", "--checkpoint", str(_shipped()), "--image", str(img), "--out", str(out)]) == 0
    pred = json.loads((out / "prediction.json").read_text())
    assert pred["top"][0]["class"] == shapes.CLASS_NAMES[int(y[0])]  # the shipped model knows its shapes
    assert abs(sum(t["probability"] for t in pred["top"]) - 1) < 0.05
    assert np.load(out / "input.npy").shape == (1, 3, 32, 32)
    cam = np.load(out / "gradcam.npy")
    assert cam.shape == (32, 32) and cam.dtype == np.float32 and cam.min() >= 0 and cam.max() <= 1
    for name in ("filters.png", "pooling.png", "gradcam.png", "feature_maps/conv1.png", "feature_maps/pool1.png",
                 "feature_maps/relu4.png"):
        assert Image.open(out / name).size[0] > 100, name


def test_inspect_layer_and_target_by_name(tmp_path):
    from PIL import Image

    img = tmp_path / "red.png"
    Image.new("RGB", (40, 20), (200, 30, 30)).save(img)
    out = tmp_path / "o"
    args = ["inspect", "--checkpoint", str(_shipped()), "--image", str(img), "--out", str(out)]
    assert cli.main(args + ["--layer", "conv1", "--target", "ring"]) == 0
    pred = json.loads((out / "prediction.json").read_text())
    assert pred["gradcam"] == {"layer": "conv1", "target": "ring", "target_index": 5}


def test_inspect_bad_image_is_one_clear_line(tmp_path, capsys):
    bad = tmp_path / "notes.png"
    bad.write_text("hello")
    code = cli.main(["inspect", "--checkpoint", str(_shipped()), "--image", str(bad), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 1 and "not an image" in err and "Traceback" not in err and err.count("\n") == 1


def test_inspect_bad_checkpoint_and_layer(tmp_path, capsys):
    from PIL import Image

    img = tmp_path / "i.png"
    Image.new("RGB", (8, 8)).save(img)
    fake = tmp_path / "m.pt"
    fake.write_bytes(b"junk")
    assert cli.main(["inspect", "--checkpoint", str(fake), "--image", str(img), "--out", str(tmp_path / "o")]) == 1
    assert "not a cnnviz model" in capsys.readouterr().err
    code = cli.main(["inspect", "--checkpoint", str(_shipped()), "--image", str(img), "--out", str(tmp_path / "o"),
                     "--layer", "nope"])
    assert code == 2 and "conv1" in capsys.readouterr().err


def _small_shapes(monkeypatch, std: float | None = None) -> dict:
    """Make ``data.load("shapes")`` quick (600 training and 200 test images); ``std=0`` makes every loss NaN."""
    from dataclasses import replace

    from cnnviz import data, shapes

    splits = {}
    for train_split, n in ((True, 600), (False, 200)):
        x, y, masks = shapes.generate(n, seed=int(train_split))
        info = data.info("shapes") if std is None else replace(data.info("shapes"), std=(std,) * 3)
        splits[train_split] = data.Split(info, x, y, masks)
    monkeypatch.setattr(data, "load", lambda name, train=True, data_dir=None, seed=0: splits[train])
    return splits


def test_train_validates_on_held_out_training_images_and_tests_once(monkeypatch, capsys):
    from cnnviz import train

    splits = _small_shapes(monkeypatch)
    seen = {"fit": [], "evaluate": []}
    real_fit, real_evaluate = train.fit, train.evaluate

    def fit(model, tr, config, val=None, **kwargs):
        seen["fit"].append((tr, val))
        return real_fit(model, tr, config, val=val, **kwargs)

    def evaluate(model, split, *args, **kwargs):
        seen["evaluate"].append(split)
        return real_evaluate(model, split, *args, **kwargs)

    monkeypatch.setattr(train, "fit", fit)
    monkeypatch.setattr(train, "evaluate", evaluate)
    assert cli.main(["train", "--dataset", "shapes", "--preset", "tiny", "--batch-size", "16", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["status"] == "finished" and result["reason"] == ""
    images = {name: {bytes(x.numpy()) for x in split.x} for name, split in (("train", splits[True]),
                                                                             ("test", splits[False]))}
    (tr, val), = seen["fit"]
    fit_train, fit_val = {bytes(x.numpy()) for x in tr.x}, {bytes(x.numpy()) for x in val.x}
    assert len(fit_val) == 60 and len(fit_train) == 540  # a tenth of 600 held out: fewer than 500
    assert fit_val <= images["train"] and fit_train <= images["train"] and not fit_val & fit_train
    assert not fit_val & images["test"]
    tested = [s for s in seen["evaluate"] if s is splits[False]]
    assert len(tested) == 1 and result["test_accuracy"] > 0.2  # the test set: once, at the end
    assert 1 <= len(seen["evaluate"]) - 1 <= train.VAL_EVALS and result["val_images"] == 60
    assert result["train_images"] == 540 and 0 <= result["val_accuracy"] <= 1


@pytest.mark.parametrize("failure", ["diverged", "stuck"])
def test_failed_training_says_why_and_exits_1(failure, monkeypatch, capsys, tmp_path):
    import torch

    from cnnviz import train

    if failure == "diverged":  # a real NaN: data that cannot be normalised (std 0) gives a NaN loss at step 1
        _small_shapes(monkeypatch, std=0.0)
    else:  # a real run, judged by a test that calls any run stuck once it may judge (after the warm-up)
        _small_shapes(monkeypatch)
        for name, value in (("STUCK_AFTER", 1), ("STUCK_LOSS", float("inf")), ("STUCK_ACC", 1.0)):
            monkeypatch.setattr(train, name, value)
    out = tmp_path / "m.pt"
    code = cli.main(["train", "--dataset", "shapes", "--preset", "tiny", "--batch-size", "8", "--json",
                     "--out", str(out)])
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert code == 1 and result["status"] == failure and result["reason"]
    assert result["steps"] == {"diverged": 0, "stuck": 75}[failure]  # stuck: judged after the warm-up (300 / 4)
    assert f"training {'diverged' if failure == 'diverged' else 'got stuck'}: " in captured.err
    assert result["reason"] in captured.err and "Traceback" not in captured.err
    # The model is still written (read raw: a checkpoint whose data has std 0 is refused on loading, rightly).
    assert torch.load(out, weights_only=True)["history"]["status"] == failure
