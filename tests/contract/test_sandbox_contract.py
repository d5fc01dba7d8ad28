"""The contract-test flow against the sandbox's contract flavour: a real Prefect server."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import httpx
import pytest

from sandbox.client import SandboxProcess
from tests.contract.conftest import diffs, verify
from tests.helpers import wait_for

ALL_TESTS = 11


def breakers_open(sandbox: SandboxProcess) -> bool:
    """Drive each replica's breaker with /ready (MLflow is down) until all read OPEN."""
    replicas = sandbox.client.status()["services"]["hokusai-registry"]["replicas"]
    states = []
    for r in replicas:
        httpx.get(f"http://{r['address']}/ready", timeout=10)
        states.append(httpx.get(f"http://{r['address']}/health/mlflow", timeout=10).json())
    return all(s["circuit_breaker_state"] == "OPEN" for s in states)


def test_healthy_sandbox_passes_and_fetches_each_endpoint_once(
    env: dict[str, str], healed: SandboxProcess
) -> None:
    healed.client.reset_request_counts()
    state, report = verify(target="sandbox")
    assert state.name == "Passed" and state.is_completed(), diffs(report)
    assert report.summary.total_tests == ALL_TESTS and report.summary.passed == ALL_TESTS
    for result in report.tests.values():
        assert result.expected and result.actual and result.duration_ms is not None

    total: dict[str, int] = {}
    counts = healed.client.request_counts()
    for per_path in counts.values():
        for path, n in per_path.items():
            total[path] = total.get(path, 0) + n
    # Every replica's liveness and breaker once each (the reset probes need every breaker
    # read CLOSED); the service-wide views once in all.
    for replica, per_path in counts.items():
        for path in ("GET /live", "GET /health/mlflow"):
            assert per_path.get(path) == 1, (replica, path, per_path)
    for path in ["GET /health", "GET /health?detailed=true", "GET /ready",
                 "GET /health/status", "GET /metrics"]:  # fmt: skip
        assert total.get(path) == 1, (path, total)
    assert total.get("POST /health/mlflow/reset") == 2, total

    from prefect.artifacts import Artifact

    markdown = asyncio.run(Artifact.aget("contract-sandbox"))
    table = asyncio.run(Artifact.aget("contract-sandbox-tests"))
    assert markdown is not None and str(markdown.data).startswith("# Passed: sandbox")
    assert table is not None and "graceful_degradation" in str(table.data)


def test_mlflow_down_with_breakers_open_still_honours_the_contract(
    env: dict[str, str], healed: SandboxProcess
) -> None:
    healed.client.fault("mlflow-down")
    wait_for(lambda: breakers_open(healed), 30, "breakers to open")
    state, report = verify(target="sandbox")
    assert state.name == "Passed", diffs(report)
    # The reset probes would change an OPEN breaker: not sent, skipped with the reason.
    assert report.summary.passed == ALL_TESTS - 2 and report.summary.skipped == 2
    for name in ("reset_without_key_refused", "reset_with_wrong_key_refused"):
        assert "does not read CLOSED" in report.tests[name].actual["skipped"]
    # The run did see the degradation it judged.
    assert report.tests["basic_health"].actual["status"] == "degraded"
    assert "degraded_mode" in report.tests["readiness"].actual
    assert report.tests["readiness"].actual["degraded_mode"] == "true"


def test_read_only_run_skips_the_resets(env: dict[str, str], healed: SandboxProcess) -> None:
    healed.client.reset_request_counts()
    state, report = verify(target="sandbox", read_only=True)
    assert state.name == "Passed", diffs(report)
    assert report.summary.skipped == 2 and report.summary.total_tests == ALL_TESTS - 2
    for name in ("reset_without_key_refused", "reset_with_wrong_key_refused"):
        assert report.tests[name].outcome.value == "skipped"
        assert report.tests[name].seed_json()["passed"] is False
    counts = healed.client.request_counts()
    assert not any("POST" in path for per_path in counts.values() for path in per_path), counts


@pytest.fixture
def script_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """The script's main() sets these defaults for itself; keep them out of the session."""
    defaults = {
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "PREFECT_LOGGING_LEVEL": "WARNING",
    }
    for name, value in defaults.items():
        monkeypatch.setenv(name, os.environ.get(name, value))


def test_script_exit_code_seed_json_and_no_secrets(
    env: dict[str, str],
    healed: SandboxProcess,
    tmp_path: Path,
    script_defaults: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from scripts.test_enhanced_health_checks import main

    out = tmp_path / "results.json"
    code = main(["--target", "sandbox", "--output", str(out), "--verbose"])
    printed = capsys.readouterr()
    assert code == 0, printed.out + printed.err
    data = json.loads(out.read_text())
    assert list(data)[:5] == ["start_time", "api_url", "tests", "summary", "duration_seconds"]
    assert data["api_url"] == healed.info["api_url"]
    assert data["summary"]["total_tests"] == ALL_TESTS
    assert data["summary"]["passed"] == ALL_TESTS and data["summary"]["failed"] == 0
    assert data["summary"]["success_rate"] == 100.0
    assert all(t["passed"] and t["description"] for t in data["tests"].values())
    assert "Result: PASSED" in printed.out
    for text in (printed.out, printed.err, out.read_text()):
        assert healed.info["api_key"] not in text


def test_script_configuration_errors_exit_64(
    prefect_server: str, script_defaults: None, capsys: pytest.CaptureFixture[str]
) -> None:
    from scripts.test_enhanced_health_checks import main

    assert main(["--target", "no-such-target"]) == 64
    assert "configuration error: unknown target 'no-such-target'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        main(["--no-such-flag"])
    assert usage.value.code == 64
