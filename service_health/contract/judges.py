"""The judges of the contract tests on one endpoint each: /health, /health?detailed=true,
/ready, /live, /health/status, /metrics. Pure.

Each takes the observation of its endpoint and returns a `Judgment`. The tolerant readers
of `service_health.parsing` do the field checks; the rules here add what the contract asks
beyond well-formed fields: agreement between fields, and between the status code and the
body.
"""

from __future__ import annotations

from service_health.contract.judging import (
    Judge,
    answer,
    check_system_info,
    check_timestamp,
    excerpt,
    raw,
    shown,
)
from service_health.contract.models import Judgment
from service_health.fields import short
from service_health.observations import HttpObservation
from service_health.parsing import (
    KNOWN_BREAKER_STATES,
    parse_health,
    parse_health_status,
    parse_live,
    parse_metrics,
    parse_ready,
)
from service_health.views import HealthView, MetricsView, ReadyCheck

_HEALTH_CODES = ((200, 503), "200 healthy or degraded, 503 unhealthy")


def _health_fields(j: Judge, body: dict[str, object], view: HealthView) -> None:
    j.record("status", "healthy, degraded or unhealthy", raw(body, "status"))
    j.record("version", "a string", raw(body, "version"))
    j.record(
        "services",
        "mlflow (healthy/degraded/recovering/unhealthy), redis and postgres (healthy/unhealthy)",
        raw(body, "services"),
    )
    check_timestamp(j, body, view.problems)
    j.problems(view.problems)
    if view.status == "degraded" and all(
        view.service(name) == "healthy" for name in ("mlflow", "redis", "postgres")
    ):
        j.violation("`status`: expected healthy when every service is healthy; got 'degraded'")
    if view.service("postgres") == "unhealthy" and view.status in ("healthy", "degraded"):
        j.violation(
            f"`status`: expected unhealthy (HTTP 503) while postgres is unhealthy; "
            f"got {view.status!r}"
        )


def judge_basic_health(obs: HttpObservation) -> Judgment:
    """GET /health."""
    j, view = Judge(obs), parse_health(obs)
    body = j.opening(obs, *_HEALTH_CODES, view.problems)
    if body is not None:
        _health_fields(j, body, view)
    return j.done()


def judge_detailed_health(obs: HttpObservation) -> Judgment:
    """GET /health?detailed=true: the basic answer plus system_info."""
    j, view = Judge(obs), parse_health(obs)
    body = j.opening(obs, *_HEALTH_CODES, view.problems)
    if body is None:
        return j.done()
    _health_fields(j, body, view)
    j.record(
        "system_info",
        "an object with cpu_percent and memory_percent",
        "present" if view.system_info is not None else shown(raw(body, "system_info")),
    )
    if view.system_info is not None:
        check_system_info(j, view.system_info, "system_info")
    return j.done()


def _check_line(check: ReadyCheck) -> str:
    flags = [("passed" if check.passed else "failed") if check.passed is not None else "?"]
    if check.critical:
        flags.append("critical")
    if check.error:
        flags.append(short(check.error, 70))
    return f"{check.name or '?'} ({', '.join(flags)})"


def judge_readiness(obs: HttpObservation) -> Judgment:
    """GET /ready: code, flags and checks agree with one another."""
    j, view = Judge(obs), parse_ready(obs)
    meaning = "200 can serve traffic (also degraded), 503 cannot"
    body = j.opening(obs, (200, 503), meaning, view.problems)
    if body is None:
        return j.done()
    j.record("ready", "a boolean, true exactly when it can serve traffic", raw(body, "ready"))
    j.record("can_serve_traffic", "a boolean", raw(body, "can_serve_traffic"))
    j.record("degraded_mode", "a boolean", raw(body, "degraded_mode"))
    j.record(
        "checks",
        "an array of {name, passed, critical, degraded_mode?, error?}",
        "; ".join(_check_line(c) for c in view.checks) or shown(raw(body, "checks")),
    )
    j.problems(view.problems)
    if isinstance(raw(body, "checks"), list) and not view.checks and not view.problems:
        j.violation("`checks`: expected at least the database check; got an empty array")
    complete = [c for c in view.checks if c.passed is not None and c.critical is not None]
    if len(complete) != len(view.checks) or not complete:
        return j.done()
    critical_failed = [c.name or "?" for c in complete if c.critical and not c.passed]
    optional_failed = [c.name or "?" for c in complete if not c.critical and not c.passed]
    if view.can_serve_traffic is not None:
        expected = not critical_failed
        why = (
            f"critical check(s) {', '.join(critical_failed)} failed"
            if critical_failed
            else "every critical check passed"
        )
        j.expect(
            "can_serve_traffic",
            f"{str(expected).lower()} because {why}",
            shown(view.can_serve_traffic),
            view.can_serve_traffic == expected,
            field=True,
        )
    if view.degraded_mode is not None:
        expected = bool(optional_failed)
        why = (
            f"non-critical check(s) {', '.join(optional_failed)} failed"
            if optional_failed
            else "no non-critical check failed"
        )
        j.expect(
            "degraded_mode",
            f"{str(expected).lower()} because {why}",
            shown(view.degraded_mode),
            view.degraded_mode == expected,
            field=True,
        )
    if view.ready is not None and view.can_serve_traffic is not None:
        j.expect(
            "ready",
            f"{str(view.can_serve_traffic).lower()}, as can_serve_traffic "
            "(a 200 readiness answer means ready, also in degraded mode)",
            shown(view.ready),
            view.ready == view.can_serve_traffic,
            field=True,
        )
    return j.done()


