"""Reaching the API, and what its health endpoints say about the service."""

from __future__ import annotations

from typing import Any

from service_health.assessment.common import ResultBuilder, seconds
from service_health.details import ApiFacts
from service_health.discipline import RequestLog, stall_causes, stalled, touches_mlflow
from service_health.endpoints import (
    HEALTH,
    HEALTH_DETAILED,
    HEALTH_MLFLOW,
    HEALTH_STATUS,
    LIVE,
    METRICS,
    READY,
)
from service_health.models import CheckName, CheckResult, CheckStatus
from service_health.observations import ErrorKind, HttpObservation
from service_health.parsing import (
    parse_health,
    parse_health_status,
    parse_live,
    parse_mlflow_health,
    parse_ready,
)
from service_health.settings import SLOW_RESPONSE_S
from service_health.views import EndpointView, HealthView, ReadyView

_GATEWAY_CODES = (502, 503, 504)
_STALL_RECOMMENDATIONS = {
    "MLflow": (
        "Restore MLflow (see mlflow_service): once the breaker opens, MLflow calls are refused "
        "at once and the stalls stop. The service should not run its MLflow client on the "
        "event loop"
    ),
    "database": (
        "Restore PostgreSQL (see database); the service's database check retries on the "
        "event loop, so every database-touching request stalls it meanwhile"
    ),
    "database and MLflow": (
        "Restore PostgreSQL (see database) and MLflow (see mlflow_service); both checks "
        "block the service's event loop while they fail"
    ),
}
_STALL_UNKNOWN = "Check the service logs for slow handlers and the ECS tasks' CPU"
_HIGH_USAGE_PERCENT = 90.0
_DB_CHECK_NAMES = ("database", "postgres", "postgresql", "db")


def assess_api_connectivity(obs: HttpObservation, slow_s: float = SLOW_RESPONSE_S) -> CheckResult:
    """Can the API be reached, and how fast? Pass the observation of GET /health (or /live)."""
    b = ResultBuilder(CheckName.API_CONNECTIVITY)
    ev = [obs.label]
    b.cite(obs.label)
    b.facts = ApiFacts(url=obs.url, status_code=obs.status_code, response_time_ms=obs.elapsed_ms)
    if not obs.answered:
        if obs.error_kind == ErrorKind.TIMEOUT:
            message = f"API did not answer within the timeout ({obs.label} at {obs.url})"
        else:
            message = f"API is unreachable at {obs.url} ({obs.failure_text()})"
        b.critical(
            message,
            "Check that the ECS tasks run and the load balancer has healthy targets "
            "(see aws_infrastructure), then run recover_service",
            ev,
        )
        return b.build("unreachable", latency_ms=obs.elapsed_ms, error=obs.failure_text())
    code = obs.status_code or 0
    summary = f"reachable, HTTP {code} in {seconds(obs.elapsed_ms)}"
    if code >= 500:
        body, _ = obs.json_body()
        if code == 503 and isinstance(body, dict):
            # The service itself answered "unavailable": reachable; health_endpoints judges.
            summary = f"reachable; the service reports itself unavailable (HTTP {code})"
            b.info(f"{obs.label} answered {code} from the service itself", ev)
        elif code in _GATEWAY_CODES:
            b.critical(
                f"API unavailable: the load balancer answered HTTP {code} on {obs.label}, "
                "no backend served the request",
                "Check ALB target health and the ECS tasks behind it; run recover_service",
                ev,
            )
            summary = f"no backend (HTTP {code})"
        else:
            b.critical(
                f"API fails: {obs.label} answered HTTP {code}",
                "Inspect the service logs; if replicas are wedged, force a new deployment "
                "(recover_service)",
                ev,
            )
            summary = f"server error (HTTP {code})"
    elif code >= 400:
        b.warning(
            f"API answered HTTP {code} on {obs.label}: wrong api_url or route?",
            "Check the api_url of the target",
            ev,
        )
    if obs.elapsed_ms is not None and obs.elapsed_ms > slow_s * 1000:
        b.warning(
            f"API responded slowly: {seconds(obs.elapsed_ms)} on {obs.label} "
            f"(threshold {slow_s:g} s)",
            "Check CPU and memory of the ECS tasks and the service's dependencies (see "
            "health_endpoints for what the slow answers point to)",
            ev,
        )
        summary = f"slow: {seconds(obs.elapsed_ms)}"
    return b.build(summary, latency_ms=obs.elapsed_ms)


