"""The pytest plugin that ties recorded figures to test outcomes (see figures.py).

Registered for the whole suite by the project's root conftest.py. A test's entries are kept
only when every phase of it (setup, call, teardown) passed: a failure anywhere, a skip, an
xfail or an interrupted run drops them, and drops what an earlier run of that test left in
the store.

Under pytest-xdist the controller settles: it creates the pending directory before its
workers start (they inherit it and only append to it), receives every worker's reports, and
learns what each worker collected; a worker never settles.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.reliability import documents, figures

PHASES = {"setup", "call", "teardown"}
_state: dict[str, object] = {}
_phases: dict[str, dict[str, bool]] = {}  # node id -> phase -> passed
_deselected: set[str] = set()
_collected: set[str] = set()  # under xdist: what the workers collected


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


@pytest.hookimpl(tryfirst=True)  # before xdist starts the workers, which inherit the directory
def pytest_sessionstart(session: pytest.Session) -> None:
    if _is_worker(session.config):
        return  # records go to the controller's directory, inherited
    # A fresh pending directory per session, even when a parent session exported one (a
    # test running pytest in a subprocess): its entries belong to its own tests.
    _state["previous"] = os.environ.get(figures.ENV_DIR)
    directory = tempfile.mkdtemp(prefix="hokusai-figures-")
    _state["dir"] = directory
    os.environ[figures.ENV_DIR] = directory
    _phases.clear()
    _deselected.clear()
    _collected.clear()


def pytest_deselected(items: list[pytest.Item]) -> None:
    _deselected.update(item.nodeid for item in items)


@pytest.hookimpl(optionalhook=True)  # xdist's hook; absent without it
def pytest_xdist_node_collection_finished(node: object, ids: list[str]) -> None:
    """The controller of an xdist session: what a worker collected (every worker collects
    the same items)."""
    _collected.update(ids)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    passed = report.passed and not hasattr(report, "wasxfail")  # an xpass proves nothing
    phases = _phases.setdefault(report.nodeid, {})
    phases[report.when] = phases.get(report.when, True) and passed


def _whole_modules(session: pytest.Session) -> list[str]:
    """Node ids collected in modules that were collected whole (not narrowed by ::name)."""
    narrowed = set()
    root = Path(session.config.rootpath)
    for arg in session.config.args:
        if "::" in arg:
            path = Path(arg.split("::", 1)[0]).resolve()
            narrowed.add(path.relative_to(root).as_posix() if path.is_relative_to(root) else "")
    if _collected and (session.config.option.keyword or session.config.option.markexpr):
        return []  # an xdist controller does not see what -k or -m deselected
    nodes = {item.nodeid for item in session.items} | _collected | _deselected
    return sorted(n for n in nodes if n.split("::", 1)[0] not in narrowed)


def pytest_sessionfinish(session: pytest.Session) -> None:
    directory = _state.pop("dir", None)
    if not isinstance(directory, str):
        return
    try:
        outcomes = {
            node: set(phases) == PHASES and all(phases.values()) for node, phases in _phases.items()
        }
        if outcomes:
            entries = figures.pending(Path(directory))
            with figures.updating_store() as store:
                figures.settle(store, outcomes, entries, _whole_modules(session))
            # A preview of the documents, in the build directory (never a tracked file).
            documents.write(figures.read_store(), figures.build_dir())
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        previous = _state.pop("previous", None)
        if isinstance(previous, str):
            os.environ[figures.ENV_DIR] = previous
        else:
            os.environ.pop(figures.ENV_DIR, None)