def judge_liveness(obs: HttpObservation) -> Judgment:
    """GET /live."""
    j, view = Judge(obs), parse_live(obs)
    body = j.opening(obs, (200,), "200 while the process runs", view.problems)
    if body is None:
        return j.done()
    j.record("alive", "true", raw(body, "alive"))
    check_timestamp(j, body, view.problems)
    j.problems(view.problems)
    if view.alive is False:
        j.violation("`alive`: expected true; got false")
    return j.done()


def judge_service_status(obs: HttpObservation) -> Judgment:
    """GET /health/status."""
    j, view = Judge(obs), parse_health_status(obs)
    body = j.opening(obs, (200,), "200", view.problems)
    if body is None:
        return j.done()
    j.record("service_name", "a non-empty string", raw(body, "service_name"))
    j.record("overall_health", "healthy, degraded or unhealthy", raw(body, "overall_health"))
    j.record("mlflow.status", "present", raw(body, "mlflow.status"))
    j.record(
        "mlflow.circuit_breaker.state",
        "CLOSED, OPEN or HALF_OPEN",
        raw(body, "mlflow.circuit_breaker.state"),
    )
    check_timestamp(j, body, view.problems)
    j.problems(view.problems)
    if view.service_name is not None and not view.service_name.strip():
        j.violation("`service_name`: expected a non-empty string; got ''")
    breaker = raw(body, "mlflow.circuit_breaker")
    if (
        isinstance(breaker, dict)
        and breaker.get("state", breaker.get("circuit_breaker_state")) is None
    ):
        j.violation("`mlflow.circuit_breaker.state`: missing")
    elif view.breaker_state is not None and view.breaker_state not in KNOWN_BREAKER_STATES:
        j.violation(
            "`mlflow.circuit_breaker.state`: expected CLOSED, OPEN or HALF_OPEN; got "
            f"{shown(view.breaker_state)}"
        )
    if view.system_info is not None:
        check_system_info(j, view.system_info, "system_info")
    return j.done()


_PROMETHEUS_TYPES = ("text/plain", "application/openmetrics-text")


def judge_metrics(obs: HttpObservation) -> Judgment:
    """GET /metrics: Prometheus text with the breaker series and http_requests_total."""
    j = Judge(obs)
    if not j.usable(obs, (200,), "200 with Prometheus text"):
        return j.done()
    if obs.status_code != 200:
        j.violation(f"HTTP status: expected 200; got {answer(obs)}")
    content_type = (obs.content_type or "").split(";")[0].strip().lower()
    j.expect(
        "content type",
        "text/plain (Prometheus text format)",
        content_type or "none",
        content_type in _PROMETHEUS_TYPES,
    )
    view: MetricsView = parse_metrics(obs.body_text)
    if (encoding := obs.encoding_problem()) is not None:
        view.problems.insert(0, encoding)
    j.record("families", "Prometheus metric families", f"{len(view.families)} parsed")
    j.record("mlflow_circuit_breaker_state", "present, 0/1/2", view.breaker_state)
    j.record("breaker failures", "a mlflow_circuit_breaker_failures series", view.breaker_failures)
    j.record(
        "breaker recovery attempts",
        "a mlflow_circuit_breaker_recovery_attempts series",
        view.breaker_recovery_attempts,
    )
    j.record("http_requests_total", "present", view.has_http_requests_total)
    j.problems(view.problems)
    if not view.parsed:
        j.violation(f"body: expected Prometheus text; got {excerpt(obs, 80)}")
        return j.done()
    if view.breaker_failures is None:
        j.violation("`mlflow_circuit_breaker_failures`: missing (the breaker's failure count)")
    if view.breaker_recovery_attempts is None:
        j.violation(
            "`mlflow_circuit_breaker_recovery_attempts`: missing (failed recoveries of the breaker)"
        )
    error = view.mlflow_info_labels.get("error")
    if error:
        j.violation(
            f"`mlflow_info_info`: expected bounded label values; got an error message in "
            f"label `error` ({shown(error)}); errors belong in logs, not in series labels"
        )
    return j.done()
