"""Small helpers shared by the tests: await a condition instead of sleeping, a moto server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import httpx

if TYPE_CHECKING:
    from sandbox.aws import AwsSandbox
    from sandbox.client import SandboxProcess

T = TypeVar("T")


def wait_for(condition: Callable[[], T], timeout: float = 30.0, what: str = "condition") -> T:
    """Poll `condition` until it returns something truthy; fail with `what` on timeout."""
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)


def breaker_open_everywhere(sandbox: SandboxProcess) -> bool:
    """Drive an MLflow call through each registry replica's breaker (/ready is the cheapest
    way), then whether every breaker reads OPEN on /health/mlflow."""
    states = []
    for r in sandbox.client.status()["services"]["hokusai-registry"]["replicas"]:
        httpx.get(f"http://{r['address']}/ready", timeout=10)
        states.append(httpx.get(f"http://{r['address']}/health/mlflow", timeout=10).json())
    return all(s["circuit_breaker_state"] == "OPEN" for s in states)


def packages_loaded(code: str, packages: set[str]) -> list[str]:
    """Which of `packages` (top-level names) a new interpreter has imported once it ran
    `code` from the project's root."""
    root = Path(__file__).resolve().parents[1]
    probe = (
        f"{code}\nimport json, sys\n"
        f"top = {{m.split('.')[0] for m in sys.modules}}\n"
        f"print(json.dumps(sorted(top & set({sorted(packages)!r}))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=root, env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    found: list[str] = json.loads(done.stdout.strip().splitlines()[-1])
    return found


@contextmanager
def moto_server() -> Iterator[AwsSandbox]:
    """A moto server on loopback, starting from nothing (moto's backends are process-wide,
    another test's resources would show) and emptied and stopped after."""
    from sandbox.aws import AwsSandbox

    server = AwsSandbox()
    server.start()
    server.reset()
    try:
        yield server
    finally:
        server.reset()
        server.stop()
