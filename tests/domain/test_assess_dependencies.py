"""MLflow, PostgreSQL and Redis: directly, or through the service's own view."""

from __future__ import annotations

import pytest

from service_health.assessment import (
    assess_database,
    assess_database_from_service,
    assess_mlflow,
    assess_redis,
    assess_redis_from_service,
)
from service_health.models import CheckResult, CheckStatus
from service_health.observations import ErrorKind, PostgresObservation, RedisObservation
from tests.domain import bodies as b
from tests.domain.helpers import messages, severities

SEARCH = "/api/2.0/mlflow/experiments/search"
MLFLOW_OK = b.http("/health", 200, text="OK", content_type="text/plain")
SEARCH_OK = b.http(SEARCH, 200, {"experiments": [{"name": "Default"}]}, method="POST")

CASES: list[tuple[str, CheckResult, str, list[str], str]] = [
    ("mlflow-ok", assess_mlflow(MLFLOW_OK, SEARCH_OK), "healthy", [], ""),
    ("mlflow-unconfigured", assess_mlflow(None, None), "skipped", [], ""),
    (
        "mlflow-down",
        assess_mlflow(b.no_answer("/health"), b.no_answer(SEARCH)),
        "unhealthy",
        ["warning"],
        "unreachable or failing",
    ),
    (
        "mlflow-search-404",
        assess_mlflow(MLFLOW_OK, b.http(SEARCH, 404, text="Not Found", method="POST")),
        "degraded",
        ["warning"],
        "not served at this URL",
    ),
    (
        "mlflow-search-error",
        assess_mlflow(
            MLFLOW_OK,
            b.http(
                SEARCH, 500, {"error_code": "INTERNAL_ERROR", "message": "db locked"}, method="POST"
            ),
        ),
        "degraded",
        ["warning"],
        "INTERNAL_ERROR: db locked",
    ),
    (
        "mlflow-slow",
        assess_mlflow(b.http("/health", 200, text="OK", elapsed_ms=7000), None),
        "degraded",
        ["warning"],
        "slowly",
    ),
    (
        "db-ok",
        assess_database(PostgresObservation(connect_ms=12, query_ms=1, server_version="16.2")),
        "healthy",
        [],
        "",
    ),
    ("db-unconfigured", assess_database(None), "skipped", [], ""),
    (
        "db-down",
        assess_database(PostgresObservation(error="connection refused")),
        "unhealthy",
        ["critical"],
        "PostgreSQL is down",
    ),
    (
        "db-slow",
        assess_database(PostgresObservation(connect_ms=900, query_ms=400), slow_s=1.0),
        "degraded",
        ["warning"],
        "slowly",
    ),
    (
        "db-via-ready-503",
        assess_database_from_service(b.legacy_health(), b.legacy_ready(database=False)),
        "unhealthy",
        ["critical"],
        "connection refused",
    ),
    (
        "db-via-health",
        assess_database_from_service(b.health("unhealthy", postgres="unhealthy"), None),
        "unhealthy",
        ["critical"],
        "down according to the service",
    ),
    (
        "db-via-ready-ok",
        assess_database_from_service(b.legacy_health(), b.legacy_ready()),
        "healthy",
        [],
        "",
    ),
    (
        "db-no-evidence",
        assess_database_from_service(b.legacy_health(), b.no_answer("/ready", ErrorKind.TIMEOUT)),
        "skipped",
        [],
        "evidence limited",
    ),
    (
        "redis-ok",
        assess_redis(RedisObservation(ping_ms=1.2, info={"redis_version": "7.2"})),
        "healthy",
        [],
        "",
    ),
    ("redis-unconfigured", assess_redis(None), "skipped", [], ""),
    (
        "redis-down",
        assess_redis(RedisObservation(error="Connection refused")),
        "unhealthy",
        ["warning"],
        "Redis is down",
    ),
    (
        "redis-slow",
        assess_redis(RedisObservation(ping_ms=250)),
        "degraded",
        ["warning"],
        "PING took 250 ms",
    ),
    (
        "redis-full",
        assess_redis(RedisObservation(ping_ms=1, info={"used_memory": 95, "maxmemory": 100})),
        "degraded",
        ["warning"],
        "95% of maxmemory",
    ),
    (
        "redis-via-health-down",
        assess_redis_from_service(b.health("degraded", redis="unhealthy")),
        "unhealthy",
        ["warning"],
        "keeps serving",
    ),
    ("redis-via-health-ok", assess_redis_from_service(b.health()), "healthy", [], ""),
    (
        "redis-legacy-lightweight",
        assess_redis_from_service(b.legacy_health()),
        "skipped",
        [],
        "lightweight answer that does not report it",
    ),
    ("redis-no-health", assess_redis_from_service(None), "skipped", [], "evidence limited"),
]


@pytest.mark.parametrize(
    ("result", "status", "sev", "text"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_dependencies(result: CheckResult, status: str, sev: list[str], text: str) -> None:
    assert result.status == status, messages(result)
    assert severities(result) == sev, messages(result)
    assert text in messages(result)


def test_redis_down_is_never_critical() -> None:
    for result in (
        assess_redis(RedisObservation(error="boom")),
        assess_redis_from_service(b.health("degraded", redis="unhealthy")),
    ):
        assert all(f.severity != "critical" for f in result.findings)


def test_limited_redis_evidence_is_said_clearly() -> None:
    result = assess_redis_from_service(b.legacy_health())
    assert result.partial and result.details["evidence_limited"] is True
    assert result.evidence == ["GET /health"]
    assert result.findings[0].severity == "info"
    assert "not reachable from the worker" in result.findings[0].message
    assert result.details["source"] == "service"


def test_database_from_service_names_its_evidence() -> None:
    result = assess_database_from_service(b.legacy_health(), b.legacy_ready(database=False))
    assert result.evidence == ["GET /ready"]
    assert result.findings[0].evidence == ["GET /ready"]
    assert result.details["source"] == "service"


def test_direct_database_details() -> None:
    result = assess_database(PostgresObservation(connect_ms=10, query_ms=2, server_version="16"))
    assert result.latency_ms == 12
    assert result.details["server_version"] == "16" and result.details["source"] == "direct"


def test_mlflow_down_is_not_critical() -> None:
    result = assess_mlflow(b.no_answer("/health"), None)
    assert result.status == CheckStatus.UNHEALTHY
    assert all(f.severity == "warning" for f in result.findings)
