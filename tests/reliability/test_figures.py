"""The figures plugin: a figure survives only if its test passed, whatever else happens.

Each case runs a real pytest session in a subprocess on a small test file, with the plugin
loaded as the suite loads it, its store in a temporary build directory, then renders the
documents with the documented command.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.reliability import documents, figures

ROOT = Path(__file__).resolve().parents[2]

INNER = """
import os, subprocess, sys
import pytest
from tests.reliability.figures import observe, record

def row(key, order):
    observe("fault-matrix", key, {"order": order, "label": key, "verdict": "degraded",
            "findings": ["redis"], "plan": ["escalate", "verify"], "outcome": "Failed",
            "mutations": [0, 0, 0], "why": "observed " + key})

def test_no_leak():
    record("secrets found", 0, section="Secrets")
    row("row-a", 0)
    assert not os.environ.get("INNER_LEAK"), "a secret leaked"

def test_fails():
    record("leaks counted", 0, section="Secrets")
    row("row-b", 1)
    assert False

@pytest.fixture
def broken_teardown():
    yield
    raise RuntimeError("teardown failed")

def test_teardown_fails(broken_teardown):
    record("teardown", 1, section="S")

@pytest.fixture
def broken_setup():
    raise RuntimeError("setup failed")

def test_setup_fails(broken_setup):
    pass

def test_skips():
    record("skipped", 2, section="S")
    pytest.skip("not here")

@pytest.mark.xfail(reason="expected")
def test_xfails():
    record("xfailed", 3, section="S")
    assert False

@pytest.mark.xfail(reason="expected, yet passes")
def test_xpasses():
    record("xpassed", 4, section="S")

def test_child_process():
    code = "from tests.reliability.figures import record; record('from a child', 5, section='S')"
    subprocess.run([sys.executable, "-c", code], check=True)
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "test_inner.py").write_text(textwrap.dedent(INNER))
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "docs").mkdir()
    return tmp_path


def run(project: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "INNER_LEAK"}
    # Only the plugin under test (the installed ones take seconds to load, and add nothing).
    environ.update(PYTHONPATH=str(ROOT), PYTEST_DISABLE_PLUGIN_AUTOLOAD="1", **env)
    environ[figures.ENV_BUILD] = str(project / "build")
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.reliability.figures_plugin",
         "-p", "no:cacheprovider", "-c", str(project / "pytest.ini"), "--rootdir",
         str(project), "-q", "test_inner.py", *args],
        cwd=project, env=environ, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def render(project: Path) -> tuple[str, str]:
    """The documented command (its main), on this project's build and docs directories."""
    assert documents.main(["--build", str(project / "build"), "--docs", str(project / "docs")]) == 0
    docs = project / "docs"
    return (docs / "reliability.md").read_text(), (docs / "fault-matrix.md").read_text()


def names(text: str) -> set[str]:
    return {e.data.get("name") or e.key for e in documents.previous_text(text)}


# As the suite runs (its tests spread over pytest-xdist workers), and in one process.
XDIST = ("-p", "xdist.plugin", "-n", "2")


@pytest.mark.parametrize("args", [XDIST, ()], ids=["xdist", "one-process"])
def test_only_the_figures_of_passing_tests_are_kept(project: Path, args: tuple[str, ...]) -> None:
    result = run(project, *args)
    assert result.returncode == 1, result.stdout  # the failing tests fail the session
    store = figures.read_store(project / "build")
    kept = {e.data.get("name", e.key) for e in store.entries()}
    # Failed in call, in teardown or in setup, skipped, xfailed, xpassed: nothing kept.
    assert kept == {"secrets found", "row-a", "from a child"}, result.stdout
    assert {t: s["passed"] for t, s in store.tests.items()} == {
        "test_inner.py::test_no_leak": True,
        "test_inner.py::test_fails": False,
        "test_inner.py::test_teardown_fails": False,
        "test_inner.py::test_setup_fails": False,
        "test_inner.py::test_skips": False,
        "test_inner.py::test_xfails": False,
        "test_inner.py::test_xpasses": False,
        "test_inner.py::test_child_process": True,
    }
    # The session wrote into the build directory only: the docs are rendered by the command.
    assert not list((project / "docs").iterdir())
    assert {p.name for p in (project / "build").iterdir()} >= {"reliability.md", "results.json"}

    reliability, matrix = render(project)
    assert names(reliability) == {"secrets found", "from a child"}
    assert "| secrets found | 0 |" in reliability
    assert names(matrix) == {"row-a"}
    assert "| row-a | degraded | redis | escalate → verify | Failed | 0 / 0 / 0 |" in matrix
    # The session's preview (merged with the project's committed docs) says the same.
    preview = names((project / "build" / "reliability.md").read_text())
    assert {"secrets found", "from a child"} <= preview and "leaks counted" not in preview


def test_a_test_that_fails_later_removes_its_committed_figure(project: Path) -> None:
    assert run(project).returncode == 1
    reliability, matrix = render(project)  # "committed": secrets found 0, row-a
    assert "secrets found" in names(reliability) and "row-a" in names(matrix)
    committed = reliability

    # A partial run that does not run the test leaves its figures alone...
    assert run(project, "-k", "child_process").returncode == 0
    reliability, matrix = render(project)
    assert "secrets found" in names(reliability) and "row-a" in names(matrix)

    # ...a run in which it fails removes them, from the store and from the documents.
    result = run(project, "-k", "no_leak", INNER_LEAK="1")
    assert result.returncode == 1 and "a secret leaked" in result.stdout
    reliability, matrix = render(project)
    assert "secrets found" not in names(reliability), reliability
    assert "row-a" not in names(matrix), matrix
    assert names(reliability) == {"from a child"}

    # Even from a fresh build directory: the committed document's figure goes too.
    (project / "docs" / "reliability.md").write_text(committed)
    for path in (project / "build").iterdir():
        path.unlink()
    assert run(project, "-k", "no_leak", INNER_LEAK="1").returncode == 1
    reliability, _ = render(project)
    assert names(reliability) == {"from a child"}


def test_a_renamed_test_takes_its_figures_with_it(project: Path) -> None:
    assert run(project).returncode == 1
    render(project)
    inner = project / "test_inner.py"
    inner.write_text(inner.read_text().replace("def test_child_process", "def test_renamed"))
    assert run(project, "-k", "renamed").returncode == 0  # deselected tests stay
    reliability, _ = render(project)
    entries = {e.data["name"]: e.test for e in documents.previous_text(reliability)}
    assert entries == {
        "secrets found": "test_inner.py::test_no_leak",
        "from a child": "test_inner.py::test_renamed",
    }


def test_the_command_refuses_an_empty_store(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "tests.reliability.documents", "--build", str(tmp_path),
         "--docs", str(tmp_path / "docs")],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 1 and "run the tests first" in out.stdout, out.stderr
    assert not (tmp_path / "docs").exists()
