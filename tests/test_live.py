"""The live camera's back end with real models and tensors: a frame in, the model's own answers out, and counters
that add up under threads; and the WebRTC glue's frame callback and ICE-server setting."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading

import av
import numpy as np
import pytest
import torch
import torchvision
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image
from torch import nn

from cnnviz import checkpoint, figures, gradcam, images, live, probe, shapes, zoo
from cnnviz.ui import camera
from cnnviz.ui.state import SHIPPED_MODEL


@pytest.fixture(scope="module")
def shipped():
    return checkpoint.load(SHIPPED_MODEL)


def _frame(seed: int = 0, h: int = 240, w: int = 320) -> np.ndarray:
    """A camera-like RGB frame: one shapes picture stretched to ``w``×``h``."""
    x, _, _ = shapes.generate(1, seed=seed, size=96)
    return np.asarray(Image.fromarray(x[0].permute(1, 2, 0).numpy()).resize((w, h)))


def _viewer(ck, layer: str = "relu2", **kw) -> live.Live:
    return live.Live(ck.model, ck.info, live.Settings(layer, gradcam.default_layer(ck.model)), **kw)


def test_a_frame_gives_the_models_own_prediction_grad_cam_and_maps(shipped):
    frame = _frame()
    viewing = _viewer(shipped)
    result = viewing.process(frame)

    prepared = images.prepare(Image.fromarray(frame), shipped.info, resize="squash")
    probs = probe.predict(shipped.model, prepared.tensor)
    torch.testing.assert_close(result.probs, probs)
    best = probs.topk(live.TOP_K)
    assert result.top == [(shipped.info.class_names[i], pytest.approx(float(p)))
                          for p, i in zip(best.values, best.indices)]
    torch.testing.assert_close(result.maps, probe.run(shipped.model, prepared.tensor)["relu2"].output[0])
    cam = gradcam.compute(shipped.model, prepared.tensor, gradcam.default_layer(shipped.model))
    assert result.cam_fresh and result.cam_class == shipped.info.class_names[cam.target]
    torch.testing.assert_close(result.heatmap, cam.heatmap)

    assert result.image.shape == (live.PANEL + live.BAND, 3 * live.PANEL, 3) and result.image.dtype == np.uint8
    scale = live.PANEL // shipped.info.size  # 7: each input pixel a 7×7 block
    seen = np.asarray(prepared.display).repeat(scale, 0).repeat(scale, 1)
    np.testing.assert_array_equal(result.image[: live.PANEL, : live.PANEL], seen)
    overlay = np.asarray(figures.overlay_image(prepared.display, cam.heatmap, 0.5)).repeat(scale, 0).repeat(scale, 1)
    np.testing.assert_array_equal(result.image[: live.PANEL, live.PANEL: 2 * live.PANEL], overlay)
    # The session's model is looked at through a copy: no hook is left on either.
    assert all(not m._forward_hooks for m in (*shipped.model.modules(), *viewing.model.modules()))


def test_the_picture_changes_the_prediction(shipped):
    """Two pictures of different shapes: the first frame's answer differs from the second's, each the model's own."""
    x, labels, _ = shapes.generate(16, seed=3, size=96)
    viewing = _viewer(shipped)
    names = [viewing.process(x[i].permute(1, 2, 0).numpy().copy()).top[0][0] for i in range(16)]
    assert len(set(names)) >= 4
    assert sum(n == shapes.CLASS_NAMES[y] for n, y in zip(names, labels)) >= 12  # a 99 % model, bigger pictures


def test_maps_grid_puts_each_map_in_its_tile_on_one_colour_scale():
    maps = torch.arange(4.0)[:, None, None].expand(4, 8, 8)  # maps of 0, 1, 2 and 3 everywhere
    grid = np.asarray(live.maps_grid(maps, side=190))  # 2×2 tiles of 8 px, gaps of 1: 19 px, enlarged 10×
    assert grid.shape == (190, 190, 3)
    lut = np.rint(__import__("matplotlib").colormaps["viridis"](np.linspace(0, 1, 256))[:, :3] * 255)
    for k, level in enumerate((0, 85, 170, 255)):  # 0, 1/3, 2/3 and 1 of the way from the lowest to the highest
        row, col = divmod(k, 2)
        y, x = (1 + 9 * row + 4) * 10, (1 + 9 * col + 4) * 10  # the middle of tile k
        np.testing.assert_array_equal(grid[y, x], lut[level])
    np.testing.assert_array_equal(grid[5, 5], [255, 255, 255])  # the white margin
    flat = np.asarray(live.maps_grid(torch.zeros(3, 5, 5)))  # a constant layer is dark, not a division by zero
    assert flat.shape == (live.PANEL, live.PANEL, 3)


