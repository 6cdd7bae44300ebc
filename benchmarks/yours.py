"""Your own images and real networks: a folder of photos loaded and trained on, and torchvision networks in Explore.

``own-data``: 8 classes × 50 JPEG photos of mixed sizes, made here (a disc, a square, a triangle… on a noisy
gradient, each class its own shape), loaded with ``data.from_folder`` and trained with the Train page's defaults for
such a set. ``zoo-explore``: the Explore page (AppTest, one thread per page computation as served) on ResNet-18 and
VGG-16, from an upload to every view. ``zoo-memory``: 30 sessions looking at one VGG-16.

Weights are random here (nothing is downloaded), saved under torchvision's own file names in a temporary
``TORCH_HOME``: the app loads them as it would ImageNet's, and the time a network takes does not depend on its weights.
"""

from __future__ import annotations

import io
import os
import statistics
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from benchmarks.common import ROOT, Options, progress
from benchmarks.report import Row, at_least, at_most

SHAPES = ("disc", "square", "triangle", "ring", "cross", "bar", "column", "diamond")


def _photo(kind: str, rng, size: tuple[int, int]) -> bytes:
    """One JPEG "photo": a shape of ``kind`` in a random colour, place and size on a noisy colour gradient."""
    import numpy as np
    from PIL import Image, ImageDraw

    w, h = size
    a, b = rng.integers(40, 215, 3), rng.integers(40, 215, 3)
    ramp = np.linspace(0, 1, w)[None, :, None]
    background = a * (1 - ramp) + b * ramp + rng.normal(0, 12, (h, w, 3))
    img = Image.fromarray(background.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    s = min(w, h) * rng.uniform(0.25, 0.45)
    cx, cy = w / 2 + rng.uniform(-0.2, 0.2) * w, h / 2 + rng.uniform(-0.2, 0.2) * h
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    box = (cx - s, cy - s, cx + s, cy + s)
    if kind == "disc":
        draw.ellipse(box, fill=colour)
    elif kind == "square":
        draw.rectangle(box, fill=colour)
    elif kind == "triangle":
        draw.polygon([(cx, cy - s), (cx - s, cy + s), (cx + s, cy + s)], fill=colour)
    elif kind == "ring":
        draw.ellipse(box, outline=colour, width=max(2, int(s / 4)))
    elif kind == "cross":
        draw.rectangle((cx - s, cy - s / 4, cx + s, cy + s / 4), fill=colour)
        draw.rectangle((cx - s / 4, cy - s, cx + s / 4, cy + s), fill=colour)
    elif kind == "bar":
        draw.rectangle((cx - s, cy - s / 4, cx + s, cy + s / 4), fill=colour)
    elif kind == "column":
        draw.rectangle((cx - s / 4, cy - s, cx + s / 4, cy + s), fill=colour)
    else:
        draw.polygon([(cx, cy - s), (cx + s, cy), (cx, cy + s), (cx - s, cy)], fill=colour)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=88)
    return buf.getvalue()


def photo_folder(root: Path, per_class: int = 50, seed: int = 0) -> Path:
    """``root/<shape>/<i>.jpg``: 8 classes of ``per_class`` photos, each 300 to 1200 pixels a side."""
    import numpy as np

    rng = np.random.default_rng(seed)
    for kind in SHAPES:
        (root / kind).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            size = (int(rng.integers(300, 1201)), int(rng.integers(300, 1201)))
            (root / kind / f"{i}.jpg").write_bytes(_photo(kind, rng, size))
    return root


