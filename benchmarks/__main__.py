"""``python -m benchmarks [SECTION ...] [--quick] [--json] [--data-dir DIR]``: run sections, print their figures."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

from benchmarks import browser_train, classroom, inference, report, training, webapp
from benchmarks.common import Options

SECTIONS = {
    "train-shapes": training.train_shapes,
    "train-mnist": training.train_mnist,
    "probe": inference.probe,
    "pointing": inference.pointing,
    "app-train": training.app_train,
    "browser-train": browser_train.browser_train,
    "first-paint": webapp.first_paint,
    "explore": webapp.explore,
    "learn": inference.learn,
    "memory": classroom.memory,
    "classroom": classroom.classroom,
    "load": classroom.load,
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    p.add_argument("sections", nargs="*", choices=[[], *SECTIONS], metavar="SECTION",
                   help=f"sections to run (default: all): {', '.join(SECTIONS)}")
    p.add_argument("--quick", action="store_true", help="a fast smoke run: smaller workloads, targets not judged "
                                                        "where the workload differs")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout (progress on stderr)")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="folder holding MNIST/raw/… (default: $CNNVIZ_DATA_DIR, ../shared/datasets, cnnviz's cache)")
    return p


def machine() -> dict:
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "load_average": [round(v, 2) for v in os.getloadavg()],
            "platform": platform.platform()}


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
    options = Options(quick=args.quick, data_dir=args.data_dir)
    names = args.sections or list(SECTIONS)
    out = sys.stderr if args.json else sys.stdout  # with --json, stdout holds the JSON object only
    info = machine()
    print(f"cnnviz benchmarks{' (quick)' if args.quick else ''}: Python {info['python']}, torch {info['torch']}, "
          f"{info['cpus']} CPUs, {info['torch_threads']} torch threads, load average "
          f"{' '.join(map(str, info['load_average']))}", file=out, flush=True)
    if info["load_average"][0] >= 1:
        print(f"warning: the machine is busy before we start (load average {info['load_average'][0]} on "
              f"{info['cpus']} CPUs): timings will be slower and noisier than on an idle machine", file=out)
    results = []
    for name in names:
        print(report.header(name, os.getloadavg()[0]), file=out, flush=True)
        result = run_section(name, options)
        results.append(result)
        print("\n".join(report.lines(result)), file=out, flush=True)
    summary = report.summary(results)
    print(f"\n{summary['pass']} PASS, {summary['miss']} MISS, {summary['skipped']} skipped, "
          f"{summary['errors']} errors in {summary['seconds']:.0f} s", file=out, flush=True)
    if args.json:
        print(json.dumps({"quick": args.quick, "machine": info, "sections": [r.to_dict() for r in results],
                          "summary": summary}))
    return 1 if summary["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
