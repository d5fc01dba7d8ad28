"""The MLflow circuit breaker, one per API replica."""

from __future__ import annotations

from service_health.assessment.common import ResultBuilder, plural
from service_health.assessment.mlflow_refusals import add_registry_refusal_findings
from service_health.details import BreakerFacts, ReplicaBreaker
from service_health.models import BreakerState, CheckName, CheckResult, CheckStatus
from service_health.observations import HttpObservation
from service_health.parsing import parse_metrics, parse_mlflow_health, parse_ready

_MLFLOW_CHECK_NAMES = ("mlflow", "mlflow_service", "mlflow_tracking")
_RESET_HINT = "POST /health/mlflow/reset on each such replica, or run recover_service"


def _ready_signal(ready: HttpObservation | None) -> tuple[BreakerState | None, str, bool]:
    """OPEN when /ready's mlflow check fails blaming the breaker or flagging degraded mode.

    The third value says whether the breaker was named explicitly: degraded mode alone also
    fits MLflow failing while the breaker is still CLOSED.
    """
    if ready is None or not ready.answered:
        return None, "", False
    check = parse_ready(ready).check(*_MLFLOW_CHECK_NAMES)
    if check is None or check.passed is not False:
        return None, "", False
    error = check.error or ""
    lowered = error.lower()
    explicit = "circuit" in lowered and "open" in lowered
    if explicit or check.degraded_mode:
        detail = f"mlflow check: {error}" if error else "mlflow check in degraded mode"
        return BreakerState.OPEN, f"{ready.label} ({detail})", explicit
    return None, "", False


def _metrics_signal(metrics: HttpObservation | None) -> tuple[BreakerState | None, str]:
    """OPEN or HALF_OPEN from /metrics, the number read with the mapping its HELP text
    documents (else the contract's). CLOSED is never inferred: the series may come from
    another replica than the unreadable one."""
    if metrics is None or metrics.status_code != 200:
        return None, ""
    view = parse_metrics(metrics.body_text)
    if view.breaker_state in (BreakerState.OPEN, BreakerState.HALF_OPEN):
        state = BreakerState(view.breaker_state)
        value = view.breaker_state_value
        shown = f"{value:g} = {state}" if value is not None else str(state)
        mapping = "by its HELP text" if view.breaker_state_mapping else "by the contract's mapping"
        return state, f"{metrics.label} (mlflow_circuit_breaker_state {shown} {mapping})"
    return None, ""


def _signal(
    ready: HttpObservation | None, metrics: HttpObservation | None
) -> tuple[BreakerState | None, str, bool, str | None]:
    """The service-wide breaker signal: (state, source, explicit, conflict).

    An explicit statement (/ready's "Circuit breaker open") outranks a number read from
    /metrics, which outranks /ready's degraded mode alone; where the explicit statement
    and the number disagree, the conflict is said.
    """
    ready_state, ready_source, ready_explicit = _ready_signal(ready)
    metrics_state, metrics_source = _metrics_signal(metrics)
    conflict = None
    if ready_explicit and metrics_state is not None and metrics_state != ready_state:
        conflict = (
            f"Conflicting evidence about the MLflow circuit breaker: {ready_source} says "
            f"{ready_state}, {metrics_source} says {metrics_state}; taking {ready_state} from "
            "the explicit statement"
        )
    if ready_explicit:
        return ready_state, ready_source, True, conflict
    if metrics_state is not None:
        return metrics_state, metrics_source, True, conflict
    return ready_state, ready_source, False, conflict


def _label(obs: HttpObservation | None) -> str | None:
    return obs.label if obs is not None and obs.answered else None


