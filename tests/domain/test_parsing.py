"""Example-based tests of the tolerant readers: the contract, the deployed version, junk."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from service_health.models import BreakerState
from service_health.observations import ErrorKind, HttpObservation
from service_health.parsing import (
    parse_health,
    parse_health_status,
    parse_live,
    parse_metrics,
    parse_mlflow_health,
    parse_mlflow_search,
    parse_ready,
)
from tests.domain import bodies as b


def test_json_body_of_a_json_answer() -> None:
    assert b.http("/x", 200, {"a": 1}).json_body() == ({"a": 1}, None)


@pytest.mark.parametrize(
    ("obs", "reason"),
    [
        (
            b.http(
                "/x",
                502,
                text="<html><body>502 Bad Gateway</body></html>",
                content_type="text/html",
            ),
            "not JSON (text/html)",
        ),
        (b.http("/x", 200, text='{"a": '), "not JSON"),
        (b.http("/x", 200, text="   "), "empty body"),
        (b.http("/x", 200, text=None), "no body"),
        (b.no_answer("/x"), "no answer"),
        (b.http("/x", 200, text="[" * 100_000 + "]" * 100_000), "nested too deeply"),
        (b.http("/x", 200, text="1" * 10_000), "not JSON"),  # int digits limit
    ],
    ids=["html", "invalid", "empty", "none", "transport", "deep", "huge-int"],
)
def test_json_body_never_raises(obs: HttpObservation, reason: str) -> None:
    value, why = obs.json_body()
    assert value is None
    assert why is not None and reason in why


def test_truncated_body_says_so() -> None:
    obs = HttpObservation(
        url="http://x/y", status_code=200, body_text='{"a": "bb', body_truncated=True
    )
    assert obs.json_body() == (None, "body truncated by the client")


def test_labels() -> None:
    assert b.http("/health?detailed=true").label == "GET /health?detailed=true"
    assert b.mlflow_health(replica="10.0.1.5:8000").label == "GET 10.0.1.5:8000/health/mlflow"


def test_contract_health_has_no_problem() -> None:
    view = parse_health(b.health())
    assert view.problems == []
    assert view.status == "healthy" and view.version == "1.4.2"
    assert view.services == {"mlflow": "healthy", "redis": "healthy", "postgres": "healthy"}
    assert view.timestamp == datetime(2024, 1, 1, 12, tzinfo=UTC)
    assert not view.lightweight


def test_legacy_health_is_lightweight_and_naive_timestamps_are_utc() -> None:
    view = parse_health(b.legacy_health())
    assert view.lightweight
    assert view.status == "healthy"
    assert view.timestamp is not None and view.timestamp.tzinfo is UTC
    text = " ".join(view.problems)
    assert "`version`: missing" in text
    assert "no time zone" in text
    assert "lightweight" in text


def test_health_wrong_types_and_unknown_values() -> None:
    obs = b.http(
        "/health",
        200,
        {"status": "WEIRD", "version": 3, "services": ["x"], "timestamp": "yesterday"},
    )
    view = parse_health(obs)
    assert view.status == "WEIRD"  # kept as sent
    assert view.version is None and view.timestamp is None and view.services == {}
    text = " ".join(view.problems)
    assert "unknown value 'WEIRD'" in text
    assert "`version`: expected string, got number" in text
    assert "`services`: expected object, got array" in text
    assert "not an ISO 8601 timestamp" in text


def test_health_inconsistencies_are_problems() -> None:
    view = parse_health(b.health(status="healthy", postgres="unhealthy"))
    assert any("although postgres not healthy" in p for p in view.problems)
    view = parse_health(b.http("/health", 503, {"status": "healthy"}))
    assert any("HTTP 503 but `status`" in p for p in view.problems)


def test_detailed_health_requires_system_info() -> None:
    view = parse_health(b.http("/health?detailed=true", 200, {"status": "healthy"}))
    assert any("`system_info`: missing" in p for p in view.problems)


def test_html_error_page() -> None:
    obs = b.http("/health", 502, text="<html>Bad Gateway</html>", content_type="text/html")
    view = parse_health(obs)
    assert view.answered and not view.body_is_json and view.status is None
    assert any("HTTP 502" in p for p in view.problems)


def test_ready_contract_and_lookup() -> None:
    view = parse_ready(b.ready(breaker_open=True))
    assert view.problems == []
    assert view.ready is False and view.can_serve_traffic is True and view.degraded_mode is True
    mlflow = view.check("MLFLOW")
    assert mlflow is not None and mlflow.passed is False and mlflow.degraded_mode is True
    assert mlflow.error is not None and "Circuit breaker open" in mlflow.error


def test_ready_checks_as_object_and_wrong_types() -> None:
    obs = b.http(
        "/ready",
        200,
        {
            "ready": "yes",
            "can_serve_traffic": True,
            "degraded_mode": False,
            "checks": {"database": True, "mlflow": {"passed": 1}},
        },
    )
    view = parse_ready(obs)
    assert view.ready is None
    db = view.check("database")
    assert db is not None and db.passed is True
    mlflow = view.check("mlflow")
    assert mlflow is not None and mlflow.passed is None
    text = " ".join(view.problems)
    assert "`ready`: expected boolean, got string" in text
    assert "array" in text
    assert "`checks.mlflow.passed`: expected boolean, got number" in text


def test_ready_status_code_consistency() -> None:
    obs = b.http(
        "/ready",
        200,
        {"ready": False, "can_serve_traffic": False, "degraded_mode": False, "checks": []},
    )
    assert any("contract: 503" in p for p in parse_ready(obs).problems)


def test_live_contract_and_legacy() -> None:
    assert parse_live(b.live()).problems == []
    legacy = parse_live(b.legacy_live())
    assert legacy.alive is True and legacy.uptime == 1234.5 and legacy.memory_usage_mb == 210.3
    assert legacy.problems == ["`timestamp`: missing"]


def test_mlflow_health_open_with_details() -> None:
    view = parse_mlflow_health(
        b.mlflow_health("OPEN", failure_count=5, time_until_retry=15, recovery_attempts=1)
    )
    assert view.problems == []
    assert view.breaker_state == BreakerState.OPEN and view.state_readable
    assert (view.failure_count, view.time_until_retry, view.recovery_attempts) == (5, 15.0, 1)
    assert view.connected is False


def test_mlflow_health_legacy_unknown_is_unreadable() -> None:
    view = parse_mlflow_health(b.legacy_mlflow_unknown())
    assert view.breaker_state == BreakerState.UNKNOWN
    assert not view.state_readable
    text = " ".join(view.problems)
    assert "HTTP 500" in text and "UNKNOWN" in text


def test_mlflow_health_legacy_closed_extras() -> None:
    view = parse_mlflow_health(b.legacy_mlflow_closed(failures=2))
    assert view.state_readable and view.breaker_state == "CLOSED"
    assert view.failure_threshold == 5 and view.recovery_timeout == 60
    assert view.consecutive_successes == 4
    text = " ".join(view.problems)
    assert "`time_until_retry` is 0 while CLOSED" in text
    assert "HTTP 200 but `connected` is false" in text


@pytest.mark.parametrize(
    ("raw", "state", "readable", "problem"),
    [
        ("WEIRD", "WEIRD", False, "unknown breaker state 'WEIRD'"),
        ("open", BreakerState.OPEN, True, "non-canonical"),
        ("half-open", BreakerState.HALF_OPEN, True, "non-canonical"),
        ("CircuitState.OPEN", BreakerState.OPEN, True, "non-canonical"),
        (3, None, False, "expected string, got number"),
    ],
)
def test_mlflow_health_state_values(
    raw: object, state: object, readable: bool, problem: str
) -> None:
    obs = b.http(
        "/health/mlflow", 503, {"connected": False, "circuit_breaker_state": raw, "timestamp": b.TS}
    )
    view = parse_mlflow_health(obs)
    assert view.breaker_state == state
    assert view.state_readable is readable
    assert any(problem in p for p in view.problems)


def test_mlflow_health_wrong_typed_details() -> None:
    obs = b.http(
        "/health/mlflow",
        200,
        {
            "connected": True,
            "circuit_breaker_state": "CLOSED",
            "timestamp": b.TS,
            "circuit_breaker_details": {
                "state": "OPEN",
                "failure_count": True,
                "time_until_retry": "soon",
                "recovery_attempts": 1.5,
            },
        },
    )
    view = parse_mlflow_health(obs)
    assert view.breaker_state == "CLOSED"  # the top-level state wins
    assert view.failure_count is None and view.time_until_retry is None
    assert view.recovery_attempts is None
    assert any("disagrees" in p for p in view.problems)


def test_health_status_contract_and_legacy_500() -> None:
    view = parse_health_status(b.health_status("degraded", "OPEN"))
    assert view.problems == []
    assert view.overall_health == "degraded" and view.breaker_state == BreakerState.OPEN
    legacy = parse_health_status(b.legacy_500("/health/status"))
    assert legacy.error_text is not None and legacy.error_text.startswith("1 validation error")
    assert any("HTTP 500" in p for p in legacy.problems)


def test_metrics_contract() -> None:
    view = parse_metrics(b.metrics_text(state=1, failures=5))
    assert view.parsed and view.breaker_state == BreakerState.OPEN
    assert view.breaker_state_value == 1.0
    assert view.breaker_failures == 5.0 and view.breaker_recovery_attempts == 0.0
    assert view.has_http_requests_total
    assert view.http_requests_by_status_class == {"2xx": 10.0, "5xx": 2.0}
    assert view.problems == []


def test_metrics_legacy_names() -> None:
    # 1 is HALF_OPEN by the deployed version's HELP text (the contract's mapping says OPEN).
    view = parse_metrics(b.legacy_metrics_text(state="HALF_OPEN"))
    assert view.breaker_state_value == 1.0
    assert view.breaker_state == BreakerState.HALF_OPEN
    assert view.breaker_failures == 7.0
    assert view.connection_status == 0.0
    assert set(view.legacy_names) == {
        "mlflow_circuit_breaker_state",
        "mlflow_circuit_breaker_failures_total",
        "mlflow_connection_status",
        "mlflow_connection_attempts_total",
        "mlflow_connection_failures_total",
        "mlflow_info_info",
    }
    assert "timed out" in view.mlflow_info_labels["error"]
    assert "`http_requests_total` missing" in view.problems


def test_metrics_enum_style_and_unknown_value() -> None:
    enum_text = (
        'mlflow_circuit_breaker_state{mlflow_circuit_breaker_state="CLOSED"} 0.0\n'
        'mlflow_circuit_breaker_state{mlflow_circuit_breaker_state="OPEN"} 1.0\n'
    )
    assert parse_metrics(enum_text).breaker_state == BreakerState.OPEN
    weird = parse_metrics("mlflow_circuit_breaker_state 7\n")
    assert weird.breaker_state == "7.0"
    assert any("unknown value" in p for p in weird.problems)


@pytest.mark.parametrize(
    "text",
    [
        None,
        "",
        "garbage{",
        "<html>502</html>",
        "a b c d",
        "x NaN\nmlflow_circuit_breaker_state NaN",
    ],
)
def test_metrics_garbage(text: str | None) -> None:
    view = parse_metrics(text)
    assert view.problems


def test_metrics_keeps_what_it_read_before_garbage() -> None:
    view = parse_metrics(b.metrics_text(state=1) + "broken{line\n")
    assert view.breaker_state == BreakerState.OPEN
    assert any("unparseable after" in p for p in view.problems)


def test_mlflow_search() -> None:
    ok = parse_mlflow_search(
        b.http(
            "/api/2.0/mlflow/experiments/search",
            200,
            {"experiments": [{"name": "Default"}, {"name": "m"}]},
        )
    )
    assert ok.experiment_count == 2 and ok.experiment_names == ["Default", "m"]
    empty = parse_mlflow_search(b.http("/api/2.0/mlflow/experiments/search", 200, {}))
    assert empty.experiment_count == 0 and empty.problems == []
    error = parse_mlflow_search(
        b.http(
            "/api/2.0/mlflow/experiments/search",
            400,
            {"error_code": "INVALID_PARAMETER_VALUE", "message": "bad"},
        )
    )
    assert error.error_code == "INVALID_PARAMETER_VALUE" and error.message == "bad"


def test_no_answer_views() -> None:
    obs = b.no_answer("/ready", ErrorKind.TIMEOUT)
    view = parse_ready(obs)
    assert not view.answered and view.status_code is None
    assert view.problems == ["no answer (timeout: timed out after 5.0 s)"]
