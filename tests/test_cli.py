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
    assert {"dataset", "preset", "epochs", "params", "test_accuracy", "train_seconds"} <= result.keys()
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
