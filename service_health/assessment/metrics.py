"""What the service's Prometheus metrics say."""

from __future__ import annotations

from service_health.assessment.common import ResultBuilder
from service_health.models import CheckName, CheckResult, CheckStatus
from service_health.observations import ErrorKind, HttpObservation
from service_health.parsing import parse_metrics


def assess_metrics(obs: HttpObservation | None) -> CheckResult:
    """GET /metrics: available and parseable, with the breaker series summarised.

    The breaker state found here is reported in details; assess_circuit_breaker judges it.
    """
    b = ResultBuilder(CheckName.SERVICE_METRICS)
    if obs is None:
        return CheckResult.skipped(b.name, "metrics were not fetched")
    if not obs.sent:
        return CheckResult.skipped(b.name, f"{obs.label} not sent: {obs.error}")
    b.cite(obs.label)
    b.details["status_code"] = obs.status_code
    if not obs.answered:
        inconclusive = obs.error_kind == ErrorKind.RESET
        b.warning(
            f"{obs.label} failed ({obs.failure_text()})"
            + ("; inconclusive: the connection was dropped" if inconclusive else ""),
            "Re-run the diagnosis; check the service logs if it persists",
            [obs.label],
            CheckStatus.ERROR,
        )
        return b.build("unavailable", latency_ms=obs.elapsed_ms, error=obs.failure_text())
    if obs.status_code != 200:
        b.warning(
            f"{obs.label} answered HTTP {obs.status_code}",
            "Check the service's metrics endpoint",
            [obs.label],
            CheckStatus.ERROR,
        )
        return b.build(f"HTTP {obs.status_code}", latency_ms=obs.elapsed_ms)
    view = parse_metrics(obs.body_text)
    if (encoding := obs.encoding_problem()) is not None:
        view.problems.insert(0, encoding)
    b.details.update(
        {
            "families": len(view.families),
            "breaker_state": None if view.breaker_state is None else str(view.breaker_state),
            "breaker_failures": view.breaker_failures,
            "breaker_recovery_attempts": view.breaker_recovery_attempts,
            "mlflow_connection_status": view.connection_status,
            "http_requests_total_present": view.has_http_requests_total,
            "http_requests_by_status_class": view.http_requests_by_status_class,
            "legacy_series": view.legacy_names,
            "problems": view.problems,
        }
    )
    if not view.parsed:
        b.warning(
            f"{obs.label} answered 200 but no Prometheus metric could be read "
            f"({'; '.join(view.problems[:1])})",
            "Check that /metrics serves the Prometheus text format",
            [obs.label],
        )
        return b.build("unreadable", latency_ms=obs.elapsed_ms)
    if view.problems:
        b.info(f"{obs.label}: {'; '.join(view.problems[:3])}", [obs.label])
    state = b.details["breaker_state"] or "not exposed"
    return b.build(
        f"{len(view.families)} metric families, breaker {state}", latency_ms=obs.elapsed_ms
    )
