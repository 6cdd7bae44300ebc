"""``docs/benchmarks.md``, written by the benchmark itself: a header, then one part per section with its table.

A run rewrites the parts of the sections it ran and keeps the others, so every part says when, and on which machine,
its figures were measured. A section skipped this time (no MNIST, no browser) keeps its earlier part, if any.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable

from benchmarks.common import ROOT
from benchmarks.report import Result, Row, fmt

DOCS = ROOT / "docs" / "benchmarks.md"
MARK = "<!-- Written by `python -m benchmarks` (make bench): change benchmarks/, then rerun it; do not edit here. -->"
_TOOK = re.compile(r"the section took ([0-9.]+) s")
_WHEN = re.compile(r"^Measured (\d{4}-\d\d-\d\d)", re.M)


def shown() -> str:
    """Where the file is, for messages: relative to the repository when inside it."""
    return str(DOCS.relative_to(ROOT)) if DOCS.is_relative_to(ROOT) else str(DOCS)


def split(text: str) -> tuple[str, dict[str, str]]:
    """The text before the first ``## `` heading, and each ``## name`` part by name (heading included)."""
    head, *parts = re.split(r"(?m)^(?=## )", text)
    return head, {part.split("\n", 1)[0][3:].strip(): part.rstrip() + "\n" for part in parts}


def previous_seconds(text: str) -> dict[str, float]:
    """How long each section's recorded run took, by name (sections without a record are left out)."""
    found = {}
    for name, part in split(text)[1].items():
        if m := _TOOK.search(part):
            found[name] = float(m.group(1))
    return found


def describe(fn: Callable) -> str:
    """A section function's docstring as one Markdown paragraph (reST's ````x```` becomes `` `x` ``)."""
    doc = inspect.getdoc(fn) or ""
    return " ".join(doc.split()).replace("``", "`")


def machine_text(info: dict) -> str:
    device = info.get("gpu") or "no GPU used"
    return (f"{info['cpu_model']} ({info['cpus']} cores), {device}, torch {info['torch']}, Python {info['python']}, "
            f"{info['torch_threads']} torch threads")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def verdicts_in(text: str) -> list[str]:
    """The Verdict cells of the tables in ``text`` (as :func:`table` writes them: the 4th of 5 cells)."""
    found = []
    for line in text.splitlines():
        cells = re.split(r"(?<!\\)\|", line)[1:-1]  # on the pipes that are not escaped
        if line.startswith("|") and len(cells) == 5:
            found.append(cells[3].strip())
    return found


def table(rows: list[Row]) -> str:
    lines = ["| Figure | Value | Target | Verdict | Note |", "|---|--:|---|---|---|"]
    for r in rows:
        target = r.target.text(r.unit) if r.target else ""
        lines.append(f"| {_cell(r.name.strip())} | {_cell(fmt(r.value, r.unit))} | {target} | {r.verdict} | "
                     f"{_cell(r.note)} |")
    return "\n".join(lines)


def part(result: Result, description: str, info: dict, when: str, loads: tuple[float, float]) -> str:
    """One section's part: heading, what it measures, where and when, then its table (or why there is none)."""
    out = [f"## {result.section}", "", description, "",
           f"Measured {when} on {machine_text(info)}; load average {loads[0]:.2f} at the start, {loads[1]:.2f} at "
           f"the end; the section took {result.seconds:.0f} s.", ""]
    if result.rows:
        out += [table(result.rows), ""]
    if result.skipped:
        out += [f"Skipped: {result.skipped}", ""]
    if result.error:
        out += [f"Error: `{_cell(result.error)}`", ""]
    return "\n".join(out).rstrip() + "\n"


def render(old: str, new_parts: dict[str, str], order: list[str], skipped: set[str], **run: str) -> str:
    """The whole file. ``new_parts`` replace the old parts of the same name, except a section in ``skipped`` that
    has an old part (its earlier figures stay); the other old parts of sections in ``order`` stay, in that order.
    ``run`` (``command``, ``when``, ``usage``) goes to :func:`header`."""
    parts = {name: text for name, text in split(old)[1].items() if name in order}
    parts.update({name: text for name, text in new_parts.items() if not (name in skipped and name in parts)})
    body = "\n".join(parts[name] for name in order if name in parts)
    return header(parts, order, list(new_parts), **run) + "\n\n" + body


def header(parts: dict[str, str], order: list[str], ran: list[str], command: str, when: str, usage: str) -> str:
    """The text above the parts: how the file is made, what this run covered, what the file covers."""
    dates = {name: (m.group(1) if (m := _WHEN.search(text)) else "?") for name, text in parts.items()}
    covered = ", ".join(f"`{name}` ({dates[name]})" for name in order if name in parts) or "none yet"
    missing = [f"`{name}`" for name in order if name not in parts]
    verdicts = [v for text in parts.values() for v in verdicts_in(text)]
    lines = [
        "# Benchmarks", "", MARK, "",
        "Every figure here is written by `python -m benchmarks` (`make bench`); none is copied by hand. A run "
        "rewrites the parts of the sections it ran and keeps the others, so each part says when and on which "
        "machine it was measured; a section skipped in a run (missing data or browser) keeps its earlier part. "
        "`--quick` (a smoke run) and `--no-docs` leave this file alone. Each figure stands beside its target: PASS "
        "or MISS; `make bench` exits with status 1 when a target is missed or a section fails.", "",
        f"Usage: `{usage}`.", "",
        f"Last written {when} by `{command}` (sections run: {', '.join(ran)}).", "",
        f"This file covers: {covered}." + (f" Not measured yet: {', '.join(missing)}." if missing else ""),
        f"In all: {verdicts.count('PASS')} PASS, {verdicts.count('MISS')} MISS.",
    ]
    return "\n".join(lines)
