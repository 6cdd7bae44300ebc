import sys
from pathlib import Path

import pytest
import torch

from cnnviz import probe, usercode
from cnnviz.usercode import UserModelError

ROOT = Path(__file__).resolve().parent.parent
MAKE = "tests.own_model:make"


@pytest.fixture(autouse=True)
def clean_registry(monkeypatch):
    """No model registered and no CNNVIZ_* variable set, before and after each test."""
    for name in usercode.ENV.values():
        monkeypatch.delenv(name, raising=False)
    usercode.register(None)
    yield
    usercode.register(None)


@pytest.fixture
def from_root(monkeypatch):
    """Run from the project folder, as `python -m` would import from it."""
    monkeypatch.chdir(ROOT)
    monkeypatch.syspath_prepend(str(ROOT))


def _own():
    sys.path.insert(0, str(ROOT))
    try:
        from tests import own_model
    finally:
        sys.path.remove(str(ROOT))
    return own_model


def test_loads_module_function_from_the_current_folder(monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(ROOT))])
    for name in ("tests", "tests.own_model"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    user = usercode.load(MAKE, input_size=32)
    assert sys.path[0] == str(ROOT)  # put there as `python -m` would
    assert user.source == "your code tests.own_model:make"
    info = user.info
    assert (info.name, info.title) == (usercode.NAME, "tests.own_model:make")
    assert info.class_names == ("class 0", "class 1", "class 2", "class 3")
    assert (info.channels, info.size, info.mean, info.std) == (3, 32, usercode.IMAGENET_MEAN, usercode.IMAGENET_STD)
    assert not any(m.training for m in user.model.modules())
    assert not any(p.requires_grad for p in user.model.parameters())
    records = probe.run(user.model, torch.zeros(1, 3, 32, 32))
    assert {"stem.0", "res.body.0", "res.body.2", "res.relu", "branch.paths.0", "branch.paths.1.0",
            "head.2"} <= records.keys()


def test_weights_and_classes_files(tmp_path, from_root):
    own = _own()
    trained = own.OwnNet()
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(1.0)  # anything the seeded make() does not give
    weights = tmp_path / "w.pt"
    torch.save(trained.state_dict(), weights)
    classes = tmp_path / "classes.txt"
    classes.write_text("\ufeff cat \n\ndog\n  \nbird\nfish\n", encoding="utf-8")
    user = usercode.load(MAKE, weights=weights, classes=classes, input_size=40)
    assert user.info.class_names == ("cat", "dog", "bird", "fish") and user.info.size == 40
    for key, value in trained.state_dict().items():
        assert torch.equal(user.model.state_dict()[key], value), key


def test_grey_model_takes_its_channels_from_its_mean(from_root):
    user = usercode.load("tests.own_model:make_grey", input_size=28, mean=[0.1307], std=[0.3081])
    assert (user.info.channels, user.info.mean, user.info.std) == (1, (0.1307,), (0.3081,))


def _bad_module(tmp_path, monkeypatch, source: str) -> str:
    (tmp_path / "users_bad.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "users_bad", raising=False)
    return "users_bad:make"


@pytest.mark.parametrize("target, kwargs, expected", [
    ("x", {}, "Expected the model as module:function, like mypkg.models:make"),
    ("tests.own_model:make()", {}, "got 'tests.own_model:make()'"),
    ("tests.no_such_module:make", {}, "Expected a module tests.no_such_module in the current folder"),
    ("tests.own_model:nope", {}, "to have a function nope, but it does not (it defines: Branches, OwnNet"),
    ("tests.own_model:NOT_A_FUNCTION", {}, "to be a function that returns an nn.Module, got 3."),
    ("tests.own_model:not_a_module", {},
     "Expected tests.own_model:not_a_module() to be a torch nn.Module, got a list."),
    ("tests.own_model:no_conv", {}, "has no nn.Conv2d layer"),
    ("tests.own_model:broken", {}, "calling it raised RuntimeError: out of ideas."),
    ("tests.own_model:maps_not_scores", {"input_size": 32},
     "Expected an image classifier that returns (1, K) class scores for a (1, 3, 32, 32) image, got (1, 4, 30, 30)."),
    ("tests.own_model:fixed_size", {"input_size": 64},
     "to take a (1, 3, 64, 64) image, but a blank one raised RuntimeError: mat1 and mat2 shapes cannot be multiplied"),
    ("tests.own_model:one_score", {}, "of 2 to 10,000 classes, got 1 class score."),
    ("tests.own_model:make_grey", {}, "Expected the mean and std the model's training images were normalised with"),
    (MAKE, {"mean": (0.5, 0.5), "std": (0.5, 0.5), "channels": 3},
     "Expected 3 mean values, one per input channel, got 2."),
    (MAKE, {"std": (0.2, 0.0, 0.2), "mean": (0.5,) * 3}, "Expected every std value between 0.001 and 1"),
    (MAKE, {"input_size": 4}, "Expected an input size of 8 to 1024 pixels, got 4."),
    (MAKE, {"channels": 4}, "greyscale (1-channel) or colour (3-channel) images, got 4 channels."),
])
def test_refusals_say_what_was_expected(target, kwargs, expected, from_root):
    with pytest.raises(UserModelError) as e:
        usercode.load(target, **kwargs)
    message = str(e.value)
    assert expected in message and "\n" not in message and message.count(". ") <= 1, message


@pytest.mark.parametrize("source, expected", [
    ("raise RuntimeError('boom')\n", "Expected module users_bad to import, but it raised RuntimeError: boom."),
    ("def make(:\n", "Expected module users_bad to import, but it raised SyntaxError"),
    ("import no_such_dependency\n",
     "Expected module users_bad to import, but it raised ModuleNotFoundError: No module named 'no_such_dependency'."),
])
def test_a_module_that_fails_to_import_is_named(source, expected, tmp_path, monkeypatch):
    target = _bad_module(tmp_path, monkeypatch, source)
    with pytest.raises(UserModelError, match="^" + expected.replace("(", r"\(").replace(")", r"\)")):
        usercode.load(target)


def test_class_names_must_fit_the_model(tmp_path, from_root):
    classes = tmp_path / "c.txt"
    for content, expected in [
        ("a\nb\nc\n", "Expected 4 class names, one per class score the model returns, got 3."),
        ("a\nb\na\nd\n", "Expected different class names, but 'a' is both name 1 and name 3"),
        ("a\n" + "x" * 41 + "\nc\nd\n", "Expected class names of at most 40 characters, got 41 in name 2"),
    ]:
        classes.write_text(content)
        with pytest.raises(UserModelError, match=expected):
            usercode.load(MAKE, classes=classes, input_size=32)
    classes.write_bytes(b"caf\xe9\n")
    with pytest.raises(UserModelError, match="is not UTF-8 text"):
        usercode.load(MAKE, classes=classes, input_size=32)
    with pytest.raises(UserModelError, match="Expected a class names file at .*none.txt"):
        usercode.load(MAKE, classes=tmp_path / "none.txt", input_size=32)


def test_weights_that_do_not_fit_name_the_first_bad_key(tmp_path, from_root):
    own = _own()
    path = tmp_path / "w.pt"
    good = own.OwnNet().state_dict()
    cases = [
        (own.OwnNet(classes=10).state_dict(),
         f"Expected the weights 'head.2.weight' in {path} to have shape (4, 8), as tests.own_model:make() has, got "
         f"(10, 8)."),
        ({k: v for k, v in good.items() if k != "res.body.2.bias"},
         f"Expected {path} to hold the weights 'res.body.2.bias' of tests.own_model:make(), but it does not (its "
         f"first keys: 'stem.0.weight', 'stem.0.bias', 'stem.1.weight')."),
        ({**good, "extra.weight": torch.zeros(2)},
         f"Expected {path} to hold only weights of tests.own_model:make(), but it also holds 'extra.weight'."),
        ({"epoch": 3, "state_dict": good},
         f"Expected {path} to hold a state dict (layer name → tensor) as saved by torch.save(model.state_dict(), "
         f"path), got a dict with keys 'epoch', 'state_dict'…."),
    ]
    for state, expected in cases:
        torch.save(state, path)
        with pytest.raises(UserModelError) as e:
            usercode.load(MAKE, weights=path, input_size=32)
        assert str(e.value) == expected
    torch.save(own.OwnNet(), path)  # a whole pickled model: weights_only refuses to unpickle it
    with pytest.raises(UserModelError, match="could not be loaded safely"):
        usercode.load(MAKE, weights=path, input_size=32)
    path.write_bytes(b"junk")
    with pytest.raises(UserModelError, match="could not be loaded safely"):
        usercode.load(MAKE, weights=path, input_size=32)
    with pytest.raises(UserModelError, match="Expected a weights file at .*missing.pt, but there is none."):
        usercode.load(MAKE, weights=tmp_path / "missing.pt", input_size=32)


def test_from_module_shows_a_checked_copy():
    own = _own()
    model = own.make()
    user = usercode.from_module(model, classes=list(own.CLASSES), input_size=32, title="my net")
    assert user.model is not model and model.training and all(p.requires_grad for p in model.parameters())
    assert not user.model.training
    assert (user.info.title, user.info.class_names) == ("my net", own.CLASSES)
    assert user.source == "your model object OwnNet"
    for key, value in model.state_dict().items():
        assert torch.equal(user.model.state_dict()[key], value)
    assert usercode.from_module(model, input_size=32).info.title == "OwnNet"
    with pytest.raises(UserModelError, match="Expected the model to be a torch nn.Module, got a str."):
        usercode.from_module("resnet")
    with pytest.raises(UserModelError, match="Expected 4 class names"):
        usercode.from_module(model, classes=["a", "b"], input_size=32)
    with pytest.raises(UserModelError, match="Expected the class names as a list of names, got one name, 'abcd'."):
        usercode.from_module(model, classes="abcd", input_size=32)


def test_env_round_trip(tmp_path, from_root, monkeypatch):
    classes = tmp_path / "c.txt"
    classes.write_text("\n".join(_own().CLASSES))
    weights = tmp_path / "w.pt"
    torch.save(_own().make().state_dict(), weights)
    direct = usercode.load("tests.own_model:make_grey", input_size=36, mean=(0.25,), std=(0.5,), classes=classes)
    env = usercode.to_env("tests.own_model:make_grey", classes=classes, input_size=36, mean=(0.25,), std=(0.5,))
    assert env == {"CNNVIZ_MODEL": "tests.own_model:make_grey", "CNNVIZ_CLASSES": str(classes.resolve()),
                   "CNNVIZ_INPUT_SIZE": "36", "CNNVIZ_MEAN": "0.25", "CNNVIZ_STD": "0.5"}
    assert usercode.from_env(env).info == direct.info
    assert usercode.from_env({}) is None
    with_weights = usercode.to_env(MAKE, weights=weights)
    assert usercode.from_env(with_weights).info.size == 224
    with pytest.raises(UserModelError, match="Expected CNNVIZ_MODEL to name the model .* that CNNVIZ_WEIGHTS is for"):
        usercode.from_env({"CNNVIZ_WEIGHTS": str(weights)})
    with pytest.raises(UserModelError, match="Expected CNNVIZ_INPUT_SIZE to be a whole number of pixels, got 'big'."):
        usercode.from_env({"CNNVIZ_MODEL": MAKE, "CNNVIZ_INPUT_SIZE": "big"})
    with pytest.raises(UserModelError, match="Expected CNNVIZ_MEAN as numbers separated by commas"):
        usercode.from_env({"CNNVIZ_MODEL": MAKE, "CNNVIZ_MEAN": "0.5;0.5"})


def test_registry_holds_one_model_and_reads_the_environment_once(from_root, monkeypatch):
    assert usercode.registered() is None
    user = usercode.from_module(_own().make(), input_size=32)
    usercode.register(user)
    assert usercode.registered() is user
    with pytest.raises(TypeError, match="expected a UserModel"):
        usercode.register(user.model)

    usercode.register(None)
    calls = []
    real_load = usercode.load
    monkeypatch.setattr(usercode, "load", lambda *a, **k: calls.append(a) or real_load(*a, **k))
    for name, value in usercode.to_env(MAKE, input_size=32).items():
        monkeypatch.setenv(name, value)
    first = usercode.registered()
    assert first is usercode.registered() and first.info.size == 32 and len(calls) == 1  # loaded once

    usercode.register(None)
    monkeypatch.setenv("CNNVIZ_MODEL", "tests.own_model:nope")
    for _ in range(2):  # the error, every time, without loading again
        with pytest.raises(UserModelError, match="to have a function nope"):
            usercode.registered()
    assert len(calls) == 2


def test_show_registers_a_copy_and_serves_here(monkeypatch):
    import cnnviz
    from cnnviz.ui import launch
    from streamlit import runtime

    served = []
    monkeypatch.setattr(launch, "_streamlit", served.append)
    monkeypatch.setattr(runtime, "exists", lambda: False)
    model = _own().make()
    assert cnnviz.show(model, classes=_own().CLASSES, input_size=32, port=8777) == "http://localhost:8777"
    shown = usercode.registered()
    assert served == [8777] and shown.model is not model and shown.info.class_names == _own().CLASSES

    monkeypatch.setattr(runtime, "exists", lambda: True)  # a server already runs here: only the model changes
    cnnviz.show(_own().make_ten(), input_size=32, port=8777)
    assert served == [8777] and usercode.registered().info.num_classes == 10

    with pytest.raises(UserModelError, match="has no nn.Conv2d layer"):
        cnnviz.show(torch.nn.Linear(3, 2))
    assert usercode.registered().info.num_classes == 10  # a refused model changes nothing
