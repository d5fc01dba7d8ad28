"""Deliberately broken services (one defect each, real uvicorn on loopback): the right
tests fail, with readable diffs; a service that does not answer gives a clean report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sandbox.ports import free_port
from service_health.contract import DESCRIPTIONS
from tests.contract.conftest import diffs, failed, verify
from tests.contract.fake_registry import API_KEY, DEFECTS, fake_registry, served

ROOT = Path(__file__).resolve().parents[2]

# Short timeouts: a hanging endpoint costs one request timeout (it feeds the breaker, so it
# is never retried), and the whole read-only phase stays under the deadline.
FAST = {"request_timeout_seconds": 1.0, "deadline_seconds": 5.0}

# What each defect's diff must say, in the tests it concerns.
WORDS = {
    "missing-field": {"basic_health": "`version`: missing"},
    "wrong-type": {"detailed_health": "`system_info.cpu_percent`: expected number, got string"},
    "ok-while-open": {
        "mlflow_health": "HTTP status: expected 503 because the breaker is OPEN; got 200"
    },
    "unauthenticated-reset": {
        "reset_without_key_refused": "the reset was accepted without a key",
        "reset_with_wrong_key_refused": "the reset was accepted with a wrong key",
    },
    "html-instead-of-json": {
        "service_status": "body: expected a JSON object; got not JSON (text/html"
    },
    "hanging-endpoint": {
        # MLflow-touching: given mlflow_request_timeout_s (within the deadline), not --timeout.
        "mlflow_health": "got no answer (timeout: timed out after",
        "circuit_breaker_details": "got no answer (timeout",
    },
    "ready-disagrees": {
        "graceful_degradation": "GET /health status: expected 'degraded' because /ready reports "
        "degraded_mode true; got 'healthy'"
    },
    "ready-flickers-once": {},
}


@pytest.fixture
def key(prefect_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Target "env" with only the API key from the environment; the URL is a parameter."""
    for name in ("API_URL", "MLFLOW_TRACKING_URI", "DATABASE_URL", "REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("API_KEY", API_KEY)
    # One process: its one breaker, read through its URL, is every replica's (the reset
    # probes are sent only where every breaker is known to read CLOSED).
    monkeypatch.setenv("REGISTRY_REPLICAS", "1")
    return API_KEY


@pytest.mark.parametrize("breaker_open", [False, True], ids=["closed", "open"])
def test_a_service_without_defects_passes(key: str, breaker_open: bool) -> None:
    with served(fake_registry(breaker_open=breaker_open)) as url:
        state, report = verify(api_url=url, **FAST)
    assert state.name == "Passed", diffs(report)
    if not breaker_open:
        assert report.summary.passed == len(DESCRIPTIONS)
        return
    # A reset would change an OPEN breaker: the two probes are not sent, said so.
    assert report.summary.passed == len(DESCRIPTIONS) - 2 and report.summary.skipped == 2
    for name in ("reset_without_key_refused", "reset_with_wrong_key_refused"):
        assert "does not read CLOSED" in report.tests[name].actual["skipped"]


@pytest.mark.parametrize("defect", list(DEFECTS))
def test_each_defect_fails_the_tests_it_concerns(key: str, defect: str) -> None:
    release = threading.Event()
    # The "ok-while-open" defect only shows while the breaker is OPEN.
    app = fake_registry(defect, breaker_open=defect == "ok-while-open", release=release)
    started = time.monotonic()
    with served(app, release) as url:
        state, report = verify(api_url=url, **FAST)
    assert failed(report) == DEFECTS[defect], diffs(report)
    assert state.name == ("Failed" if DEFECTS[defect] else "Passed")
    for test, words in WORDS[defect].items():
        result = report.tests[test]
        assert any(words in line for line in result.diff), (words, result.diff)
        assert result.expected and result.actual and result.evidence
    if defect == "hanging-endpoint":
        assert time.monotonic() - started < FAST["deadline_seconds"] + 5
    if defect.startswith("ready-"):  # a disagreement is read a second time before it counts
        evidence = report.tests["graceful_degradation"].evidence
        assert any("read twice; the first reading disagreed" in e for e in evidence), evidence


def test_a_service_that_does_not_answer(key: str, tmp_path: Path, prefect_server: str) -> None:
    """The light tests fail with "no answer", as findings (no crash, no traceback); the
    others are not sent to a service that does not answer /live, and say so; exit code 1."""
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "test_enhanced_health_checks.py"),
         "--api-url", url, "--output", str(out), "--timeout", "1", "--deadline", "5"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
        env={**os.environ, "PREFECT_API_URL": prefect_server},
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    light = {"basic_health", "liveness"}
    total = len(DESCRIPTIONS)
    assert f"Result: FAILED - 0/{len(light)} passed" in proc.stdout, proc.stdout
    data = json.loads(out.read_text())
    assert data["summary"] == {
        "total_tests": len(light), "passed": 0, "failed": len(light),
        "skipped": total - len(light), "success_rate": 0.0,
    }  # fmt: skip
    for name, test in data["tests"].items():
        said = " ".join(test["diff"]) + str(test["actual"].get("skipped", ""))
        if name in light:
            assert test["passed"] is False and test["error"] is None, (name, test)  # a finding
            assert "no answer (connect:" in said, (name, test)
        else:
            assert test["outcome"] == "skipped", (name, test)
            assert "not sent" in said or "could not be read" in said, (name, test)
