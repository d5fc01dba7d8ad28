"""`python -m sandbox demo`: the whole story, run as an operator runs it, end to end."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil
import pytest

from sandbox.statefiles import JSON_NAME
from tests.conftest import _require_binaries
from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parents[2]
MARKER = "HOKUSAI_DEMO_TEST_MARKER"
HEADINGS = [
    "== 1. Start the sandbox ==",
    "== 2. Healthy diagnosis ==",
    "== 3. Inject a fault: breaker-stuck-open ==",
    "== 4. Diagnosis that catches it ==",
    "== 5. Dry-run recovery plan ==",
    "== 6. Recovery ==",
    "== 7. Diagnosis that confirms it ==",
    "== 8. Stop the sandbox ==",
    "== Recap ==",
]
# user:password@ with a password that is not the mask.
UNMASKED_DSN = re.compile(r"postgres(?:ql)?://[^\s/@:]+:(?!\*\*\*@)[^\s/@]+@")


def _marked(marker: str) -> list[str]:
    """Live processes that inherited the marker: started, directly or not, by the demo."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if proc.environ().get(MARKER) == marker:
                found.append(f"{proc.pid} {' '.join(proc.info['cmdline'] or [])}")
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def _new_children(before: set[int]) -> list[str]:
    """Processes started since `before` and still alive, except those an earlier one
    started (the session's servers: PostgreSQL forks a backend for each new connection)."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.pid in before or proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if not any(parent.pid in before for parent in proc.parents()):
                found.append(f"{proc.pid} {' '.join(proc.cmdline())}")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


@pytest.mark.timeout(300)
def test_demo_tells_the_whole_story(prefect_server: str, tmp_path: Path) -> None:
    _require_binaries()
    marker = uuid.uuid4().hex
    env = {**os.environ, "PREFECT_API_URL": prefect_server, MARKER: marker}
    for key in ("API_URL", "API_KEY", "DATABASE_URL", "REDIS_URL", "SANDBOX_CONTROL_URL"):
        env.pop(key, None)  # only the demo's own sandbox
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    state_dir = tmp_path / "state"
    out_path = tmp_path / "demo.out"
    info: dict[str, Any] | None = None
    started = time.monotonic()
    with out_path.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sandbox", "demo", "--state-dir", str(state_dir)],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            # Read the sandbox's secrets while it runs (the file goes when it stops).
            while proc.poll() is None and time.monotonic() - started < 240:
                if info is None and (state_dir / JSON_NAME).exists():
                    info = json.loads((state_dir / JSON_NAME).read_text())  # written atomically
                time.sleep(0.2)
        finally:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(60)
    output = out_path.read_text()

    assert proc.returncode == 0, output[-6000:]
    assert "The story went as expected" in output, output[-3000:]
    missing = [h for h in HEADINGS if h not in output]
    assert not missing, missing
    positions = [output.index(h) for h in HEADINGS]
    assert positions == sorted(positions), "headings out of order"
    # The scripts' output is relayed indented beneath the headings.
    assert "\n    Verdict: HEALTHY (exit code 0)" in output
    assert "\n    Verdict: DEGRADED (exit code 1)" in output
    assert "\n    Outcome: Recovered" in output

    # No secret printed: not the sandbox's values, not in any form.
    assert info is not None, "sandbox.json never appeared"
    password = urlsplit(info["database_url"]).password
    assert password
    for secret in (info["api_key"], password, info["database_url"]):
        assert secret not in output
    assert "API_KEY=" not in output
    assert not UNMASKED_DSN.search(output)
    # ...and the scripts redacted by themselves (the demo masks only as a second defence).
    assert "secret value(s) in the scripts' output" not in output

    # Nothing left running: no child of this process, nothing that inherited the marker.
    with contextlib.suppress(AssertionError):
        wait_for(lambda: not _new_children(before) and not _marked(marker), 15, "exits")
    assert not _new_children(before)
    assert not _marked(marker)
