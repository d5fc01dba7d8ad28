"""The judges of the contract tests on the MLflow circuit breaker: /health/mlflow and its
details, graceful degradation across endpoints, and the reset refused without the key.
Pure."""

from __future__ import annotations

from collections.abc import Mapping

from service_health.contract.judging import (
    MISSING,
    STATES,
    TIMESTAMP,
    Judge,
    answer,
    check_timestamp,
    excerpt,
    raw,
    shown,
    timestamp_problem,
)
from service_health.contract.models import Judgment
from service_health.fields import FieldReader
from service_health.models import BreakerState
from service_health.observations import HttpObservation
from service_health.parsing import (
    KNOWN_BREAKER_STATES,
    breaker_state_from,
    parse_health,
    parse_metrics,
    parse_mlflow_health,
    parse_ready,
)
from service_health.views import HealthView, MetricsView, ReadyView

# The seed's default: after this many failed recoveries the breaker stays OPEN with
# `time_until_retry` null until a manual reset (used when the service does not say).
DEFAULT_MAX_RECOVERY_ATTEMPTS = 3


def judge_mlflow_health(obs: HttpObservation) -> Judgment:
    """GET /health/mlflow: a known state, with `connected` and the code consistent with it."""
    j = Judge(obs)
    meaning = "200 connected, 503 breaker OPEN or MLflow down"
    body, _ = obs.json_body()
    # A JSON error answer is judged too: what it says about the breaker matters.
    json_answer = obs.answered and isinstance(body, dict)
    if not json_answer and not j.usable(obs, (200, 503), meaning):
        return j.done()
    j.record("HTTP status", meaning, answer(obs))
    if obs.status_code not in (200, 503):
        j.violation(f"HTTP status: expected 200 or 503; got {answer(obs)}")
    body = j.json_object(obs)
    if body is None:
        return j.done()
    problems: list[str] = []
    fields = FieldReader(body, problems)
    connected = fields.boolean("connected")
    raw_state = raw(body, "circuit_breaker_state")
    j.record("circuit_breaker_state", "CLOSED, OPEN or HALF_OPEN", raw_state)
    j.record("connected", "a boolean; false while OPEN", raw(body, "connected"))
    state, problem = breaker_state_from(None if raw_state is MISSING else raw_state)
    if state not in KNOWN_BREAKER_STATES:
        problems.append(f"`circuit_breaker_state`: expected {STATES}; got {shown(raw_state)}")
    elif problem:
        problems.append(f"`circuit_breaker_state`: {problem}")
    fields.string("error", required=False, nullable=True)
    check_timestamp(j, body, problems)
    j.problems(problems)
    code = obs.status_code
    if state == BreakerState.OPEN and connected is True:
        j.violation("`connected`: expected false while the breaker is OPEN; got true")
    if code == 200 and (connected is False or state == BreakerState.OPEN):
        why = "the breaker is OPEN" if state == BreakerState.OPEN else "`connected` is false"
        j.violation(f"HTTP status: expected 503 because {why}; got 200")
    elif code == 503 and connected is True:
        j.violation("HTTP status: expected 200 because `connected` is true; got 503")
    return j.done()


_DETAILS = "circuit_breaker_details"


def judge_circuit_breaker_details(obs: HttpObservation) -> Judgment:
    """GET /health/mlflow's circuit_breaker_details: present, typed and consistent."""
    j = Judge(obs)
    # The details are judged in any JSON answer, whatever its status (mlflow_health judges
    # the status); an answer that is not JSON has no details to judge.
    j.record("HTTP status", "200 or 503 (judged by mlflow_health)", answer(obs))
    if not obs.answered:
        j.violation(f"HTTP status: expected 200 or 503; got {answer(obs)}")
        return j.done()
    body = j.json_object(obs)
    if body is None:
        return j.done()
    problems: list[str] = []
    details = FieldReader(body, problems).sub(_DETAILS)
    j.record(_DETAILS, "an object", "present" if details.present else shown(raw(body, _DETAILS)))
    if not details.present:
        j.problems(problems)
        return j.done()
    _record_details(j, body)
    state = _details_state(body, details.data, problems)
    failures = details.integer("failure_count")
    attempts = details.integer("recovery_attempts")
    for key, value in (("failure_count", failures), ("recovery_attempts", attempts)):
        if value is not None and value < 0:
            problems.append(f"`{_DETAILS}.{key}`: expected an integer >= 0; got {value}")
    _retry_problems(details, state, attempts, problems)
    for key in ("last_failure_time", "last_success_time"):
        value = details.data.get(key)
        if value is not None:
            j.record(f"{_DETAILS}.{key}", f"{TIMESTAMP} or null", value)
            why = timestamp_problem(value)
            if why:
                problems.append(f"`{_DETAILS}.{key}`: {why}")
    if body.get("connected") is False and state == BreakerState.CLOSED and failures == 0:
        problems.append(
            f"`{_DETAILS}.failure_count`: expected >= 1 after this answer's failed MLflow call "
            "(connected false, breaker CLOSED); got 0: the state was read before the failure "
            "was counted"
        )
    j.problems(problems)
    return j.done()


