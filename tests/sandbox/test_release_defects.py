"""The registry stand-in under a bad release: a real process, started as ECS starts it."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest

from sandbox.ports import free_port
from sandbox.registry.defects import ENV_RELEASE_DEFECT, ReleaseDefect, release_defect
from tests.helpers import wait_for


def start(defect: str, port: int = 0) -> subprocess.Popen[bytes]:
    """A registry replica whose task definition's environment carries `defect`."""
    return subprocess.Popen(
        [sys.executable, "-m", "sandbox.registry", "--host", "127.0.0.1", "--port", str(port)],
        env={**os.environ, ENV_RELEASE_DEFECT: defect},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def test_crash_exits_with_code_1_at_start() -> None:
    proc = start("crash")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert b"release defect" in err


def test_unhealthy_fails_the_health_checks_and_serves_the_rest() -> None:
    port = free_port()
    proc = start("unhealthy", port)
    base = f"http://127.0.0.1:{port}"
    try:

        def answer(path: str) -> httpx.Response | None:
            try:
                return httpx.get(base + path, timeout=5)
            except httpx.TransportError:
                return None

        live = wait_for(lambda: answer("/live"), 60, "the replica to listen")
        assert live is not None
        assert live.status_code == 503 and live.json()["status"] == "unhealthy"
        health = answer("/health")
        assert health is not None and health.status_code == 503
        metrics = answer("/metrics")
        assert metrics is not None and metrics.status_code == 200
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("", ReleaseDefect.NONE),
        ("crash", ReleaseDefect.CRASH),
        (" Unhealthy ", ReleaseDefect.UNHEALTHY),
    ],
)
def test_release_defect_from_the_environment(raw: str, expected: ReleaseDefect) -> None:
    assert release_defect({ENV_RELEASE_DEFECT: raw}) is expected
    assert release_defect({}) is ReleaseDefect.NONE


def test_unknown_release_defect_is_refused() -> None:
    with pytest.raises(ValueError, match=ENV_RELEASE_DEFECT):
        release_defect({ENV_RELEASE_DEFECT: "sideways"})
