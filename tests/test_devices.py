"""cnnviz.devices and --device: what `auto` picks, and a clear refusal for a device that is not here."""

import pytest
import torch

from cnnviz import cli, devices

NO_CUDA = not torch.cuda.is_available()
NO_MPS = not torch.backends.mps.is_available()


@pytest.mark.skipif(not (NO_CUDA and NO_MPS), reason="auto picks the accelerator on this machine")
def test_auto_is_the_cpu_without_an_accelerator():
    assert devices.available() == ["cpu"]
    assert devices.resolve("auto") == devices.resolve() == torch.device("cpu")


def test_names_and_devices_resolve_to_themselves():
    assert devices.resolve("cpu") == devices.resolve(torch.device("cpu")) == torch.device("cpu")
    assert devices.resolve("auto").type == devices.available()[0]


@pytest.mark.parametrize("name", ["gpu", "meta", "", "cpu:x"])
def test_a_name_that_is_no_device_is_refused(name):
    with pytest.raises(devices.DeviceError, match="expected a device \\(auto, cpu, cuda, mps\\)"):
        devices.resolve(name)


@pytest.mark.skipif(not NO_CUDA, reason="this machine has a CUDA GPU")
@pytest.mark.parametrize("name", ["cuda", "cuda:1"])
def test_cuda_absent_says_so_and_what_there_is(name):
    with pytest.raises(devices.DeviceError) as e:
        devices.resolve(name)
    assert str(e.value).startswith("there is no CUDA GPU here") and str(e.value).endswith("use one of: auto, cpu")


@pytest.mark.skipif(not NO_MPS, reason="this machine has Apple's MPS")
def test_mps_absent_says_so():
    with pytest.raises(devices.DeviceError, match="there is no Apple MPS device here"):
        devices.resolve("mps")


@pytest.mark.skipif(not NO_CUDA, reason="this machine has a CUDA GPU")
@pytest.mark.parametrize("command", [["train", "--dataset", "shapes"],
                                     ["inspect", "--zoo", "resnet18", "--image", "i.png", "--out", "o"],
                                     ["app"]])
def test_cli_refuses_an_absent_device_as_a_usage_error(command, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([*command, "--device", "cuda"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "argument --device: there is no CUDA GPU here" in err and "Traceback" not in err


def test_app_hands_its_device_to_the_server(monkeypatch):
    execs = []
    monkeypatch.setattr("os.execve", lambda path, argv, env: execs.append(env))
    monkeypatch.delenv(devices.ENV, raising=False)
    assert cli.main(["app", "--port", "8597", "--device", "cpu"]) == 0
    assert execs[0][devices.ENV] == "cpu"
    assert cli.main(["app", "--port", "8597"]) == 0
    assert execs[1][devices.ENV] == devices.available()[0]  # auto, decided once, by the launching command


def test_the_app_places_models_where_its_variable_says(monkeypatch):
    from cnnviz.ui import state

    monkeypatch.delenv(devices.ENV, raising=False)
    assert state.device() == torch.device("cpu")  # a server started without `cnnviz app` stays on the CPU
    monkeypatch.setenv(devices.ENV, "cpu")
    assert state.device() == torch.device("cpu")
    if NO_CUDA:
        monkeypatch.setenv(devices.ENV, "cuda")
        with pytest.raises(devices.DeviceError, match="no CUDA GPU"):
            state.device()


def test_inspection_on_cpu_by_name_is_the_inspection_of_today():
    from pathlib import Path

    from PIL import Image

    from cnnviz import checkpoint, gradcam, shapes
    from cnnviz.inspection import inspect

    ck = checkpoint.load(Path(__file__).resolve().parent.parent / "assets" / "shapes_model.pt")
    x, _, _ = shapes.generate(1, seed=7)
    image = Image.fromarray(x[0].permute(1, 2, 0).numpy())
    plain, on_cpu = inspect(ck.model, ck.info, image), inspect(ck.model, ck.info, image, device="cpu")
    assert torch.equal(plain.probs, on_cpu.probs) and list(plain.records) == list(on_cpu.records)
    assert all(torch.equal(plain.records[k].output, on_cpu.records[k].output) for k in plain.records)
    cams = [gradcam.compute(ck.model, ins.x) for ins in (plain, on_cpu)]
    assert torch.equal(cams[0].heatmap, cams[1].heatmap) and cams[0].heatmap.device.type == "cpu"