def _record_details(j: Judge, body: dict[str, object]) -> None:
    j.record(f"{_DETAILS}.state", STATES, raw(body, f"{_DETAILS}.state"))
    for key in ("failure_count", "recovery_attempts"):
        j.record(f"{_DETAILS}.{key}", "an integer >= 0", raw(body, f"{_DETAILS}.{key}"))
    j.record(
        f"{_DETAILS}.time_until_retry",
        "seconds (>= 0) while OPEN; null when CLOSED or HALF_OPEN, or when stuck OPEN after "
        "max_recovery_attempts",
        raw(body, f"{_DETAILS}.time_until_retry"),
    )


def _details_state(
    body: dict[str, object], data: Mapping[str, object], problems: list[str]
) -> str | None:
    """The details' state, known and agreeing with the top-level circuit_breaker_state."""
    state, problem = breaker_state_from(data.get("state"))
    if state not in KNOWN_BREAKER_STATES:
        got = shown(raw(body, f"{_DETAILS}.state"))
        problems.append(f"`{_DETAILS}.state`: expected {STATES}; got {got}")
    elif problem:
        problems.append(f"`{_DETAILS}.state`: {problem}")
    top, _ = breaker_state_from(body.get("circuit_breaker_state"))
    if top in KNOWN_BREAKER_STATES and state in KNOWN_BREAKER_STATES and top != state:
        problems.append(
            f"`{_DETAILS}.state`: expected {top} like circuit_breaker_state; got {state}"
        )
    return state


def _retry_problems(
    details: FieldReader, state: str | None, attempts: int | None, problems: list[str]
) -> None:
    """time_until_retry: seconds while OPEN (null only when stuck), null otherwise."""
    key = f"`{_DETAILS}.time_until_retry`"
    if "time_until_retry" not in details.data:
        problems.append(f"{key}: missing")
    retry = details.number("time_until_retry", required=False, nullable=True)
    raw_retry = details.data.get("time_until_retry")
    maximum = details.integer("max_recovery_attempts", required=False)
    stuck = attempts is not None and attempts >= (maximum or DEFAULT_MAX_RECOVERY_ATTEMPTS)
    if state == BreakerState.OPEN:
        if "time_until_retry" in details.data and raw_retry is None and not stuck:
            problems.append(
                f"{key}: expected seconds until the next trial while OPEN (null only when "
                f"stuck after max_recovery_attempts); got null with recovery_attempts "
                f"{shown(attempts)}"
            )
        if retry is not None and retry < 0:
            problems.append(f"{key}: expected >= 0; got {retry:g}")
    elif state in (BreakerState.CLOSED, BreakerState.HALF_OPEN) and raw_retry is not None:
        problems.append(f"{key}: expected null while {state}; got {shown(raw_retry)}")


def _breaker_evidence(
    mlflow: HttpObservation, metrics: MetricsView | None, ready: ReadyView
) -> tuple[BreakerState | None, bool | None, str]:
    """The breaker state, MLflow connectivity and where they were read."""
    body, _ = mlflow.json_body()
    connected = None
    if isinstance(body, dict):
        value = body.get("connected")
        connected = value if isinstance(value, bool) else None
        state, _ = breaker_state_from(body.get("circuit_breaker_state"))
        if state in KNOWN_BREAKER_STATES:
            return BreakerState(state), connected, mlflow.label
    if metrics is not None and metrics.breaker_state in KNOWN_BREAKER_STATES:
        return BreakerState(metrics.breaker_state), connected, "GET /metrics"
    check = ready.check("mlflow")
    error = (check.error or "").lower() if check is not None else ""
    if "open" in error and ("circuit" in error or "breaker" in error):
        return BreakerState.OPEN, connected, "GET /ready (mlflow check)"
    return None, connected, "no endpoint"


