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
