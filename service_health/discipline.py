"""Request discipline: what a run may send to the registry, in what order, and when to stop.

First, do no harm. The deployed version runs its MLflow check (with retries: about 10 s
while MLflow is unreachable) and its database check (with sleeps) synchronously inside
async handlers, so while one runs the whole API answers nothing, /live included, and every
MLflow call counts toward opening its breaker. So, per replica (per load balancer when the
replicas cannot be reached one by one):

- the light endpoints, which touch neither MLflow nor the database, are read first;
- the MLflow-touching endpoints follow one at a time, in the order below (the cheapest and
  most telling first), each at most once;
- an answer that shows further ones would block the replica or feed its breaker halts
  them: they are reported as not sent, with the reason.

These rules are pure; tasks.evidence applies them to the requests it sends.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, Field

from service_health.endpoints import (
    HEALTH_DETAILED,
    HEALTH_MLFLOW,
    HEALTH_STATUS,
    METRICS,
    READY,
)
from service_health.models import BreakerState
from service_health.observations import ErrorKind, HttpObservation
from service_health.parsing import parse_metrics, parse_mlflow_health, parse_ready

# Each calls MLflow through the breaker (and the three readiness views the database too):
# /health/mlflow once, /ready and /health/status twice, /metrics and the detailed /health
# once. Priority order: one MLflow call that tells the breaker's state comes first.
MLFLOW_TOUCHING = (HEALTH_MLFLOW, READY, METRICS, HEALTH_STATUS, HEALTH_DETAILED)
DATABASE_CHECK_NAMES = ("database", "postgres", "postgresql", "db")
MLFLOW_CHECK_NAMES = ("mlflow", "mlflow_service", "mlflow_tracking")


def seconds(ms: float) -> str:
    return f"{ms / 1000:.2f} s"


def touches_mlflow(path: str) -> bool:
    return path in MLFLOW_TOUCHING


def _breaker_refused(error: str | None) -> bool:
    lowered = (error or "").lower()
    return "circuit" in lowered and "open" in lowered


def mlflow_failing_in(obs: HttpObservation) -> str | None:
    """What in this answer shows MLflow calls admitted by the breaker and failing, or None.

    A breaker that refuses calls (OPEN) costs nothing per request; one that admits them
    while MLflow fails costs one blocked MLflow check per call.
    """
    if not obs.answered:
        return None
    if obs.path == HEALTH_MLFLOW:
        view = parse_mlflow_health(obs)
        admitted = view.breaker_state in (BreakerState.CLOSED, BreakerState.HALF_OPEN)
        if view.connected is False and admitted:
            error = f": {view.error}" if view.error else ""
            return f"connected false with the breaker {view.breaker_state}{error}"
        return None
    if obs.path in (READY, HEALTH_DETAILED, HEALTH_STATUS):
        check = parse_ready(obs).check(*MLFLOW_CHECK_NAMES) if obs.path == READY else None
        if check is not None and check.passed is False and not _breaker_refused(check.error):
            return f"mlflow check failed{f': {check.error}' if check.error else ''}"
        return None
    if obs.path == METRICS and obs.status_code == 200:
        metrics = parse_metrics(obs.body_text)
        if metrics.connection_status == 0 and metrics.breaker_state != BreakerState.OPEN:
            return "mlflow_connection_status 0 with the breaker not OPEN"
    return None


def database_failing_in(obs: HttpObservation) -> str | None:
    """What in this answer shows the service's database check failing, or None."""
    if not obs.answered or obs.path != READY:
        return None
    check = parse_ready(obs).check(*DATABASE_CHECK_NAMES)
    if check is not None and check.passed is False:
        return f"database check failed{f': {check.error}' if check.error else ''}"
    return None


def halt_reason(obs: HttpObservation, blocking_s: float, slow_s: float = math.inf) -> str | None:
    """Why no further MLflow-touching request should go where `obs` came from, or None.

    `obs` is the answer to an MLflow-touching request (or to the light read that precedes
    them); `blocking_s` is how long an answer may take before it counts as having held the
    replica. A timeout or no answer halts; so does an answer slower than `blocking_s` that
    shows MLflow calls admitted and failing or the database check failing, and any answer
    slower than `slow_s` (a busy machine delays healthy answers by a second or so: that is
    no reason to stop). A fast answer halts nothing, failing or not: it held nothing, and
    the budget bounds what reaches the breaker.
    """
    label = obs.label
    if obs.error_kind is ErrorKind.TIMEOUT:
        return (
            f"{label} timed out: the request may still hold the replica, and another would "
            "queue behind it"
        )
    if not obs.answered:
        return f"{label} got no answer ({obs.failure_text()})"
    if obs.elapsed_ms is None or obs.elapsed_ms <= blocking_s * 1000:
        return None
    took = f"{label} took {seconds(obs.elapsed_ms)}"
    if (mlflow := mlflow_failing_in(obs)) is not None:
        return (
            f"{took} ({mlflow}): each further MLflow-touching request would hold the replica "
            "as long and count toward opening its breaker"
        )
    if (database := database_failing_in(obs)) is not None:
        return (
            f"{took} ({database}): each further database-touching request would hold the "
            "replica on the service's database retries"
        )
    if obs.elapsed_ms <= slow_s * 1000:
        return None
    return f"{took}: each further MLflow-touching request could hold the replica as long"


class RequestLog(BaseModel):
    """What a run sent under the discipline, with the evidence from outside the registry
    that attributes a stall (the direct probes of the database and MLflow)."""

    touching: list[HttpObservation] = Field(default_factory=list)  # sent or not
    database_failing: str | None = None  # e.g. "direct PostgreSQL probe: connection refused"
    mlflow_failing: str | None = None  # e.g. "direct MLflow probe: connection refused"


def stalled(obs: HttpObservation, blocking_s: float) -> bool:
    """Did this MLflow-touching answer hold the replica (slow, or no answer in time)?"""
    if obs.error_kind is ErrorKind.TIMEOUT:
        return True
    return obs.answered and obs.elapsed_ms is not None and obs.elapsed_ms > blocking_s * 1000


def stall_causes(obs: HttpObservation, log: RequestLog) -> list[tuple[str, str]]:
    """(component, evidence) that explain a stalled answer: what the answer itself says
    first; for an answer that says nothing (a timeout), what the rest of the run saw.
    Empty when nothing points anywhere: then nothing is blamed."""
    own = [
        (component, text)
        for component, text in (
            ("database", database_failing_in(obs)),
            ("MLflow", mlflow_failing_in(obs)),
        )
        if text is not None
    ]
    if own:
        return own
    others: list[tuple[str, str]] = []
    database = log.database_failing or next(
        (f"{o.label}: {t}" for o in log.touching if (t := database_failing_in(o))), None
    )
    if database:
        others.append(("database", database))
    mlflow = (
        next((f"{o.label}: {t}" for o in log.touching if (t := mlflow_failing_in(o))), None)
        or log.mlflow_failing
    )
    if mlflow:
        others.append(("MLflow", mlflow))
    return others