def own_data(options: Options) -> list[Row]:
    """Load a folder of 8 × 50 JPEG photos, then train on it with the Train page's defaults for such a set, and once
    more with the photos stretched to squares instead of cut, to show what the default resize policy is worth."""
    import torch

    from cnnviz import data, folders, models, train

    per_class = 10 if options.quick else 50
    with tempfile.TemporaryDirectory() as tmp:
        progress(f"writing 8 × {per_class} JPEG photos of 300–1200 px")
        folder = photo_folder(Path(tmp) / "photos", per_class)
        megabytes = sum(f.stat().st_size for f in folder.rglob("*.jpg")) / 2**20
        start = time.perf_counter()
        loaded = data.from_folder(folder, size=32)
        load_s = time.perf_counter() - start
        squashed = data.from_folder(folder, size=32, resize="squash")
    threads = torch.get_num_threads()

    def fit(loaded: data.Loaded) -> tuple[train.History, float]:
        info = loaded.info
        n_val = min(train.VAL_IMAGES, len(loaded.train) // 10)
        train_part, val_part = data.holdout(loaded.train, None, n_val, 0)
        model = models.build(models.preset(info.preset, info.channels, info.size, info.num_classes), seed=0)
        # Mirroring on, as a user would tick it for these classes: a mirrored disc, bar or cross is still one.
        config = train.TrainConfig(epochs=info.epochs, augment=True, flips=True, seed=0)
        progress(f"training {info.preset} ({info.resize}) for {config.total_steps(len(train_part))} steps on "
                 f"{len(train_part)} images")
        history = train.fit(model, train_part, config, val=val_part)
        return history, train.evaluate(model, loaded.test).accuracy

    history, accuracy = fit(loaded)
    _, squashed_accuracy = fit(squashed)
    info = loaded.info
    return [
        Row(f"load and check 8 × {per_class} JPEGs ({megabytes:.0f} MB, 300–1200 px) → 32×32", load_s, "s",
            at_most(5), checked=not options.quick),
        Row(f"train ({info.preset}, {len(history.steps)} steps, augmented and mirrored, {threads} threads)",
            history.seconds, "s", at_most(60), checked=not options.quick),
        Row(f"test accuracy on {len(loaded.test)} held-out photos, resized by {folders.RESIZE} (the default; 8 "
            f"classes: chance 12.5 %)", 100 * accuracy, "%", at_least(80), checked=not options.quick),
        Row("the same, stretched to squares (squash)", 100 * squashed_accuracy, "%"),
        Row("skipped files", len(loaded.skipped)),
    ]


@contextmanager
def zoo_home(names: tuple[str, ...]):
    """A temporary ``TORCH_HOME`` holding random weights under torchvision's file names for ``names``."""
    import torch
    import torchvision

    from cnnviz import zoo

    old = os.environ.get("TORCH_HOME")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["TORCH_HOME"] = tmp
        try:
            for name in names:
                path = zoo.weights_file(name)
                path.parent.mkdir(parents=True, exist_ok=True)
                kwargs = {"aux_logits": True, "init_weights": True} if name == "googlenet" else {}
                torch.save(torchvision.models.get_model(name, weights=None, **kwargs).state_dict(), path)
            yield
        finally:
            if old is None:
                os.environ.pop("TORCH_HOME", None)
            else:
                os.environ["TORCH_HOME"] = old


def _upload(i: int) -> bytes:
    """A 640×480 JPEG photo, new to every cache."""
    import numpy as np

    rng = np.random.default_rng(100 + i)
    return _photo(SHAPES[i % len(SHAPES)], rng, (640, 480))


VIEWS = ("Feature maps", "Filters", "Pooling", "Grad-CAM")


def zoo_explore(options: Options) -> list[Row]:
    """Explore on ResNet-18 and VGG-16 (AppTest, as served: one PyTorch thread per page computation): a new upload
    with the first view, then each other view, for several new photos; the sum is "upload → every view"."""
    from streamlit.logger import set_log_level
    from streamlit.testing.v1 import AppTest

    from cnnviz.ui import state

    set_log_level("error")
    targets = {"resnet18": 1.5, "vgg16": 4.0}
    rows = []
    n = 2 if options.quick else 4
    with zoo_home(tuple(targets)):
        state.zoo_model.clear()
        for name, target in targets.items():
            progress(f"{name}: {n} uploads, every view")
            at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300).run()
            at.session_state["model_choice"] = name
            at.switch_page("pages/explore.py").run()
            _check(at)
            totals, first = [], []
            for i in range(n + 1):  # the first upload also warms the shared model up: not counted
                at.session_state["explore_view"] = VIEWS[0]
                start = time.perf_counter()
                at.file_uploader(key="explore_upload").set_value((f"photo{i}.jpg", _upload(i), "image/jpeg")).run()
                one = time.perf_counter() - start
                _check(at)
                for view in VIEWS[1:]:
                    at.session_state["explore_view"] = view
                    at.switch_page("pages/explore.py").run()
                    _check(at)
                total = time.perf_counter() - start
                if i:
                    totals.append(total)
                    first.append(one)
            rows += [
                Row(f"{name}: upload → first view (median of {n})", statistics.median(first), "s"),
                Row(f"{name}: upload → every view (median of {n})", statistics.median(totals), "s", at_most(target),
                    note="each: " + ", ".join(f"{t:.2f}" for t in totals) + " s"),
            ]
        state.zoo_model.clear()
        rows.append(_lucid_one_channel(options))
    return rows


