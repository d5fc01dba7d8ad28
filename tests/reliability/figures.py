"""Figures of the reliability tests, rendered into docs/reliability.md at the end of a session.

Any test (in this package or elsewhere) adds a figure with one call::

    from tests.reliability.figures import record

    record("faults survived", 23, detail="every sandbox fault, diagnosed and recovered")
    record("examples tried: parse_ready", 200, section="Bad input")

- `name`: what is counted, unique within its section (a later record of the same section
  and name replaces the earlier one, so a test that runs twice records once).
- `value`: an int, float or short string.
- `detail`: one line saying what the figure covers (places searched, cases, limits).
- `section`: the heading the figure is listed under; by default derived from the calling
  module, e.g. ``tests/reliability/test_fault_matrix.py`` -> "Fault matrix".

Storage: each call appends one JSON line (section, name, value, detail, test node id) to a
file in the session's figures directory (``$HOKUSAI_FIGURES_DIR``, created on first use and
inherited by subprocesses). At the end of the session ``tests/reliability/conftest.py``
renders docs/reliability.md from every figure recorded by a test that did not fail, keeping
the figures of sections and names that did not run this time (read back from the JSON block
at the end of the document), so a partial run never erases the rest. The document has no
timestamps or durations: the same results render the same bytes.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ENV_DIR = "HOKUSAI_FIGURES_DIR"
DOC = Path(__file__).resolve().parents[2] / "docs" / "reliability.md"
BUILD_DOC = Path(__file__).resolve().parents[2] / "build" / "reliability.md"
_DATA_START = "<!-- figures-json"
_DATA_END = "-->"

Value = int | float | str


@dataclass(frozen=True)
class Figure:
    section: str
    name: str
    value: Value
    detail: str = ""
    test: str = ""  # pytest node id of the recording test ("" outside pytest)

    @property
    def key(self) -> tuple[str, str]:
        return self.section, self.name


_created: list[Path] = []  # directories made here, removed by `discard` at the session's end


def figures_dir() -> Path:
    """This session's directory of figure files (created, and exported to subprocesses)."""
    path = os.environ.get(ENV_DIR)
    if not path:
        path = tempfile.mkdtemp(prefix="hokusai-figures-")
        os.environ[ENV_DIR] = path
        _created.append(Path(path))
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def _section_of_caller() -> str:
    frame = sys._getframe(2)  # 0: here, 1: record, 2: the test that called record
    module = Path(frame.f_code.co_filename).stem.removeprefix("test_").replace("_", " ")
    return module[:1].upper() + module[1:]


def _current_test() -> str:
    # "tests/x.py::test_y[param] (call)" -> "tests/x.py::test_y[param]"
    return os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" (", 1)[0]


def record(name: str, value: Value, *, detail: str = "", section: str | None = None) -> Figure:
    """Add one figure; see the module docstring."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise TypeError(f"a figure is an int, float or str, not {type(value).__name__}")
    figure = Figure(
        section=section or _section_of_caller(),
        name=name,
        value=value,
        detail=" ".join(detail.split()),
        test=_current_test(),
    )
    line = json.dumps(asdict(figure), sort_keys=True)
    with (figures_dir() / f"figures-{os.getpid()}.jsonl").open("a", encoding="utf-8") as out:
        out.write(line + "\n")
    return figure


def discard() -> None:
    """Forget this session's figures: remove the directory if it was made here."""
    for path in _created:
        shutil.rmtree(path, ignore_errors=True)
    _created.clear()
    os.environ.pop(ENV_DIR, None)


def recorded(directory: Path | None = None) -> list[Figure]:
    """Every figure recorded in this session, in order (later duplicates win on render)."""
    directory = directory or figures_dir()
    out: list[Figure] = []
    for path in sorted(directory.glob("figures-*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                out.append(Figure(**json.loads(line)))
    return out


def previous(doc: Path = DOC) -> list[Figure]:
    """The figures embedded in an earlier rendering of the document (none if unreadable)."""
    try:
        text = doc.read_text(encoding="utf-8")
    except OSError:
        return []
    start = text.rfind(_DATA_START)
    if start < 0:
        return []
    block = text[start + len(_DATA_START) :]
    block = block[: block.find(_DATA_END)] if _DATA_END in block else block
    try:
        data: list[dict[str, Any]] = json.loads(block)
        return [Figure(**item) for item in data]
    except (ValueError, TypeError):
        return []


def merge(
    old: list[Figure], new: list[Figure], passed: set[str], collected: set[str]
) -> list[Figure]:
    """Old figures overwritten (by section and name) by the new ones; order of first sight.

    An old figure is dropped when its test passed this session without recording it again
    (renamed), or when its test's module was collected and the test no longer exists."""
    modules = {node.split("::", 1)[0] for node in collected}

    def stale(figure: Figure) -> bool:
        if figure.test in passed:
            return True
        return figure.test.split("::", 1)[0] in modules and figure.test not in collected

    merged: dict[tuple[str, str], Figure] = {}
    for figure in [*(f for f in old if not stale(f)), *new]:
        merged[figure.key] = figure
    return list(merged.values())


def _cell(value: Value | str) -> str:
    text = f"{value:,}" if isinstance(value, int) else str(value)
    return text.replace("|", "\\|")


def render(figures: list[Figure]) -> str:
    """The markdown document: one table per section, sections in alphabetical order."""
    sections: dict[str, list[Figure]] = {}
    for figure in figures:
        sections.setdefault(figure.section, []).append(figure)
    lines = [
        "# Reliability and security figures",
        "",
        "Generated by the reliability tests (`uv run pytest tests/reliability`); do not edit by",
        "hand. Each figure is recorded by the test named under it, and only when that test",
        "passed. Add one from any test with",
        '`tests.reliability.figures.record("name", value, detail="...")`.',
        "",
    ]
    for section in sorted(sections):
        lines += [f"## {section}", "", "| figure | value | what it covers |", "|---|---:|---|"]
        for figure in sections[section]:
            detail = figure.detail + (f" (`{figure.test}`)" if figure.test else "")
            lines.append(f"| {_cell(figure.name)} | {_cell(figure.value)} | {_cell(detail)} |")
        lines.append("")
    data = json.dumps([asdict(f) for f in figures], indent=1, sort_keys=True)
    lines += [_DATA_START, data, _DATA_END, ""]
    return "\n".join(lines)


def write_document(
    new: list[Figure],
    passed: set[str] | frozenset[str] = frozenset(),
    collected: set[str] | frozenset[str] = frozenset(),
    doc: Path = DOC,
) -> bool:
    """Merge `new` into the document (see `merge`); True when its content changed."""
    text = render(merge(previous(doc), new, set(passed), set(collected)))
    try:
        if doc.read_text(encoding="utf-8") == text:
            return False
    except OSError:
        pass
    doc.parent.mkdir(parents=True, exist_ok=True)
    tmp = doc.with_suffix(".md.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(doc)
    return True
