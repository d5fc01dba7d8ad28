"""The circuit breaker, one per replica, read or inferred."""

from __future__ import annotations

import pytest

from service_health.assessment import assess_circuit_breaker
from service_health.details import BreakerFacts
from service_health.models import CheckStatus
from service_health.observations import ErrorKind, HttpObservation
from tests.domain import bodies as b
from tests.domain.helpers import facts, messages, severities

A, B = "10.0.1.5:8000", "10.0.1.6:8000"


def replicas(*answers: HttpObservation) -> dict[str, HttpObservation]:
    return {obs.replica or f"sample-{i + 1}": obs for i, obs in enumerate(answers)}


CASES = [
    (
        "all-closed",
        replicas(b.mlflow_health(replica=A), b.mlflow_health(replica=B)),
        None,
        None,
        "healthy",
        [],
        "CLOSED",
    ),
    (
        "single-open-retrying",
        replicas(b.mlflow_health("OPEN", time_until_retry=12, failure_count=3, replica=A)),
        None,
        None,
        "degraded",
        ["warning"],
        "OPEN",
    ),
    (
        "open-everywhere",
        replicas(
            b.mlflow_health("OPEN", time_until_retry=5, replica=A),
            b.mlflow_health("OPEN", time_until_retry=9, replica=B),
        ),
        None,
        None,
        "degraded",
        ["warning"],
        "OPEN",
    ),
    (
        "one-of-two-stuck",
        replicas(
            b.mlflow_health("OPEN", recovery_attempts=3, replica=A), b.mlflow_health(replica=B)
        ),
        None,
        None,
        "degraded",
        ["warning", "warning"],
        "OPEN",
    ),
    (
        "half-open",
        replicas(b.mlflow_health("HALF_OPEN", replica=A)),
        None,
        None,
        "recovering",
        ["warning"],
        "HALF_OPEN",
    ),
    (
        "legacy-unknown-ready-says-open",
        replicas(b.legacy_mlflow_unknown(replica=A)),
        b.legacy_ready(breaker_open=True),
        None,
        "degraded",
        ["warning"],
        "OPEN",
    ),
    (
        "legacy-unknown-metrics-say-open",
        replicas(b.legacy_mlflow_unknown(replica=A)),
        b.legacy_ready(),
        b.legacy_metrics(state="OPEN"),
        "degraded",
        ["warning"],
        "OPEN",
    ),
    (
        "legacy-unknown-unconfirmed",
        replicas(b.legacy_mlflow_unknown(replica=A)),
        b.legacy_ready(),
        b.legacy_metrics(state="CLOSED"),
        "degraded",
        ["warning"],
        "UNKNOWN",
    ),
    (
        "weird-state",
        replicas(
            b.http(
                "/health/mlflow",
                200,
                {"connected": True, "circuit_breaker_state": "WEIRD", "timestamp": b.TS},
                replica=A,
            )
        ),
        None,
        None,
        "degraded",
        ["warning"],
        "UNKNOWN",
    ),
    (
        "timeout",
        replicas(b.no_answer("/health/mlflow", ErrorKind.TIMEOUT, replica=A)),
        None,
        None,
        "degraded",
        ["warning"],
        "UNKNOWN",
    ),
    (
        "closed-but-failing",
        replicas(b.legacy_mlflow_closed(failures=2, replica=A)),
        None,
        None,
        "degraded",
        ["warning"],
        "CLOSED",
    ),
    ("only-ready-signal", {}, b.ready(breaker_open=True), None, "degraded", ["warning"], "OPEN"),
    (
        "sampled-misses-open-replica",
        replicas(b.mlflow_health(), b.mlflow_health()),
        b.ready(breaker_open=True),
        None,
        "degraded",
        ["warning"],
        "CLOSED",
    ),
]


@pytest.mark.parametrize(
    ("reps", "ready", "metrics", "status", "sev", "state"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_circuit_breaker(
    reps: dict[str, HttpObservation],
    ready: HttpObservation | None,
    metrics: HttpObservation | None,
    status: str,
    sev: list[str],
    state: str,
) -> None:
    result = assess_circuit_breaker(reps, ready, metrics, partial=False)
    assert result.status == status, messages(result)
    assert severities(result) == sev, messages(result)
    assert facts(result, BreakerFacts).state == state
    assert all(f.severity != "critical" for f in result.findings)  # OPEN is never critical


def test_one_replica_stuck_open_of_two() -> None:
    result = assess_circuit_breaker(
        replicas(
            b.mlflow_health("OPEN", recovery_attempts=3, failure_count=9, replica=A),
            b.mlflow_health(replica=B),
        )
    )
    open_finding, stuck = result.findings[:2]
    assert open_finding.message.startswith("1 of 2 replicas has the MLflow circuit breaker OPEN")
    assert A in open_finding.message
    assert "stuck OPEN" in stuck.message and "after 3 failed recovery attempts" in stuck.message
    assert stuck.recommendation is not None and "reset" in stuck.recommendation.lower()
    assert stuck.evidence == [f"GET {A}/health/mlflow"]
    assert facts(result, BreakerFacts).replicas[A].model_dump() == {
        "state": "OPEN",
        "failure_count": 9,
        "time_until_retry": None,
        "recovery_attempts": 3,
        "stuck": True,
        "connected": False,
        "readable": True,
        "inferred_from": None,
        "http_status": 503,
        "replica": A,
    }
    assert facts(result, BreakerFacts).replicas[B].stuck is False
    assert facts(result, BreakerFacts).open_replicas == [A]


def test_open_and_retrying_is_not_stuck() -> None:
    result = assess_circuit_breaker(
        replicas(b.mlflow_health("OPEN", time_until_retry=12, replica=A))
    )
    assert facts(result, BreakerFacts).replicas[A].stuck is False
    assert "stuck" not in messages(result)


def test_legacy_unknown_inferred_open_says_so_in_evidence() -> None:
    result = assess_circuit_breaker(
        replicas(b.legacy_mlflow_unknown(replica=A)), b.legacy_ready(breaker_open=True), None
    )
    entry = facts(result, BreakerFacts).replicas[A]
    assert entry.state == "OPEN" and entry.readable is False
    assert entry.inferred_from is not None
    assert entry.inferred_from.startswith("GET /ready (mlflow check: Circuit breaker open")
    assert entry.stuck is None  # time_until_retry cannot be known
    assert "GET /ready" in result.evidence
    assert "inferred for" in result.findings[0].message
    assert "GET /ready" in result.findings[0].evidence


def test_legacy_unknown_unconfirmed_hints_at_open() -> None:
    result = assess_circuit_breaker(
        replicas(b.legacy_mlflow_unknown(replica=A)), b.legacy_ready(), None
    )
    assert "only while the breaker is OPEN" in messages(result)


def test_sampled_view_is_partial() -> None:
    result = assess_circuit_breaker(
        replicas(b.mlflow_health(), b.mlflow_health("OPEN")), partial=True
    )
    assert result.partial
    assert facts(result, BreakerFacts).sampled_through_load_balancer is True
    assert "1 of 2 sampled answers has" in messages(result)
    assert any(f.severity == "info" and "Partial view" in f.message for f in result.findings)


def test_sampled_answers_miss_the_open_replica() -> None:
    result = assess_circuit_breaker(
        replicas(b.mlflow_health(), b.mlflow_health()),
        b.ready(breaker_open=True),
        None,
        partial=True,
    )
    assert "not read is probably OPEN" in messages(result)


def test_nothing_to_read_is_skipped() -> None:
    assert assess_circuit_breaker({}, None, None, False).status == CheckStatus.SKIPPED
