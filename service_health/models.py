"""Results of a diagnosis: per-check results, findings, verdict and the report."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, Field
from pydantic_core import to_jsonable_python

from service_health.details import CheckFacts


class CheckName(StrEnum):
    """Check names of the seed's JSON output (cron jobs and parsers rely on them)."""

    API_CONNECTIVITY = "api_connectivity"
    HEALTH_ENDPOINTS = "health_endpoints"
    CIRCUIT_BREAKER = "circuit_breaker"
    MLFLOW_SERVICE = "mlflow_service"
    DATABASE = "database"
    REDIS = "redis"
    AWS_INFRASTRUCTURE = "aws_infrastructure"
    SERVICE_METRICS = "service_metrics"
    # Components of aws_infrastructure (AWS_COMPONENTS).
    ALB = "alb"
    ECS = "ecs"
    RDS = "rds"
    CLOUDWATCH = "cloudwatch"


# The checks the report folds into aws_infrastructure, in its order.
AWS_COMPONENTS = (CheckName.ALB, CheckName.ECS, CheckName.RDS, CheckName.CLOUDWATCH)


class CheckStatus(StrEnum):
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    RECOVERING = "recovering"
    UNHEALTHY = "unhealthy"
    ERROR = "error"  # the check itself could not complete (timeout, AWS error, exception)
    SKIPPED = "skipped"  # not configured or not observable; never degrades the verdict


# Worst-of ordering used when several results are folded into one status.
_SEVERITY_ORDER: dict[CheckStatus, int] = {
    CheckStatus.SKIPPED: 0,
    CheckStatus.HEALTHY: 1,
    CheckStatus.RECOVERING: 2,
    CheckStatus.DEGRADED: 3,
    CheckStatus.ERROR: 4,
    CheckStatus.UNHEALTHY: 5,
}


def worst_status(statuses: list[CheckStatus]) -> CheckStatus:
    """Worst of several statuses; skipped only when nothing else is known."""
    if not statuses:
        return CheckStatus.SKIPPED
    return max(statuses, key=_SEVERITY_ORDER.__getitem__)


class BreakerState(StrEnum):
    CLOSED = "CLOSED"
    OPEN = "OPEN"
    HALF_OPEN = "HALF_OPEN"
    UNKNOWN = "UNKNOWN"


Severity = Literal["critical", "warning", "info"]


class Finding(BaseModel):
    severity: Severity
    message: str
    recommendation: str | None = None
    evidence: list[str] = Field(default_factory=list)


class CheckResult(BaseModel):
    name: str
    status: CheckStatus
    duration_ms: float | None = None
    latency_ms: float | None = None
    # What the recovery reads, typed (service_health.details): the API's answer, the
    # breaker per replica, the ECS services, the target groups.
    facts: CheckFacts | None = None
    # Everything else the check found, for people and the JSON output.
    details: dict[str, Any] = Field(default_factory=dict)
    # A configuration mistake rather than the service's state (no AWS credentials,
    # permission refused, unknown region): one line naming it.
    configuration_problem: str | None = None
    error: str | None = None
    # Which endpoints or APIs the result rests on, e.g. "GET /ready", "ecs:DescribeServices".
    evidence: list[str] = Field(default_factory=list)
    findings: list[Finding] = Field(default_factory=list)
    partial: bool = False  # the view is incomplete, e.g. breaker sampled through the LB
    summary: str = ""  # one line for tables and terminal output
    # Sub-results folded into this one (aws_infrastructure holds alb, ecs, rds, cloudwatch).
    components: dict[str, CheckResult] = Field(default_factory=dict)

    @classmethod
    def skipped(cls, name: str, reason: str) -> CheckResult:
        """A check that was not run because it is not configured or not observable."""
        return cls(
            name=name,
            status=CheckStatus.SKIPPED,
            summary=f"skipped: {reason}",
            details={"reason": reason},
        )

    @classmethod
    def failed(cls, name: str, error: str, duration_ms: float | None = None) -> CheckResult:
        """A check that raised or ran out of time: status error, with a warning finding."""
        return cls(
            name=name,
            status=CheckStatus.ERROR,
            duration_ms=duration_ms,
            error=error,
            summary=f"check failed: {error}",
            findings=[
                Finding(
                    severity="warning",
                    message=f"{name}: check could not complete ({error})",
                    recommendation=f"Re-run the diagnosis; if {name} keeps failing, "
                    "investigate it by hand",
                )
            ],
        )

    def seed_json(self) -> dict[str, Any]:
        """The seed tools' shape: status and duration first, details flattened in."""
        reserved = {
            "status": self.status.value,
            "duration_ms": self.duration_ms,
            "latency_ms": self.latency_ms,
            "error": self.error,
            "summary": self.summary,
            "partial": self.partial,
            "evidence": list(self.evidence),
            "findings": [f.model_dump(mode="json") for f in self.findings],
        }
        out: dict[str, Any] = {"status": reserved["status"], "duration_ms": self.duration_ms}
        flattened = {**(self.facts.seed_fields() if self.facts else {}), **self.details}
        if self.configuration_problem is not None:
            flattened[CONFIGURATION_PROBLEM] = self.configuration_problem
        for key, value in flattened.items():
            # A detail never hides a reserved field; it is kept under a prefixed name instead.
            name = f"detail_{key}" if key in reserved else key
            out[name] = to_jsonable_python(value, fallback=str)
        out.update(reserved)
        # Components appear under their own names (checks.aws_infrastructure.ecs.status).
        for key, component in self.components.items():
            out[f"component_{key}" if key in out else key] = component.seed_json()
        return out


# Where the JSON output shows CheckResult.configuration_problem.
CONFIGURATION_PROBLEM = "configuration_problem"


class Verdict(StrEnum):
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        """How bad: healthy 0, degraded 1, critical 2 (the worst of several is the max)."""
        return _VERDICT_RANK[self]

    @property
    def exit_code(self) -> int:
        """Seed exit codes: 0 healthy, 1 degraded or warnings, 2 critical."""
        return self.rank

    @property
    def state_name(self) -> str:
        """Name for the flow run's final state."""
        return self.value.capitalize()


_VERDICT_RANK = {Verdict.HEALTHY: 0, Verdict.DEGRADED: 1, Verdict.CRITICAL: 2}


class DiagnosticReport(BaseModel):
    target: str
    timestamp: str  # ISO 8601, UTC
    diagnostic_duration_seconds: float
    overall_status: Verdict
    critical_issues: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    recommendations: list[str] = Field(default_factory=list)
    checks: dict[str, CheckResult] = Field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return self.overall_status.exit_code

    def configuration_problems(self) -> list[str]:
        """The configuration mistakes the checks ran into (AWS credentials, permissions,
        region), each once; they are findings too, and the command lines exit 64 on them."""
        found: list[str] = []
        stack = list(self.checks.values())
        while stack:
            check = stack.pop(0)
            problem = check.configuration_problem
            if problem is not None and problem not in found:
                found.append(problem)
            stack.extend(check.components.values())
        return found

    def to_seed_json(self) -> dict[str, Any]:
        """JSON with the seed's field names (cron jobs parse these), plus `target`."""
        return {
            "timestamp": self.timestamp,
            "diagnostic_duration_seconds": self.diagnostic_duration_seconds,
            "overall_status": self.overall_status.value,
            "critical_issues": list(self.critical_issues),
            "warnings": list(self.warnings),
            "recommendations": list(self.recommendations),
            "checks": {name: check.seed_json() for name, check in self.checks.items()},
            "target": self.target,
        }
