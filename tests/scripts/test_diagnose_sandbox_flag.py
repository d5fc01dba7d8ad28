"""`diagnose_service_health.py --sandbox`: a sandbox of its own, started through the sandbox's
command line, diagnosed, and stopped with everything it started, also when interrupted."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(600)


def start(prefect_server: str, *args: str) -> subprocess.Popen[str]:
    # The flag's sandbox settings replace any in the environment.
    env = {**os.environ, "PREFECT_API_URL": prefect_server}
    return subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "diagnose_service_health.py"), "--sandbox",
         *args],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def sandbox_up(proc: subprocess.Popen[str]) -> psutil.Process | None:
    """The script's `python -m sandbox up` child, once started."""
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process(proc.pid).children():
            if child.cmdline()[1:4] == ["-m", "sandbox", "up"]:
                return child
    return None


def tree_of(proc: subprocess.Popen[str]) -> list[psutil.Process]:
    with contextlib.suppress(psutil.Error):
        me = psutil.Process(proc.pid)
        return [me, *me.children(recursive=True)]
    return []


def ready_tree(
    proc: subprocess.Popen[str], on_ready: Callable[[], None] | None = None
) -> tuple[list[psutil.Process], Path]:
    """Once the sandbox is ready: the script and every process under it, and its state dir.
    `on_ready` is called the moment the sandbox is ready (before the script can go on to
    diagnose and exit); the tree then joins what ran just before and just after it."""
    wait_for(lambda: proc.poll() is not None or sandbox_up(proc), 60, "the sandbox to start")
    up = sandbox_up(proc)
    assert up is not None, proc.communicate()[0]
    argv = up.cmdline()
    state_dir = Path(argv[argv.index("--state-dir") + 1])
    before: list[psutil.Process] = []
    alive_when_ready: list[bool] = []

    def ready() -> bool:
        if proc.poll() is not None:
            alive_when_ready.append(False)
            return True
        snapshot = tree_of(proc)  # every server is up before sandbox.json is written
        if not (state_dir / "sandbox.json").exists():
            before[:] = snapshot
            return False
        alive_when_ready.append(True)
        if on_ready is not None:
            on_ready()
        before[:] = snapshot
        return True

    wait_for(ready, 300, "the sandbox to be ready")
    assert alive_when_ready == [True], proc.communicate()[0]
    tree = {p.pid: p for p in [*before, *tree_of(proc)]}
    return list(tree.values()), state_dir


def assert_all_gone(tree: list[psutil.Process], state_dir: Path) -> None:
    wait_for(lambda: not any(p.is_running() for p in tree), 60, "the sandbox's processes to exit")
    assert not state_dir.exists(), "the state directory (secrets in sandbox.env) was left"


def test_sandbox_flag_diagnoses_its_own_sandbox_and_stops_it(
    tmp_path: Path, prefect_server: str
) -> None:
    report = tmp_path / "report.json"
    proc = start(prefect_server, "--output", str(report))
    tree, state_dir = ready_tree(proc)
    # The sandbox's servers, replicas and moto run under the script, through `up`.
    assert len(tree) > 5, [p.cmdline() for p in tree]
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output  # a fresh sandbox is healthy
    data = json.loads(report.read_text())
    assert data["target"] == "sandbox" and data["overall_status"] == "healthy", data
    assert data["checks"]["api_connectivity"]["status"] == "healthy"
    assert_all_gone(tree, state_dir)


def test_sandbox_flag_stops_the_sandbox_when_terminated(prefect_server: str) -> None:
    proc = start(prefect_server)
    # Terminated the moment its sandbox is ready: still running (it has not diagnosed yet).
    tree, state_dir = ready_tree(proc, on_ready=lambda: proc.send_signal(signal.SIGTERM))
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0, output
    assert_all_gone(tree, state_dir)
