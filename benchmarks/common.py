"""What every section needs: the options, where the repository and the data are, timing and child processes."""

from __future__ import annotations

import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_MODEL = ROOT / "assets" / "shapes_model.pt"
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
               "t10k-labels-idx1-ubyte")


@dataclass(frozen=True)
class Options:
    quick: bool = False  # a smoke run: smaller workloads, targets shown but not judged where the workload differs
    data_dir: Path | None = None  # --data-dir
    mnist_cap: float | None = None  # --mnist-cap: training seconds each run to 99 % may use (None: the default)
    device: str = "cpu"  # --device, resolved: where mnist-to-99 and gradcam-libs run ("cpu" or "cuda")


def resolve_device(name: str) -> str:
    """``auto`` → ``cuda`` when PyTorch sees a GPU, else ``cpu``; ``cuda`` without a GPU is an error."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: PyTorch sees no CUDA device here")
    return name


def synchronize(device) -> None:
    """Wait for the device's queued work, so that a clock read after it counts that work (a no-op on a CPU)."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def progress(text: str) -> None:
    """A progress line of a long section, on stderr (stdout may hold the JSON report)."""
    print(f"  … {text}", file=sys.stderr, flush=True)


def mnist_dir(options: Options) -> tuple[Path | None, list[Path]]:
    """The first data dir holding MNIST in torchvision's layout (``MNIST/raw/…``), and every dir looked at.

    An explicit ``--data-dir`` is the only place looked at; otherwise ``$CNNVIZ_DATA_DIR``, the shared datasets
    folder beside the repository (``../shared/datasets``) and cnnviz's own cache, in that order. Nothing is
    downloaded: a benchmark must not depend on the network.
    """
    if options.data_dir is not None:
        candidates = [options.data_dir]
    else:
        from cnnviz.data import default_data_dir

        env = os.environ.get("CNNVIZ_DATA_DIR")
        candidates = [Path(env).expanduser()] if env else []
        candidates = list(dict.fromkeys([*candidates, ROOT.parent / "shared" / "datasets", default_data_dir()]))
    for d in candidates:
        if all((d / "MNIST" / "raw" / f).is_file() for f in MNIST_FILES):
            return d, candidates
    return None, candidates


def median_times(fns: list[Callable[[], object]], runs: int, warmup: int = 3) -> tuple[list[float], float]:
    """Call ``fns`` one after another ``runs`` times (after ``warmup`` untimed rounds): the median seconds of each,
    and the median of their sum."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times = []
    for _ in range(runs):
        row = []
        for fn in fns:
            start = time.perf_counter()
            fn()
            row.append(time.perf_counter() - start)
        times.append(row)
    return [statistics.median(col) for col in zip(*times)], statistics.median(sum(row) for row in times)


@dataclass
class Child:
    """A finished child process: exit code, output, wall seconds from spawn to exit, its own peak RSS."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float
    max_rss_mb: float


def run_child(args: list[str], timeout: float = 600) -> Child:
    """Run ``args`` in the repository root and measure it alone: ``wait4`` gives this child's own peak RSS
    (``RUSAGE_CHILDREN`` would be the largest of every child waited for so far)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(args, cwd=ROOT, stdout=out, stderr=err)
        returncode, rss = reap(proc, timeout)
        seconds = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        return Child(returncode, out.read().decode(errors="replace"), err.read().decode(errors="replace"),
                     seconds, rss)


def reap(proc: subprocess.Popen, timeout: float) -> tuple[int, float]:
    """Wait for ``proc`` (killed after ``timeout`` s); its exit code and peak RSS in MB."""
    killer = threading.Timer(timeout, proc.kill)
    killer.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        killer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    # ru_maxrss is in kilobytes on Linux, in bytes on macOS.
    rss_kb = usage.ru_maxrss / 1024 if sys.platform == "darwin" else usage.ru_maxrss
    return proc.returncode, rss_kb / 1024


def free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def torch_threads(n: int):
    """Run the block with ``torch.set_num_threads(n)``, then put the old setting back."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` itself, all its threads, none of its children (``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime: fields 14, 15 of stat
