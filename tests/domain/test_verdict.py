"""The verdict: assess() over hand-made results and over whole diagnoses."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from service_health.assessment import (
    assess,
    assess_alb,
    assess_api_connectivity,
    assess_aws_infrastructure,
    assess_circuit_breaker,
    assess_cloudwatch,
    assess_database,
    assess_database_from_service,
    assess_ecs,
    assess_health_endpoints,
    assess_metrics,
    assess_mlflow,
    assess_rds,
    assess_redis,
    assess_redis_from_service,
    build_diagnostic_report,
)
from service_health.models import CheckResult, CheckStatus, Finding, Verdict
from service_health.observations import (
    AwsObservation,
    ErrorKind,
    HttpObservation,
    PostgresObservation,
    RedisObservation,
)
from tests.domain import bodies as b


def check(status: str, *findings: tuple[str, str], error: str | None = None) -> CheckResult:
    return CheckResult(
        name="x",
        status=CheckStatus(status),
        error=error,
        findings=[
            Finding.model_validate(
                {"severity": sev, "message": msg, "recommendation": f"fix {msg}"}
            )
            for sev, msg in findings
        ],
    )


ASSESS_CASES = [
    ("all-healthy", {"a": check("healthy"), "b": check("healthy")}, Verdict.HEALTHY, 0, 0),
    (
        "skipped-does-not-degrade",
        {"a": check("healthy"), "b": check("skipped")},
        Verdict.HEALTHY,
        0,
        0,
    ),
    ("info-does-not-degrade", {"a": check("healthy", ("info", "fyi"))}, Verdict.HEALTHY, 0, 0),
    ("warning-degrades", {"a": check("degraded", ("warning", "w"))}, Verdict.DEGRADED, 0, 1),
    (
        "critical-wins",
        {"a": check("degraded", ("warning", "w")), "b": check("unhealthy", ("critical", "c"))},
        Verdict.CRITICAL,
        1,
        1,
    ),
    ("recovering-degrades", {"a": check("recovering")}, Verdict.DEGRADED, 0, 1),
    (
        "bare-error-degrades",
        {"a": check("error", error="deadline exceeded")},
        Verdict.DEGRADED,
        0,
        1,
    ),
    (
        "unhealthy-without-critical-is-degraded",
        {"a": check("unhealthy", ("warning", "mlflow"))},
        Verdict.DEGRADED,
        0,
        1,
    ),
    (
        "failed-helper",
        {"a": CheckResult.failed("database", "TimeoutError")},
        Verdict.DEGRADED,
        0,
        1,
    ),
    (
        "duplicates-merge",
        {"a": check("degraded", ("warning", "same")), "b": check("degraded", ("warning", "same"))},
        Verdict.DEGRADED,
        0,
        1,
    ),
]


@pytest.mark.parametrize(
    ("checks", "verdict", "n_critical", "n_warnings"),
    [c[1:] for c in ASSESS_CASES],
    ids=[c[0] for c in ASSESS_CASES],
)
def test_assess(
    checks: dict[str, CheckResult], verdict: Verdict, n_critical: int, n_warnings: int
) -> None:
    got, critical, warnings, recommendations = assess(checks)
    assert got == verdict
    assert (len(critical), len(warnings)) == (n_critical, n_warnings)
    assert len(recommendations) == len(set(recommendations))


def test_error_check_names_its_cause() -> None:
    _, _, warnings, _ = assess({"redis": check("error", error="deadline exceeded")})
    assert warnings == ["redis is error: deadline exceeded"]


# --- whole diagnoses ------------------------------------------------------------------------


class World:
    """Everything one diagnosis observes; each scenario changes a few answers."""

    def __init__(self) -> None:
        self.endpoints: dict[str, HttpObservation] = {
            "/health": b.health(),
            "/ready": b.ready(),
            "/live": b.live(),
            "/health/mlflow": b.mlflow_health(),
            "/health/status": b.health_status(),
            "/metrics": b.metrics(),
        }
        self.replicas = {
            "10.0.1.5:8000": b.mlflow_health(replica="10.0.1.5:8000"),
            "10.0.1.6:8000": b.mlflow_health(replica="10.0.1.6:8000"),
        }
        self.mlflow: tuple[HttpObservation | None, HttpObservation | None] = (
            b.http("/health", 200, text="OK"),
            b.http("/api/2.0/mlflow/experiments/search", 200, {"experiments": []}, method="POST"),
        )
        self.postgres: PostgresObservation | None = PostgresObservation(connect_ms=5, query_ms=1)
        self.redis: RedisObservation | None = RedisObservation(ping_ms=1)
        self.lbs: AwsObservation | None = b.load_balancers()
        self.groups = {"reg-tg": b.target_health("healthy", "healthy")}
        self.ecs = b.ecs(b.ecs_service("reg", 2), b.ecs_service("mlf", 1, 1))
        self.rds: AwsObservation | None = b.rds("available")
        self.alarms: AwsObservation | None = b.alarms(("cpu", "OK"))

    def diagnose(self) -> tuple[Verdict, list[str], list[str]]:
        e = self.endpoints
        checks = {
            "api_connectivity": assess_api_connectivity(e["/health"], 5.0),
            "health_endpoints": assess_health_endpoints(e),
            "circuit_breaker": assess_circuit_breaker(
                self.replicas, e["/ready"], e["/metrics"], partial=False
            ),
            "mlflow_service": assess_mlflow(*self.mlflow),
            "database": assess_database(self.postgres)
            if self.postgres
            else assess_database_from_service(e["/health"], e["/ready"]),
            "redis": assess_redis(self.redis)
            if self.redis
            else assess_redis_from_service(e["/health"], e["/ready"]),
            "aws_infrastructure": assess_aws_infrastructure(
                {
                    "alb": assess_alb(self.lbs, self.groups),
                    "ecs": assess_ecs(self.ecs, ["reg", "mlf"], non_critical=["mlf"]),
                    "rds": assess_rds(self.rds),
                    "cloudwatch": assess_cloudwatch(self.alarms),
                }
            ),
            "service_metrics": assess_metrics(e["/metrics"]),
        }
        report = build_diagnostic_report("t", checks, datetime(2024, 1, 1, tzinfo=UTC), 2.5)
        report.to_seed_json()
        return report.overall_status, report.critical_issues, report.warnings


def breaker_open(w: World) -> None:
    w.endpoints.update(
        {
            "/health": b.health("degraded", mlflow="degraded"),
            "/ready": b.ready(breaker_open=True),
            "/metrics": b.metrics(state=1),
        }
    )
    w.replicas = {k: b.mlflow_health("OPEN", time_until_retry=20, replica=k) for k in w.replicas}
    w.mlflow = (b.no_answer("/health"), b.no_answer("/api/2.0/mlflow/experiments/search"))


def one_stuck(w: World) -> None:
    w.replicas["10.0.1.5:8000"] = b.mlflow_health(
        "OPEN", recovery_attempts=3, replica="10.0.1.5:8000"
    )


def legacy_open(w: World) -> None:
    w.endpoints = {
        "/health": b.legacy_health(),
        "/ready": b.legacy_ready(breaker_open=True),
        "/live": b.no_answer("/live", ErrorKind.RESET),
        "/health/mlflow": b.legacy_mlflow_unknown(),
        "/health?detailed=true": b.legacy_500("/health?detailed=true"),
        "/health/status": b.legacy_500("/health/status"),
        "/metrics": b.legacy_metrics(state="OPEN"),
    }
    w.replicas = {"10.0.1.5:8000": b.legacy_mlflow_unknown("10.0.1.5:8000")}
    w.postgres = None
    w.redis = None


def postgres_down(w: World) -> None:
    w.endpoints.update(
        {"/health": b.health("unhealthy", postgres="unhealthy"), "/ready": b.ready(database=False)}
    )
    w.postgres = PostgresObservation(error="connection refused")


def legacy_postgres_down(w: World) -> None:
    legacy_open(w)
    w.endpoints["/ready"] = b.legacy_ready(database=False)


def redis_down(w: World) -> None:
    w.endpoints["/health"] = b.health("degraded", redis="unhealthy")
    w.redis = RedisObservation(error="Connection refused")


def api_unreachable(w: World) -> None:
    w.endpoints = {k: b.no_answer(k) for k in w.endpoints}
    w.replicas = {k: b.no_answer("/health/mlflow", replica=k) for k in w.replicas}


def alb_empty(w: World) -> None:
    w.groups = {"reg-tg": b.target_health("unhealthy", "unhealthy")}


def ecs_zero(w: World) -> None:
    w.ecs = b.ecs(b.ecs_service("reg", 0), b.ecs_service("mlf", 1, 1))


def ecs_half(w: World) -> None:
    w.ecs = b.ecs(b.ecs_service("reg", 1), b.ecs_service("mlf", 1, 1))


def ecs_rolling(w: World) -> None:
    w.ecs = b.ecs(b.ecs_service("reg", 1, rollout="IN_PROGRESS"), b.ecs_service("mlf", 1, 1))


def rds_stopped(w: World) -> None:
    w.rds = b.rds("stopped")


def alarm(w: World) -> None:
    w.alarms = b.alarms(("hokusai-5xx", "ALARM"))


def aws_throttled(w: World) -> None:
    w.ecs = b.aws("ecs", "DescribeServices", None, "ThrottlingException")
    w.rds = b.aws("rds", "DescribeDBInstances", None, "NoCredentials")


def slow_api(w: World) -> None:
    w.endpoints["/health"] = b.http("/health", 200, {"status": "healthy"}, elapsed_ms=8000)


def html_error_page(w: World) -> None:
    page = "<html><body><h1>502 Bad Gateway</h1></body></html>"
    w.endpoints = {k: b.http(k, 502, text=page, content_type="text/html") for k in w.endpoints}


def invalid_json(w: World) -> None:
    w.endpoints["/ready"] = b.http("/ready", 200, text="{ready: true")


def weird_breaker(w: World) -> None:
    w.replicas = {
        "10.0.1.5:8000": b.http(
            "/health/mlflow",
            200,
            {"connected": True, "circuit_breaker_state": "WEIRD"},
            replica="10.0.1.5:8000",
        )
    }


def wrong_types(w: World) -> None:
    w.endpoints["/health"] = b.http("/health", 200, {"status": ["healthy"], "services": 3})
    w.endpoints["/ready"] = b.http("/ready", 200, {"ready": "yes", "checks": "all good"})


SCENARIOS = [
    ("healthy", None, Verdict.HEALTHY, ""),
    ("breaker-open", breaker_open, Verdict.DEGRADED, "circuit breaker is OPEN on all 2"),
    ("one-replica-stuck", one_stuck, Verdict.DEGRADED, "1 of 2 replicas has"),
    ("legacy-unknown-inferred-open", legacy_open, Verdict.DEGRADED, "inferred for"),
    ("postgres-down", postgres_down, Verdict.CRITICAL, "PostgreSQL is down"),
    (
        "legacy-postgres-down-via-ready",
        legacy_postgres_down,
        Verdict.CRITICAL,
        "cannot serve traffic",
    ),
    ("redis-down", redis_down, Verdict.DEGRADED, "Redis is down"),
    ("api-unreachable", api_unreachable, Verdict.CRITICAL, "unreachable"),
    ("alb-zero-healthy", alb_empty, Verdict.CRITICAL, "no healthy target"),
    ("ecs-0-of-2", ecs_zero, Verdict.CRITICAL, "no running task (0/2)"),
    ("ecs-1-of-2", ecs_half, Verdict.DEGRADED, "runs 1 of 2"),
    ("ecs-rolling", ecs_rolling, Verdict.DEGRADED, "rolling out"),
    ("rds-stopped", rds_stopped, Verdict.CRITICAL, "not available (state stopped)"),
    ("alarm", alarm, Verdict.DEGRADED, "hokusai-5xx is in ALARM"),
    ("aws-throttled-and-no-credentials", aws_throttled, Verdict.DEGRADED, "throttled"),
    ("slow-api", slow_api, Verdict.DEGRADED, "slowly"),
    ("html-error-page", html_error_page, Verdict.CRITICAL, "load balancer answered HTTP 502"),
    ("invalid-json", invalid_json, Verdict.DEGRADED, "unreadable body"),
    ("weird-breaker-state", weird_breaker, Verdict.DEGRADED, "state unreadable"),
    ("wrong-types", wrong_types, Verdict.DEGRADED, "unreadable"),
]


@pytest.mark.parametrize(
    ("change", "verdict", "text"), [s[1:] for s in SCENARIOS], ids=[s[0] for s in SCENARIOS]
)
def test_diagnosis_verdict(
    change: Callable[[World], None] | None, verdict: Verdict, text: str
) -> None:
    world = World()
    if change is not None:
        change(world)
    got, critical, warnings = world.diagnose()
    assert got == verdict, (critical, warnings)
    assert text in " ".join(critical + warnings)
    if verdict != Verdict.CRITICAL:
        assert critical == []


def test_breaker_open_alone_is_never_critical() -> None:
    world = World()
    breaker_open(world)
    one_stuck(world)
    verdict, critical, _ = world.diagnose()
    assert verdict == Verdict.DEGRADED and critical == []


def test_build_report_takes_naive_time_as_utc() -> None:
    report = build_diagnostic_report("t", {}, datetime(2024, 1, 1, 12, 0, 0), 1.23456)
    assert report.timestamp == "2024-01-01T12:00:00+00:00"
    assert report.diagnostic_duration_seconds == 1.235
    assert report.overall_status == Verdict.HEALTHY
