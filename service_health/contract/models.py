"""The contract tests' results, as data: what each test verifies, what one test found,
and the report under the seed's JSON names. Pure."""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field

# Test name -> what it verifies. The order is the order of the report.
DESCRIPTIONS: dict[str, str] = {
    "basic_health": "GET /health answers status, version, services {mlflow, redis, postgres} "
    "and an ISO 8601 UTC timestamp, with valid values and a matching status code",
    "detailed_health": "GET /health?detailed=true answers as /health plus system_info with "
    "numeric cpu_percent and memory_percent",
    "readiness": "GET /ready answers 200 or 503 as can_serve_traffic says, every check well "
    "formed, ready/can_serve_traffic/degraded_mode consistent with the checks",
    "liveness": "GET /live answers 200 with alive true and a timestamp",
    "mlflow_health": "GET /health/mlflow names a known circuit_breaker_state, with connected and "
    "the status code consistent with it",
    "circuit_breaker_details": "GET /health/mlflow circuit_breaker_details has state, "
    "failure_count, recovery_attempts and time_until_retry, typed; time_until_retry is null "
    "exactly when not OPEN",
    "service_status": "GET /health/status answers service_name, overall_health, mlflow with "
    "status and circuit_breaker, system_info and timestamp",
    "metrics": "GET /metrics is valid Prometheus text with the circuit breaker series (state, "
    "failures, recovery attempts) and http_requests_total",
    "graceful_degradation": "/health, /ready and the breaker agree: breaker OPEN means /health "
    "degraded with 200 and /ready 200 with degraded_mode true",
    "reset_without_key_refused": "POST /health/mlflow/reset without credentials is refused "
    "(401/403)",
    "reset_with_wrong_key_refused": "POST /health/mlflow/reset with a wrong API key is refused "
    "(401/403)",
}
# The only tests that send a request which could change the service (a breaker reset).
MUTATING_TESTS = ("reset_without_key_refused", "reset_with_wrong_key_refused")
READ_ONLY_TESTS = tuple(name for name in DESCRIPTIONS if name not in MUTATING_TESTS)


class ContractOutcome(StrEnum):
    """How one contract test ended."""

    PASSED = "passed"
    FAILED = "failed"
    SKIPPED = "skipped"


class Judgment(BaseModel):
    """What one test expected, what it got, and the difference, line by line."""

    expected: dict[str, str] = Field(default_factory=dict)
    actual: dict[str, str] = Field(default_factory=dict)
    diff: list[str] = Field(default_factory=list)
    evidence: list[str] = Field(default_factory=list)  # e.g. "GET /health"

    @property
    def passed(self) -> bool:
        return not self.diff


class ContractTestResult(BaseModel):
    name: str
    description: str
    outcome: ContractOutcome
    expected: dict[str, str] = Field(default_factory=dict)
    actual: dict[str, str] = Field(default_factory=dict)
    diff: list[str] = Field(default_factory=list)
    evidence: list[str] = Field(default_factory=list)
    duration_ms: float | None = None
    error: str | None = None  # the test itself could not complete

    @property
    def passed(self) -> bool:
        return self.outcome is ContractOutcome.PASSED

    @classmethod
    def from_judgment(
        cls, name: str, judgment: Judgment, duration_ms: float | None = None
    ) -> ContractTestResult:
        return cls(
            name=name,
            description=DESCRIPTIONS.get(name, name),
            outcome=ContractOutcome.PASSED if judgment.passed else ContractOutcome.FAILED,
            expected=dict(judgment.expected),
            actual=dict(judgment.actual),
            diff=list(judgment.diff),
            evidence=list(judgment.evidence),
            duration_ms=duration_ms,
        )

    @classmethod
    def errored(cls, name: str, error: str, duration_ms: float | None = None) -> ContractTestResult:
        """A test that raised or ran out of time: failed, with the reason as its diff."""
        return cls(
            name=name,
            description=DESCRIPTIONS.get(name, name),
            outcome=ContractOutcome.FAILED,
            expected={"test": "completes within the run's deadline"},
            actual={"test": error},
            diff=[f"test could not complete: {error}"],
            duration_ms=duration_ms,
            error=error,
        )

    @classmethod
    def skipped(cls, name: str, reason: str) -> ContractTestResult:
        return cls(
            name=name,
            description=DESCRIPTIONS.get(name, name),
            outcome=ContractOutcome.SKIPPED,
            actual={"skipped": reason},
        )

    def seed_json(self) -> dict[str, Any]:
        """The seed's entry ({passed, description, ...}) plus the diff and its evidence."""
        return {
            "passed": self.passed,
            "description": self.description,
            "outcome": self.outcome.value,
            "skipped": self.outcome is ContractOutcome.SKIPPED,
            "expected": dict(self.expected),
            "actual": dict(self.actual),
            "diff": list(self.diff),
            "evidence": list(self.evidence),
            "duration_ms": self.duration_ms,
            "error": self.error,
        }


class ContractSummary(BaseModel):
    total_tests: int  # tests that ran (passed + failed); skipped ones are counted apart
    passed: int
    failed: int
    skipped: int = 0
    success_rate: float  # percent of the tests that ran

    @classmethod
    def of(cls, results: Iterable[ContractTestResult]) -> ContractSummary:
        outcomes = [r.outcome for r in results]
        passed = outcomes.count(ContractOutcome.PASSED)
        failed = outcomes.count(ContractOutcome.FAILED)
        total = passed + failed
        return cls(
            total_tests=total,
            passed=passed,
            failed=failed,
            skipped=outcomes.count(ContractOutcome.SKIPPED),
            success_rate=round(100.0 * passed / total, 1) if total else 0.0,
        )


class ContractReport(BaseModel):
    target: str
    api_url: str
    start_time: str  # ISO 8601, UTC
    duration_seconds: float
    read_only: bool = False
    tests: dict[str, ContractTestResult] = Field(default_factory=dict)
    summary: ContractSummary

    @property
    def all_passed(self) -> bool:
        """Every test that ran passed (and at least one ran)."""
        return self.summary.failed == 0 and self.summary.passed > 0

    @property
    def state_name(self) -> str:
        return "Passed" if self.all_passed else "Failed"

    @property
    def exit_code(self) -> int:
        return 0 if self.all_passed else 1

    def failed_tests(self) -> list[str]:
        return [name for name, r in self.tests.items() if r.outcome is ContractOutcome.FAILED]

    def to_seed_json(self) -> dict[str, Any]:
        """The seed's field names (start_time, api_url, tests, summary, duration_seconds)."""
        return {
            "start_time": self.start_time,
            "api_url": self.api_url,
            "tests": {name: r.seed_json() for name, r in self.tests.items()},
            "summary": self.summary.model_dump(),
            "duration_seconds": self.duration_seconds,
            "target": self.target,
            "read_only": self.read_only,
            "overall": "passed" if self.all_passed else "failed",
        }


def build_contract_report(
    target: str,
    api_url: str,
    start_time: str,
    duration_seconds: float,
    results: dict[str, ContractTestResult],
    read_only: bool = False,
) -> ContractReport:
    """The report, tests in the order of DESCRIPTIONS (unknown names last)."""
    order = {name: i for i, name in enumerate(DESCRIPTIONS)}
    ordered = dict(sorted(results.items(), key=lambda kv: order.get(kv[0], len(order))))
    return ContractReport(
        target=target,
        api_url=api_url,
        start_time=start_time,
        duration_seconds=round(duration_seconds, 3),
        read_only=read_only,
        tests=ordered,
        summary=ContractSummary.of(ordered.values()),
    )