class _Replica:
    def __init__(self, label: str, obs: HttpObservation) -> None:
        self.label = label
        self.obs = obs
        self.view = parse_mlflow_health(obs)
        self.state: BreakerState | str = BreakerState.UNKNOWN
        self.inferred_from: str | None = None
        self.stuck: bool | None = None
        if self.view.state_readable and self.view.breaker_state is not None:
            self.state = self.view.breaker_state
            # Stuck: OPEN with no retry scheduled, waiting for a manual reset.
            self.stuck = self.state == BreakerState.OPEN and self.view.time_until_retry is None

    @property
    def unreadable_reason(self) -> str:
        if not self.obs.answered:
            return self.obs.failure_text()
        raw = self.view.breaker_state
        return f"HTTP {self.obs.status_code}, state {raw if raw is not None else 'missing'}"

    def facts(self) -> ReplicaBreaker:
        v = self.view
        return ReplicaBreaker(
            state=str(self.state),
            failure_count=v.failure_count,
            time_until_retry=v.time_until_retry,
            recovery_attempts=v.recovery_attempts,
            stuck=self.stuck,
            connected=v.connected,
            readable=v.state_readable,
            inferred_from=self.inferred_from,
            http_status=self.obs.status_code,
            replica=self.obs.replica,
        )


def _overall(states: list[BreakerState | str]) -> BreakerState | str:
    for candidate in (BreakerState.OPEN, BreakerState.HALF_OPEN):
        if candidate in states:
            return candidate
    unknown = [s for s in states if s != BreakerState.CLOSED]
    if unknown:
        return unknown[0]
    return BreakerState.CLOSED if states else BreakerState.UNKNOWN


def assess_circuit_breaker(
    replicas: dict[str, HttpObservation],
    ready: HttpObservation | None = None,
    metrics: HttpObservation | None = None,
    partial: bool = False,
) -> CheckResult:
    """Breaker state per replica from GET /health/mlflow.

    `replicas` maps a label (replica address, or "sample-1"... when sampled through the load
    balancer, then `partial` is True) to that replica's answer. Where the state cannot be read
    (the deployed version's 500 "UNKNOWN", a timeout), OPEN is inferred from /ready's mlflow
    check or from /metrics, and the evidence says so. OPEN is degraded, never critical.
    """
    b = ResultBuilder(CheckName.CIRCUIT_BREAKER)
    signal_state, signal_source, explicit, conflict = _signal(ready, metrics)
    if conflict is not None:
        b.info(conflict, [label for label in (_label(ready), _label(metrics)) if label])
    if not replicas and signal_state is None:
        return CheckResult.skipped(b.name, "no /health/mlflow answer to read")

    sampled = partial or any(o.replica is None for o in replicas.values())
    noun = "sampled answer" if sampled else "replica"
    seen = [_Replica(label, obs) for label, obs in replicas.items()]
    for replica in seen:
        b.cite(replica.obs.label)
        if not replica.view.state_readable and signal_state is not None:
            replica.state = signal_state
            replica.inferred_from = signal_source
            b.cite(signal_source.split(" (", 1)[0])

    states = [r.state for r in seen]
    if not seen and signal_state is not None:
        # No /health/mlflow answer at all: the service-wide signal is all there is.
        states = [signal_state]
        b.cite(signal_source.split(" (", 1)[0])
        partial = True
    overall = _overall(states)
    b.facts = BreakerFacts(
        replicas={r.label: r.facts() for r in seen},
        state=str(overall),
        open_replicas=[r.label for r in seen if r.state == BreakerState.OPEN],
        sampled_through_load_balancer=sampled,
    )

    _open_findings(b, seen, noun, signal_state, signal_source)
    _other_findings(b, seen, noun)
    # What MLflow refuses (host validation, auth), quoted from the registry's own error text.
    add_registry_refusal_findings(b, ready, [r.obs for r in seen])
    if seen and explicit and signal_state is not None and signal_state not in states:
        b.warning(
            f"The service reports the MLflow circuit breaker {signal_state} ({signal_source}) "
            f"but none of {plural(len(seen), noun)} showed it: a replica that was not read "
            f"is probably {signal_state}",
            "Read /health/mlflow on every replica (replica_discovery: direct) and reset the "
            f"OPEN ones: {_RESET_HINT}",
            [signal_source.split(" (", 1)[0]],
        )
    if not seen and signal_state is not None:
        source = signal_source.split(" (", 1)[0]
        b.warning(
            f"MLflow circuit breaker {signal_state} according to {signal_source}; no "
            "/health/mlflow answer was read, so which replicas are affected is unknown",
            f"Check that MLflow is reachable (mlflow_service), then {_RESET_HINT}",
            [source],
            CheckStatus.RECOVERING if signal_state == BreakerState.HALF_OPEN else None,
        )
    elif partial:
        b.info(
            f"Partial view: /health/mlflow sampled through the load balancer "
            f"({plural(len(seen), 'request')}); replicas not reached may differ",
            [r.obs.label for r in seen[:1]],
        )
    counts = ", ".join(
        f"{sum(1 for s in states if s == state)} {state}" for state in dict.fromkeys(states)
    )
    return b.build(f"{overall} ({counts})", partial=partial)


