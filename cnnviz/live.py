"""The live camera's work on one video frame: the prediction, a Grad-CAM overlay and one layer's feature maps.

Like the webcam mode of the Deep Visualization Toolbox (Yosinski et al. 2015, "Understanding Neural Networks Through
Deep Visualization"), each frame goes through the model and comes back as a picture: what the network sees, where
its evidence for the predicted class lies (Grad-CAM), and the most active maps of one chosen layer, each with a line
of words under it. :class:`Live` does that for one viewer, from any thread, and counts what it did.

Bounded work, no queue: frames that arrive while one is being processed are dropped and counted, never kept for
later. Grad-CAM costs a backward pass from its layer; where that would slow the frames below :data:`MIN_FPS`, it
runs on as many frames as that rate leaves time for, and the frames between show the last heatmap.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont, ImageOps
from torch import Tensor, nn
from torchvision.utils import make_grid

from cnnviz import figures, gradcam, images, pictures, probe, sharing
from cnnviz.data import DatasetInfo

log = logging.getLogger(__name__)

PANEL = 224  # side of each picture in the frame sent back, in pixels: 7 × 32 (shapes), 8 × 28 (MNIST), ImageNet's
BAND = 30  # height of the band of words under the pictures, in pixels
FONT_PX = 16
TOP_K = 5
MAX_MAPS = 16  # feature maps in the grid: the layer's most active ones
MIN_FPS = 12.0  # Grad-CAM runs on every frame that keeps processing at this rate or faster (the target is 10/s)
CAM_SLOWDOWN = 0.5  # below MIN_FPS anyway, Grad-CAM may make the frames this much slower on average
SMOOTHING = 0.2  # weight of the newest duration in the running averages of what a frame costs
RATE_WINDOW = 2.0  # seconds over which the frames-per-second figures are counted
MAX_SIDE = 4096  # a frame larger than this on either side is refused (a camera sends 640×480 to 1920×1080)
THREADS = 1  # PyTorch threads per frame: several sessions share the cores (docs/design.md, "One PyTorch thread")


@dataclass(frozen=True)
class Settings:
    """What a viewer chose: the layer whose maps are shown, the Grad-CAM layer, the resize policy and opacity."""

    layer: str  # a layer whose output is a stack of maps (N, C, h, w), see map_layers
    cam_layer: str  # the layer Grad-CAM looks at
    resize: str = "squash"  # one of images.RESIZE_POLICIES
    alpha: float = 0.5  # opacity of the Grad-CAM heatmap over the picture, in [0, 1]
    maps: int = MAX_MAPS  # how many of the layer's maps the grid shows, most active first


@dataclass(frozen=True)
class Result:
    """One processed frame: the prediction, what it was made from, and the picture to send back."""

    top: list[tuple[str, float]]  # the TOP_K most probable classes as (name, probability), most probable first
    probs: Tensor  # (K,) class probabilities, summing to 1
    maps: Tensor  # (C, h, w) the chosen layer's output for this frame
    heatmap: Tensor  # (S, S) in [0, 1]: this frame's Grad-CAM, or the last one made when this frame had none
    cam_class: str  # the class the heatmap explains
    cam_fresh: bool  # whether Grad-CAM ran on this frame
    image: np.ndarray  # (PANEL + BAND, 3 * PANEL, 3) uint8 RGB: the frame to send back
    seconds: float  # what this frame cost, from the frame to the picture


@dataclass(frozen=True)
class Counts:
    """What a :class:`Live` has done so far; rates are over the last :data:`RATE_WINDOW` seconds."""

    processed: int  # frames that went through the model
    dropped: int  # frames that arrived while another was being processed, and were never processed
    cams: int  # processed frames that also got a new Grad-CAM
    errors: int  # frames whose processing failed
    fps: float  # processed frames per second, recently
    cam_fps: float  # Grad-CAMs per second, recently
    error: str  # the last failure in words ("" when none)


def map_layers(model: nn.Module, info: DatasetInfo) -> list[str]:
    """The layers whose output is a stack of maps ``(N, C, h, w)``, in forward order (one pass on a blank image)."""
    records = probe.run(model, torch.zeros(1, *info.input_shape))
    return [name for name, record in records.items() if record.output.ndim == 4]


class Live:
    """One viewer's camera through ``model``: :meth:`process` turns a frame into a :class:`Result`.

    The model is looked at through a :func:`cnnviz.sharing.session_copy` of its own, so the hooks of a frame never
    meet those of the page (which runs in another thread) and the weights are not copied. Thread-safe: a frame that
    arrives while another is being processed is dropped and counted, so no caller ever waits for another.
    """

    def __init__(self, model: nn.Module, info: DatasetInfo, settings: Settings, *, min_fps: float = MIN_FPS,
                 threads: int = THREADS) -> None:
        self.model = sharing.session_copy(model).eval()
        self.info = info
        self.min_fps = min_fps
        self.threads = threads
        self._layers = map_layers(self.model, info)
        self._modules = dict(self.model.named_modules())  # looked up once: a frame has no time to walk the tree
        self._settings = self._checked(settings)
        self._busy = threading.Lock()  # held while a frame is processed
        self._lock = threading.Lock()  # guards the counters and the latest result
        self._processed = self._dropped = self._cams = self._errors = 0
        self._error = ""
        self._logged: set[str] = set()
        self._recent: collections.deque[tuple[float, bool]] = collections.deque(maxlen=256)  # (time, cam fresh)
        self._latest: Result | None = None
        self._cam = _CamBudget()
        self._last_cam: tuple[Tensor, str] | None = None

    @property
    def layers(self) -> list[str]:
        """The layers a :class:`Settings` may name (see :func:`map_layers`)."""
        return list(self._layers)

    @property
    def settings(self) -> Settings:
        return self._settings

    @settings.setter
    def settings(self, settings: Settings) -> None:
        # One assignment: the frame being processed keeps the settings it started with.
        self._settings = self._checked(settings)

    def _checked(self, settings: Settings) -> Settings:
        for name in (settings.layer, settings.cam_layer):
            if name not in self._layers:
                raise ValueError(f"no layer named {name!r} with maps; layers with maps: {', '.join(self._layers)}")
        if settings.resize not in images.RESIZE_POLICIES:
            raise ValueError(f"resize must be one of {', '.join(images.RESIZE_POLICIES)}, got {settings.resize!r}")
        if not 0 <= settings.alpha <= 1:
            raise ValueError(f"expected alpha in [0, 1], got {settings.alpha}")
        if settings.maps < 1:
            raise ValueError(f"expected at least 1 map, got {settings.maps}")
        return settings

    def drop(self, n: int = 1) -> None:
        """Count ``n`` frames that arrived and will never be processed (the video pipeline skipped them)."""
        if n < 0:
            raise ValueError(f"expected n >= 0, got {n}")
        with self._lock:
            self._dropped += n

    def process(self, frame: np.ndarray) -> Result | None:
        """Run one RGB frame ``(H, W, 3)`` uint8 through the model; None when it was dropped or failed.

        Dropped: another frame is being processed at this moment. Failed: the error is logged with its traceback
        (once per distinct message) and kept for :meth:`counts`, and the next frame is tried afresh. A frame of the
        wrong shape or type raises ``ValueError`` at once, as a programming error.
        """
        _check_frame(frame)
        if not self._busy.acquire(blocking=False):
            self.drop()
            return None
        try:
            start = time.perf_counter()
            # PyTorch's thread count belongs to each thread; the video pipeline's thread starts with one per core.
            if torch.get_num_threads() != self.threads:
                torch.set_num_threads(self.threads)
            try:
                result = self._process(frame, self._settings, start)
            except Exception as e:  # any failure must reach the viewer: the video pipeline would swallow it
                self.failed(e)
                return None
            with self._lock:
                self._processed += 1
                self._cams += result.cam_fresh
                self._recent.append((time.monotonic(), result.cam_fresh))
                self._latest = result
            return result
        finally:
            self._busy.release()

    def latest(self) -> Result | None:
        """The last frame processed, or None before the first."""
        with self._lock:
            return self._latest

    def counts(self) -> Counts:
        with self._lock:
            now = time.monotonic()
            recent = [cam for t, cam in self._recent if now - t <= RATE_WINDOW]
            return Counts(self._processed, self._dropped, self._cams, self._errors, len(recent) / RATE_WINDOW,
                          sum(recent) / RATE_WINDOW, self._error)

    def failed(self, e: Exception) -> None:
        """Count a frame that could not be processed, keep the reason for :meth:`counts` and log the traceback, once
        per distinct message (a broken setting would otherwise log every frame)."""
        message = f"{type(e).__name__}: {e}"
        with self._lock:
            self._errors += 1
            self._error = message
            first = message not in self._logged
            self._logged.add(message)
        if first:
            log.error("a camera frame could not be processed", exc_info=e)

    def _process(self, frame: np.ndarray, settings: Settings, start: float) -> Result:
        prepared = images.prepare(Image.fromarray(frame), self.info, resize=settings.resize)
        x = prepared.tensor  # (1, C, S, S)
        cam = self._cam.due(self.min_fps)
        path, call = probe.split_name(settings.layer)
        with _capture(self._modules[path], call, settings.layer) as maps:
            if cam:
                logits: list[Tensor] = []
                res = gradcam.compute(self.model, x, settings.cam_layer, target=_predicted(logits))
                probs = logits[0][0].softmax(0)
                self._last_cam = (res.heatmap.cpu(), self.info.class_names[int(probs.argmax())])
            else:
                probs = probe.predict(self.model, x)
        probs = probs.detach().cpu()
        layer_maps = maps[0].cpu()  # (C, h, w)
        if self._last_cam is None:  # only before the first Grad-CAM has run: nothing to show yet
            self._last_cam = (torch.zeros(x.shape[-2:]), "")
        heatmap, cam_class = self._last_cam
        p, i = probs.topk(min(TOP_K, len(probs)))
        top = [(self.info.class_names[j], float(q)) for q, j in zip(p.tolist(), i.tolist())]
        picture = self._picture(prepared.display, heatmap, cam_class, layer_maps, top[0], settings)
        seconds = time.perf_counter() - start
        self._cam.spent(seconds, cam)
        return Result(top, probs, layer_maps, heatmap, cam_class, cam, picture, seconds)

    def _picture(self, seen: Image.Image, heatmap: Tensor, cam_class: str, maps: Tensor, best: tuple[str, float],
                 settings: Settings) -> np.ndarray:
        """The frame sent back: what the network sees, the Grad-CAM overlay and the maps, each with words under it."""
        # Blended at the input's own size, then enlarged without smoothing: the pixels the network got stay visible.
        panels = [_enlarged(seen.convert("RGB")), _enlarged(figures.overlay_image(seen, heatmap, settings.alpha))]
        shown = probe.busiest(maps)[: settings.maps].tolist()
        panels.append(maps_grid(maps[shown]))
        frame = Image.new("RGB", (3 * PANEL, PANEL + BAND), "white")
        for k, panel in enumerate(panels):
            frame.paste(panel, (k * PANEL, 0))
        name, p = best
        words = (f"{name} {p:.0%}", f"Grad-CAM: {cam_class}" if cam_class else "Grad-CAM: not yet",
                 f"{settings.layer}: {len(shown)} of {len(maps)} maps")
        draw = ImageDraw.Draw(frame)
        for k, text in enumerate(words):
            draw.text((k * PANEL + 6, PANEL + (BAND - FONT_PX) // 2 - 1), _fit(text), fill="black", font=_FONT)
        return np.asarray(frame)


def maps_grid(maps: Tensor, side: int = PANEL) -> Image.Image:
    """Feature maps ``(C, h, w)`` tiled in a near-square grid on one colour scale (viridis: dark = the lowest value
    shown, bright = the highest), as a ``side``×``side`` RGB image with white gaps and margins.

    A fast, unlabelled cousin of :func:`cnnviz.pictures.feature_grid` for video: labels, headings and a colour bar
    take longer to draw than a frame may take.
    """
    if maps.ndim != 3 or maps.shape[0] == 0:
        raise ValueError(f"expected maps (C, h, w) with C >= 1, got {tuple(maps.shape)}")
    maps = maps.detach().float()
    cols = math.ceil(math.sqrt(len(maps)))
    tile = max(1, side // cols)
    if max(maps.shape[-2:]) > tile:  # averaged down to the size shown first: far fewer cells to colour and tile
        maps = F.adaptive_avg_pool2d(maps, (max(1, maps.shape[1] * tile // max(maps.shape[-2:])),
                                            max(1, maps.shape[2] * tile // max(maps.shape[-2:]))))
    lo, hi = maps.min(), maps.max()
    scaled = (maps - lo) / (hi - lo) if hi > lo else torch.zeros_like(maps)
    tiles = _VIRIDIS[(scaled * 255).round().long()].permute(0, 3, 1, 2)  # (C, 3, h, w) uint8
    grid = make_grid(tiles, nrow=cols, padding=max(1, maps.shape[-1] // 8), pad_value=255)  # (3, H', W')
    picture = Image.fromarray(grid.permute(1, 2, 0).numpy())
    # Enlarged, each cell stays a sharp square; shrunk (a big layer's grid), it is averaged instead of decimated.
    resample = Image.Resampling.NEAREST if max(picture.size) <= side else Image.Resampling.BILINEAR
    return ImageOps.pad(picture, (side, side), resample, color="white")


_VIRIDIS = torch.from_numpy(pictures.colour_table("viridis").copy())  # (256, 3) uint8


def _enlarged(image: Image.Image) -> Image.Image:
    """``image`` scaled to fill a ``PANEL``×``PANEL`` square, without smoothing when enlarged."""
    if image.size == (PANEL, PANEL):
        return image
    resample = Image.Resampling.NEAREST if max(image.size) <= PANEL else Image.Resampling.BILINEAR
    return ImageOps.pad(image, (PANEL, PANEL), resample, color="white")


class _CamBudget:
    """Which frames get a Grad-CAM: every one, unless that slows the frames below ``min_fps``.

    From running averages of what a frame costs with and without it (t_cam, t_plain), a share f of frames with
    Grad-CAM keeps the mean cost of a frame at T: f = (T - t_plain) / (t_cam - t_plain), in [0, 1], where T is
    1 / min_fps, or t_plain × (1 + :data:`CAM_SLOWDOWN`) when frames without Grad-CAM are slower than that already
    (a big network, a busy server): the heatmap then still follows the picture. Each frame adds f to a credit, and
    a frame gets Grad-CAM when the credit reaches 1. Frames get Grad-CAM until one with it has been timed (a frame
    that failed was not); until one without it has been, t_plain counts as 0: the next frames then skip Grad-CAM as
    often as they must, which times one.
    """

    def __init__(self) -> None:
        self.t_cam: float | None = None
        self.t_plain: float | None = None
        self.credit = 0.0

    def due(self, min_fps: float) -> bool:
        if self.t_cam is None:
            return True
        plain = self.t_plain or 0.0
        allowed = max(1 / min_fps, (1 + CAM_SLOWDOWN) * plain)
        share = 1.0 if self.t_cam <= allowed else (allowed - plain) / (self.t_cam - plain)
        self.credit += min(max(share, 0.0), 1.0)
        if self.credit >= 1:
            self.credit -= 1
            return True
        return False

    def spent(self, seconds: float, cam: bool) -> None:
        old = self.t_cam if cam else self.t_plain
        new = seconds if old is None else (1 - SMOOTHING) * old + SMOOTHING * seconds
        if cam:
            self.t_cam = new
        else:
            self.t_plain = new


@contextlib.contextmanager
def _capture(module: nn.Module, call: int, layer: str) -> Iterator[list[Tensor]]:
    """Collect the output of ``module``'s ``call``-th call (the layer named ``layer``) as a detached copy
    ``(C, h, w)`` of the first image, during the forward pass inside the block; the hook is removed on the way out."""
    got: list[Tensor] = []
    calls = 0

    def hook(hooked: nn.Module, args: tuple, output: Tensor) -> None:
        nonlocal calls
        calls += 1
        if calls == call:
            # A copy: a later in-place layer (ReLU(inplace=True)) would change the map after the fact.
            got.append(output[0].detach().clone())

    handle = module.register_forward_hook(hook)
    try:
        yield got
    finally:
        handle.remove()
    if not got:
        raise ValueError(f"layer {layer!r} was called {calls} time(s) in the forward pass, not {call}")


def _predicted(logits: list[Tensor]):
    """A Grad-CAM target that explains the predicted class and keeps the logits ``(1, K)`` it saw in ``logits``."""

    def score(out: Tensor) -> Tensor:
        logits.append(out.detach())
        return out[0, out[0].argmax()]

    return score


def _check_frame(frame: object) -> None:
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        got = f"{frame.dtype} {frame.shape}" if isinstance(frame, np.ndarray) else type(frame).__name__
        raise ValueError(f"expected an RGB frame: a uint8 array (H, W, 3), got {got}")
    if not (1 <= frame.shape[0] <= MAX_SIDE and 1 <= frame.shape[1] <= MAX_SIDE):
        raise ValueError(f"expected a frame of 1 to {MAX_SIDE} pixels a side, got {frame.shape[1]}×{frame.shape[0]}")


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    # Pillow's own font at FONT_PX where FreeType is there; its small bitmap font otherwise.
    try:
        return ImageFont.load_default(size=FONT_PX)
    except (TypeError, OSError):
        return ImageFont.load_default()


_FONT = _font()


@functools.lru_cache(maxsize=4096)  # the same few class names and layer names come back frame after frame
def _fit(text: str, width: int = PANEL - 12) -> str:
    """``text``, shortened with "…" until it fits in ``width`` pixels (a long ImageNet class name)."""
    if _FONT.getlength(text) <= width:
        return text
    while text and _FONT.getlength(text + "…") > width:
        text = text[:-1]
    return text + "…"
