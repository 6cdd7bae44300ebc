"""How long one ``cnnviz inspect`` takes, as a user meets it: a fresh process, from the shell to its exit."""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

from benchmarks.common import SHIPPED_MODEL, Options, progress, run_child
from benchmarks.report import Row, Skip, at_most

RUNS = 3  # timed runs of each command, after one untimed run that brings the files into the page cache
TARGET_S = 3.0  # issue 15: one `cnnviz inspect` of the shipped model, wall clock, on the 2-core machine
MANY = 8  # images in the many-images call


def startup(options: Options) -> list[Row]:
    """Wall time of a fresh ``cnnviz inspect --checkpoint assets/shapes_model.pt --image one.png --out DIR``
    process (the console script beside this Python), median of 3 after an untimed run; beside it, the same call
    with 8 images (the model loads once) and the floors every command pays: ``python -c "import torch"``, and the
    same with torchvision. The machine's other processes slow every figure down: the load average is printed with
    the section."""
    script = Path(sys.executable).with_name("cnnviz")
    if not script.is_file():
        raise Skip(f"no cnnviz console script beside {sys.executable} (pip install -e . makes it)")
    with tempfile.TemporaryDirectory() as tmp:
        pictures = _pictures(Path(tmp) / "images", MANY)
        command = [str(script), "inspect", "--checkpoint", str(SHIPPED_MODEL)]
        one = [*command, "--image", str(pictures[0]), "--out", str(Path(tmp) / "one")]
        many = [*command, *(a for p in pictures for a in ("--image", str(p))), "--out", str(Path(tmp) / "many")]
        single = _median(one)
        progress(f"inspect, 1 image: {single:.2f} s")
        several = _median(many)
        progress(f"inspect, {MANY} images: {several:.2f} s")
        floor = _median([sys.executable, "-c", "import torch"])
        # Any torchvision import runs torchvision/__init__, which imports its models, whose ops import torch._dynamo.
        vision = _median([sys.executable, "-c", "import torch, torchvision"])
    return [
        Row(f"cnnviz inspect, shipped model, 1 image (median of {RUNS} fresh processes)", single, "s",
            at_most(TARGET_S)),
        Row(f"cnnviz inspect, shipped model, {MANY} images in one call", several, "s",
            note=f"{(several - single) / (MANY - 1):.2f} s for each image after the first"),
        Row("python -c 'import torch' (what every command pays first)", floor, "s"),
        Row("python -c 'import torch, torchvision' (what inspect's resizing and figures pay)", vision, "s",
            note=f"torchvision adds {vision - floor:.2f} s; cnnviz's own work {single - vision:.2f} s"),
    ]


def _median(args: list[str]) -> float:
    """Median wall seconds of :data:`RUNS` runs of ``args``, after one untimed run; a failed run raises."""
    times = []
    for run in range(RUNS + 1):
        child = run_child(args, timeout=300)
        if child.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} … exited with {child.returncode}: "
                               f"{child.stderr.strip()[-500:]}")
        if run:
            times.append(child.seconds)
    return statistics.median(times)


def _pictures(folder: Path, n: int) -> list[Path]:
    """``n`` shapes images (test split of seed 0) as PNG files: what the shipped model was trained to tell apart."""
    from PIL import Image

    from cnnviz import shapes

    folder.mkdir(parents=True)
    x, _, _ = shapes.generate(n, seed=1)
    paths = []
    for i, image in enumerate(x):
        paths.append(folder / f"shape {i}.png")
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(paths[-1])
    return paths