def _endpoint_entry(obs: HttpObservation, view: EndpointView | None) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "status_code": obs.status_code,
        "response_time_ms": obs.elapsed_ms,
    }
    if obs.error_kind == ErrorKind.RESET:
        entry["outcome"] = "inconclusive"
    elif not obs.answered:
        entry["outcome"] = "no answer"
    elif obs.status_code is not None and obs.status_code < 400:
        entry["outcome"] = "ok"
    else:
        entry["outcome"] = "error status"
    if obs.error is not None:
        entry["error"] = obs.failure_text()
    if view is not None and view.problems:
        entry["problems"] = list(view.problems)
    return entry


def _failed_names(ready: ReadyView, critical: bool) -> list[str]:
    parts = []
    for check in ready.checks:
        if check.passed is False and bool(check.critical) == critical:
            error = f" ({check.error})" if check.error else ""
            parts.append(f"{check.name or '?'}{error}")
    return parts


def _not_healthy_services(view: HealthView) -> str:
    bad = [f"{k}: {v}" for k, v in sorted(view.services.items()) if v not in ("healthy",)]
    return ", ".join(bad)


class _EndpointJudge:
    """Reads each endpoint once and merges what they say into few, well-sourced findings."""

    def __init__(
        self,
        endpoints: dict[str, HttpObservation],
        slow_s: float,
        log: RequestLog | None,
        blocking_s: float,
    ) -> None:
        self.endpoints = endpoints
        self.slow_s = slow_s
        self.log = log or RequestLog()
        self.blocking_s = blocking_s
        self.b = ResultBuilder(CheckName.HEALTH_ENDPOINTS)
        self.per: dict[str, dict[str, Any]] = {}
        self.views: dict[str, EndpointView] = {}
        self.cannot_serve: list[str] = []  # evidence that the service cannot serve traffic
        self.cannot_serve_detail: list[str] = []
        self.degraded: list[str] = []
        self.degraded_detail: list[str] = []
        self.db_failed = False

    def run(self) -> CheckResult:
        if not self.endpoints:
            return CheckResult.skipped(self.b.name, "no health endpoint was fetched")
        readers = {
            HEALTH: parse_health,
            HEALTH_DETAILED: parse_health,
            READY: parse_ready,
            LIVE: parse_live,
            HEALTH_MLFLOW: parse_mlflow_health,
            HEALTH_STATUS: parse_health_status,
        }
        for key, obs in self.endpoints.items():
            self.b.cite(obs.label)
            reader = readers.get(key)
            view = reader(obs) if reader is not None else None
            if view is not None:
                self.views[key] = view
            self.per[key] = _endpoint_entry(obs, view)
        self._transport_failures()
        self._not_sent()
        self._stalls()
        self._ready()
        for key in (HEALTH, HEALTH_DETAILED):
            self._health(key)
        self._legacy_500s()
        self._live()
        self._merge()
        self._deviations()
        self.b.details["endpoints"] = self.per
        summary = self._counts()
        if self.cannot_serve:
            summary += "; cannot serve traffic"
        elif self.degraded:
            summary += "; degraded mode"
        return self.b.build(summary)

    def _counts(self) -> str:
        """ "7/7 answered, 2 with HTTP 500": what was sent, what answered, and how."""
        sent = [o for o in self.endpoints.values() if o.sent]
        answered = [o for o in sent if o.answered]
        text = f"{len(answered)}/{len(sent)} answered"
        errors: dict[int, int] = {}
        for o in answered:
            if o.status_code is not None and o.status_code >= 400:
                errors[o.status_code] = errors.get(o.status_code, 0) + 1
        if errors:
            text += ", " + ", ".join(f"{n} with HTTP {code}" for code, n in sorted(errors.items()))
        unsent = len(self.endpoints) - len(sent)
        if unsent:
            text += f"; {unsent} not sent"
        return text

    def _not_sent(self) -> None:
        unsent = [o for o in self.endpoints.values() if not o.sent]
        if unsent:
            reasons = "; ".join(dict.fromkeys(o.error or "" for o in unsent))
            self.b.info(
                f"Not sent, to do no harm: {', '.join(o.label for o in unsent)} ({reasons})",
                [o.label for o in unsent],
            )

    def _stalls(self) -> None:
        """A slow or silent answer to one of our MLflow-touching requests is the service's
        event loop blocking on what that request touches: degraded, attributed to what the
        evidence points to, never an outage on its own."""
        by_cause: dict[str, list[str]] = {}
        evidence: dict[str, list[str]] = {}
        labels: dict[str, list[str]] = {}
        seen = list(self.log.touching)
        labels_seen = {o.label for o in seen}
        seen += [
            o for k, o in self.endpoints.items() if touches_mlflow(k) and o.label not in labels_seen
        ]
        for obs in seen:
            if not obs.sent or not stalled(obs, self.blocking_s):
                continue
            took = (
                f"{obs.label} got no answer in {seconds(obs.elapsed_ms)}"
                if not obs.answered
                else f"{obs.label} took {seconds(obs.elapsed_ms)}"
            )
            causes = stall_causes(obs, self.log) or [("", "")]
            slow = obs.elapsed_ms is not None and obs.elapsed_ms > self.slow_s * 1000
            if causes[0][0] == "" and obs.answered and not slow:
                continue  # a little slow, nothing failing: a busy machine, not a stall
            key = " and ".join(component for component, _ in causes)
            by_cause.setdefault(key, []).append(took)
            labels.setdefault(key, []).append(obs.label)
            for _, text in causes:
                if text and text not in evidence.setdefault(key, []):
                    evidence[key].append(text)
        for cause, stalls in by_cause.items():
            why = f" ({'; '.join(evidence[cause])})" if evidence.get(cause) else ""
            if cause:
                message = (
                    f"The API's event loop blocks on {cause} calls: {', '.join(stalls)}{why}. "
                    "While such a request runs, the deployed version answers nothing else, "
                    "/live included"
                )
            else:
                message = (
                    f"The API held our requests: {', '.join(stalls)}; nothing seen points to a "
                    "cause (MLflow and the database look healthy)"
                )
            self.b.warning(
                message, _STALL_RECOMMENDATIONS.get(cause, _STALL_UNKNOWN), labels[cause]
            )

    def _transport_failures(self) -> None:
        resets = [o.label for o in self.endpoints.values() if o.error_kind == ErrorKind.RESET]
        if resets:
            self.b.warning(
                f"Connection dropped on {', '.join(resets)} (reset): inconclusive, not counted "
                "against those endpoints; the server likely closed the keep-alive connection "
                "after an earlier 500",
                "Re-run the diagnosis; if resets persist, check the server's and the load "
                "balancer's keep-alive handling",
                resets,
            )
        light = [o for k, o in self.endpoints.items() if not touches_mlflow(k)]
        if light and not any(o.answered for o in light):
            self.b.warning(
                "No health endpoint answered",
                "See api_connectivity: the API itself is probably unreachable",
                [o.label for o in light],
                CheckStatus.ERROR,
            )
            return
        for key, obs in self.endpoints.items():
            if obs.answered or obs.error_kind == ErrorKind.RESET or not obs.sent:
                continue
            if key in (HEALTH_MLFLOW, METRICS):
                continue  # judged by circuit_breaker and service_metrics
            if touches_mlflow(key) and stalled(obs, self.blocking_s):
                continue  # our own request held the replica: see _stalls
            self.b.warning(
                f"{obs.label} failed ({obs.failure_text()})",
                "Check the service logs for this endpoint",
                [obs.label],
            )

    def _ready(self) -> None:
        obs = self.endpoints.get(READY)
        view = self.views.get(READY)
        if obs is None or not isinstance(view, ReadyView) or not obs.answered:
            return
        db = view.check(*_DB_CHECK_NAMES)
        self.db_failed = db is not None and db.passed is False
        if obs.status_code == 503 or view.can_serve_traffic is False:
            failed = _failed_names(view, critical=True)
            why = f"failed critical checks: {', '.join(failed)}" if failed else "no detail given"
            self.cannot_serve.append(obs.label)
            self.cannot_serve_detail.append(f"{obs.label} answered {obs.status_code}, {why}")
        elif obs.status_code == 200 and view.body_is_json:
            failed = _failed_names(view, critical=False)
            degraded_checks = [c for c in view.checks if c.passed is False and c.degraded_mode]
            if view.degraded_mode or degraded_checks:
                self.degraded.append(obs.label)
                listed = ", ".join(failed) or "none listed"
                self.degraded_detail.append(f"{obs.label} failed non-critical checks: {listed}")
            elif failed:
                self.b.info(
                    f"{obs.label}: non-critical checks failed without degraded mode: "
                    f"{', '.join(failed)}",
                    [obs.label],
                )
        elif obs.status_code == 200:
            self.b.warning(
                f"{obs.label} answered 200 with an unreadable body: {'; '.join(view.problems[:2])}",
                "Fix the readiness endpoint's response",
                [obs.label],
            )
        else:
            self.b.warning(
                f"{obs.label} answered HTTP {obs.status_code}: readiness unknown",
                "Check the service logs for the readiness endpoint",
                [obs.label],
            )

    def _health(self, key: str) -> None:
        obs = self.endpoints.get(key)
        view = self.views.get(key)
        if obs is None or not isinstance(view, HealthView) or not obs.answered:
            return
        code = obs.status_code
        if code == 503 or view.status == "unhealthy":
            services = _not_healthy_services(view)
            self.cannot_serve.append(obs.label)
            self.cannot_serve_detail.append(
                f"{obs.label} reports unhealthy" + (f" ({services})" if services else "")
            )
        elif code == 200 and view.status == "degraded":
            services = _not_healthy_services(view)
            self.degraded.append(obs.label)
            self.degraded_detail.append(
                f"{obs.label} reports degraded" + (f" ({services})" if services else "")
            )
        elif code == 200 and view.status != "healthy":
            self.b.warning(
                f"{obs.label} answered 200 with an unreadable health status: "
                f"{'; '.join(view.problems[:2])}",
                "Fix the health endpoint's response to follow the health contract",
                [obs.label],
            )
        elif code == 200 and view.lightweight:
            self.b.info(
                f"{obs.label} is a lightweight answer (services: "
                f"{', '.join(sorted(view.services)) or 'none'}): it does not reflect "
                "dependencies; readiness is judged from GET /ready",
                [obs.label],
            )
        elif code is not None and code >= 500 and key == HEALTH:
            self.b.warning(
                f"{obs.label} answered HTTP {code}",
                "Check the service logs for the health endpoint",
                [obs.label],
            )
        if view.system_info:
            self._usage(key, obs, view.system_info)

    def _usage(self, key: str, obs: HttpObservation, info: dict[str, Any]) -> None:
        for metric in ("cpu_percent", "memory_percent"):
            value = info.get(metric)
            if isinstance(value, int | float) and not isinstance(value, bool):
                self.per[key][metric] = value
                if value >= _HIGH_USAGE_PERCENT:
                    self.b.warning(
                        f"High {metric.removesuffix('_percent')} use on the API: {value:g}% "
                        f"({obs.label})",
                        "Check the ECS task size and the service's load",
                        [obs.label],
                    )

    def _legacy_500s(self) -> None:
        for key in (HEALTH_DETAILED, HEALTH_STATUS):
            obs = self.endpoints.get(key)
            if obs is None or obs.status_code is None or obs.status_code < 500:
                continue
            if key == HEALTH_DETAILED and obs.status_code == 503:
                continue  # a contract answer (unhealthy), judged in _health
            view = self.views.get(key)
            text = getattr(view, "error_text", None)
            if text:
                self.per[key]["error_text"] = text
            # Informational: these auxiliary views fail in every state of the deployed
            # version, so they say nothing about health now; /health and /ready decide.
            self.b.info(
                f"{obs.label} answers HTTP {obs.status_code}: this view of the service is "
                "unavailable (the deployed version fails response validation here; fix the "
                f"response model of {obs.path})",
                [obs.label],
            )

    def _live(self) -> None:
        obs = self.endpoints.get(LIVE)
        view = self.views.get(LIVE)
        if obs is None or not obs.answered:
            return
        if obs.status_code != 200:
            self.b.warning(
                f"{obs.label} answered HTTP {obs.status_code}: the process may be failing",
                "Check the service logs and the ECS task state",
                [obs.label],
            )
        elif getattr(view, "alive", None) is False:
            self.b.warning(f"{obs.label} says alive: false", "Check the service logs", [obs.label])
        if obs.elapsed_ms is not None and obs.elapsed_ms > self.slow_s * 1000:
            self.b.warning(
                f"{obs.label} took {seconds(obs.elapsed_ms)}: the API is slow to answer even "
                "its liveness endpoint (read before any request of ours that touches MLflow)",
                "Check CPU and memory of the ECS tasks, and the service's other traffic",
                [obs.label],
            )

    def _deviations(self) -> None:
        """An answer that departs from the contract is said even when nothing else is found
        about it, as information (the verdict rests on what the answers mean)."""
        cited = {label for f in self.b.findings for label in f.evidence}
        for key, view in self.views.items():
            obs = self.endpoints[key]
            if not obs.answered or not view.problems or obs.label in cited:
                continue
            more = len(view.problems) - 3
            self.b.info(
                f"{obs.label} departs from the health contract: {'; '.join(view.problems[:3])}"
                + (f" (and {more} more)" if more > 0 else ""),
                [obs.label],
            )

    def _merge(self) -> None:
        if self.cannot_serve:
            recommendation = (
                "Restore PostgreSQL (RDS instance state, security groups, credentials); "
                "no automatic recovery for the database"
                if self.db_failed
                else "Inspect the failing readiness checks and the service logs"
            )
            self.b.critical(
                "Service cannot serve traffic: " + "; ".join(self.cannot_serve_detail),
                recommendation,
                self.cannot_serve,
            )
            health = self.views.get(HEALTH)
            if isinstance(health, HealthView) and health.status == "healthy":
                self.b.info(
                    "GET /health says healthy although the service cannot serve traffic: "
                    "it does not reflect the dependencies",
                    [self.endpoints[HEALTH].label],
                )
        elif self.degraded:
            self.b.warning(
                "Service runs in degraded mode: " + "; ".join(self.degraded_detail),
                self._degraded_recommendation(),
                self.degraded,
            )

    def _degraded_recommendation(self) -> str:
        """Name only the checks that cover what the answers say is failing."""
        text = " ".join(self.degraded_detail).lower()
        named = [
            checks
            for words, checks in (
                (("mlflow", "circuit"), "circuit_breaker and mlflow_service"),
                (("redis", "cache"), "redis"),
                (("postgres", "database"), "database"),
            )
            if any(word in text for word in words)
        ]
        if not named:
            return "Inspect the failing non-critical checks and the service logs"
        return f"See {'; '.join(named)} for the failing dependency"


def assess_health_endpoints(
    endpoints: dict[str, HttpObservation],
    slow_s: float = SLOW_RESPONSE_S,
    log: RequestLog | None = None,
    blocking_s: float = 1.0,
) -> CheckResult:
    """Judge the service from its health endpoints, keyed as in ENDPOINTS ("/ready", ...).

    Readiness 503 (or can_serve_traffic false) or an unhealthy /health is critical; degraded
    mode is a warning; a 500 from /health?detailed=true or /health/status is info only; a
    connection reset is inconclusive (the producer marks it; a reset after another
    endpoint's 500 is not that endpoint's fault). /health/mlflow and /metrics are recorded
    here and judged by assess_circuit_breaker and assess_metrics.
    """
    return _EndpointJudge(endpoints, slow_s, log, blocking_s).run()
