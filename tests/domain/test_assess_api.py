"""api_connectivity and health_endpoints over the cases that matter."""

from __future__ import annotations

import pytest

from service_health.assessment import assess_api_connectivity, assess_health_endpoints
from service_health.models import CheckResult, CheckStatus
from service_health.observations import ErrorKind, HttpObservation
from tests.domain import bodies as b
from tests.domain.helpers import messages, severities


@pytest.mark.parametrize(
    ("obs", "status", "sev", "text"),
    [
        (b.health(), "healthy", [], ""),
        (b.no_answer("/health"), "unhealthy", ["critical"], "unreachable"),
        (b.no_answer("/health", ErrorKind.TIMEOUT), "unhealthy", ["critical"], "timeout"),
        (
            b.http("/health", 200, {"status": "healthy"}, elapsed_ms=6200),
            "degraded",
            ["warning"],
            "slowly: 6.20 s",
        ),
        (
            b.http("/health", 502, text="<html>502 Bad Gateway</html>", content_type="text/html"),
            "unhealthy",
            ["critical"],
            "load balancer answered HTTP 502",
        ),
        (
            b.http("/health", 500, text="Internal Server Error"),
            "unhealthy",
            ["critical"],
            "answered HTTP 500",
        ),
        (b.health(status="unhealthy", postgres="unhealthy"), "healthy", [], ""),
        (b.http("/health", 404, {"detail": "Not Found"}), "degraded", ["warning"], "wrong api_url"),
    ],
    ids=["healthy", "refused", "timeout", "slow", "html-502", "wedged-500", "service-503", "404"],
)
def test_api_connectivity(obs: HttpObservation, status: str, sev: list[str], text: str) -> None:
    result = assess_api_connectivity(obs, slow_s=5.0)
    assert result.status == status
    assert severities(result) == sev
    assert text in messages(result) + (result.error or "")
    assert result.evidence == ["GET /health"]
    assert result.latency_ms == obs.elapsed_ms


def contract(**overrides: HttpObservation) -> dict[str, HttpObservation]:
    endpoints = {
        "/health": b.health(),
        "/health?detailed=true": b.http(
            "/health?detailed=true",
            200,
            {
                "status": "healthy",
                "version": "1",
                "timestamp": b.TS,
                "services": {"mlflow": "healthy", "redis": "healthy", "postgres": "healthy"},
                "system_info": {"cpu_percent": 10.0, "memory_percent": 50.0},
            },
        ),
        "/ready": b.ready(),
        "/live": b.live(),
        "/health/mlflow": b.mlflow_health(),
        "/health/status": b.health_status(),
        "/metrics": b.metrics(),
    }
    endpoints.update({k.replace("_", "/"): v for k, v in overrides.items()})
    return endpoints


def legacy(**overrides: HttpObservation) -> dict[str, HttpObservation]:
    endpoints = {
        "/health": b.legacy_health(),
        "/health?detailed=true": b.legacy_500("/health?detailed=true"),
        "/ready": b.legacy_ready(),
        "/live": b.legacy_live(),
        "/health/mlflow": b.legacy_mlflow_closed(),
        "/health/status": b.legacy_500("/health/status"),
        "/metrics": b.legacy_metrics(),
    }
    endpoints.update({k.replace("_", "/"): v for k, v in overrides.items()})
    return endpoints


