"""Request discipline and attribution: the pure rules behind "harmless to the service"."""

from __future__ import annotations

from service_health.assessment import assess_circuit_breaker, assess_health_endpoints
from service_health.contract import reset_probes_unsafe
from service_health.details import BreakerFacts
from service_health.discipline import RequestLog, halt_reason, stall_causes
from service_health.models import BreakerState
from service_health.observations import ErrorKind, HttpObservation
from service_health.parsing import parse_metrics, state_mapping_from_help
from tests.domain import bodies as b
from tests.domain.helpers import facts
from tests.domain.test_assess_api import legacy

R1, R2 = "10.0.1.5:8000", "10.0.1.6:8000"


def messages(result: object) -> str:
    return " | ".join(f.message for f in result.findings)  # type: ignore[attr-defined]


def onset_mlflow(replica: str = R1, elapsed_ms: float = 10_200.0) -> HttpObservation:
    """The deployed version's /health/mlflow while MLflow is down and the breaker CLOSED."""
    obs = b.legacy_mlflow_closed(failures=2, replica=replica)
    return obs.model_copy(update={"elapsed_ms": elapsed_ms})


# -- the breaker state read from /metrics ---------------------------------------------------


def test_help_text_mapping_is_read() -> None:
    mapping = state_mapping_from_help(
        "MLflow circuit breaker state (0=CLOSED, 1=HALF_OPEN, 2=OPEN)"
    )
    assert mapping == {0: BreakerState.CLOSED, 1: BreakerState.HALF_OPEN, 2: BreakerState.OPEN}
    assert state_mapping_from_help("state (0 CLOSED, 1 OPEN, 2 HALF_OPEN)") == {
        0: BreakerState.CLOSED,
        1: BreakerState.OPEN,
        2: BreakerState.HALF_OPEN,
    }
    # Ambiguous or absent: not a mapping, the contract's applies.
    assert state_mapping_from_help("0=CLOSED, 0=OPEN") is None
    assert state_mapping_from_help("the state of the breaker") is None
    assert state_mapping_from_help(None) is None


def test_deployed_open_reads_open_and_contract_two_reads_half_open() -> None:
    legacy_open = parse_metrics(b.legacy_metrics_text(state="OPEN"))
    assert legacy_open.breaker_state_value == 2.0
    assert legacy_open.breaker_state == BreakerState.OPEN
    # Without HELP text the contract's mapping: 2 is HALF_OPEN.
    contract_two = parse_metrics(
        "# TYPE mlflow_circuit_breaker_state gauge\nmlflow_circuit_breaker_state 2\n"
    )
    assert contract_two.breaker_state == BreakerState.HALF_OPEN
    assert contract_two.breaker_state_mapping is None


def test_deployed_open_breaker_is_open_never_half_open() -> None:
    result = assess_circuit_breaker(
        {R1: b.legacy_mlflow_unknown(R1), R2: b.legacy_mlflow_unknown(R2)},
        b.legacy_ready(breaker_open=True),
        b.legacy_metrics(state="OPEN"),
    )
    assert facts(result, BreakerFacts).state == "OPEN"
    assert facts(result, BreakerFacts).open_replicas == [R1, R2]
    assert "HALF_OPEN" not in messages(result)
    assert "Wait for the trial calls" not in " ".join(
        f.recommendation or "" for f in result.findings
    )


def test_explicit_statement_outranks_a_conflicting_number() -> None:
    contract_mapped_two = b.http(
        "/metrics",
        200,
        text="# TYPE mlflow_circuit_breaker_state gauge\nmlflow_circuit_breaker_state 2\n",
        content_type="text/plain",
    )
    result = assess_circuit_breaker(
        {R1: b.legacy_mlflow_unknown(R1)}, b.legacy_ready(breaker_open=True), contract_mapped_two
    )
    assert facts(result, BreakerFacts).state == "OPEN"
    conflict = [f for f in result.findings if f.message.startswith("Conflicting evidence")]
    assert len(conflict) == 1 and conflict[0].severity == "info"
    assert "taking OPEN from the explicit statement" in conflict[0].message


def test_half_open_still_reads_half_open() -> None:
    result = assess_circuit_breaker({R1: b.mlflow_health("HALF_OPEN", replica=R1, code=503)})
    assert facts(result, BreakerFacts).state == "HALF_OPEN"


# -- when to stop sending ---------------------------------------------------------------------


def test_halts_after_a_slow_admitted_failing_mlflow_call() -> None:
    reason = halt_reason(onset_mlflow(elapsed_ms=1800.0), blocking_s=1.0)
    assert reason is not None and "count toward opening its breaker" in reason
    # A fast failing answer held nothing: the reads go on (the budget bounds them).
    assert halt_reason(onset_mlflow(elapsed_ms=50.0), blocking_s=1.0) is None


def test_halts_after_a_slow_database_failure_in_ready() -> None:
    slow = b.legacy_ready(database=False).model_copy(update={"elapsed_ms": 3100.0})
    reason = halt_reason(slow, blocking_s=1.0)
    assert reason is not None and "database retries" in reason


