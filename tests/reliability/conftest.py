"""Reliability tests: at the end of the session, docs/reliability.md from the figures.

See tests/reliability/figures.py for how a test records a figure.
"""

from __future__ import annotations

import os

import pytest

from tests.reliability import figures


def _outcomes(session: pytest.Session, *outcomes: str) -> set[str]:
    """Node ids of the tests with one of these outcomes in this session (any directory)."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    stats = getattr(reporter, "stats", {}) if reporter is not None else {}
    return {
        getattr(report, "nodeid", "") for outcome in outcomes for report in stats.get(outcome, [])
    }


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    directory = os.environ.get(figures.ENV_DIR)
    if not directory or not os.path.isdir(directory):
        return
    failed = _outcomes(session, "failed", "error")
    kept = [f for f in figures.recorded(figures.figures_dir()) if f.test not in failed]
    if kept:
        passed = _outcomes(session, "passed") - failed
        figures.write_document(kept, passed, {item.nodeid for item in session.items})
    figures.discard()
