"""Figures and observations recorded by tests, kept only when the recording test passed.

Any test (in this package or elsewhere) adds a figure to docs/reliability.md with one call::

    from tests.reliability.figures import record

    record("faults survived", 23, detail="every sandbox fault, diagnosed and recovered")
    record("examples tried: parse_ready", 200, section="Bad input")

- `name`: what is counted, unique within its section (a later record of the same section
  and name replaces the earlier one, so a test that runs twice records once).
- `value`: an int, float or short string.
- `detail`: one line saying what the figure covers (places searched, cases, limits).
- `section`: the heading the figure is listed under; by default derived from the calling
  module, e.g. ``tests/reliability/test_fault_matrix.py`` -> "Fault matrix".

`observe(doc, key, data)` records a structured observation for another document (the fault
matrix's rows).

How a figure reaches a document, by construction (`tests/reliability/figures_plugin.py`):

1. During a session each call appends one JSON line, tagged with the running test's node id,
   to the session's pending directory (``$HOKUSAI_FIGURES_DIR``, made by the plugin at the
   session's start and inherited by subprocesses). Outside such a session nothing is kept.
2. When the session ends, every test that ran has its entry in the store
   (``build/figures/results.json``, or ``$HOKUSAI_FIGURES_BUILD``) replaced: by what it
   recorded if setup, call and teardown all passed; by nothing otherwise (failed, skipped,
   xfailed, interrupted). Tests that did not run keep their entries.
3. `python -m tests.reliability.documents` renders docs/reliability.md and
   docs/fault-matrix.md from the store (see that module). The session renders the same into
   the build directory as a preview; no test writes a tracked file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
ENV_DIR = "HOKUSAI_FIGURES_DIR"  # the session's pending records (set by the plugin)
ENV_BUILD = "HOKUSAI_FIGURES_BUILD"  # the store's directory (default build/figures)
RELIABILITY, FAULT_MATRIX = "reliability", "fault-matrix"

Value = int | float | str


@dataclass(frozen=True)
class Entry:
    """One figure or observation: `key` is unique within its document."""

    doc: str
    key: str
    data: dict[str, Any]
    test: str = ""  # pytest node id of the recording test

    @property
    def module(self) -> str:
        return self.test.split("::", 1)[0]


@dataclass
class Store:
    """What the last run of each test left: its entries if it passed, none otherwise."""

    tests: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> passed, entries
    collected: dict[str, list[str]] = field(default_factory=dict)  # module -> node ids

    def ran(self) -> set[str]:
        return set(self.tests)

    def entries(self, doc: str | None = None) -> list[Entry]:
        out = [Entry(**e) for t in self.tests.values() if t["passed"] for e in t["entries"]]
        return [e for e in out if doc is None or e.doc == doc]


def _current_test() -> str:
    # "tests/x.py::test_y[param] (call)" -> "tests/x.py::test_y[param]"
    return os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" (", 1)[0]


def _append(doc: str, key: str, data: dict[str, Any]) -> Entry:
    entry = Entry(doc=doc, key=key, data=data, test=_current_test())
    directory = os.environ.get(ENV_DIR)
    if directory and entry.test and os.path.isdir(directory):
        line = json.dumps(asdict(entry), sort_keys=True)
        with open(os.path.join(directory, f"entries-{os.getpid()}.jsonl"), "a") as out:
            out.write(line + "\n")
    return entry


def _section_of_caller() -> str:
    frame = sys._getframe(2)  # 0: here, 1: record, 2: the test that called record
    module = Path(frame.f_code.co_filename).stem.removeprefix("test_").replace("_", " ")
    return module[:1].upper() + module[1:]


def record(name: str, value: Value, *, detail: str = "", section: str | None = None) -> Entry:
    """Add one figure to docs/reliability.md; see the module docstring."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise TypeError(f"a figure is an int, float or str, not {type(value).__name__}")
    section = section or _section_of_caller()
    data = {"section": section, "name": name, "value": value, "detail": " ".join(detail.split())}
    return _append(RELIABILITY, f"{section} / {name}", data)


def observe(doc: str, key: str, data: dict[str, Any]) -> Entry:
    """Add one observation (JSON-serialisable `data`) to document `doc` under `key`."""
    json.dumps(data)  # fail here, in the test, rather than at the session's end
    return _append(doc, key, data)


def pending(directory: Path) -> list[Entry]:
    """The entries recorded in this session's pending directory, in order."""
    out: list[Entry] = []
    for path in sorted(directory.glob("entries-*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                out.append(Entry(**json.loads(line)))
    return out


def build_dir() -> Path:
    return Path(os.environ.get(ENV_BUILD) or ROOT / "build" / "figures")


def store_path(directory: Path | None = None) -> Path:
    return (directory or build_dir()) / "results.json"


def read_store(directory: Path | None = None) -> Store:
    try:
        data = json.loads(store_path(directory).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return Store()
    return Store(tests=data.get("tests", {}), collected=data.get("collected", {}))


@contextlib.contextmanager
def updating_store(directory: Path | None = None) -> Iterator[Store]:
    """The store, read and written back atomically under a lock (two sessions may end at once)."""
    path = store_path(directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        store = read_store(path.parent)
        yield store
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".results.")
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(asdict(store), out, indent=1, sort_keys=True)
        os.replace(tmp, path)


def settle(
    store: Store,
    outcomes: dict[str, bool],
    recorded: Iterable[Entry],
    collected: Iterable[str],
) -> None:
    """Fold one session into the store: each test that ran (`outcomes`: passed or not) gets
    what it recorded if it passed, nothing otherwise; entries of tests that did not run stay."""
    by_test: dict[str, list[dict[str, Any]]] = {}
    for entry in recorded:
        by_test.setdefault(entry.test, []).append(asdict(entry))
    for test, passed in outcomes.items():
        store.tests[test] = {"passed": passed, "entries": by_test.get(test, []) if passed else []}
    modules: dict[str, list[str]] = {}
    for node in collected:
        modules.setdefault(node.split("::", 1)[0], []).append(node)
    for module, nodes in modules.items():
        # A test renamed or removed since: what it recorded goes with it.
        for test in [t for t in store.tests if t.split("::", 1)[0] == module]:
            if test not in nodes:
                del store.tests[test]
    store.collected.update(modules)


def merge(previous: Iterable[Entry], store: Store, doc: str) -> list[Entry]:
    """The entries of `doc`: those of an earlier rendering, less every one whose test ran since
    (passed or not) or no longer exists, updated with those of the tests that passed; each key
    keeps its place."""

    def stale(entry: Entry) -> bool:
        if entry.test in store.tests:
            return True
        nodes = store.collected.get(entry.module)
        return nodes is not None and entry.test not in nodes

    merged: dict[str, Entry | None] = {}
    for entry in previous:
        if entry.doc == doc:
            merged[entry.key] = None if stale(entry) else entry
    for entry in store.entries(doc):
        merged[entry.key] = entry
    return [e for e in merged.values() if e is not None]
