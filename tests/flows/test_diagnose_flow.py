"""The diagnose flow end to end: a real Prefect server, the real sandbox."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from flows.diagnose import diagnose_service_health
from sandbox.client import SandboxProcess
from service_health.models import DiagnosticReport
from tests.helpers import breaker_open_everywhere, wait_for

ROOT = Path(__file__).resolve().parents[2]


def diagnose(**params: Any) -> tuple[Any, DiagnosticReport]:
    params = {"target": "sandbox", **params}

    async def go() -> Any:
        return await diagnose_service_health(return_state=True, **params)

    state = asyncio.run(go())
    report = state.result(raise_on_failure=False)
    assert isinstance(report, DiagnosticReport), state
    return state, report


def run_script(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "diagnose_service_health.py"), *args],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, **env},
        cwd=ROOT,
    )


@pytest.fixture
def env(prefect_server: str, sandbox_env: dict[str, str], healed: SandboxProcess) -> dict[str, str]:
    return {**sandbox_env, "PREFECT_API_URL": prefect_server}


def test_healthy_sandbox(env: dict[str, str], tmp_path: Path) -> None:
    state, report = diagnose()
    assert state.name == "Healthy", report.warnings
    assert report.overall_status.value == "healthy"
    assert set(report.checks) >= {
        "api_connectivity", "health_endpoints", "circuit_breaker", "mlflow_service",
        "database", "redis", "aws_infrastructure", "service_metrics",
    }  # fmt: skip
    assert all(c.duration_ms is not None for c in report.checks.values())

    from prefect.artifacts import Artifact

    markdown = asyncio.run(Artifact.aget("diagnosis-sandbox"))
    table = asyncio.run(Artifact.aget("diagnosis-sandbox-checks"))
    assert markdown is not None and "healthy" in str(markdown.data).lower()
    assert table is not None and "api_connectivity" in str(table.data)


def test_script_exit_codes_and_seed_json(
    env: dict[str, str], healed: SandboxProcess, tmp_path: Path
) -> None:
    out = tmp_path / "diag.json"
    result = run_script(env, "--target", "sandbox", "--output", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(out.read_text())
    for key in ["timestamp", "diagnostic_duration_seconds", "overall_status", "critical_issues",
                "warnings", "recommendations", "checks"]:  # fmt: skip
        assert key in data
    assert data["checks"]["database"]["status"] == "healthy"
    assert "Verdict: HEALTHY" in result.stdout

    healed.client.fault("postgres-down")
    result = run_script(env, "--target", "sandbox", "--output", str(out))
    assert result.returncode == 2, result.stdout
    data = json.loads(out.read_text())
    assert data["overall_status"] == "critical"
    assert any(
        "database" in issue.lower() or "postgres" in issue.lower()
        for issue in data["critical_issues"]
    )


def test_mlflow_down_until_breaker_opens_is_degraded(
    env: dict[str, str], healed: SandboxProcess
) -> None:
    healed.client.fault("mlflow-down")
    wait_for(lambda: breaker_open_everywhere(healed), 30, "breakers to open")
    state, report = diagnose()
    assert state.name == "Degraded"
    assert report.checks["circuit_breaker"].status.value == "degraded"
    assert not report.critical_issues
    result = run_script(env, "--target", "sandbox")
    assert result.returncode == 1, result.stdout


def test_postgres_down_is_critical(env: dict[str, str], healed: SandboxProcess) -> None:
    healed.client.fault("postgres-down")
    state, report = diagnose()
    assert state.name == "Critical" and state.is_failed()
    assert report.checks["database"].status.value == "unhealthy"


def test_hung_registry_reports_within_the_deadline(
    env: dict[str, str], healed: SandboxProcess
) -> None:
    healed.client.fault("registry-hung")
    started = time.monotonic()
    state, report = diagnose(deadline_seconds=4)
    assert state.name == "Critical"
    elapsed = time.monotonic() - started
    assert elapsed < 4 + 3, f"took {elapsed:.1f}s"
    assert report.overall_status.value == "critical"
    assert set(report.checks) >= {"api_connectivity", "database", "aws_infrastructure"}
    assert report.checks["database"].status.value == "healthy"  # others still reported


def test_slow_aws_does_not_starve_the_breaker_read(
    env: dict[str, str], healed: SandboxProcess
) -> None:
    """AWS answers so slowly (as throttling retries make it) that replica discovery cannot
    finish in time: the breaker is still read, through the load balancer, and found
    CLOSED, rather than reported unreadable for want of time."""
    healed.client.fault("latency", ms=2500, component="aws")
    _, report = diagnose(deadline_seconds=8)
    breaker = report.checks["circuit_breaker"]
    assert breaker.status.value == "healthy", breaker
    assert breaker.partial, breaker  # sampled through the load balancer
    discipline = report.checks["health_endpoints"].details["request_discipline"]
    assert discipline["mlflow_touching_sent"] >= 1, discipline
    assert not any("deadline" in line for line in discipline["not_sent"]), discipline
    assert "replica discovery through AWS" in (discipline["sample_basis"] or ""), discipline


def test_each_endpoint_fetched_at_most_once_per_replica(
    env: dict[str, str], healed: SandboxProcess
) -> None:
    healed.client.reset_request_counts()
    diagnose()
    counts = healed.client.request_counts()
    assert len(counts) == 2
    for replica, per_path in counts.items():
        # Each replica: its own liveness and its own breaker, read once each.
        assert per_path.get("GET /live") == 1, (replica, per_path)
        assert per_path.get("GET /health/mlflow") == 1, (replica, per_path)
        assert all(n == 1 for n in per_path.values()), (replica, per_path)
    total: dict[str, int] = {}
    for per_path in counts.values():
        for path, n in per_path.items():
            total[path] = total.get(path, 0) + n
    # The service-wide views: once in all (spread over the replicas).
    for path in ["GET /health", "GET /ready", "GET /metrics", "GET /health/status",
                 "GET /health?detailed=true"]:  # fmt: skip
        assert total.get(path) == 1, (path, total)


def test_secrets_never_leak(env: dict[str, str], healed: SandboxProcess, tmp_path: Path) -> None:
    info = healed.info
    password = info["database_url"].split(":")[2].split("@")[0]
    secrets = [info["api_key"], password]
    out = tmp_path / "diag.json"
    healed.client.fault("postgres-down")  # error paths carry the most text
    result = run_script(env, "--target", "sandbox", "--verbose", "--output", str(out))
    assert result.returncode == 2
    from prefect.artifacts import Artifact

    markdown = asyncio.run(Artifact.aget("diagnosis-sandbox"))
    haystacks = [
        result.stdout,
        result.stderr,
        out.read_text(),
        str(markdown.data if markdown else ""),
    ]
    for secret in secrets:
        for text in haystacks:
            assert secret not in text


def test_aws_credentials_from_a_prefect_block(
    env: dict[str, str], healed: SandboxProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The block is loaded in the worker thread that makes the AWS clients, where the
    # copied run context once made Prefect hand back an unawaited coroutine instead.
    from prefect_aws import AwsCredentials

    block = AwsCredentials(
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_REGION"],
    )
    block.save("diagnose-test-aws", overwrite=True)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CREDENTIALS_BLOCK", "diagnose-test-aws")
    _, report = diagnose()
    aws = report.checks["aws_infrastructure"]
    assert aws.status.value == "healthy", aws
    assert not report.configuration_problems()