def test_a_layer_called_twice_and_a_residual_network():
    """ResNet's blocks call one ReLU twice: "layer1.0.relu#2" is its second call, as in probe's records."""
    model = torchvision.models.resnet18(weights=None, num_classes=4).eval()
    info = dataclasses.replace(zoo.info("resnet18"), size=64, resize_to=0, class_names=("a", "b", "c", "d"))
    viewing = live.Live(model, info, live.Settings("layer1.0.relu#2", gradcam.default_layer(model)))
    frame = _frame(1, 48, 64)
    result = viewing.process(frame)
    x = images.prepare(Image.fromarray(frame), info).tensor
    torch.testing.assert_close(result.maps, probe.run(model, x)["layer1.0.relu#2"].output[0])
    torch.testing.assert_close(result.heatmap, gradcam.compute(model, x).heatmap)
    torch.testing.assert_close(result.probs, probe.predict(model, x))


def _cams(seconds_with: float, seconds_without: float, frames: int) -> list[bool]:
    """Which of ``frames`` frames a fresh budget gives Grad-CAM, at 10 frames a second, with frames costing these."""
    budget, cams = live._CamBudget(), []
    for _ in range(frames):
        cam = budget.due(10.0)
        budget.spent(seconds_with if cam else seconds_without, cam)
        cams.append(cam)
    return cams


def test_grad_cam_runs_on_the_share_of_frames_the_rate_leaves_time_for():
    # 200 ms with Grad-CAM, 50 ms without, 100 ms allowed: the first frame times Grad-CAM, then the share that keeps
    # the mean at 100 ms, (0.1 - 0.05) / (0.2 - 0.05) = 1/3 of the frames, gets it.
    cams = _cams(0.2, 0.05, 31)
    assert cams[0] and sum(cams[1:]) == 10
    assert all(_cams(0.01, 0.005, 20))  # Grad-CAM fits in the time of a frame: every frame
    # Slower than 10 a second even without Grad-CAM (300 ms): it may add half of that on average, 150 ms, so half
    # the frames get the 300 ms more it costs; and every frame when it costs less than 150 ms more.
    assert sum(_cams(0.6, 0.3, 32)[2:]) == 15
    assert all(_cams(0.4, 0.3, 20)[2:])  # (the second frame, before a frame without Grad-CAM is timed, skips it)


