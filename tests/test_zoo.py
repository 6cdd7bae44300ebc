"""torchvision ImageNet models: weights from torch.hub's cache, random weights with a note, a user's file.

Nothing is downloaded: the "ImageNet weights" here are random tensors saved by ``torch.save`` under torchvision's exact
file names in a temporary ``$TORCH_HOME``, in the layout torchvision's builder expects (GoogLeNet with its auxiliary
classifiers, as in torchvision's own file), and the download function is replaced where a download is asked for.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
import urllib.error
import warnings
import zipfile
from pathlib import Path
from urllib.parse import urlparse

import pytest
import torch
import torchvision
from hypothesis import HealthCheck, given, settings, strategies as st

from cnnviz import zoo
from cnnviz.data import DatasetInfo


@pytest.fixture
def hub(tmp_path, monkeypatch) -> Path:
    """An empty torch hub in a temporary $TORCH_HOME, and no shared zoo models yet; the checkpoints folder."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(zoo, "_SHARED", {})
    monkeypatch.setattr(zoo, "_SHARED_SEEN", {})
    return tmp_path / "torch" / "hub" / "checkpoints"


@pytest.fixture
def published(monkeypatch) -> set[str]:
    """Names whose file in the hub counts as torchvision's published one. The real check compares the file's SHA-256
    with the prefix in torchvision's file name, which no fake file can match: for these names the fake file's own
    prefix stands in for it."""
    names: set[str] = set()
    real = zoo._hash_prefix

    def prefix(name: str) -> str:
        path = zoo.weights_file(name)
        if name in names and path.is_file():
            return hashlib.sha256(path.read_bytes()).hexdigest()[:8]
        return real(name)

    monkeypatch.setattr(zoo, "_hash_prefix", prefix)
    return names


def fake_weights(name: str, seed: int = 1) -> dict[str, torch.Tensor]:
    """Random tensors for every key of the network torchvision builds to load its ImageNet file into."""
    kwargs = {"aux_logits": True, "transform_input": True, "init_weights": False} if name == "googlenet" else {}
    with torch.device("meta"):
        shapes = torchvision.models.get_model(name, weights=None, **kwargs).state_dict()
    g = torch.Generator().manual_seed(seed)
    # Uniform in [0, 1): positive, so batch-norm variances are valid.
    return {k: torch.rand(v.shape, generator=g) if v.is_floating_point() else torch.zeros(v.shape, dtype=v.dtype)
            for k, v in shapes.items()}


def to_bytes(obj: object, **kwargs) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, **kwargs)
    return buf.getvalue()


def put_weights(hub: Path, name: str, seed: int = 1) -> dict[str, torch.Tensor]:
    """Save fake ImageNet weights where torchvision looks for ``name``'s file; returns them."""
    state = fake_weights(name, seed)
    hub.mkdir(parents=True, exist_ok=True)
    torch.save(state, hub / zoo.weights_file(name).name)
    return state


