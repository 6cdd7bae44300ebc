import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnviz import checkpoint, cli, data


def test_bad_arguments_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--dataset", "imagenet"])
    assert e.value.code == 2 and (f"expected a built-in dataset ({', '.join(data.DATASETS)}) or an existing "
                                  f"folder or .zip of class folders, got 'imagenet'") in capsys.readouterr().err
    for args, expected in [
        (["train", "--dataset", "shapes", "--epochs", "0"], "must be at least 1"),
        (["train", "--dataset", "shapes", "--size", "16"], "--size is for folder datasets; shapes has its own size"),
        (["train", "--dataset", ".", "--size", "500"], "must be between 8 and 64 pixels, got 500"),
        (["inspect", "--zoo", "resnet18", "--weights", "w.pt", "--image", "i.png", "--out", "o"],
         "--weights describes a --model; give --model too"),
        (["inspect", "--zoo", "resnet18", "--model", "m:f", "--image", "i.png", "--out", "o"],
         "not allowed with argument"),
        (["inspect", "--zoo", "resnet1000", "--image", "i.png", "--out", "o"], "invalid choice"),
        (["inspect", "--image", "i.png", "--out", "o"], "one of the arguments --checkpoint --zoo --model is required"),
        (["app", "--classes", "c.txt", "--mean", "0.5"], "--classes, --mean describe a --model; give --model too"),
        (["app", "--model", "m:f", "--mean", "half"], "Expected the values as numbers separated by commas"),
    ]:
        with pytest.raises(SystemExit) as e:
            cli.main(args)
        err = capsys.readouterr().err
        assert e.value.code == 2 and expected in err, (args, err)


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
    for name in ("filters.png", "gradcam.png", "feature_maps/relu4.png"):
        assert Image.open(out / name).size[0] > 100, name
    # By default only the Grad-CAM layer's maps are drawn; --maps asks for others, by name or all of them, and a
    # pooling layer among them brings its close-up, pooling.png.
    assert pred["gradcam"]["layer"] == "relu4" and pred["feature_maps"] == ["relu4"]
    assert {p.name for p in (out / "feature_maps").iterdir()} == {"relu4.png"} and not (out / "pooling.png").exists()
    named = out / "named"
    assert cli.main(["inspect", "--checkpoint", str(_shipped()), "--image", str(img), "--out", str(named),
                     "--maps", "conv1,pool1", "--device", "cpu"]) == 0
    assert {p.name for p in (named / "feature_maps").iterdir()} == {"conv1.png", "pool1.png"}
    assert Image.open(named / "pooling.png").size[0] > 100
    assert cli.main(["inspect", "--checkpoint", str(_shipped()), "--image", str(img), "--out", str(out / "all"),
                     "--maps", "all"]) == 0
    maps = json.loads((out / "all" / "prediction.json").read_text())["feature_maps"]
    assert maps[:4] == ["conv1", "bn1", "relu1", "pool1"] and "relu4" in maps and (out / "all" / "pooling.png").exists()
    assert sorted(p.name for p in (out / "all" / "feature_maps").iterdir()) == sorted(f"{m}.png" for m in maps)


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


ROOT = Path(__file__).resolve().parent.parent


def _picture(path: Path, size: tuple[int, int] = (40, 30), colour: tuple[int, int, int] = (200, 30, 30)) -> Path:
    from PIL import Image

    Image.new("RGB", size, colour).save(path)
    return path


def test_inspect_own_model_writes_every_layer_by_its_module_path(tmp_path, monkeypatch, capsys):
    import numpy as np

    monkeypatch.chdir(ROOT)  # `--model tests.own_model:make` imports from here, as `python -m` would
    classes = tmp_path / "classes.txt"
    classes.write_text("cat\ndog\nbird\nfish\n")
    out = tmp_path / "out"
    args = ["inspect", "--model", "tests.own_model:make", "--classes", str(classes), "--input-size", "32",
            "--image", str(_picture(tmp_path / "red.png")), "--out", str(out), "--maps", "all"]
    assert cli.main(args + ["--target", "bird"]) == 0
    pred = json.loads((out / "prediction.json").read_text())
    assert pred["model"] == "your code tests.own_model:make" and pred["dataset"] == "your-model"
    assert {t["class"] for t in pred["top"]} == {"cat", "dog", "bird", "fish"}
    assert pred["gradcam"] == {"layer": "branch.paths.1.1", "target": "bird", "target_index": 2}
    assert np.load(out / "input.npy").shape == (1, 3, 32, 32)
    maps = {p.name for p in (out / "feature_maps").iterdir()}
    assert {"stem.0.png", "stem.3.png", "res.body.0.png", "res.body.2.png", "res.relu.png", "branch.paths.0.png",
            "branch.paths.1.0.png", "branch.paths.1.1.png"} <= maps
    for name in ("filters.png", "pooling.png", "gradcam.png"):
        assert (out / name).stat().st_size > 1000, name
    assert capsys.readouterr().err == ""