class _Gate(nn.Module):
    """Passes its input through; waits for ``go`` while ``hold`` is set, raises while ``fail`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.hold, self.go, self.inside = threading.Event(), threading.Event(), threading.Event()
        self.fail = False

    def __deepcopy__(self, memo):
        return self  # one gate shared by the viewer's copy of the model and the test

    def forward(self, x):
        if self.fail:
            raise RuntimeError("the camera model broke")
        if self.hold.is_set():
            self.inside.set()
            assert self.go.wait(10)
        return x


def _gated(ck):
    gate = _Gate()
    model = nn.Sequential(gate, ck.model).eval()  # the layers are "0" (the gate) and "1.conv1", … (the model)
    return gate, live.Live(model, ck.info, live.Settings("1.relu2", "1.relu4"))


def test_a_frame_arriving_while_one_is_processed_is_dropped_not_queued(shipped):
    gate, viewing = _gated(shipped)
    gate.hold.set()
    worker = threading.Thread(target=viewing.process, args=(_frame(),))
    worker.start()
    assert gate.inside.wait(10)
    assert viewing.process(_frame(1)) is None  # returns at once: the first frame is still inside the model
    viewing.drop(2)  # two more that the video pipeline skipped
    gate.go.set()
    worker.join(10)
    counts = viewing.counts()
    assert (counts.processed, counts.dropped, counts.cams, counts.errors) == (1, 3, 1, 0)
    with pytest.raises(ValueError):
        viewing.drop(-1)


def test_many_threads_every_frame_is_processed_or_dropped(shipped):
    viewing = _viewer(shipped)
    frames = [_frame(i % 4) for i in range(8)]
    results = []

    def run() -> None:
        results.extend(viewing.process(f) for f in frames)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    counts = viewing.counts()
    done = sum(r is not None for r in results)
    assert len(results) == 32 and counts.processed == done and counts.processed + counts.dropped == 32
    assert counts.errors == 0 and counts.processed >= 1


def test_a_failing_frame_is_logged_once_shown_and_the_next_one_works(shipped, caplog):
    gate, viewing = _gated(shipped)
    gate.fail = True
    with caplog.at_level(logging.ERROR, logger="cnnviz.live"):
        assert viewing.process(_frame()) is None
        assert viewing.process(_frame()) is None
    counts = viewing.counts()
    assert counts.errors == 2 and counts.processed == 0 and "the camera model broke" in counts.error
    assert len(caplog.records) == 1 and caplog.records[0].exc_info  # the traceback, once per distinct failure
    gate.fail = False
    result = viewing.process(_frame())
    assert result is not None and result.cam_fresh  # Grad-CAM too: the failed frames do not count against it
    assert viewing.counts().processed == 1


def test_settings_are_checked_and_changed_between_frames(shipped):
    viewing = _viewer(shipped)
    with pytest.raises(ValueError, match="relu2"):  # the message lists the layers there are
        viewing.settings = live.Settings("fc", "relu4")
    with pytest.raises(ValueError, match="alpha"):
        viewing.settings = live.Settings("relu2", "relu4", alpha=1.5)
    viewing.settings = live.Settings("conv4", "relu3", resize="pad", maps=4)
    result = viewing.process(_frame())
    assert result.maps.shape == (48, 16, 16)
    assert viewing.layers == live.map_layers(shipped.model, shipped.info)
    assert "flatten" not in viewing.layers and "conv1" in viewing.layers


def test_single_channel_models_see_grey():
    from cnnviz import data, models

    info = data.info("mnist")
    model = models.build(models.preset("tiny", 1, 28, 10), seed=0).eval()
    viewing = live.Live(model, info, live.Settings(probe.layer_names(model, "conv")[0], gradcam.default_layer(model)))
    result = viewing.process(_frame())
    assert result.image.shape == (live.PANEL + live.BAND, 3 * live.PANEL, 3)
    seen = result.image[: live.PANEL, : live.PANEL]
    assert (seen[..., 0] == seen[..., 1]).all() and (seen[..., 1] == seen[..., 2]).all()


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frame=st.integers(1, 64).flatmap(lambda h: st.integers(1, 64).flatmap(
    lambda w: arrays(np.uint8, (h, w, 3)))))
def test_any_frame_size_gives_the_same_picture_size(shipped, frame):
    result = _viewer(shipped).process(frame)
    assert result.image.shape == (live.PANEL + live.BAND, 3 * live.PANEL, 3)
    assert float(result.probs.sum()) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("bad", [np.zeros((10, 10), np.uint8), np.zeros((10, 10, 4), np.uint8),
                                 np.zeros((10, 10, 3), np.float32), np.zeros((0, 10, 3), np.uint8),
                                 np.zeros((live.MAX_SIDE + 1, 2, 3), np.uint8), [[0, 0, 0]]])
def test_a_frame_that_is_not_an_rgb_picture_is_refused(shipped, bad):
    with pytest.raises(ValueError, match="frame"):
        _viewer(shipped).process(bad)


def test_the_frame_callback_processes_the_newest_and_counts_the_rest(shipped):
    viewing = _viewer(shipped)
    frames = [av.VideoFrame.from_ndarray(_frame(i), format="rgb24") for i in range(3)]
    out = asyncio.run(camera.frames_callback(viewing)(frames))
    assert len(out) == 1 and out[0].to_ndarray(format="rgb24").shape == (live.PANEL + live.BAND, 3 * live.PANEL, 3)
    newest = live.Live(shipped.model, shipped.info, viewing.settings).process(frames[-1].to_ndarray(format="rgb24"))
    torch.testing.assert_close(viewing.latest().probs, newest.probs)
    assert (viewing.counts().processed, viewing.counts().dropped) == (1, 2)


def test_a_frame_the_callback_cannot_read_goes_back_as_it_came_and_is_shown(shipped):
    class Unreadable:
        def to_ndarray(self, format):
            raise ValueError("a frame in an unknown pixel format")

    viewing = _viewer(shipped)
    frame = Unreadable()
    assert asyncio.run(camera.frames_callback(viewing)([frame])) == [frame]
    assert viewing.counts().errors == 1 and "unknown pixel format" in viewing.counts().error


def test_ice_servers_are_none_unless_given_and_checked():
    assert camera.ice_servers(None) == [] and camera.ice_servers("  ") == []
    turn = '[{"urls": ["turn:turn.example.org:3478"], "username": "class", "credential": "secret"}]'
    assert camera.ice_servers(turn)[0]["username"] == "class"
    assert camera.ice_servers('[{"urls": "stun:stun.example.org:3478"}]')[0]["urls"].startswith("stun:")
    for bad, words in [("{", "not valid JSON"), ('{"urls": "turn:x"}', "JSON list"),
                       ('[{"urls": "http://x"}]', "stun:"), ('[{"urls": []}]', "urls"),
                       ('[{"urls": "turn:x", "credential": 5}]', "text"), ("[3]", "urls")]:
        with pytest.raises(camera.IceServerError, match=words):
            camera.ice_servers(bad)
