"""The contract tests' judgments, table-driven: observations in, pass/fail and diff out."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from service_health import contract as c
from service_health.contract import (
    ContractOutcome,
    ContractReport,
    ContractSummary,
    ContractTestResult,
    Judgment,
    build_contract_report,
)
from service_health.endpoints import RESET
from service_health.observations import ErrorKind, HttpObservation
from tests.domain import bodies as b

TS = "2024-01-01T12:00:00Z"


def health_body(status: str = "healthy", mlflow: str = "healthy", **extra: Any) -> dict[str, Any]:
    body = {
        "status": status,
        "version": "1.4.2",
        "services": {"mlflow": mlflow, "redis": "healthy", "postgres": "healthy"},
        "timestamp": TS,
    }
    return body | extra


def detailed_body(**extra: Any) -> dict[str, Any]:
    return health_body(system_info={"cpu_percent": 12.5, "memory_percent": 40.0}) | extra


def ready_body(
    mlflow_passed: bool = True, degraded: bool | None = None, **extra: Any
) -> dict[str, Any]:
    return {
        "ready": True,
        "can_serve_traffic": True,
        "degraded_mode": (not mlflow_passed) if degraded is None else degraded,
        "checks": [
            {"name": "database", "passed": True, "critical": True},
            {"name": "mlflow", "passed": mlflow_passed, "critical": False},
        ],
    } | extra


def mlflow_body(
    state: str = "CLOSED",
    connected: bool | None = None,
    retry: float | None = None,
    **details: Any,
) -> dict[str, Any]:
    return {
        "connected": state == "CLOSED" if connected is None else connected,
        "circuit_breaker_state": state,
        "circuit_breaker_details": {
            "state": state,
            "failure_count": 0 if state == "CLOSED" else 3,
            "time_until_retry": retry,
            "recovery_attempts": 0,
        }
        | details,
        "timestamp": TS,
    }


def status_body(**extra: Any) -> dict[str, Any]:
    return {
        "service_name": "hokusai-registry",
        "overall_health": "healthy",
        "mlflow": {"status": {"connected": True}, "circuit_breaker": {"state": "CLOSED"}},
        "system_info": {"cpu_percent": 12.5, "memory_percent": 40.0},
        "timestamp": TS,
    } | extra


def without(body: dict[str, Any], path: str) -> dict[str, Any]:
    out = copy.deepcopy(body)
    *parents, last = path.split(".")
    node = out
    for key in parents:
        node = node[key]
    del node[last]
    return out


def replaced(body: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(body)
    *parents, last = path.split(".")
    node = out
    for key in parents:
        node = node[key]
    node[last] = value
    return out


def obs(path: str, code: int | None, body: Any = None, **kw: Any) -> HttpObservation:
    return b.http(path, code, body, **kw)


DB_FAILED = {"name": "database", "passed": False, "critical": True}
DB_NO_FLAG = {"name": "database", "passed": True}
HTML = "<html><body><h1>502 Bad Gateway</h1></body></html>"
REFUSED = b.no_answer("/health")

Case = tuple[str, Callable[[], Judgment], bool, list[str]]

CASES: list[Case] = [
    # -- basic_health -----------------------------------------------------------------------
    ("health ok", lambda: c.judge_basic_health(obs("/health", 200, health_body())), True, []),
    (
        "health degraded ok",
        lambda: c.judge_basic_health(obs("/health", 200, health_body("degraded", "degraded"))),
        True,
        [],
    ),
    (
        "health missing version",
        lambda: c.judge_basic_health(obs("/health", 200, without(health_body(), "version"))),
        False,
        ["`version`: missing"],
    ),
    (
        "health unknown status",
        lambda: c.judge_basic_health(obs("/health", 200, health_body("ok"))),
        False,
        ["`status`: unknown value 'ok'"],
    ),
    (
        "health naive timestamp",
        lambda: c.judge_basic_health(obs("/health", 200, health_body(timestamp=b.NAIVE_TS))),
        False,
        ["`timestamp`: expected ISO 8601 with a time zone (UTC); got", "(no time zone)"],
    ),
    (
        "health timestamp not ISO",
        lambda: c.judge_basic_health(obs("/health", 200, health_body(timestamp="yesterday"))),
        False,
        ["`timestamp`: expected ISO 8601", "'yesterday'"],
    ),
    (
        "health unhealthy with 200",
        lambda: c.judge_basic_health(obs("/health", 200, health_body("unhealthy"))),
        False,
        ["'unhealthy' but HTTP 200"],
    ),
    (
        "health degraded although all healthy",
        lambda: c.judge_basic_health(obs("/health", 200, health_body("degraded"))),
        False,
        ["expected healthy when every service is healthy"],
    ),
    (
        "health lightweight (deployed version)",
        lambda: c.judge_basic_health(b.legacy_health()),
        False,
        ["lightweight", "`version`: missing", "no time zone"],
    ),
    (
        "health answers HTML",
        lambda: c.judge_basic_health(obs("/health", 200, text=HTML, content_type="text/html")),
        False,
        ["body: expected a JSON object; got not JSON (text/html)"],
    ),
    (
        "health 500",
        lambda: c.judge_basic_health(b.legacy_500("/health")),
        False,
        ["HTTP status: expected 200 or 503; got HTTP 500", "body: 1 validation error"],
    ),
    (
        "health no answer",
        lambda: c.judge_basic_health(REFUSED),
        False,
        ["HTTP status: expected 200 or 503; got no answer (connect:"],
    ),
    # -- detailed_health --------------------------------------------------------------------
    (
        "detailed ok",
        lambda: c.judge_detailed_health(obs("/health?detailed=true", 200, detailed_body())),
        True,
        [],
    ),
    (
        "detailed without system_info",
        lambda: c.judge_detailed_health(obs("/health?detailed=true", 200, health_body())),
        False,
        ["`system_info`: missing"],
    ),
    (
        "detailed cpu as string",
        lambda: c.judge_detailed_health(
            obs(
                "/health?detailed=true",
                200,
                replaced(detailed_body(), "system_info.cpu_percent", "12%"),
            )
        ),
        False,
        ["`system_info.cpu_percent`: expected number, got string"],
    ),
    (
        "detailed memory out of range",
        lambda: c.judge_detailed_health(
            obs(
                "/health?detailed=true",
                200,
                replaced(detailed_body(), "system_info.memory_percent", 140),
            )
        ),
        False,
        ["`system_info.memory_percent`: expected a number within 0..100; got 140"],
    ),
    # -- readiness --------------------------------------------------------------------------
    ("ready ok", lambda: c.judge_readiness(obs("/ready", 200, ready_body())), True, []),
    (
        "ready degraded ok",
        lambda: c.judge_readiness(obs("/ready", 200, ready_body(mlflow_passed=False))),
        True,
        [],
    ),
    (
        "ready 503 while it can serve",
        lambda: c.judge_readiness(obs("/ready", 503, ready_body())),
        False,
        ["HTTP 503 but `can_serve_traffic` is true"],
    ),
    (
        "ready failed optional check without degraded_mode (deployed version)",
        lambda: c.judge_readiness(b.legacy_ready()),
        False,
        ["`degraded_mode`: expected true because non-critical check(s) model_warmup failed"],
    ),
    (
        "ready false although it serves (deployed version)",
        lambda: c.judge_readiness(b.legacy_ready(breaker_open=True)),
        False,
        ["`ready`: expected true, as can_serve_traffic"],
    ),
    (
        "ready can serve although the database failed",
        lambda: c.judge_readiness(
            obs("/ready", 200, replaced(ready_body(), "checks", [DB_FAILED]))
        ),
        False,
        ["`can_serve_traffic`: expected false because critical check(s) database failed"],
    ),
    (
        "ready check without critical flag",
        lambda: c.judge_readiness(
            obs("/ready", 200, replaced(ready_body(), "checks", [DB_NO_FLAG]))
        ),
        False,
        ["`checks[0].critical`: missing"],
    ),
    (
        "ready flag of the wrong type",
        lambda: c.judge_readiness(
            obs("/ready", 200, replaced(ready_body(), "can_serve_traffic", "yes"))
        ),
        False,
        ["`can_serve_traffic`: expected boolean, got string"],
    ),
    # -- liveness ---------------------------------------------------------------------------
    ("live ok", lambda: c.judge_liveness(b.live()), True, []),
    (
        "live without timestamp (deployed version)",
        lambda: c.judge_liveness(b.legacy_live()),
        False,
        ["`timestamp`: missing"],
    ),
    (
        "live says not alive",
        lambda: c.judge_liveness(obs("/live", 200, {"alive": False, "timestamp": TS})),
        False,
        ["`alive`: expected true; got false"],
    ),
    # -- mlflow_health ----------------------------------------------------------------------
    (
        "mlflow closed ok",
        lambda: c.judge_mlflow_health(obs("/health/mlflow", 200, mlflow_body())),
        True,
        [],
    ),
    (
        "mlflow open ok",
        lambda: c.judge_mlflow_health(obs("/health/mlflow", 503, mlflow_body("OPEN", retry=12))),
        True,
        [],
    ),
    (
        "mlflow down, breaker still closed, 503 ok",
        lambda: c.judge_mlflow_health(
            obs("/health/mlflow", 503, mlflow_body("CLOSED", connected=False, failure_count=1))
        ),
        True,
        [],
    ),
    (
        "mlflow 200 while OPEN",
        lambda: c.judge_mlflow_health(obs("/health/mlflow", 200, mlflow_body("OPEN", retry=12))),
        False,
        ["HTTP status: expected 503 because the breaker is OPEN; got 200"],
    ),
    (
        "mlflow connected while OPEN",
        lambda: c.judge_mlflow_health(
            obs("/health/mlflow", 503, mlflow_body("OPEN", connected=True, retry=3))
        ),
        False,
        ["`connected`: expected false while the breaker is OPEN; got true"],
    ),
    (
        "mlflow 200 not connected, breaker closed (deployed version)",
        lambda: c.judge_mlflow_health(b.legacy_mlflow_closed(failures=2)),
        False,
        ["HTTP status: expected 503 because `connected` is false; got 200", "no time zone"],
    ),
    (
        "mlflow 500 UNKNOWN (deployed version)",
        lambda: c.judge_mlflow_health(b.legacy_mlflow_unknown()),
        False,
        [
            "HTTP status: expected 200 or 503; got HTTP 500",
            "`circuit_breaker_state`: expected CLOSED, OPEN or HALF_OPEN; got 'UNKNOWN'",
        ],
    ),
    (
        "mlflow unknown state",
        lambda: c.judge_mlflow_health(obs("/health/mlflow", 200, mlflow_body("BROKEN", True))),
        False,
        ["`circuit_breaker_state`: expected CLOSED, OPEN or HALF_OPEN; got 'BROKEN'"],
    ),
    (
        "mlflow state missing",
        lambda: c.judge_mlflow_health(
            obs("/health/mlflow", 200, without(mlflow_body(), "circuit_breaker_state"))
        ),
        False,
        ["`circuit_breaker_state`: expected CLOSED, OPEN or HALF_OPEN; got missing"],
    ),
    # -- circuit_breaker_details ------------------------------------------------------------
    (
        "details closed ok",
        lambda: c.judge_circuit_breaker_details(obs("/health/mlflow", 200, mlflow_body())),
        True,
        [],
    ),
    (
        "details open ok",
        lambda: c.judge_circuit_breaker_details(
            obs("/health/mlflow", 503, mlflow_body("OPEN", retry=12.5))
        ),
        True,
        [],
    ),
    (
        "details stuck open with null retry ok",
        lambda: c.judge_circuit_breaker_details(
            obs("/health/mlflow", 503, mlflow_body("OPEN", recovery_attempts=3))
        ),
        True,
        [],
    ),
    (
        "details open with null retry, not stuck",
        lambda: c.judge_circuit_breaker_details(obs("/health/mlflow", 503, mlflow_body("OPEN"))),
        False,
        ["`circuit_breaker_details.time_until_retry`: expected seconds until the next trial"],
    ),
    (
        "details time_until_retry 0 while CLOSED, epoch times (deployed version)",
        lambda: c.judge_circuit_breaker_details(b.legacy_mlflow_closed()),
        False,
        [
            "`circuit_breaker_details.time_until_retry`: expected null while CLOSED; got 0",
            "`circuit_breaker_details.last_success_time`: expected ISO 8601",
            "(epoch seconds?)",
        ],
    ),
    (
        "details state read before the failure was counted (deployed version)",
        lambda: c.judge_circuit_breaker_details(
            obs("/health/mlflow", 200, mlflow_body("CLOSED", connected=False))
        ),
        False,
        ["the state was read before the failure was counted"],
    ),
    (
        "details missing (deployed version's 500)",
        lambda: c.judge_circuit_breaker_details(b.legacy_mlflow_unknown()),
        False,
        ["`circuit_breaker_details`: missing"],
    ),
    (
        "details field of the wrong type",
        lambda: c.judge_circuit_breaker_details(
            obs(
                "/health/mlflow",
                200,
                replaced(mlflow_body(), "circuit_breaker_details.failure_count", "0"),
            )
        ),
        False,
        ["`circuit_breaker_details.failure_count`: expected number, got string"],
    ),
    (
        "details time_until_retry absent",
        lambda: c.judge_circuit_breaker_details(
            obs(
                "/health/mlflow",
                200,
                without(mlflow_body(), "circuit_breaker_details.time_until_retry"),
            )
        ),
        False,
        ["`circuit_breaker_details.time_until_retry`: missing"],
    ),
    (
        "details disagree with the top-level state",
        lambda: c.judge_circuit_breaker_details(
            obs(
                "/health/mlflow",
                200,
                replaced(mlflow_body(), "circuit_breaker_details.state", "HALF_OPEN"),
            )
        ),
        False,
        ["`circuit_breaker_details.state`: expected CLOSED like circuit_breaker_state"],
    ),
    # -- service_status ---------------------------------------------------------------------
    (
        "status ok",
        lambda: c.judge_service_status(obs("/health/status", 200, status_body())),
        True,
        [],
    ),
    (
        "status without service_name",
        lambda: c.judge_service_status(
            obs("/health/status", 200, without(status_body(), "service_name"))
        ),
        False,
        ["`service_name`: missing"],
    ),
    (
        "status without breaker state",
        lambda: c.judge_service_status(
            obs("/health/status", 200, replaced(status_body(), "mlflow.circuit_breaker", {}))
        ),
        False,
        ["`mlflow.circuit_breaker.state`: missing"],
    ),
    (
        "status 500 with a validation error (deployed version)",
        lambda: c.judge_service_status(b.legacy_500("/health/status")),
        False,
        ["HTTP status: expected 200; got HTTP 500", "validation error"],
    ),
    (
        "status HTML page",
        lambda: c.judge_service_status(
            obs("/health/status", 200, text=HTML, content_type="text/html")
        ),
        False,
        ["body: expected a JSON object; got not JSON (text/html)"],
    ),
    # -- metrics ----------------------------------------------------------------------------
    ("metrics ok", lambda: c.judge_metrics(b.metrics()), True, []),
    (
        "metrics without http_requests_total",
        lambda: c.judge_metrics(
            obs("/metrics", 200, text=b.metrics_text(with_http=False), content_type="text/plain")
        ),
        False,
        ["`http_requests_total` missing"],
    ),
    (
        "metrics of the deployed version",
        lambda: c.judge_metrics(b.legacy_metrics(state="OPEN")),
        False,
        [
            "`http_requests_total` missing",
            "`mlflow_circuit_breaker_recovery_attempts`: missing",
            "`mlflow_info_info`: expected bounded label values; got an error message",
        ],
    ),
    (
        "metrics as HTML",
        lambda: c.judge_metrics(obs("/metrics", 200, text=HTML, content_type="text/html")),
        False,
        ["content type: expected text/plain (Prometheus text format); got text/html"],
    ),
    # -- graceful_degradation ---------------------------------------------------------------
    (
        "graceful healthy",
        lambda: c.judge_graceful_degradation(
            b.health(), obs("/ready", 200, ready_body()), b.mlflow_health(), b.metrics()
        ),
        True,
        [],
    ),
    (
        "graceful breaker open, degraded everywhere",
        lambda: c.judge_graceful_degradation(
            b.health("degraded", mlflow="degraded"),
            obs("/ready", 200, ready_body(mlflow_passed=False)),
            b.mlflow_health("OPEN", time_until_retry=10),
            b.metrics(state=1),
        ),
        True,
        [],
    ),
    (
        "graceful breaker open but /health healthy (deployed version)",
        lambda: c.judge_graceful_degradation(
            b.legacy_health(),
            b.legacy_ready(breaker_open=True),
            b.legacy_mlflow_unknown(),
            b.legacy_metrics(state="OPEN"),
        ),
        False,
        ["GET /health status: expected 'degraded' because the breaker is OPEN (GET /metrics)"],
    ),
    (
        "graceful breaker open but /health unhealthy 503",
        lambda: c.judge_graceful_degradation(
            b.health("unhealthy", mlflow="degraded", code=503),
            obs("/ready", 200, ready_body(mlflow_passed=False)),
            b.mlflow_health("OPEN", time_until_retry=10),
            b.metrics(state=1),
        ),
        False,
        ["GET /health HTTP status: expected 200 because the breaker is OPEN", "disagree"],
    ),
    (
        "graceful breaker open but /ready 503",
        lambda: c.judge_graceful_degradation(
            b.health("degraded", mlflow="degraded"),
            obs("/ready", 503, ready_body(mlflow_passed=False, can_serve_traffic=False)),
            b.mlflow_health("OPEN", time_until_retry=10),
            b.metrics(state=1),
        ),
        False,
        ["GET /ready HTTP status: expected 200 (still serving) because the breaker is OPEN"],
    ),
    (
        "graceful breaker open but /ready not degraded",
        lambda: c.judge_graceful_degradation(
            b.health("degraded", mlflow="degraded"),
            obs("/ready", 200, ready_body(degraded=False)),
            b.mlflow_health("OPEN", time_until_retry=10),
            b.metrics(state=1),
        ),
        False,
        ["GET /ready degraded_mode: expected true", "GET /ready mlflow check passed"],
    ),
    (
        "graceful database down: unhealthy and not ready agree",
        lambda: c.judge_graceful_degradation(
            b.health("unhealthy", postgres="unhealthy"),
            b.ready(database=False),
            b.mlflow_health(),
            b.metrics(),
        ),
        True,
        [],
    ),
    (
        "graceful /ready degraded but /health healthy",
        lambda: c.judge_graceful_degradation(
            b.health(),
            obs("/ready", 200, ready_body(degraded=True)),
            b.mlflow_health(),
            b.metrics(),
        ),
        False,
        ["expected 'degraded' because /ready reports degraded_mode true"],
    ),
    (
        "graceful cannot compare without /ready",
        lambda: c.judge_graceful_degradation(
            b.health(), b.no_answer("/ready"), b.mlflow_health(), b.metrics()
        ),
        False,
        ["GET /ready: expected a JSON answer to compare; got no answer"],
    ),
    # -- resets -----------------------------------------------------------------------------
    (
        "reset refused 401",
        lambda: c.judge_reset_refused(
            obs(RESET, 401, {"detail": "Bearer token required"}, method="POST"), "without a key"
        ),
        True,
        [],
    ),
    (
        "reset refused 403",
        lambda: c.judge_reset_refused(
            obs(RESET, 403, {"detail": "Invalid API key"}, method="POST"), "with a wrong key"
        ),
        True,
        [],
    ),
    (
        "reset accepted without a key (deployed version)",
        lambda: c.judge_reset_refused(
            obs(RESET, 200, {"message": "Circuit breaker reset"}, method="POST"),
            "without a key",
        ),
        False,
        [
            "HTTP status: expected 401 or 403 (refused); got HTTP 200",
            "the reset was accepted without a key",
        ],
    ),
    (
        "reset endpoint missing",
        lambda: c.judge_reset_refused(
            obs(RESET, 404, {"detail": "Not Found"}, method="POST"), "without a key"
        ),
        False,
        ["got HTTP 404"],
    ),
    (
        "reset no answer",
        lambda: c.judge_reset_refused(b.no_answer(RESET, ErrorKind.TIMEOUT), "with a wrong key"),
        False,
        ["got no answer (timeout:"],
    ),
]


@pytest.mark.parametrize(
    ("judge", "passed", "diff_parts"), [case[1:] for case in CASES], ids=[c[0] for c in CASES]
)
def test_judgment(judge: Callable[[], Judgment], passed: bool, diff_parts: list[str]) -> None:
    judgment = judge()
    diff = "\n".join(judgment.diff)
    assert judgment.passed is passed, diff or "passed"
    for part in diff_parts:
        assert part in diff, f"{part!r} not in:\n{diff}"
    # Every test says what it expected and what it got, and which answers it rests on.
    assert judgment.expected and judgment.actual and judgment.evidence
    assert set(judgment.expected) == set(judgment.actual)


def test_every_endpoint_failing_the_same_way_gives_one_line_each() -> None:
    for judge in (
        c.judge_basic_health,
        c.judge_detailed_health,
        c.judge_readiness,
        c.judge_liveness,
        c.judge_mlflow_health,
        c.judge_circuit_breaker_details,
        c.judge_service_status,
        c.judge_metrics,
    ):
        judgment = judge(b.no_answer("/x"))
        assert judgment.diff == [
            "HTTP status: expected "
            + ("200 or 503" if judge not in _ONLY_200 else "200")
            + "; got no answer (connect: All connection attempts failed)"
        ], judge.__name__


_ONLY_200 = (c.judge_liveness, c.judge_service_status, c.judge_metrics)


def _result(name: str, outcome: ContractOutcome) -> ContractTestResult:
    return ContractTestResult(name=name, description=name, outcome=outcome)


@pytest.mark.parametrize(
    ("outcomes", "total", "passed", "failed", "skipped", "rate", "state"),
    [
        ([ContractOutcome.PASSED] * 4, 4, 4, 0, 0, 100.0, "Passed"),
        ([ContractOutcome.PASSED] * 3 + [ContractOutcome.FAILED], 4, 3, 1, 0, 75.0, "Failed"),
        (
            [ContractOutcome.PASSED, ContractOutcome.SKIPPED, ContractOutcome.SKIPPED],
            1,
            1,
            0,
            2,
            100.0,
            "Passed",
        ),
        (
            [ContractOutcome.FAILED, ContractOutcome.FAILED, ContractOutcome.FAILED],
            3,
            0,
            3,
            0,
            0.0,
            "Failed",
        ),
        ([ContractOutcome.SKIPPED], 0, 0, 0, 1, 0.0, "Failed"),
    ],
)
def test_summary_counts_skipped_apart(
    outcomes: list[ContractOutcome],
    total: int,
    passed: int,
    failed: int,
    skipped: int,
    rate: float,
    state: str,
) -> None:
    results = {f"t{i}": _result(f"t{i}", o) for i, o in enumerate(outcomes)}
    report = build_contract_report("x", "http://h", "2024-01-01T00:00:00+00:00", 1.0, results)
    assert report.summary == ContractSummary(
        total_tests=total, passed=passed, failed=failed, skipped=skipped, success_rate=rate
    )
    assert report.state_name == state
    assert report.exit_code == (0 if state == "Passed" else 1)


def test_seed_json_names_and_order() -> None:
    judgments = {
        "metrics": c.judge_metrics(b.metrics()),
        "basic_health": c.judge_basic_health(b.legacy_health()),
    }
    results = {n: ContractTestResult.from_judgment(n, j, 5.0) for n, j in judgments.items()}
    results["reset_without_key_refused"] = ContractTestResult.skipped(
        "reset_without_key_refused", "read-only run"
    )
    report = build_contract_report(
        "prod", "https://api", "2024-01-01T00:00:00+00:00", 1.25, results, True
    )
    data = report.to_seed_json()
    assert list(data)[:5] == ["start_time", "api_url", "tests", "summary", "duration_seconds"]
    assert list(data["tests"]) == ["basic_health", "metrics", "reset_without_key_refused"]
    entry = data["tests"]["basic_health"]
    assert entry["passed"] is False and entry["description"] == c.DESCRIPTIONS["basic_health"]
    assert entry["diff"] and entry["expected"] and entry["actual"]
    assert data["tests"]["reset_without_key_refused"]["skipped"] is True
    assert data["tests"]["reset_without_key_refused"]["passed"] is False
    assert data["summary"] == {
        "total_tests": 2, "passed": 1, "failed": 1, "skipped": 1, "success_rate": 50.0
    }  # fmt: skip
    assert ContractReport.model_validate(report.model_dump(mode="json")) == report


def test_renderings_show_the_diff() -> None:
    results = {
        "basic_health": ContractTestResult.from_judgment(
            "basic_health", c.judge_basic_health(b.legacy_health()), 12.0
        ),
        "metrics": ContractTestResult.from_judgment("metrics", c.judge_metrics(b.metrics()), 3.0),
        "reset_with_wrong_key_refused": ContractTestResult.skipped(
            "reset_with_wrong_key_refused", "read-only run: no POST sent"
        ),
    }
    report = build_contract_report(
        "prod", "https://api", "2024-01-01T00:00:00+00:00", 1.0, results, True
    )
    markdown = c.contract_markdown(report)
    assert markdown.startswith("# Failed: prod")
    assert "### basic_health" in markdown and "lightweight" in markdown
    assert "| metrics | passed |" in markdown
    rows = c.tests_table(report)
    assert [r["outcome"] for r in rows] == ["failed", "passed", "skipped"]
    assert "lightweight" in rows[0]["diff"]
    text = c.contract_text(report)
    assert "[FAIL] basic_health" in text and "[SKIP] reset_with_wrong_key_refused" in text
    assert "Result: FAILED - 1/2 passed (50%), 1 failed, 1 skipped" in text


def test_descriptions_cover_every_test() -> None:
    assert set(c.READ_ONLY_TESTS) | set(c.MUTATING_TESTS) == set(c.DESCRIPTIONS)
    assert not set(c.READ_ONLY_TESTS) & set(c.MUTATING_TESTS)
    assert {
        "basic_health", "detailed_health", "readiness", "mlflow_health",
        "circuit_breaker_details", "service_status", "metrics", "graceful_degradation",
    } <= set(c.READ_ONLY_TESTS)  # fmt: skip
