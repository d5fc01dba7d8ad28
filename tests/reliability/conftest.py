"""Reliability tests: at the end of the session, the figures rendered into a document.

By default into build/reliability.md (untracked: running the tests modifies no tracked
file); with HOKUSAI_WRITE_DOCS=1 into docs/reliability.md, the committed copy.

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
        doc = figures.DOC if os.environ.get("HOKUSAI_WRITE_DOCS") else figures.BUILD_DOC
        if doc == figures.BUILD_DOC and not doc.exists() and figures.DOC.exists():
            # Start from the committed figures, so a partial run keeps the others.
            doc.parent.mkdir(parents=True, exist_ok=True)
            doc.write_text(figures.DOC.read_text(encoding="utf-8"), encoding="utf-8")
        figures.write_document(kept, passed, {item.nodeid for item in session.items}, doc)
    figures.discard()
