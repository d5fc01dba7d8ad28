"""Diagnosis against the `legacy` registry flavour: the deployed version's observed behaviour.

The verdicts must match those against the contract flavour, and each finding must say
which evidence it rests on.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from sandbox.client import SandboxProcess
from sandbox.statefiles import env_lines
from tests.conftest import converged
from tests.flows.test_diagnose_flow import diagnose
from tests.helpers import wait_for


@pytest.fixture
def legacy(
    prefect_server: str, legacy_sandbox: SandboxProcess, monkeypatch: pytest.MonkeyPatch
) -> Iterator[SandboxProcess]:
    for key, value in env_lines(legacy_sandbox.info).items():
        monkeypatch.setenv(key, value)
    yield legacy_sandbox
    legacy_sandbox.client.heal()
    wait_for(lambda: converged(legacy_sandbox), 90, "legacy sandbox to converge")


def breaker_open_everywhere(sandbox: SandboxProcess) -> bool:
    """Drive MLflow checks through each replica's breaker; OPEN shows as /ready's error."""
    opened = []
    for r in sandbox.client.status()["services"]["hokusai-registry"]["replicas"]:
        ready = httpx.get(f"http://{r['address']}/ready", timeout=30).json()
        mlflow = next(c for c in ready["checks"] if c["name"] == "mlflow")
        opened.append("Circuit breaker open" in (mlflow.get("error") or ""))
    return all(opened)


def test_healthy_legacy_service_is_healthy(legacy: SandboxProcess) -> None:
    state, report = diagnose()
    assert state.name == "Healthy", report.warnings
    endpoints = report.checks["health_endpoints"]
    messages = " ".join(f.message for f in endpoints.findings)
    assert "lightweight" in messages  # the limits of /health are said
    assert "HTTP 500" in messages  # the broken auxiliary views are reported, not judged


def test_mlflow_down_is_degraded_with_the_breaker_inferred(legacy: SandboxProcess) -> None:
    legacy.client.fault("mlflow-down")
    wait_for(lambda: breaker_open_everywhere(legacy), 60, "legacy breakers to open")
    state, report = diagnose()
    assert state.name == "Degraded", report.critical_issues
    breaker = report.checks["circuit_breaker"]
    assert breaker.status.value == "degraded"
    # OPEN cannot be read from /health/mlflow there (500 UNKNOWN): it is inferred and says so.
    evidence = " ".join(breaker.evidence + [e for f in breaker.findings for e in f.evidence])
    assert "/ready" in evidence or "/metrics" in evidence


def test_postgres_down_is_critical(legacy: SandboxProcess) -> None:
    legacy.client.fault("postgres-down")
    state, report = diagnose()
    assert state.name == "Critical"
    assert any("database" in issue.lower() for issue in report.critical_issues)


def test_redis_down_is_judged_on_the_evidence_there_is(
    legacy: SandboxProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    legacy.client.fault("redis-down")
    # With Redis reachable from the worker, the direct probe is the evidence.
    state, report = diagnose()
    assert state.name == "Degraded"
    assert report.checks["redis"].status.value == "unhealthy"
    # Without it, the legacy service's own answers say nothing about Redis: the report
    # must say that its view is limited rather than call Redis healthy.
    monkeypatch.delenv("REDIS_URL")
    _, report = diagnose()
    redis = report.checks["redis"]
    assert redis.status.value != "healthy"
    text = " ".join([redis.summary, *(f.message for f in redis.findings)]).lower()
    assert "evidence" in text or "does not report" in text or "cannot" in text, text
