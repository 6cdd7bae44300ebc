"""Figures, their targets, and the table (or JSON) they are printed as."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


class Skip(Exception):
    """A section that cannot run here (missing data, browser, …); the message says what is missing."""


@dataclass(frozen=True)
class Target:
    """``op`` is ``">="`` or ``"<="``: the value must be at least / at most ``value``."""

    op: str
    value: float

    def met(self, x: float) -> bool:
        return x >= self.value if self.op == ">=" else x <= self.value

    def text(self, unit: str) -> str:
        return f"{'≥' if self.op == '>=' else '≤'} {self.value:g}{_suffix(unit)}"


def at_least(value: float) -> Target:
    return Target(">=", value)


def at_most(value: float) -> Target:
    return Target("<=", value)


@dataclass
class Row:
    """One measured figure. ``checked=False`` when a quick run's workload is not the one the target is about."""

    name: str
    value: float | None
    unit: str = ""
    target: Target | None = None
    note: str = ""
    checked: bool = True

    @property
    def verdict(self) -> str:
        """PASS or MISS against the target; a figure that could not be measured (None, NaN) misses it. "" without
        a target, "(quick)" where the target was not judged."""
        if self.target is None:
            return ""
        if not self.checked:
            return "(quick)"
        if self.value is None or math.isnan(self.value):
            return "MISS"
        return "PASS" if self.target.met(self.value) else "MISS"

    def to_dict(self) -> dict:
        return {"name": self.name, "value": self.value, "unit": self.unit,
                "target": self.target.text(self.unit) if self.target else None, "verdict": self.verdict or None,
                "note": self.note or None}


@dataclass
class Result:
    """What one section produced: rows, or the reason it was skipped, or the error it hit."""

    section: str
    rows: list[Row] = field(default_factory=list)
    seconds: float = 0.0
    skipped: str = ""
    error: str = ""

    def to_dict(self) -> dict:
        return {"section": self.section, "seconds": round(self.seconds, 2), "skipped": self.skipped or None,
                "error": self.error or None, "rows": [r.to_dict() for r in self.rows]}


# How many decimals each unit gets; values are stored unrounded.
_FORMATS = {"%": "{:.2f}", "s": "{:.2f}", "ms": "{:.1f}", "img/s": "{:,.0f}", "MB": "{:,.0f}", "×": "{:.2f}",
            "pp": "{:+.2f}", "MFLOP": "{:,.2f}", "frames/s": "{:.1f}", "GFLOP/s": "{:,.1f}", "r": "{:.6f}", "": "{:g}"}
_UNSHOWN = ("", "r")  # units not written after the number ("r": a correlation coefficient)
NAME_W, VALUE_W, TARGET_W = 56, 12, 12


def fmt(value: float | None, unit: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return _FORMATS.get(unit, "{:g}").format(value) + _suffix(unit)


def _suffix(unit: str) -> str:
    if unit in _UNSHOWN:
        return ""
    return unit if unit == "×" else f" {unit}"


def header(section: str, load: float) -> str:
    title = f"{section} (load average {load:.2f})"
    return f"\n== {title} " + "=" * max(0, NAME_W + VALUE_W + TARGET_W + 8 - len(title))


def line(row: Row) -> str:
    target = row.target.text(row.unit) if row.target else ""
    text = f"  {row.name:<{NAME_W}} {fmt(row.value, row.unit):>{VALUE_W}}  {target:<{TARGET_W}} {row.verdict:<7}"
    return (text + (f" {row.note}" if row.note else "")).rstrip()


def lines(result: Result) -> list[str]:
    out = [line(r) for r in result.rows]
    if result.skipped:
        out.append(f"  skipped: {result.skipped}")
    if result.error:
        out.append(f"  error: {result.error}")
    out.append(f"  ({result.seconds:.1f} s)")
    return out


def summary(results: list[Result]) -> dict:
    verdicts = [r.verdict for res in results for r in res.rows]
    return {"pass": verdicts.count("PASS"), "miss": verdicts.count("MISS"),
            "skipped": sum(bool(r.skipped) for r in results), "errors": sum(bool(r.error) for r in results),
            "seconds": round(sum(r.seconds for r in results), 1)}