def _lucid_one_channel(options: Options) -> Row:
    """Activation maximisation of one channel of ResNet-18's last block (``layer4``, the deepest and slowest), in the
    style that makes ImageNet features recognisable (Lucid's: decorrelated Fourier parametrisation, jitter, scale
    and rotation), for the app's number of steps. Must be called inside :func:`zoo_home`."""
    from cnnviz import maximize, zoo

    steps = 16 if options.quick else 128
    progress(f"resnet18: activation maximisation of one layer4 channel, {steps} steps")
    zm = zoo.load("resnet18")
    start = time.perf_counter()
    result = maximize.activation_maximization(zm.model, "layer4", 7, (3, 224, 224), style="lucid", info=zm.info,
                                              steps=steps)
    seconds = time.perf_counter() - start
    return Row(f"resnet18: activation maximisation, one layer4 channel ({steps} steps, Lucid's style)", seconds, "s",
               at_most(30), checked=not options.quick,
               note=f"objective {result.history[0]:.2f} → {result.history[-1]:.2f}, on a {maximize.LUCID_SIZE}-px "
                    f"canvas")


def _check(at) -> None:
    if at.exception:
        raise RuntimeError(f"the page raised: {at.exception[0].value}")


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return kb / 1024


def zoo_memory(options: Options) -> list[Row]:
    """30 sessions (AppTest) on one VGG-16, each with Explore open on an upload: the server's memory grows by the
    sessions' own things, not by 30 copies of the network."""
    import gc

    from streamlit.logger import set_log_level
    from streamlit.testing.v1 import AppTest

    from cnnviz import zoo
    from cnnviz.ui import state

    set_log_level("error")
    sessions = 5 if options.quick else 30
    with zoo_home(("vgg16",)):
        state.zoo_model.clear()
        photo = _upload(0)
        apps = []

        def session() -> None:
            at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300).run()
            at.session_state["model_choice"] = "vgg16"
            at.switch_page("pages/explore.py").run()
            at.file_uploader(key="explore_upload").set_value(("photo.jpg", photo, "image/jpeg")).run()
            _check(at)
            apps.append(at)

        session()
        gc.collect()
        one = _rss_mb()
        weights_mb = sum(t.numel() * t.element_size() for t in state.zoo_model("vgg16").model.state_dict().values())
        weights_mb /= 2**20
        progress(f"{sessions - 1} more sessions on VGG-16")
        for _ in range(sessions - 1):
            session()
        gc.collect()
        more = _rss_mb() - one
        copies = {id(sm.model) for at in apps for sm in [at.session_state["_borrowed"]["vgg16"]]}
        shared = {p.data_ptr() for at in apps for p in [next(at.session_state["_borrowed"]["vgg16"].model.parameters())]}
        state.zoo_model.clear()
    return [
        Row("VGG-16's weights", weights_mb, "MB"),
        Row("server RSS with one session on VGG-16", one, "MB"),
        Row(f"{sessions - 1} more sessions on VGG-16: RSS growth", more, "MB", at_most(weights_mb),
            checked=not options.quick, note="the weights counted once: growth below one copy of them"),
        Row(f"module trees among {sessions} sessions (one each)", len(copies)),
        Row(f"storages of VGG-16's first weight among {sessions} sessions", len(shared), "", at_most(1)),
    ]
