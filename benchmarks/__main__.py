"""``python -m benchmarks [SECTION ...] [--quick] [--json] [--data-dir DIR] [--mnist-cap S] [--device D] [--no-docs]``:
run sections, print their figures beside their targets, write docs/benchmarks.md; exit 1 on a missed target."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

from benchmarks import (browser_train, camera, classroom, dissection, docs, gradients, inference, libraries, ray_jobs,
                        recipe, report, startup, training, webapp, yours)
from benchmarks.common import Options, resolve_device

SECTIONS = {
    "train-shapes": training.train_shapes,
    "train-mnist": training.train_mnist,
    "train-presets": training.train_presets,
    "mnist-to-99": recipe.mnist_to_99,
    "probe": inference.probe,
    "gradcam-libs": libraries.gradcam_libs,
    "pointing": inference.pointing,
    "app-train": training.app_train,
    "browser-train": browser_train.browser_train,
    "first-paint": webapp.first_paint,
    "explore": webapp.explore,
    "learn": inference.learn,
    "memory": classroom.memory,
    "classroom": classroom.classroom,
    "load": classroom.load,
    "own-data": yours.own_data,
    "zoo-explore": yours.zoo_explore,
    "zoo-memory": yours.zoo_memory,
    "camera": camera.camera,
    "gradient-stats": gradients.gradient_stats,
    "ray-jobs": ray_jobs.ray_jobs,
    "startup": startup.startup,
    "dissection": dissection.dissection,
}
# What a section says about its own length before it starts, beside the last recorded run's.
ANNOUNCE = {"mnist-to-99": recipe.announce}
USAGE = ("python -m benchmarks [SECTION …] [--quick] [--json] [--data-dir DIR] [--mnist-cap SECONDS] "
         "[--device auto|cpu|cuda] [--no-docs]")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__, epilog=(
        "Exit status: 0 when every target judged is met (a skipped section misses nothing); 1 when a target is "
        "missed or a section fails; 2 for bad arguments."))
    p.add_argument("sections", nargs="*", choices=[[], *SECTIONS], metavar="SECTION",
                   help=f"sections to run (default: all): {', '.join(SECTIONS)}")
    p.add_argument("--quick", action="store_true", help="a fast smoke run: smaller workloads, targets not judged "
                                                        "where the workload differs")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout (progress on stderr)")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="folder holding MNIST/raw/… (default: $CNNVIZ_DATA_DIR, ../shared/datasets, cnnviz's cache)")
    p.add_argument("--mnist-cap", type=float, default=None, metavar="SECONDS",
                   help=f"training seconds each run of mnist-to-99 may use (default {recipe.CAP_S:.0f}, "
                        f"{recipe.QUICK_CAP_S:.0f} with --quick); another cap is shown but not judged")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="where mnist-to-99 and gradcam-libs run (default: auto, a CUDA GPU when there is one); "
                        "the other sections run on the CPU")
    p.add_argument("--no-docs", action="store_true",
                   help=f"do not rewrite {docs.shown()} (--quick never does)")
    return p


def machine(device: str) -> dict:
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
            "cpu_model": cpu_model(), "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
            "torch_threads": torch.get_num_threads(), "load_average": [round(v, 2) for v in os.getloadavg()],
            "platform": platform.platform()}


def cpu_model() -> str:
    """The CPU's name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "an unknown CPU"


def announce(name: str, previous: dict[str, float], options: Options) -> str:
    """A line saying how long a section should take: its last recorded run, and what bounds it."""
    text = (f"about {_duration(previous[name])}, as on its last recorded run" if name in previous
            else "no recorded run to estimate its length from")
    if name in ANNOUNCE:
        text += f"; {ANNOUNCE[name](options)}"
    return f"  ({text})"


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def run_section(name: str, options: Options) -> report.Result:
    result = report.Result(name)
    start = time.perf_counter()
    try:
        result.rows = SECTIONS[name](options)
    except report.Skip as e:
        result.skipped = str(e)
    except Exception as e:  # one broken section must not hide the others' figures
        result.error = f"{type(e).__name__}: {e}"
        traceback.print_exc(file=sys.stderr)
    result.seconds = time.perf_counter() - start
    return result


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        device = resolve_device(args.device)
    except ValueError as e:
        parser().error(str(e))
    options = Options(quick=args.quick, data_dir=args.data_dir, mnist_cap=args.mnist_cap, device=device)
    names = args.sections or list(SECTIONS)
    out = sys.stderr if args.json else sys.stdout  # with --json, stdout holds the JSON object only
    info = machine(device)
    print(f"cnnviz benchmarks{' (quick)' if args.quick else ''}: {info['cpu_model']}, {info['cpus']} CPUs, "
          f"{info['gpu'] or 'no GPU used'}; Python {info['python']}, torch {info['torch']}, {info['torch_threads']} "
          f"torch threads, load average {' '.join(map(str, info['load_average']))}", file=out, flush=True)
    if info["load_average"][0] >= 1:
        print(f"warning: the machine is busy before we start (load average {info['load_average'][0]} on "
              f"{info['cpus']} CPUs): timings will be slower and noisier than on an idle machine", file=out)
    previous = docs.previous_seconds(docs.DOCS.read_text()) if docs.DOCS.is_file() else {}
    known = [previous[n] for n in names if n in previous]
    plan = f"{len(names)} section{'s' * (len(names) > 1)}: "
    if known:
        plan += f"about {_duration(sum(known))} for the {len(known)} with a run recorded in {docs.shown()}"
        plan += f"; {len(names) - len(known)} without one" if len(known) < len(names) else ""
    else:
        plan += f"no run recorded in {docs.shown()} to estimate their length from"
    print(plan, file=out, flush=True)
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    results, parts = [], {}
    for name in names:
        start_load = os.getloadavg()[0]
        print(report.header(name, start_load), file=out, flush=True)
        print(announce(name, previous, options), file=out, flush=True)
        result = run_section(name, options)
        results.append(result)
        print("\n".join(report.lines(result)), file=out, flush=True)
        parts[name] = docs.part(result, docs.describe(SECTIONS[name]), info, when, (start_load, os.getloadavg()[0]))
    summary = report.summary(results)
    print(f"\n{summary['pass']} PASS, {summary['miss']} MISS, {summary['skipped']} skipped, "
          f"{summary['errors']} errors in {summary['seconds']:.0f} s", file=out, flush=True)
    misses = [f"{res.section}: {r.name.strip()}" for res in results for r in res.rows if r.verdict == "MISS"]
    if misses:
        print("missed: " + "; ".join(misses), file=out, flush=True)
    if args.quick or args.no_docs:
        print(f"{docs.shown()} left as it was ({'--quick' if args.quick else '--no-docs'})",
              file=out, flush=True)
    else:
        old = docs.DOCS.read_text() if docs.DOCS.is_file() else ""
        command = " ".join(["python -m benchmarks", *(argv if argv is not None else sys.argv[1:])])
        skipped = {r.section for r in results if r.skipped}
        docs.DOCS.write_text(docs.render(old, parts, list(SECTIONS), skipped, command=command, when=when,
                                         usage=USAGE))
        print(f"wrote {docs.shown()} (the parts of: {', '.join(names)})", file=out, flush=True)
    if args.json:
        print(json.dumps({"quick": args.quick, "machine": info, "sections": [r.to_dict() for r in results],
                          "summary": summary}))
    return 1 if summary["errors"] or summary["miss"] else 0


if __name__ == "__main__":
    sys.exit(main())