CASES = [
    ("healthy", contract(), "healthy", [], ""),
    (
        "breaker-open",
        contract(
            _health=b.health("degraded", mlflow="degraded"),
            _ready=b.ready(breaker_open=True),
            _health_mlflow=b.mlflow_health("OPEN", time_until_retry=10),
        ),
        "degraded",
        ["warning"],
        "degraded mode",
    ),
    (
        "postgres-down",
        contract(
            _health=b.health("unhealthy", postgres="unhealthy"), _ready=b.ready(database=False)
        ),
        "unhealthy",
        ["critical"],
        "cannot serve traffic",
    ),
    (
        "redis-down",
        contract(_health=b.health("degraded", redis="unhealthy")),
        "degraded",
        ["warning"],
        "redis: unhealthy",
    ),
    (
        "ready-timeout",
        contract(_ready=b.no_answer("/ready", ErrorKind.TIMEOUT)),
        "degraded",
        ["warning"],
        # Our own MLflow-touching request held the API: blamed on nothing it did not show.
        "The API held our requests: GET /ready got no answer",
    ),
    (
        "ready-500",
        contract(_ready=b.http("/ready", 500, text="oops")),
        "degraded",
        ["warning"],
        "readiness unknown",
    ),
    (
        "ready-html",
        contract(_ready=b.http("/ready", 200, text="<html/>", content_type="text/html")),
        "degraded",
        ["warning"],
        "unreadable body",
    ),
    (
        "health-wrong-types",
        contract(_health=b.http("/health", 200, {"status": 1})),
        "degraded",
        ["warning"],
        "unreadable health status",
    ),
    (
        "live-blocked",
        contract(_live=b.live(elapsed_ms=9900)),
        "degraded",
        ["warning"],
        "slow to answer even its liveness endpoint",
    ),
    (
        "high-memory",
        contract(
            **{
                "_health?detailed=true": b.http(
                    "/health?detailed=true",
                    200,
                    {
                        "status": "healthy",
                        "version": "1",
                        "timestamp": b.TS,
                        "services": {},
                        "system_info": {"memory_percent": 97},
                    },
                )
            }
        ),
        "degraded",
        ["warning"],
        "High memory use",
    ),
    (
        "nothing-answers",
        {k: b.no_answer(k) for k in contract()},
        "error",
        ["warning"],
        "No health endpoint answered",
    ),
    # The deployed version.
    # Its 500s on the auxiliary views are informational: healthy stays healthy.
    ("legacy-healthy", legacy(), "healthy", [], "HTTP 500"),
    (
        "legacy-reset-after-500",
        legacy(_live=b.no_answer("/live", ErrorKind.RESET)),
        "degraded",
        ["warning"],
        "inconclusive",
    ),
    (
        "legacy-postgres-down",
        legacy(_ready=b.legacy_ready(database=False)),
        "unhealthy",
        ["critical"],
        "failed critical checks: database",
    ),
    (
        "legacy-breaker-open",
        legacy(_ready=b.legacy_ready(breaker_open=True), _health_mlflow=b.legacy_mlflow_unknown()),
        "degraded",
        ["warning"],
        "Circuit breaker open",
    ),
]


@pytest.mark.parametrize(
    ("endpoints", "status", "sev", "text"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_health_endpoints(
    endpoints: dict[str, HttpObservation], status: str, sev: list[str], text: str
) -> None:
    result = assess_health_endpoints(endpoints, slow_s=5.0)
    assert result.status == status, messages(result)
    assert severities(result) == sev, messages(result)
    assert text in messages(result)
    assert set(result.details["endpoints"]) == set(endpoints)


def test_legacy_500s_are_informational_with_the_validation_text() -> None:
    result = assess_health_endpoints(legacy())
    assert all(f.severity != "critical" for f in result.findings)
    assert result.details["endpoints"]["/health/status"]["error_text"].startswith("1 validation")
    lightweight = [f for f in result.findings if "lightweight" in f.message]
    assert lightweight and lightweight[0].severity == "info"


def test_reset_is_not_blamed_on_the_endpoint() -> None:
    result = assess_health_endpoints(legacy(_live=b.no_answer("/live", ErrorKind.RESET)))
    assert result.details["endpoints"]["/live"]["outcome"] == "inconclusive"
    assert not any(f.message.startswith("GET /live failed") for f in result.findings)


def test_health_lies_while_ready_says_503() -> None:
    result = assess_health_endpoints(legacy(_ready=b.legacy_ready(database=False)))
    critical = [f for f in result.findings if f.severity == "critical"]
    assert critical[0].evidence == ["GET /ready"]
    assert "Restore PostgreSQL" in (critical[0].recommendation or "")
    assert any("says healthy although" in f.message for f in result.findings)


def test_postgres_down_cites_both_endpoints_once() -> None:
    result = assess_health_endpoints(
        contract(
            _health=b.health("unhealthy", postgres="unhealthy"), _ready=b.ready(database=False)
        )
    )
    critical = [f for f in result.findings if f.severity == "critical"]
    assert len(critical) == 1
    assert critical[0].evidence == ["GET /ready", "GET /health"]


def test_warmup_failure_without_degraded_mode_is_informational() -> None:
    result = assess_health_endpoints({"/ready": b.legacy_ready()})
    assert result.status == CheckStatus.HEALTHY
    assert [f.severity for f in result.findings] == ["info"]


def test_no_endpoints_is_skipped() -> None:
    assert assess_health_endpoints({}).status == CheckStatus.SKIPPED


def test_results_are_check_results() -> None:
    assert isinstance(assess_health_endpoints(contract()), CheckResult)
