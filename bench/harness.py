"""Figures, targets, the printed table and the JSON file: what every benchmark reports.

A benchmark repeats a measurement several times and records each repetition's value under
a figure name. Comparisons are figures too (a ratio or a difference computed per
repetition from two measurements taken side by side), so that machine-to-machine drift
cancels out. A target is judged on a figure's median, or on its worst value where every
repetition must meet it.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TextIO

import psutil

Op = Literal["<=", ">=", "<", ">", "=="]
Stat = Literal["median", "min", "max"]

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": lambda a, b: a <= b,
    ">=": lambda a, b: a >= b,
    "<": lambda a, b: a < b,
    ">": lambda a, b: a > b,
    "==": lambda a, b: a == b,
}


@dataclass
class Figure:
    """One measured quantity, one value per repetition."""

    name: str
    unit: str
    description: str
    values: list[float] = field(default_factory=list)

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None

    @property
    def min(self) -> float | None:
        return min(self.values) if self.values else None

    @property
    def max(self) -> float | None:
        return max(self.values) if self.values else None

    def as_json(self) -> dict[str, Any]:
        return {
            "unit": self.unit,
            "description": self.description,
            "median": _finite(self.median),
            "min": _finite(self.min),
            "max": _finite(self.max),
            "n": len(self.values),
            "values": [_finite(round(v, 4)) for v in self.values],
        }


@dataclass
class Goal:
    """A target of the issue: `figure` (its median) `op` `limit`."""

    text: str
    figure: str
    op: Op
    limit: float
    stat: Stat = "median"
    value: float | None = None
    met: bool | None = None  # None: the figure was not measured

    def as_json(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "figure": self.figure,
            "op": self.op,
            "limit": self.limit,
            "stat": self.stat,
            "value": _finite(self.value),
            "met": self.met,
        }


@dataclass
class BenchResult:
    name: str
    title: str
    figures: dict[str, Figure] = field(default_factory=dict)
    goals: list[Goal] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0

    def figure(self, name: str, unit: str, description: str) -> Figure:
        """The figure `name`, declared once (order of declaration is the order printed)."""
        if name not in self.figures:
            self.figures[name] = Figure(name, unit, description)
        return self.figures[name]

    def add(self, name: str, value: float) -> None:
        self.figures[name].values.append(float(value))

    def goal(self, text: str, figure: str, op: Op, limit: float, stat: Stat = "median") -> None:
        """A target judged on the figure's median, or on its worst value (`stat` min/max)."""
        self.goals.append(Goal(text, figure, op, limit, stat))

    def note(self, text: str) -> None:
        self.notes.append(text)

    def judge(self) -> None:
        for goal in self.goals:
            fig = self.figures.get(goal.figure)
            goal.value = getattr(fig, goal.stat) if fig is not None else None
            goal.met = None if goal.value is None else _OPS[goal.op](goal.value, goal.limit)

    def as_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "seconds": round(self.seconds, 1),
            "figures": {name: f.as_json() for name, f in self.figures.items()},
            "targets": [g.as_json() for g in self.goals],
            "notes": self.notes,
            "error": self.error,
        }


def _finite(value: float | None) -> float | None:
    """JSON has no infinity: a non-finite value is written as null."""
    return value if value is not None and math.isfinite(value) else None


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else float("inf")


@contextmanager
def stopwatch() -> Iterator[Callable[[], float]]:
    """`with stopwatch() as elapsed:` ... `elapsed()` seconds since entering (frozen on exit)."""
    started = time.perf_counter()
    stopped: list[float] = []

    def elapsed() -> float:
        return (stopped[0] if stopped else time.perf_counter()) - started

    try:
        yield elapsed
    finally:
        stopped.append(time.perf_counter())


# --- the machine ------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        from importlib.metadata import version

        prefect_version = version("prefect")
    except Exception:
        prefect_version = "unknown"
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "prefect": prefect_version,
    }


# --- output -------------------------------------------------------------------------------


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    if value == float("inf"):
        return "inf"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:.0f}"
    if magnitude >= 100:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def table_rows(results: list[BenchResult]) -> list[list[str]]:
    rows = [["benchmark", "figure", "unit", "median", "min", "max", "n"]]
    for r in results:
        for f in r.figures.values():
            rows.append(
                [
                    r.name,
                    f.name,
                    f.unit,
                    _num(f.median),
                    _num(f.min),
                    _num(f.max),
                    str(len(f.values)),
                ]
            )
    return rows


def target_lines(results: list[BenchResult]) -> list[str]:
    lines = []
    for r in results:
        if r.error:
            lines.append(f"[ERROR]  {r.name}: {r.error}")
        for g in r.goals:
            mark = {True: "met", False: "NOT MET", None: "no data"}[g.met]
            lines.append(
                f"[{mark}] {r.name}: {g.text} ({g.figure} {g.stat} {_num(g.value)} "
                f"{g.op} {_num(g.limit)})"
            )
    return lines


def render_text(results: list[BenchResult]) -> str:
    rows = table_rows(results)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    right = {3, 4, 5, 6}
    out = []
    for n, row in enumerate(rows):
        cells = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        out.append("  ".join(cells).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    out.append("")
    out.append("Targets:")
    out += [f"  {line}" for line in target_lines(results)]
    notes = [(r.name, n) for r in results for n in r.notes]
    if notes:
        out.append("")
        out.append("Notes:")
        out += [f"  {name}: {n}" for name, n in notes]
    return "\n".join(out)


def render_markdown(results: list[BenchResult]) -> str:
    """The same table as markdown (for BENCHMARKS.md)."""
    rows = table_rows(results)
    out = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    out += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    return "\n".join(out)


def write_json(
    path: Path, results: list[BenchResult], info: dict[str, Any], started: datetime
) -> None:
    data = {
        "started_at": started.isoformat(),
        "finished_at": datetime.now(UTC).isoformat(),
        **info,
        "benchmarks": {r.name: r.as_json() for r in results},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")


def say(text: str, out: TextIO | None = None) -> None:
    """Progress lines (stderr), so that stdout carries the table only."""
    import sys

    print(text, file=out or sys.stderr, flush=True)
