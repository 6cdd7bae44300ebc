"""The live camera: how many frames a viewer gets through the network each second, and how many are dropped.

A stand-in camera (an aiortc video track of 480×360 frames at 30 a second, the size the Live camera page asks the
browser for, decoded to YUV as a browser's video is) feeds ``streamlit-webrtc``'s own asynchronous processing track
with the page's frame callback, while the other side pulls the processed video at the camera's rate, as the
connection's sender does. Frames are counted in the callback (``cnnviz.live.Live.counts``); encoding and decoding
the video, the rest of a viewer's cost (about 0.15 of a core, measured once), are not.
"""

from __future__ import annotations

import asyncio
import statistics
import time

from benchmarks.common import Options, progress
from benchmarks.report import Row, at_least

CAMERA_FPS = 30
SIZE = (480, 360)  # (width, height), camera.MEDIA's ideal
WARMUP_S = 1.5  # not counted: the first passes through a model are slower


def _camera(seconds: float):
    """A video track of :data:`CAMERA_FPS` frames a second for ``seconds``, cycling through a few photo-like frames
    (a shape on a noisy gradient, moving), in the ``yuv420p`` format a decoder hands over."""
    import av
    import numpy as np
    from aiortc.mediastreams import VIDEO_CLOCK_RATE, MediaStreamError, VideoStreamTrack

    from benchmarks.yours import SHAPES, _photo
    from cnnviz import images

    rng = np.random.default_rng(0)
    frames = [av.VideoFrame.from_ndarray(np.asarray(images.load(_photo(SHAPES[i % len(SHAPES)], rng, SIZE))),
                                         format="rgb24").reformat(format="yuv420p") for i in range(8)]

    class Camera(VideoStreamTrack):
        def __init__(self) -> None:
            super().__init__()
            self.sent = 0

        async def recv(self):
            pts, time_base = await self.next_timestamp()
            if pts / VIDEO_CLOCK_RATE > seconds:
                raise MediaStreamError  # the camera is switched off: the track ends
            frame = frames[self.sent // CAMERA_FPS % len(frames)]  # a new picture each second
            frame.pts, frame.time_base = pts, time_base
            self.sent += 1
            return frame

    return Camera()


def _watch(viewing, seconds: float) -> tuple[float, int, int, int, float]:
    """Play :func:`_camera` through ``viewing`` for ``seconds`` after the warm-up: the seconds counted; the frames
    processed, given a Grad-CAM and dropped in them; and the median CPU seconds the callback took for a frame."""
    from aiortc.mediastreams import MediaStreamError
    from streamlit_webrtc.models import CallbackAttachableProcessor
    from streamlit_webrtc.process import AsyncVideoProcessTrack

    from cnnviz.ui import camera

    callback, cpu = camera.frames_callback(viewing), []

    async def timed(frames):
        # The callback's own thread's CPU time: what a frame costs a core, however busy the machine is.
        start = time.thread_time()
        out = await callback(frames)
        cpu.append(time.thread_time() - start)
        return out

    source = _camera(WARMUP_S + seconds)
    track = AsyncVideoProcessTrack(source, CallbackAttachableProcessor(None, timed, None))

    async def pull() -> tuple[float, int, int, int, float]:
        start = time.perf_counter()
        before = None
        try:
            while True:
                await track.recv()
                if before is None and time.perf_counter() - start >= WARMUP_S:
                    before, counted = viewing.counts(), time.perf_counter()
        except MediaStreamError:
            pass
        finally:
            track.stop()
        after = viewing.counts()
        return (time.perf_counter() - counted, after.processed - before.processed, after.cams - before.cams,
                after.dropped - before.dropped, statistics.median(cpu[len(cpu) // 4:]))

    return asyncio.run(pull())


def camera(options: Options) -> list[Row]:
    """The Live camera page's frame callback behind ``streamlit-webrtc``'s asynchronous processing, fed 480×360 at 30
    frames a second: the shipped model with Grad-CAM on every frame, and ResNet-18 (random weights: the time does not
    depend on them) at 224×224, with Grad-CAM on as many frames as keep 12 a second. Frames counted in the callback;
    a dropped frame arrived while the one before was still being processed (the video's encoding and decoding are
    not counted). The callback's CPU time per frame says what the frame rate would be on an idle core."""
    from cnnviz import checkpoint, gradcam, live, zoo
    from cnnviz.ui.state import SHIPPED_MODEL

    seconds = 3.0 if options.quick else 10.0
    ck = checkpoint.load(SHIPPED_MODEL)
    resnet = zoo.shared("resnet18")
    rows = []
    for title, model, info, fps_target, cam_target in (
            ("shipped model", ck.model, ck.info, 15, 15), ("ResNet-18", resnet.model, resnet.info, 10, 4)):
        layers = live.map_layers(model, info)
        # What the page starts with: the first layer's maps, Grad-CAM at the last convolution.
        viewing = live.Live(model, info, live.Settings(layers[0], gradcam.default_layer(model), resize=info.resize))
        progress(f"{title}: {seconds:.0f} s of camera at {CAMERA_FPS} frames a second")
        counted, processed, cams, dropped, cpu = _watch(viewing, seconds)
        checked = not options.quick
        rows += [
            Row(f"{title}: frames processed per second (of {CAMERA_FPS})", processed / counted, "frames/s",
                at_least(fps_target), checked=checked, note=f"{processed} in {counted:.1f} s"),
            Row(f"{title}: Grad-CAMs per second", cams / counted, "frames/s", at_least(cam_target), checked=checked,
                note=f"on {cams} of the {processed} frames"),
            Row(f"{title}: frames dropped per second", dropped / counted, "frames/s",
                note="arrived while another was processed; never queued"),
            Row(f"{title}: callback CPU time per frame (median)", 1000 * cpu, "ms",
                note=f"one idle core would process {1 / cpu:.1f} frames/s"),
        ]
        if viewing.counts().errors:
            raise RuntimeError(f"{title}: a frame failed: {viewing.counts().error}")
    return rows