def judge_graceful_degradation(
    health: HttpObservation,
    ready: HttpObservation,
    mlflow: HttpObservation,
    metrics: HttpObservation,
) -> Judgment:
    """/health, /ready and the breaker agree (seed: breaker OPEN -> degraded, still serving).

    Through a load balancer the answers may come from different replicas, each with its own
    breaker; a disagreement seen here is then one between replicas, which is worth knowing too.
    """
    j = Judge(health, ready, mlflow, metrics)
    hv, rv = parse_health(health), parse_ready(ready)
    mv = parse_metrics(metrics.body_text) if metrics.status_code == 200 else None
    state, connected, source = _breaker_evidence(mlflow, mv, rv)
    j.record(
        "breaker", "read from /health/mlflow, else /metrics", f"{state or 'unknown'} ({source})"
    )
    j.record("GET /health", "a JSON answer", f"{answer(health)} status={shown(hv.status)}")
    j.record(
        "GET /ready",
        "a JSON answer",
        f"{answer(ready)} can_serve_traffic={shown(rv.can_serve_traffic)} "
        f"degraded_mode={shown(rv.degraded_mode)}",
    )
    usable = True
    for obs, view in ((health, hv), (ready, rv)):
        if not view.body_is_json:
            why = answer(obs) if not obs.answered else f"{answer(obs)}, body not JSON"
            j.violation(f"{obs.label}: expected a JSON answer to compare; got {why}")
            usable = False
    if not usable:
        return j.done()
    database = rv.check("database", "postgres", "postgresql", "db")
    postgres_down = hv.service("postgres") == "unhealthy" or (
        database is not None and database.passed is False
    )
    mlflow_out = state == BreakerState.OPEN or connected is False
    degraded_judged = mlflow_out and not postgres_down
    if degraded_judged:
        why = (
            f"the breaker is OPEN ({source})"
            if state == BreakerState.OPEN
            else f"MLflow is not connected ({source})"
        )
        _expect_degraded(j, why, health, hv, ready, rv)
    # Agreement on what the replicas share (the database), and on degraded mode.
    health_down = hv.status == "unhealthy" or health.status_code == 503
    ready_down = ready.status_code == 503
    if health_down != ready_down:
        j.violation(
            f"GET /health and GET /ready disagree: /health says "
            f"{shown(hv.status)} (HTTP {health.status_code}), /ready answers HTTP "
            f"{ready.status_code} (expected both 503 when the service cannot serve traffic, "
            "neither otherwise)"
        )
    if rv.degraded_mode is True and hv.status == "healthy" and not degraded_judged:
        j.violation(
            "GET /health status: expected 'degraded' because /ready reports degraded_mode "
            "true; got 'healthy'"
        )
    return j.done()


def _expect_degraded(
    j: Judge, why: str, health: HttpObservation, hv: HealthView, ready: HttpObservation,
    rv: ReadyView,
) -> None:  # fmt: skip
    """MLflow is out (`why`): /health 200 `degraded`, /ready 200 in degraded mode."""
    j.expect("GET /health HTTP status", f"200 because {why}", answer(health),
             health.status_code == 200)  # fmt: skip
    j.expect("GET /health status", f"'degraded' because {why}", shown(hv.status),
             hv.status == "degraded")  # fmt: skip
    if hv.service("mlflow") is not None:
        j.expect(
            "GET /health services.mlflow",
            f"not 'healthy' because {why}",
            shown(hv.service("mlflow")),
            hv.service("mlflow") != "healthy",
        )
    j.expect("GET /ready HTTP status", f"200 (still serving) because {why}", answer(ready),
             ready.status_code == 200)  # fmt: skip
    j.expect("GET /ready degraded_mode", f"true because {why}", shown(rv.degraded_mode),
             rv.degraded_mode is True)  # fmt: skip
    check = rv.check("mlflow")
    if check is not None:
        j.expect("GET /ready mlflow check passed", f"false because {why}",
                 shown(check.passed), check.passed is False)  # fmt: skip


def judge_reset_refused(obs: HttpObservation, credentials: str) -> Judgment:
    """POST /health/mlflow/reset sent `credentials` ("without a key", "with a wrong key")."""
    j = Judge(obs)
    expected = "401 or 403 (refused)"
    if not obs.answered:
        j.expect("HTTP status", expected, answer(obs), False)
        return j.done()
    code = obs.status_code or 0
    if j.expect("HTTP status", expected, answer(obs), code in (401, 403)):
        return j.done()
    if 200 <= code < 300:
        j.violation(f"the reset was accepted {credentials}: anyone can reset the breaker")
    j.record("body", "an error answer", excerpt(obs))
    j.violation(f"body: {excerpt(obs)}")
    return j.done()


def reset_probes_unsafe(
    views: dict[str, HttpObservation], partial: bool, known_replicas: int | None = None
) -> str | None:
    """Why the reset probes must not be sent, or None when they cannot change anything.

    A deployed version accepts a reset without a key and really resets: only a breaker
    that is CLOSED with MLflow connected (nothing counted toward opening) is left as it
    was by a reset, so every replica must read so. Sampled through the load balancer, that
    is known only of a service said to have one replica.
    """
    if partial and known_replicas != 1:
        return (
            "the breaker of every replica could not be read one by one (sampled through the "
            "load balancer): a reset accepted without a key could change one not seen"
        )
    if not views:
        return "no replica's breaker could be read"
    for label, obs in views.items():
        view = parse_mlflow_health(obs)
        if not view.state_readable or view.breaker_state != BreakerState.CLOSED:
            state = view.breaker_state if view.state_readable else obs.failure_text()
            return f"the breaker of {label} does not read CLOSED ({state}): a reset could change it"
        if view.connected is not True or (view.failure_count or 0) > 0:
            return (
                f"the breaker of {label} is CLOSED but counting MLflow failures: a reset "
                "would clear the count"
            )
    return None