def _open_findings(
    b: ResultBuilder,
    seen: list[_Replica],
    noun: str,
    signal_state: BreakerState | None,
    signal_source: str,
) -> None:
    opened = [r for r in seen if r.state == BreakerState.OPEN]
    if not opened:
        return
    evidence = [r.obs.label for r in opened] + (
        [signal_source.split(" (", 1)[0]] if any(r.inferred_from for r in opened) else []
    )
    inferred = [r.label for r in opened if r.inferred_from]
    how = f"; inferred for {', '.join(inferred)} from {signal_source}" if inferred else ""
    if len(opened) == len(seen):
        where = f" on all {len(seen)} {noun}s" if len(seen) > 1 else ""
        message = (
            f"MLflow circuit breaker is OPEN{where}: MLflow-dependent features are disabled, "
            f"the service keeps serving in degraded mode{how}"
        )
    else:
        others = sorted({str(r.state) for r in seen if r.state != BreakerState.OPEN})
        message = (
            f"{len(opened)} of {len(seen)} {noun}s {'has' if len(opened) == 1 else 'have'} "
            "the MLflow circuit breaker OPEN "
            f"({', '.join(r.label for r in opened)}) while the others are "
            f"{'/'.join(others)}: part of the traffic is degraded{how}"
        )
    b.warning(
        message,
        "Check that MLflow is reachable (mlflow_service); the breaker retries by itself "
        f"unless stuck; otherwise {_RESET_HINT}",
        evidence,
    )
    stuck = [r for r in opened if r.stuck]
    if stuck:
        attempts = [r.view.recovery_attempts for r in stuck if r.view.recovery_attempts]
        after = f" after {max(attempts)} failed recovery attempts" if attempts else ""
        b.warning(
            f"MLflow circuit breaker stuck OPEN on {', '.join(r.label for r in stuck)}: no "
            f"retry scheduled (time_until_retry null){after}; it needs a manual reset",
            f"Reset the breaker once MLflow is reachable: {_RESET_HINT}",
            [r.obs.label for r in stuck],
        )


def _other_findings(b: ResultBuilder, seen: list[_Replica], noun: str) -> None:
    half = [r for r in seen if r.state == BreakerState.HALF_OPEN]
    if half:
        b.warning(
            f"MLflow circuit breaker HALF_OPEN on {', '.join(r.label for r in half)}: "
            "testing whether MLflow recovered",
            "Wait for the trial calls to close the breaker; check MLflow if it re-opens",
            [r.obs.label for r in half],
            CheckStatus.RECOVERING,
        )
    for r in (r for r in seen if r.state == BreakerState.UNKNOWN):
        legacy = r.obs.status_code == 500 and r.view.breaker_state == BreakerState.UNKNOWN
        hint = (
            "; the deployed version answers this way only while the breaker is OPEN, but "
            "neither /ready nor /metrics confirmed it"
            if legacy
            else ""
        )
        b.warning(
            f"MLflow circuit breaker state unreadable on {noun} {r.label} "
            f"({r.unreadable_reason}){hint}",
            "Read GET /ready (mlflow check) and /metrics; check MLflow reachability",
            [r.obs.label],
        )
    failing = [r for r in seen if r.state == BreakerState.CLOSED and r.view.connected is False]
    if failing:
        counts = [f"{r.label}: {r.view.failure_count or 0}" for r in failing]
        b.warning(
            "MLflow calls failing while the breaker is still CLOSED (consecutive failures "
            f"{', '.join(counts)}): it opens at its failure threshold",
            "Check MLflow reachability (mlflow_service)",
            [r.obs.label for r in failing],
        )