def assert_holds(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Every tensor of ``model`` equals the one under its key in ``state`` (which may hold more, e.g. aux heads)."""
    own = model.state_dict()
    assert own and set(own) <= set(state)
    for key, value in own.items():
        assert torch.equal(value, state[key].to(value.dtype)), key


# --- names, files, input description -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", zoo.NAMES)
def test_weights_file_is_the_weights_urls_file_in_torch_hubs_checkpoints(hub, name):
    url = torchvision.models.get_model_weights(name).IMAGENET1K_V1.url
    assert zoo.weights_file(name) == hub / Path(urlparse(url).path).name
    assert zoo.weights_file(name).name.startswith(name)
    assert set(zoo.TITLES) == set(zoo.NAMES)


def test_weights_file_follows_torch_home_at_call_time(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "a"))
    assert zoo.weights_file("resnet18") == tmp_path / "a" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "b"))
    assert zoo.weights_file("resnet18") == tmp_path / "b" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"


@pytest.mark.parametrize("name", zoo.NAMES)
def test_info_describes_imagenet_input(name):
    info = zoo.info(name)
    assert isinstance(info, DatasetInfo)
    assert (info.name, info.title, info.channels, info.size) == ("imagenet", "ImageNet", 3, 224)
    assert info.num_classes == 1000 and len(set(info.class_names)) == 1000
    assert info.class_names[0] == "tench" and info.class_names[-1] == "toilet tissue"
    assert info.mean == pytest.approx((0.485, 0.456, 0.406)) and info.std == pytest.approx((0.229, 0.224, 0.225))
    assert info.input_shape == (3, 224, 224)
    assert "256" in info.description and "224×224" in info.description
    assert getattr(info, "resize_to", 256) == 256 and getattr(info, "resize", "crop") == "crop"


@pytest.mark.parametrize("name", zoo.NAMES)
def test_reported_accuracy_is_torchvisions_top1_as_a_fraction(name):
    meta = torchvision.models.get_model_weights(name).IMAGENET1K_V1.meta
    assert zoo.reported_accuracy(name) == pytest.approx(meta["_metrics"]["ImageNet-1K"]["acc@1"] / 100)
    assert 0.5 < zoo.reported_accuracy(name) < 0.8


@pytest.mark.parametrize("call", [
    lambda n: zoo.info(n), lambda n: zoo.weights_file(n), lambda n: zoo.load(n), lambda n: zoo.shared(n),
    lambda n: zoo.load_state_dict(n, b""), lambda n: zoo.upload_limit(n),
])
def test_unknown_name_is_a_zoo_error_listing_the_names(hub, call):
    for bad in ("resnet50", None, ["resnet18"]):
        with pytest.raises(zoo.ZooError) as excinfo:
            call(bad)
        assert all(n in str(excinfo.value) for n in zoo.NAMES)
    assert "'resnet50'" in str(pytest.raises(zoo.ZooError, call, "resnet50").value)


# --- load: cached, missing, downloaded, damaged --------------------------------------------------------------------

@pytest.mark.parametrize("name", ["resnet18", "googlenet", "mobilenet_v3_small"])
def test_cached_file_gives_pretrained_model_holding_the_files_weights(hub, published, name):
    state = put_weights(hub, name)
    published.add(name)
    z = zoo.load(name)
    assert (z.name, z.title, z.weights, z.pretrained, z.note) == (name, zoo.TITLES[name], "imagenet", True, "")
    assert z.label == zoo.TITLES[name]
    assert z.info == zoo.info(name)
    assert_holds(z.model, state)
    assert not z.model.training and not any(p.requires_grad for p in z.model.parameters())
    with torch.no_grad():
        assert z.model(torch.zeros(1, 3, 64, 64)).shape == (1, 1000)


def test_file_hash_prefix_is_the_one_in_torchvisions_file_name():
    assert zoo._hash_prefix("resnet18") == "f37072fd" and zoo._hash_prefix("vgg16") == "397923af"


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small"])
def test_a_file_under_torchvisions_name_but_other_contents_is_used_and_never_called_imagenet(hub, name):
    state = put_weights(hub, name)  # torchvision's file name, random contents: its SHA-256 cannot match
    z = zoo.load(name)
    assert (z.weights, z.pretrained) == ("unverified", True)
    assert z.label == f"{zoo.TITLES[name]} (weights not torchvision's)"
    assert zoo.weights_file(name).name in z.note and "no ImageNet accuracy is quoted" in z.note
    assert_holds(z.model, state)
    assert not zoo.published(name, zoo.weights_file(name))
    assert not zoo.published(name, hub / "missing.pth")


def test_shared_unverified_copy_is_replaced_when_the_file_changes(hub, published):
    put_weights(hub, "resnet18", seed=1)
    first = zoo.shared("resnet18")
    assert first.weights == "unverified" and zoo.shared("resnet18") is first
    path = zoo.weights_file("resnet18")
    state = put_weights(hub, "resnet18", seed=2)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))  # a new file, surely seen as one
    published.add("resnet18")
    second = zoo.shared("resnet18")
    assert second is not first and second.weights == "imagenet"
    assert_holds(second.model, state)


def test_cached_googlenet_is_torchvisions_inference_network(hub):
    state = put_weights(hub, "googlenet")
    model = zoo.load("googlenet").model
    assert model.aux1 is None and model.aux2 is None and not model.aux_logits and model.transform_input
    assert any(k.startswith("aux1.") for k in state)  # the file had them; the model dropped them
    assert not any(k.startswith("aux") for k in model.state_dict())


def test_missing_file_gives_seeded_random_weights_and_a_note_naming_file_and_folder(hub):
    z = zoo.load("resnet18")
    assert (z.weights, z.pretrained, z.label) == ("random", False, "ResNet-18 (untrained)")
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    assert f"put resnet18-f37072fd.pth in {hub} (downloaded from {url})" in z.note
    assert z.note.endswith("random weights (untrained).") and z.note.count(". ") == 0
    assert not hub.exists()  # nothing fetched, nothing created
    again = zoo.load("resnet18")
    assert_holds(again.model, z.model.state_dict())
    assert not z.model.training and not any(p.requires_grad for p in z.model.parameters())


@pytest.mark.parametrize("name", ["resnet18", "alexnet", "googlenet", "mobilenet_v3_small"])
def test_random_model_is_the_same_network_as_the_pretrained_one(hub, name):
    expected = {k: v.shape for k, v in fake_weights(name).items() if not k.startswith(("aux1.", "aux2."))}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. GoogLeNet's FutureWarning about init_weights
        model = zoo.load(name).model
    assert {k: v.shape for k, v in model.state_dict().items()} == expected
    if name == "googlenet":
        assert model.transform_input and model.aux1 is None and not model.aux_logits


def test_vgg16_without_its_file_is_untrained_vgg16(hub):
    z = zoo.load("vgg16")
    assert z.label == "VGG-16 (untrained)" and "vgg16-397923af.pth" in z.note
    assert sum(p.numel() for p in z.model.parameters()) == 138_357_544


def test_download_goes_through_torch_hub_into_its_cache(hub, published, monkeypatch):
    state = fake_weights("mobilenet_v3_small")
    published.add("mobilenet_v3_small")
    calls = []

    def fake_download(url, dst, hash_prefix=None, progress=True):
        calls.append((url, Path(dst), progress))
        torch.save(state, dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    z = zoo.load("mobilenet_v3_small", download=True, progress=False)
    url = torchvision.models.MobileNet_V3_Small_Weights.IMAGENET1K_V1.url
    assert calls == [(url, zoo.weights_file("mobilenet_v3_small"), False)]
    assert z.weights == "imagenet"
    assert_holds(z.model, state)
    zoo.load("mobilenet_v3_small", download=True)  # cached now: no second download
    assert len(calls) == 1


def test_failed_download_falls_back_to_random_weights_with_a_note(hub, monkeypatch):
    def no_network(url, dst, hash_prefix=None, progress=True):
        raise urllib.error.URLError(OSError("Temporary failure in name resolution"))

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    z = zoo.load("resnet18", download=True)
    assert z.weights == "random"
    assert z.note.startswith("Could not download the ImageNet weights for ResNet-18 (Temporary failure in name "
                             "resolution): put resnet18-f37072fd.pth in ")
    assert str(hub) in z.note and z.note.endswith("random weights (untrained).")
    assert not zoo.weights_file("resnet18").exists()


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong network"])
def test_damaged_cached_file_falls_back_with_a_note_saying_delete_it(hub, damage):
    path = zoo.weights_file("resnet18")
    path.parent.mkdir(parents=True)
    if damage == "garbage":
        path.write_bytes(b"<html>404 Not Found</html>")
    elif damage == "truncated":
        raw = to_bytes(fake_weights("resnet18"))
        path.write_bytes(raw[: len(raw) // 2])
    else:
        torch.save(fake_weights("mobilenet_v3_small"), path)
    z = zoo.load("resnet18")
    assert z.weights == "random"
    assert z.note.startswith(f"The ImageNet weights file for ResNet-18, {path}, could not be read")
    assert "delete it and download it again from https://download.pytorch.org/models/resnet18-f37072fd.pth" in z.note


# --- shared ----------------------------------------------------------------------------------------------------------

def test_shared_is_one_copy_per_process_also_for_threads_asking_at_once(hub):
    got, start = [], threading.Barrier(4)

    def ask():
        start.wait()
        got.append(zoo.shared("resnet18"))

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 4 and all(z is got[0] for z in got)
    assert zoo.shared("resnet18") is got[0] and got[0].weights == "random"
    assert zoo.shared("mobilenet_v3_small") is not got[0]


def test_shared_random_copy_is_replaced_once_the_file_appears(hub, published):
    untrained = zoo.shared("resnet18")
    state = put_weights(hub, "resnet18")
    published.add("resnet18")
    trained = zoo.shared("resnet18")
    assert trained is not untrained and trained.weights == "imagenet"
    assert_holds(trained.model, state)
    assert zoo.shared("resnet18") is trained
    assert untrained.weights == "random"  # a session holding the old copy keeps it as it was


def test_shared_damaged_file_is_not_reloaded_on_every_call(hub):
    zoo.weights_file("resnet18").parent.mkdir(parents=True)
    zoo.weights_file("resnet18").write_bytes(b"not weights")
    first = zoo.shared("resnet18")
    assert first.weights == "random" and "could not be read" in first.note
    assert zoo.shared("resnet18") is first


# --- a user's weights ------------------------------------------------------------------------------------------------

def test_uploaded_state_dict_gives_a_model_with_those_weights(hub):
    state = fake_weights("resnet18", seed=7)
    z = zoo.load_state_dict("resnet18", to_bytes(state))
    assert (z.weights, z.pretrained, z.label) == ("uploaded", True, "ResNet-18 (your weights)")
    assert "your file" in z.note and z.info == zoo.info("resnet18")
    assert_holds(z.model, state)
    assert not z.model.training and not any(p.requires_grad for p in z.model.parameters())
    assert all(t.device.type == "cpu" for t in z.model.state_dict().values())
    # The same weights as the ImageNet path would give from the same file: the same network.
    put_weights(hub, "resnet18", seed=7)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(z.model(x), zoo.load("resnet18").model(x))


@pytest.mark.parametrize("aux", [True, False])
def test_uploaded_googlenet_with_or_without_auxiliary_heads(aux):
    state = fake_weights("googlenet")
    if not aux:
        state = {k: v for k, v in state.items() if not k.startswith(("aux1.", "aux2."))}
    model = zoo.load_state_dict("googlenet", to_bytes(state)).model
    assert model.aux1 is None and model.transform_input
    assert_holds(model, state)


def test_uploaded_half_precision_weights_are_used_as_float32():
    state = {k: v.half() if v.is_floating_point() else v for k, v in fake_weights("mobilenet_v3_small").items()}
    model = zoo.load_state_dict("mobilenet_v3_small", to_bytes(state)).model
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert_holds(model, state)


def _refused(name: str, raw: bytes, *phrases: str) -> str:
    with pytest.raises(zoo.ZooError) as excinfo:
        zoo.load_state_dict(name, raw)
    message = str(excinfo.value)
    for phrase in phrases:
        assert phrase in message
    return message


def test_uploaded_wrong_shape_names_the_tensor_expected_and_got():
    state = fake_weights("resnet18")
    state["fc.weight"], state["fc.bias"] = torch.rand(10, 512), torch.rand(10)
    _refused("resnet18", to_bytes(state), "'fc.weight'", "(10, 512)", "ResNet-18 expects (1000, 512)")


def test_uploaded_wrong_keys_name_the_first_one():
    state = fake_weights("resnet18")
    del state["layer1.0.conv1.weight"]
    _refused("resnet18", to_bytes(state), "'layer1.0.conv1.weight'", "lacks", "1 missing")
    state = fake_weights("resnet18")
    state["head.weight"] = torch.rand(3)
    _refused("resnet18", to_bytes(state), "'head.weight'", "no place for")
    wrapped = {f"module.{k}": v for k, v in fake_weights("resnet18").items()}  # saved from DataParallel
    _refused("resnet18", to_bytes(wrapped), "'conv1.weight'", "122 missing")
    _refused("googlenet", to_bytes(fake_weights("resnet18")), "not for GoogLeNet (Inception v1)", "lacks")
    _refused("vgg16", to_bytes(fake_weights("mobilenet_v3_small")), "not for VGG-16", "250 records")


@pytest.mark.parametrize("obj, phrase", [
    ([1, 2, 3], "a list, not a state dict"),
    (torch.rand(3), "not a state dict"),
    ({"epoch": 3, "state_dict": {"conv1.weight": torch.rand(1)}}, "checkpoint['state_dict']"),
    ({1: torch.rand(1)}, "the key 1"),
])
def test_uploaded_file_that_is_not_a_state_dict(obj, phrase):
    _refused("resnet18", to_bytes(obj), phrase)


def test_uploaded_values_that_are_not_usable_tensors():
    for key, value, phrase in [
        ("fc.bias", [0.0] * 1000, "'fc.bias' is a list, not a tensor"),
        ("fc.bias", torch.zeros(1000, dtype=torch.int64), "expects a dense tensor of floating-point numbers"),
        ("bn1.num_batches_tracked", torch.tensor(1.5), "expects a dense tensor of whole numbers"),
        ("fc.bias", torch.full((1000,), float("nan")), "not finite"),
    ]:
        state = fake_weights("resnet18")
        state[key] = value
        _refused("resnet18", to_bytes(state), f"'{key}'", phrase)


def test_uploaded_bytes_that_are_not_a_pytorch_file():
    not_weights = "not a PyTorch weights file"
    _refused("resnet18", b"", "empty")
    _refused("resnet18", b"hello", not_weights)
    _refused("resnet18", bytes(range(256)) * 100, not_weights)
    raw = to_bytes(fake_weights("mobilenet_v3_small"))
    _refused("mobilenet_v3_small", raw[: len(raw) // 3], not_weights)
    # The pre-1.6 format (a plain pickle stream) declares storage sizes the reader trusts; only zips are read.
    _refused("mobilenet_v3_small", to_bytes(fake_weights("mobilenet_v3_small"), _use_new_zipfile_serialization=False),
             not_weights)
    with pytest.raises(zoo.ZooError, match="Expected the bytes"):
        zoo.load_state_dict("resnet18", "resnet18.pth")


def test_uploaded_zip_with_compressed_or_too_many_records_is_refused():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", b"\0" * 100_000)
    _refused("resnet18", buf.getvalue(), "compressed")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for i in range(300):
            z.writestr(f"archive/data/{i}", b"")
    _refused("mobilenet_v3_small", buf.getvalue(), "300 records", "not for MobileNetV3-Small")


def test_uploaded_file_over_the_architectures_limit_is_refused_unread():
    limit = zoo.upload_limit("resnet18")
    sizes = {n: sum(v.numel() * 4 for v in fake_weights(n).values()) for n in ("resnet18", "googlenet")}
    assert sizes["resnet18"] < limit < sizes["resnet18"] * 1.1
    assert sizes["googlenet"] < zoo.upload_limit("googlenet")  # torchvision's own file, with the aux heads, fits
    assert 528 * zoo.MB < zoo.upload_limit("vgg16") < 600 * zoo.MB
    _refused("resnet18", bytes(limit + 1), "MB", f"at most {limit / zoo.MB:,.1f} MB")


def test_unexpected_failure_while_loading_an_upload_is_still_a_zoo_error(monkeypatch):
    def broken(name, state):
        raise RuntimeError("a case the checks missed")

    monkeypatch.setattr(zoo, "_model", broken)
    _refused("resnet18", to_bytes(fake_weights("resnet18")), "could not be loaded as weights for ResNet-18")


def test_every_buffer_is_saved_so_an_upload_fills_the_whole_network():
    for name in zoo.NAMES:
        skeleton = zoo._skeleton(name)
        assert {k for k, _ in skeleton.named_buffers()} <= set(skeleton.state_dict()), name


_GOOD = to_bytes(fake_weights("mobilenet_v3_small"))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_damaged_upload_gives_a_model_or_a_zoo_error_and_nothing_else(data):
    raw = bytearray(_GOOD)
    for _ in range(data.draw(st.integers(1, 8))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    raw = raw[: data.draw(st.integers(1, len(raw)))]
    try:
        z = zoo.load_state_dict("mobilenet_v3_small", bytes(raw))
    except zoo.ZooError:
        return
    assert z.weights == "uploaded"