def test_inspect_own_model_refused_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    image = _picture(tmp_path / "i.png")
    code = cli.main(["inspect", "--model", "tests.own_model:no_conv", "--image", str(image), "--out",
                     str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 1 and err == ("cnnviz: Expected a CNN, but tests.own_model:no_conv() has no nn.Conv2d layer, and "
                                 "every view in cnnviz looks at one.\n")
    assert not (tmp_path / "o").exists()


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty TORCH_HOME, and feature-map figures drawn as one small picture each.

    A ResNet-18 has 60 layers of up to 512 maps of 224×224 and less: drawn in full they take a minute, and what these
    tests check is where the weights come from (the drawing is checked with a small model above).
    """
    from PIL import Image

    from cnnviz import pictures

    def one_map(maps, **kwargs):
        return Image.new("RGB", (8, 8))

    monkeypatch.setattr(pictures, "feature_grid", one_map)
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


@pytest.mark.slow
def test_inspect_zoo_model_offline_is_untrained_and_says_where_the_weights_go(torch_home, tmp_path, capsys):
    import numpy as np

    from cnnviz import zoo

    out = tmp_path / "out"
    # The test session blocks the network (conftest.no_network): torchvision's download fails at once, as offline.
    assert cli.main(["inspect", "--zoo", "resnet18", "--image", str(_picture(tmp_path / "i.png", (320, 240))),
                     "--out", str(out), "--maps", "all"]) == 0
    err = capsys.readouterr().err
    expected = zoo.weights_file("resnet18")
    assert str(torch_home) in str(expected)
    assert f"put {expected.name} in {expected.parent}" in err and "random weights (untrained)" in err
    assert "Traceback" not in err
    pred = json.loads((out / "prediction.json").read_text())
    assert pred["model"] == "ResNet-18 (untrained)" and pred["gradcam"]["layer"] == "layer4.1.conv2"
    assert np.load(out / "input.npy").shape == (1, 3, 224, 224)
    maps = {p.name for p in (out / "feature_maps").iterdir()}
    assert {"conv1.png", "layer1.0.conv1.png", "layer1.0.relu_2.png", "layer2.0.downsample.0.png",
            "layer4.1.bn2.png"} <= maps


@pytest.mark.slow
def test_inspect_zoo_model_reads_weights_from_torch_home_offline(torch_home, tmp_path, capsys):
    import numpy as np
    import torchvision

    from cnnviz import zoo

    torch.manual_seed(1)
    saved = torchvision.models.resnet18()
    path = zoo.weights_file("resnet18")
    path.parent.mkdir(parents=True)
    torch.save(saved.state_dict(), path)  # under torchvision's own file name: read without the network
    out = tmp_path / "out"
    image = _picture(tmp_path / "i.png", (320, 240), (30, 120, 200))
    assert cli.main(["inspect", "--zoo", "resnet18", "--image", str(image), "--out", str(out)]) == 0
    err = capsys.readouterr().err  # the weights are read, and said not to be torchvision's published ones
    assert err.count("cnnviz:") == 1 and "but not torchvision's published ones" in err
    pred = json.loads((out / "prediction.json").read_text())
    assert pred["model"].startswith("ResNet-18")
    with torch.no_grad():  # the file's weights, on the input the CLI made: the same top class
        probs = saved.eval()(torch.from_numpy(np.load(out / "input.npy"))).softmax(1)[0]
    assert pred["top"][0]["index"] == int(probs.argmax())
    assert abs(pred["top"][0]["probability"] - float(probs.max())) < 1e-4


def _folder_dataset(root: Path) -> Path:
    """Two classes of six small pictures each (reddish and bluish), and one file that is not a picture."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls, channel in (("red", 0), ("blue", 2)):
        (root / cls).mkdir(parents=True)
        for i in range(6):
            pixels = rng.integers(0, 80, (12, 12, 3), dtype=np.uint8)
            pixels[..., channel] += 170
            Image.fromarray(pixels).save(root / cls / f"{i}.png")
    (root / "red" / "notes.png").write_text("not a picture")
    return root


def test_train_on_a_folder_lists_skipped_files(tmp_path, capsys):
    folder = _folder_dataset(tmp_path / "pictures")
    model = tmp_path / "m.pt"
    code = cli.main(["train", "--dataset", str(folder), "--size", "16", "--epochs", "1", "--batch-size", "4",
                     "--json", "--out", str(model)])
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert code == 0 and result["status"] == "finished"
    assert result["dataset"] == str(folder) and result["train_images"] + result["val_images"] + 2 <= 12
    (skipped,) = result["skipped"]
    assert skipped["file"].endswith("notes.png") and skipped["reason"]
    assert f"cnnviz: skipped {skipped['file']}: {skipped['reason']}" in captured.err
    assert model.is_file()


def test_app_hands_the_model_to_the_server_process(tmp_path, monkeypatch):
    from cnnviz import usercode
    from cnnviz.ui import jobs, launch

    monkeypatch.chdir(tmp_path)  # file names are made absolute for the server, which may run from elsewhere
    monkeypatch.syspath_prepend(str(ROOT))
    classes = tmp_path / "c.txt"
    classes.write_text("cat\ndog\nbird\nfish\n")
    execs = []
    monkeypatch.setattr("os.execve", lambda path, argv, env: execs.append((argv, env)))
    assert cli.main(["app", "--port", "8599", "--model", "tests.own_model:make", "--classes", "c.txt",
                     "--input-size", "32", "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25"]) == 0
    (argv, env), = execs
    assert argv[1:] == ["-c", launch._CHILD, "8599"] and env["OMP_WAIT_POLICY"]
    assert {k: env[k] for k in usercode.ENV.values() if k in env} == {
        "CNNVIZ_MODEL": "tests.own_model:make", "CNNVIZ_CLASSES": str(classes.resolve()), "CNNVIZ_INPUT_SIZE": "32",
        "CNNVIZ_MEAN": "0.5,0.5,0.5", "CNNVIZ_STD": "0.25,0.25,0.25"}

    # The server process: the model is loaded and registered before the server starts.
    for name in usercode.ENV.values():
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        if name.startswith("CNNVIZ_"):
            monkeypatch.setenv(name, value)
    usercode.register(None)
    served = []
    monkeypatch.setattr(jobs, "start_worker_server", lambda: None)
    monkeypatch.setattr(launch, "_streamlit", lambda port: served.append((port, usercode.registered())))
    try:
        assert launch._main(8599) == 0
        (port, user), = served
        assert port == 8599 and user.info.class_names == ("cat", "dog", "bird", "fish") and user.info.size == 32
    finally:
        usercode.register(None)


@pytest.mark.slow
def test_app_with_a_bad_model_exits_with_the_reason_before_serving(tmp_path):
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("CNNVIZ_")}
    proc = subprocess.run([sys.executable, "-m", "cnnviz.cli", "app", "--port", "8598", "--model", "nowhere:make"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={**env, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip() == (f"cnnviz: Expected a module nowhere in the current folder ({tmp_path}) or on "
                                   f"PYTHONPATH, but Python could not import it (No module named 'nowhere').")


def _shape_png(path: Path, index: int) -> Path:
    """Shapes image ``index`` of ``shapes.generate(4, seed=5)``, saved as a PNG at ``path``."""
    from PIL import Image

    from cnnviz import shapes

    x, _, _ = shapes.generate(4, seed=5)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(x[index].permute(1, 2, 0).numpy()).save(path, format="PNG")
    return path


def test_inspect_many_images_one_folder_each_one_model_load_bad_ones_reported(tmp_path, monkeypatch, capsys):
    import numpy as np

    from cnnviz import checkpoint, images

    pictures = tmp_path / "pictures"
    _shape_png(pictures / "b circle?.png", 0)
    _shape_png(pictures / "a.png", 1)
    _shape_png(pictures / ".hidden.png", 2)  # hidden files are left out, as a dataset folder's are
    (pictures / "notes.txt").write_text("not a picture")
    (pictures / "sub").mkdir()  # a subfolder is not looked into
    _shape_png(pictures / "sub" / "deep.png", 2)
    loose = _shape_png(tmp_path / "elsewhere" / "A.PNG", 3)  # "A" meets "a" on a case-blind file system
    loads = []
    real_load = checkpoint.load
    monkeypatch.setattr(checkpoint, "load", lambda source: loads.append(source) or real_load(source))
    out = tmp_path / "out"
    code = cli.main(["inspect", "--checkpoint", str(_shipped()), "--image", str(pictures), "--image", str(loose),
                     "--image", str(pictures / "a.png"), "--out", str(out), "--maps", "none", "--json"])
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert code == 0 and len(loads) == 1  # one model for every image
    assert [Path(r["image"]).name for r in result["images"]] == ["a.png", "b circle?.png", "notes.txt", "A.PNG"]
    assert result["inspected"] == 3 and result["failed"] == 1 and result["device"] == "cpu"
    bad = result["images"][2]
    assert "not an image" in bad["error"] and "folder" not in bad
    assert f"cnnviz: {pictures / 'notes.txt'}: " in captured.err and captured.err.count("\n") == 1
    assert sorted(p.name for p in out.iterdir()) == ["A-2", "a", "b_circle", "filters.png"]  # filters: once
    assert result["files"] == ["filters.png"]
    for entry, name in zip([r for r in result["images"] if "error" not in r], ["a", "b_circle", "A-2"]):
        folder = out / name
        assert entry["folder"] == str(folder)
        assert {p.name for p in folder.iterdir()} == {"prediction.json", "input.npy", "gradcam.npy", "gradcam.png"}
        assert json.loads((folder / "prediction.json").read_text())["top"] == entry["top"]
        # Each folder holds its own image's results: the input it saved is that file, prepared.
        ck = real_load(_shipped())
        expected = images.prepare(images.load(entry["image"]), ck.info).tensor
        assert np.array_equal(np.load(folder / "input.npy"), expected.numpy())


def test_inspect_exits_1_only_when_no_image_works(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    args = ["inspect", "--checkpoint", str(_shipped()), "--out", str(tmp_path / "o"), "--maps", "none"]
    assert cli.main([*args, "--image", str(empty), "--image", str(bad), "--image", str(tmp_path / "gone.png")]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3 and "holds no files" in err[0] and str(bad) in err[1] and "gone.png" in err[2]
    assert not (tmp_path / "o").exists()
    good = _shape_png(tmp_path / "good.png", 0)
    assert cli.main([*args, "--image", str(bad), "--image", str(good)]) == 0
    assert (tmp_path / "o" / "good" / "prediction.json").is_file() and not (tmp_path / "o" / "bad").exists()


def test_inspect_unknown_maps_layer_exits_2_with_the_names(tmp_path, capsys):
    image = _shape_png(tmp_path / "i.png", 0)
    code = cli.main(["inspect", "--checkpoint", str(_shipped()), "--image", str(image), "--out", str(tmp_path / "o"),
                     "--maps", "conv1,nope"])
    err = capsys.readouterr().err
    assert code == 2 and "'nope'" in err and "conv1, bn1, relu1, pool1" in err


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(min_size=0, max_size=120), min_size=1, max_size=6))
def test_result_folder_names_are_safe_and_distinct(stems):
    names = cli.unique_names([cli.folder_name(Path(f"{stem}.png")) for stem in stems])
    assert len({n.casefold() for n in names}) == len(names)
    for name in names:
        assert name and not name.startswith(".") and name not in (".", "..")
        assert not set(name) & set("/\\\0:*?\"<>|") and all(c.isprintable() for c in name)
        assert len(name) <= cli.MAX_FOLDER_NAME + 4  # "-NNN" at most for six names
        assert name.split("-")[0].lower() not in {"con", "nul", "aux", "prn"}


def test_folder_names_by_example():
    assert [cli.folder_name(Path(p)) for p in ["cat.png", "my photo (1).jpg", "../x.png", ".png", "été.JPG",
                                               "nul.png", "a.b.png"]] == [
        "cat", "my_photo_1", "x", "png", "été", "nul_", "a.b"]
    assert cli.unique_names(["cat", "Cat", "cat-2", "cat"]) == ["cat", "Cat-2", "cat-2-2", "cat-3"]


def test_the_cli_imports_no_figures_zoo_or_web_app_to_start():
    code = ("import sys, cnnviz.cli as c; c.parser().parse_args(['inspect', '--checkpoint', 'm.pt', '--image', "
            "'i.png', '--out', 'o']); print(sorted(m for m in ('matplotlib', 'plotly', 'streamlit', 'cnnviz.zoo', "
            "'cnnviz.figures') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stderr


def test_zoo_names_are_listed_in_help(capsys):
    with pytest.raises(SystemExit):
        cli.main(["inspect", "--help"])
    assert "resnet18, vgg16" in " ".join(capsys.readouterr().out.split())