def test_open_breaker_costs_nothing_so_reads_go_on() -> None:
    # A refused call is instant: the deployed version's OPEN answers do not halt.
    assert halt_reason(b.legacy_mlflow_unknown(R1), blocking_s=1.0) is None
    assert halt_reason(b.legacy_ready(breaker_open=True), blocking_s=1.0) is None
    assert halt_reason(b.legacy_mlflow_closed(replica=R1), blocking_s=1.0) is None


def test_halts_after_a_timeout_or_a_slow_answer() -> None:
    timed_out = b.no_answer("/ready", ErrorKind.TIMEOUT, replica=R1)
    assert "may still hold the replica" in (halt_reason(timed_out, 1.0) or "")
    slow = b.legacy_mlflow_closed(replica=R1).model_copy(update={"elapsed_ms": 1500.0})
    # A healthy answer a little slow (a busy machine) halts nothing; past slow_s it does.
    assert halt_reason(slow, 1.0, slow_s=5.0) is None
    assert "took 1.50 s" in (halt_reason(slow, 1.0, slow_s=1.2) or "")


def test_a_healthy_answer_a_little_slow_is_no_stall() -> None:
    slow = b.legacy_mlflow_closed(replica=R1).model_copy(update={"elapsed_ms": 1500.0})
    log = RequestLog(touching=[slow])
    result = assess_health_endpoints(legacy(_health_mlflow=slow), 5.0, log, 1.0)
    assert "held our requests" not in messages(result)
    assert result.status == "healthy", messages(result)


# -- attribution ------------------------------------------------------------------------------


def test_a_stall_is_blamed_on_what_the_answer_shows() -> None:
    assert [c for c, _ in stall_causes(onset_mlflow(), RequestLog())] == ["MLflow"]
    slow_ready = b.legacy_ready(database=False).model_copy(update={"elapsed_ms": 3100.0})
    assert [c for c, _ in stall_causes(slow_ready, RequestLog())] == ["database"]


def test_a_silent_answer_is_blamed_on_the_other_evidence_or_on_nothing() -> None:
    timed_out = b.no_answer("/ready", ErrorKind.TIMEOUT, replica=R1)
    db_down = RequestLog(database_failing="direct PostgreSQL probe: connection refused")
    assert [c for c, _ in stall_causes(timed_out, db_down)] == ["database"]
    assert stall_causes(timed_out, RequestLog()) == []


def test_onset_of_an_mlflow_outage_is_degraded_with_the_blocked_loop_named() -> None:
    stall = onset_mlflow()
    unsent = HttpObservation.not_sent("http://10.0.1.5:8000/ready", "halted", R1)
    log = RequestLog(touching=[stall, unsent])
    endpoints = legacy(_health_mlflow=stall, _ready=unsent)
    result = assess_health_endpoints(endpoints, 5.0, log, 1.0)
    assert result.status == "degraded"
    assert all(f.severity != "critical" for f in result.findings)
    text = messages(result)
    assert "The API's event loop blocks on MLflow calls" in text
    assert f"GET {R1}/health/mlflow took 10.20 s" in text
    assert "Not sent, to do no harm" in text
    assert result.summary.startswith("6/6 answered, 2 with HTTP 500; 1 not sent")


def test_database_outage_is_critical_and_names_the_database_not_mlflow() -> None:
    ready = b.legacy_ready(database=False).model_copy(update={"elapsed_ms": 3100.0})
    log = RequestLog(
        touching=[b.legacy_mlflow_closed(replica=R1), ready],
        database_failing="direct PostgreSQL probe: connection refused",
    )
    result = assess_health_endpoints(legacy(_ready=ready), 5.0, log, 1.0)
    assert result.status == "unhealthy"
    text = messages(result)
    assert "cannot serve traffic" in text
    assert "blocks on database calls" in text
    assert "MLflow calls" not in text


def test_summary_says_which_answers_were_errors() -> None:
    result = assess_health_endpoints(legacy(), 5.0)
    assert result.summary == "7/7 answered, 2 with HTTP 500"


def test_degraded_recommendation_names_only_failing_components() -> None:
    result = assess_health_endpoints(legacy(_ready=b.legacy_ready(breaker_open=True)), 5.0)
    recommendations = " ".join(f.recommendation or "" for f in result.findings)
    assert "circuit_breaker and mlflow_service" in recommendations
    assert "redis" not in recommendations


# -- the contract test's reset probes ---------------------------------------------------------


def test_reset_probes_only_where_a_reset_changes_nothing() -> None:
    closed = {R1: b.legacy_mlflow_closed(replica=R1), R2: b.legacy_mlflow_closed(replica=R2)}
    assert reset_probes_unsafe(closed, partial=False) is None
    assert "sampled" in (reset_probes_unsafe(closed, partial=True) or "")
    opened = {**closed, R2: b.legacy_mlflow_unknown(R2)}
    assert "does not read CLOSED" in (reset_probes_unsafe(opened, partial=False) or "")
    counting = {**closed, R1: b.legacy_mlflow_closed(failures=2, replica=R1)}
    assert "counting MLflow failures" in (reset_probes_unsafe(counting, partial=False) or "")
    assert reset_probes_unsafe({}, partial=False) is not None
