"""Every sandbox fault gives the verdict and the finding an operator expects."""

from __future__ import annotations

from typing import Any

import pytest

from sandbox.client import SandboxProcess
from tests.flows.test_diagnose_flow import diagnose
from tests.helpers import wait_for

# fault, options, expected verdict, the check whose status must not be healthy
CASES: list[tuple[str, dict[str, Any], str, str]] = [
    ("mlflow-slow", {}, "degraded", "mlflow_service"),
    ("mlflow-errors", {}, "degraded", "mlflow_service"),
    ("registry-wedged", {}, "critical", "api_connectivity"),
    ("redis-down", {}, "degraded", "redis"),
    ("ecs-tasks-crashed", {}, "degraded", "aws_infrastructure"),
    ("ecs-tasks-crashed", {"all": True}, "critical", "aws_infrastructure"),
    ("alb-targets-unhealthy", {}, "critical", "aws_infrastructure"),
    ("breaker-stuck-open", {"replica": 0}, "degraded", "circuit_breaker"),
    ("aws-throttling", {}, "healthy", "aws_infrastructure"),  # ridden out by retries
]


def _settled(sandbox: SandboxProcess, fault: str) -> bool:
    services = sandbox.client.status()["services"]["hokusai-registry"]
    if fault == "ecs-tasks-crashed":
        return any(r["health"] == "unhealthy" for r in services["replicas"])
    if fault == "alb-targets-unhealthy":
        return all(r["health"] == "unhealthy" for r in services["replicas"])
    return True


IDS = [f"{c[0]}{'-all' if c[1].get('all') else ''}" for c in CASES]


@pytest.mark.parametrize(("fault", "options", "verdict", "check"), CASES, ids=IDS)
def test_fault_is_diagnosed(
    prefect_server: str,
    sandbox_env: dict[str, str],
    healed: SandboxProcess,
    fault: str,
    options: dict[str, Any],
    verdict: str,
    check: str,
) -> None:
    healed.client.fault(fault, **options)
    wait_for(lambda: _settled(healed, fault), 15, f"{fault} to show")
    _, report = diagnose(deadline_seconds=20)
    assert report.overall_status.value == verdict, (report.critical_issues, report.warnings)
    result = report.checks[check]
    if verdict == "healthy":
        assert result.status.value == "healthy"
    else:
        assert result.status.value != "healthy", result
        assert result.findings, result
