"""The health contract's tests (DESIGN section 4), judged. Pure: no I/O, no Prefect.

Each ``judge_*`` function takes the observations of the endpoints one test concerns and
returns a `Judgment`: what the contract expects (`expected`), what the service did
(`actual`), and one readable line per violation (`diff`). The tolerant readers of
`service_health.parsing` do the field checks; the rules here add what the contract asks
beyond well-formed fields: agreement between fields, between the status code and the body,
and between endpoints. `ContractReport` holds the results under the seed's JSON names.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field

from service_health.fields import FieldReader, short, to_datetime
from service_health.models import BreakerState
from service_health.observations import HttpObservation
from service_health.parsing import (
    KNOWN_BREAKER_STATES,
    breaker_state_from,
    parse_health,
    parse_health_status,
    parse_live,
    parse_metrics,
    parse_mlflow_health,
    parse_ready,
)
from service_health.views import HealthView, MetricsView, ReadyCheck, ReadyView

RESET = "/health/mlflow/reset"

# The seed's default: after this many failed recoveries the breaker stays OPEN with
# `time_until_retry` null until a manual reset (used when the service does not say).
DEFAULT_MAX_RECOVERY_ATTEMPTS = 3

# Test name -> what it verifies. The order is the order of the report.
DESCRIPTIONS: dict[str, str] = {
    "basic_health": "GET /health answers status, version, services {mlflow, redis, postgres} "
    "and an ISO 8601 UTC timestamp, with valid values and a matching status code",
    "detailed_health": "GET /health?detailed=true answers as /health plus system_info with "
    "numeric cpu_percent and memory_percent",
    "readiness": "GET /ready answers 200 or 503 as can_serve_traffic says, every check well "
    "formed, ready/can_serve_traffic/degraded_mode consistent with the checks",
    "liveness": "GET /live answers 200 with alive true and a timestamp",
    "mlflow_health": "GET /health/mlflow names a known circuit_breaker_state, with connected and "
    "the status code consistent with it",
    "circuit_breaker_details": "GET /health/mlflow circuit_breaker_details has state, "
    "failure_count, recovery_attempts and time_until_retry, typed; time_until_retry is null "
    "exactly when not OPEN",
    "service_status": "GET /health/status answers service_name, overall_health, mlflow with "
    "status and circuit_breaker, system_info and timestamp",
    "metrics": "GET /metrics is valid Prometheus text with the circuit breaker series (state, "
    "failures, recovery attempts) and http_requests_total",
    "graceful_degradation": "/health, /ready and the breaker agree: breaker OPEN means /health "
    "degraded with 200 and /ready 200 with degraded_mode true",
    "reset_without_key_refused": "POST /health/mlflow/reset without credentials is refused "
    "(401/403)",
    "reset_with_wrong_key_refused": "POST /health/mlflow/reset with a wrong API key is refused "
    "(401/403)",
}
# The only tests that send a request which could change the service (a breaker reset).
MUTATING_TESTS = ("reset_without_key_refused", "reset_with_wrong_key_refused")
READ_ONLY_TESTS = tuple(name for name in DESCRIPTIONS if name not in MUTATING_TESTS)

_TIMESTAMP = "ISO 8601 with a time zone (UTC)"
_STATES = "CLOSED, OPEN or HALF_OPEN"
_MISSING = object()


# -- results -------------------------------------------------------------------------------


class Outcome(StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    SKIPPED = "skipped"


class Judgment(BaseModel):
    """What one test expected, what it got, and the difference, line by line."""

    expected: dict[str, str] = Field(default_factory=dict)
    actual: dict[str, str] = Field(default_factory=dict)
    diff: list[str] = Field(default_factory=list)
    evidence: list[str] = Field(default_factory=list)  # e.g. "GET /health"

    @property
    def passed(self) -> bool:
        return not self.diff


class ContractTestResult(BaseModel):
    name: str
    description: str
    outcome: Outcome
    expected: dict[str, str] = Field(default_factory=dict)
    actual: dict[str, str] = Field(default_factory=dict)
    diff: list[str] = Field(default_factory=list)
    evidence: list[str] = Field(default_factory=list)
    duration_ms: float | None = None
    error: str | None = None  # the test itself could not complete

    @property
    def passed(self) -> bool:
        return self.outcome is Outcome.PASSED

    @classmethod
    def from_judgment(
        cls, name: str, judgment: Judgment, duration_ms: float | None = None
    ) -> ContractTestResult:
        return cls(
            name=name,
            description=DESCRIPTIONS.get(name, name),
            outcome=Outcome.PASSED if judgment.passed else Outcome.FAILED,
            expected=dict(judgment.expected),
            actual=dict(judgment.actual),
            diff=list(judgment.diff),
            evidence=list(judgment.evidence),
            duration_ms=duration_ms,
        )

    @classmethod
    def errored(cls, name: str, error: str, duration_ms: float | None = None) -> ContractTestResult:
        """A test that raised or ran out of time: failed, with the reason as its diff."""
        return cls(
            name=name,
            description=DESCRIPTIONS.get(name, name),
            outcome=Outcome.FAILED,
            expected={"test": "completes within the run's deadline"},
            actual={"test": error},
            diff=[f"test could not complete: {error}"],
            duration_ms=duration_ms,
            error=error,
        )

    @classmethod
    def skipped(cls, name: str, reason: str) -> ContractTestResult:
        return cls(
            name=name,
            description=DESCRIPTIONS.get(name, name),
            outcome=Outcome.SKIPPED,
            actual={"skipped": reason},
        )

    def seed_json(self) -> dict[str, Any]:
        """The seed's entry ({passed, description, ...}) plus the diff and its evidence."""
        return {
            "passed": self.passed,
            "description": self.description,
            "outcome": self.outcome.value,
            "skipped": self.outcome is Outcome.SKIPPED,
            "expected": dict(self.expected),
            "actual": dict(self.actual),
            "diff": list(self.diff),
            "evidence": list(self.evidence),
            "duration_ms": self.duration_ms,
            "error": self.error,
        }


class ContractSummary(BaseModel):
    total_tests: int  # tests that ran (passed + failed); skipped ones are counted apart
    passed: int
    failed: int
    skipped: int = 0
    success_rate: float  # percent of the tests that ran

    @classmethod
    def of(cls, results: Iterable[ContractTestResult]) -> ContractSummary:
        outcomes = [r.outcome for r in results]
        passed = outcomes.count(Outcome.PASSED)
        failed = outcomes.count(Outcome.FAILED)
        total = passed + failed
        return cls(
            total_tests=total,
            passed=passed,
            failed=failed,
            skipped=outcomes.count(Outcome.SKIPPED),
            success_rate=round(100.0 * passed / total, 1) if total else 0.0,
        )


class ContractReport(BaseModel):
    target: str
    api_url: str
    start_time: str  # ISO 8601, UTC
    duration_seconds: float
    read_only: bool = False
    tests: dict[str, ContractTestResult] = Field(default_factory=dict)
    summary: ContractSummary

    @property
    def all_passed(self) -> bool:
        """Every test that ran passed (and at least one ran)."""
        return self.summary.failed == 0 and self.summary.passed > 0

    @property
    def state_name(self) -> str:
        return "Passed" if self.all_passed else "Failed"

    @property
    def exit_code(self) -> int:
        return 0 if self.all_passed else 1

    def failed_tests(self) -> list[str]:
        return [name for name, r in self.tests.items() if r.outcome is Outcome.FAILED]

    def to_seed_json(self) -> dict[str, Any]:
        """The seed's field names (start_time, api_url, tests, summary, duration_seconds)."""
        return {
            "start_time": self.start_time,
            "api_url": self.api_url,
            "tests": {name: r.seed_json() for name, r in self.tests.items()},
            "summary": self.summary.model_dump(),
            "duration_seconds": self.duration_seconds,
            "target": self.target,
            "read_only": self.read_only,
            "overall": "passed" if self.all_passed else "failed",
        }


def build_report(
    target: str,
    api_url: str,
    start_time: str,
    duration_seconds: float,
    results: dict[str, ContractTestResult],
    read_only: bool = False,
) -> ContractReport:
    """The report, tests in the order of DESCRIPTIONS (unknown names last)."""
    order = {name: i for i, name in enumerate(DESCRIPTIONS)}
    ordered = dict(sorted(results.items(), key=lambda kv: order.get(kv[0], len(order))))
    return ContractReport(
        target=target,
        api_url=api_url,
        start_time=start_time,
        duration_seconds=round(duration_seconds, 3),
        read_only=read_only,
        tests=ordered,
        summary=ContractSummary.of(ordered.values()),
    )


# -- building judgments --------------------------------------------------------------------


def shown(value: Any) -> str:
    """A value as a diff shows it: missing, null, 'text', 12.5, {"a": 1}."""
    if value is _MISSING:
        return "missing"
    if value is None:
        return "null"
    if isinstance(value, str):
        return short(value, 120)
    try:
        text = json.dumps(value, sort_keys=True, default=str)
    except (TypeError, ValueError, RecursionError):
        text = short(value, 120)
    return text if len(text) <= 120 else text[:117] + "..."


def _answer(obs: HttpObservation) -> str:
    if not obs.answered:
        return f"no answer ({obs.failure_text()})"
    kind = f" ({obs.content_type})" if obs.content_type else ""
    return f"HTTP {obs.status_code}{kind}"


def _excerpt(obs: HttpObservation, limit: int = 200) -> str:
    text = " ".join((obs.body_text or "").split())
    if not text:
        return "empty"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _codes(codes: tuple[int, ...]) -> str:
    return " or ".join(str(c) for c in codes)


class _Judge:
    """Collects expected/actual per aspect and one diff line per violation."""

    def __init__(self, *observations: HttpObservation) -> None:
        self.j = Judgment(evidence=[o.label for o in observations])

    def record(self, aspect: str, expected: str, actual: Any) -> None:
        """What the contract expects of an aspect and what was seen, without judging."""
        self.j.expected[aspect] = expected
        self.j.actual[aspect] = actual if isinstance(actual, str) else shown(actual)

    def expect(
        self, aspect: str, expected: str, actual: Any, ok: bool, field: bool = False
    ) -> bool:
        """Record and judge an aspect; `field` names a body field (shown as `name`)."""
        self.record(aspect, expected, actual)
        if not ok:
            name = f"`{aspect}`" if field else aspect
            self.violation(f"{name}: expected {expected}; got {self.j.actual[aspect]}")
        return ok

    def violation(self, line: str) -> None:
        if line not in self.j.diff:
            self.j.diff.append(line)

    def problems(self, problems: Iterable[str]) -> None:
        for problem in problems:
            self.violation(problem)

    def usable(self, obs: HttpObservation, codes: tuple[int, ...], meaning: str) -> bool:
        """Record the status code; an answer that cannot be judged further ends the test.

        No answer, or an error status the contract does not allow for this endpoint, is one
        violation (plus the start of the body), not a list of every field it lacks.
        """
        self.record("HTTP status", meaning, _answer(obs))
        if not obs.answered:
            self.violation(f"HTTP status: expected {_codes(codes)}; got {_answer(obs)}")
            return False
        code = obs.status_code or 0
        if code >= 400 and code not in codes:
            self.violation(f"HTTP status: expected {_codes(codes)}; got {_answer(obs)}")
            self.record("body", "JSON object", _excerpt(obs))
            self.violation(f"body: {_excerpt(obs)}")
            return False
        return True

    def json_object(self, obs: HttpObservation) -> dict[str, Any] | None:
        body, reason = obs.json_body()
        if reason is None and not isinstance(body, dict):
            reason = f"a JSON {type(body).__name__}, not an object"
        if reason is not None:
            got = reason.removeprefix("body is ").removeprefix("body ")
            self.record("body", "a JSON object", got)
            self.violation(f"body: expected a JSON object; got {got}")
            return None
        obj: dict[str, Any] = body
        return obj

    def done(self) -> Judgment:
        return self.j


def _raw(body: dict[str, Any] | None, path: str) -> Any:
    """body["a"]["b"] for "a.b"; _MISSING where absent."""
    value: Any = body if body is not None else {}
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            return _MISSING
        value = value[key]
    return value


def _timestamp_problem(value: Any) -> str | None:
    """Why a value is not an ISO 8601 UTC timestamp string, or None when it is one."""
    if value is _MISSING:
        return f"missing (expected {_TIMESTAMP})"
    if not isinstance(value, str):
        hint = " (epoch seconds?)" if isinstance(value, int | float) else ""
        return f"expected {_TIMESTAMP}; got {shown(value)}{hint}"
    parsed, problem = to_datetime(value)
    if problem is None:
        return None
    why = "no time zone" if parsed is not None else problem
    return f"expected {_TIMESTAMP}; got {shown(value)} ({why})"


def _timestamp(
    j: _Judge, body: dict[str, Any], problems: list[str], key: str = "timestamp"
) -> None:
    """Judge body[key] as a timestamp; the reader's own words on it are replaced."""
    value = _raw(body, key)
    j.record(key, _TIMESTAMP, value)
    problems[:] = [p for p in problems if not p.startswith(f"`{key}`:")]
    why = _timestamp_problem(value)
    if why is not None:
        problems.append(f"`{key}`: {why}")


def _system_info(j: _Judge, info: dict[str, Any], prefix: str) -> None:
    """Numeric, finite cpu_percent and memory_percent (memory within 0..100)."""
    problems: list[str] = []
    fields = FieldReader(info, problems, f"{prefix}.")
    cpu = fields.number("cpu_percent")
    memory = fields.number("memory_percent")
    j.record(f"{prefix}.cpu_percent", "a number >= 0", _raw(info, "cpu_percent"))
    j.record(f"{prefix}.memory_percent", "a number within 0..100", _raw(info, "memory_percent"))
    j.problems(problems)
    if cpu is not None and cpu < 0:
        j.violation(f"`{prefix}.cpu_percent`: expected a number >= 0; got {cpu:g}")
    if memory is not None and not 0 <= memory <= 100:
        j.violation(f"`{prefix}.memory_percent`: expected a number within 0..100; got {memory:g}")


# -- the tests -----------------------------------------------------------------------------


def _health_fields(j: _Judge, body: dict[str, Any], view: HealthView) -> None:
    j.record("status", "healthy, degraded or unhealthy", _raw(body, "status"))
    j.record("version", "a string", _raw(body, "version"))
    j.record(
        "services",
        "mlflow (healthy/degraded/recovering/unhealthy), redis and postgres (healthy/unhealthy)",
        _raw(body, "services"),
    )
    _timestamp(j, body, view.problems)
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


def judge_basic_health(obs: HttpObservation) -> Judgment:
    """GET /health."""
    j = _Judge(obs)
    if not j.usable(obs, (200, 503), "200 healthy or degraded, 503 unhealthy"):
        return j.done()
    view = parse_health(obs)
    body = j.json_object(obs)
    if body is not None:
        _health_fields(j, body, view)
    else:
        j.problems(p for p in view.problems if not p.startswith("body"))
    return j.done()


def judge_detailed_health(obs: HttpObservation) -> Judgment:
    """GET /health?detailed=true: the basic answer plus system_info."""
    j = _Judge(obs)
    if not j.usable(obs, (200, 503), "200 healthy or degraded, 503 unhealthy"):
        return j.done()
    view = parse_health(obs)
    body = j.json_object(obs)
    if body is None:
        j.problems(p for p in view.problems if not p.startswith("body"))
        return j.done()
    _health_fields(j, body, view)
    j.record(
        "system_info",
        "an object with cpu_percent and memory_percent",
        "present" if view.system_info is not None else shown(_raw(body, "system_info")),
    )
    if view.system_info is not None:
        _system_info(j, view.system_info, "system_info")
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
    j = _Judge(obs)
    if not j.usable(obs, (200, 503), "200 can serve traffic (also degraded), 503 cannot"):
        return j.done()
    view = parse_ready(obs)
    body = j.json_object(obs)
    if body is None:
        j.problems(p for p in view.problems if not p.startswith("body"))
        return j.done()
    j.record("ready", "a boolean, true exactly when it can serve traffic", _raw(body, "ready"))
    j.record("can_serve_traffic", "a boolean", _raw(body, "can_serve_traffic"))
    j.record("degraded_mode", "a boolean", _raw(body, "degraded_mode"))
    j.record(
        "checks",
        "an array of {name, passed, critical, degraded_mode?, error?}",
        "; ".join(_check_line(c) for c in view.checks) or shown(_raw(body, "checks")),
    )
    j.problems(view.problems)
    if isinstance(_raw(body, "checks"), list) and not view.checks and not view.problems:
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
    j = _Judge(obs)
    if not j.usable(obs, (200,), "200 while the process runs"):
        return j.done()
    view = parse_live(obs)
    body = j.json_object(obs)
    if body is None:
        j.problems(p for p in view.problems if not p.startswith("body"))
        return j.done()
    j.record("alive", "true", _raw(body, "alive"))
    _timestamp(j, body, view.problems)
    j.problems(view.problems)
    if view.alive is False:
        j.violation("`alive`: expected true; got false")
    return j.done()


def judge_mlflow_health(obs: HttpObservation) -> Judgment:
    """GET /health/mlflow: a known state, with `connected` and the code consistent with it."""
    j = _Judge(obs)
    meaning = "200 connected, 503 breaker OPEN or MLflow down"
    body, _ = obs.json_body()
    # A JSON error answer is judged too: what it says about the breaker matters.
    json_answer = obs.answered and isinstance(body, dict)
    if not json_answer and not j.usable(obs, (200, 503), meaning):
        return j.done()
    j.record("HTTP status", meaning, _answer(obs))
    if obs.status_code not in (200, 503):
        j.violation(f"HTTP status: expected 200 or 503; got {_answer(obs)}")
    body = j.json_object(obs)
    if body is None:
        return j.done()
    problems: list[str] = []
    fields = FieldReader(body, problems)
    connected = fields.boolean("connected")
    raw_state = _raw(body, "circuit_breaker_state")
    j.record("circuit_breaker_state", "CLOSED, OPEN or HALF_OPEN", raw_state)
    j.record("connected", "a boolean; false while OPEN", _raw(body, "connected"))
    state, problem = breaker_state_from(None if raw_state is _MISSING else raw_state)
    if state not in KNOWN_BREAKER_STATES:
        problems.append(f"`circuit_breaker_state`: expected {_STATES}; got {shown(raw_state)}")
    elif problem:
        problems.append(f"`circuit_breaker_state`: {problem}")
    fields.string("error", required=False, nullable=True)
    _timestamp(j, body, problems)
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


def judge_circuit_breaker_details(obs: HttpObservation) -> Judgment:
    """GET /health/mlflow's circuit_breaker_details: present, typed and consistent."""
    j = _Judge(obs)
    # The details are judged in any JSON answer, whatever its status (mlflow_health judges
    # the status); an answer that is not JSON has no details to judge.
    j.record("HTTP status", "200 or 503 (judged by mlflow_health)", _answer(obs))
    if not obs.answered:
        j.violation(f"HTTP status: expected 200 or 503; got {_answer(obs)}")
        return j.done()
    body = j.json_object(obs)
    if body is None:
        return j.done()
    problems: list[str] = []
    details = FieldReader(body, problems).sub("circuit_breaker_details")
    prefix = "circuit_breaker_details"
    j.record(prefix, "an object", "present" if details.present else shown(_raw(body, prefix)))
    if not details.present:
        j.problems(problems)
        return j.done()
    raw = details.data
    j.record(f"{prefix}.state", "CLOSED, OPEN or HALF_OPEN", _raw(body, f"{prefix}.state"))
    j.record(f"{prefix}.failure_count", "an integer >= 0", _raw(body, f"{prefix}.failure_count"))
    j.record(
        f"{prefix}.recovery_attempts", "an integer >= 0", _raw(body, f"{prefix}.recovery_attempts")
    )
    j.record(
        f"{prefix}.time_until_retry",
        "seconds (>= 0) while OPEN; null when CLOSED or HALF_OPEN, or when stuck OPEN after "
        "max_recovery_attempts",
        _raw(body, f"{prefix}.time_until_retry"),
    )
    state, problem = breaker_state_from(raw.get("state"))
    if state not in KNOWN_BREAKER_STATES:
        problems.append(
            f"`{prefix}.state`: expected {_STATES}; got {shown(_raw(body, f'{prefix}.state'))}"
        )
    elif problem:
        problems.append(f"`{prefix}.state`: {problem}")
    top, _ = breaker_state_from(body.get("circuit_breaker_state"))
    if top in KNOWN_BREAKER_STATES and state in KNOWN_BREAKER_STATES and top != state:
        problems.append(f"`{prefix}.state`: expected {top} like circuit_breaker_state; got {state}")
    failures = details.integer("failure_count")
    attempts = details.integer("recovery_attempts")
    for key, value in (("failure_count", failures), ("recovery_attempts", attempts)):
        if value is not None and value < 0:
            problems.append(f"`{prefix}.{key}`: expected an integer >= 0; got {value}")
    if "time_until_retry" not in raw:
        problems.append(f"`{prefix}.time_until_retry`: missing")
    retry = details.number("time_until_retry", required=False, nullable=True)
    raw_retry = raw.get("time_until_retry")
    maximum = details.integer("max_recovery_attempts", required=False)
    stuck = attempts is not None and attempts >= (maximum or DEFAULT_MAX_RECOVERY_ATTEMPTS)
    if state == BreakerState.OPEN:
        if "time_until_retry" in raw and raw_retry is None and not stuck:
            problems.append(
                f"`{prefix}.time_until_retry`: expected seconds until the next trial while OPEN "
                f"(null only when stuck after max_recovery_attempts); got null with "
                f"recovery_attempts {shown(attempts)}"
            )
        if retry is not None and retry < 0:
            problems.append(f"`{prefix}.time_until_retry`: expected >= 0; got {retry:g}")
    elif state in (BreakerState.CLOSED, BreakerState.HALF_OPEN) and raw_retry is not None:
        problems.append(
            f"`{prefix}.time_until_retry`: expected null while {state}; got {shown(raw_retry)}"
        )
    for key in ("last_failure_time", "last_success_time"):
        value = raw.get(key)
        if value is not None:
            j.record(f"{prefix}.{key}", f"{_TIMESTAMP} or null", value)
            why = _timestamp_problem(value)
            if why:
                problems.append(f"`{prefix}.{key}`: {why}")
    connected = body.get("connected")
    if connected is False and state == BreakerState.CLOSED and failures == 0:
        problems.append(
            f"`{prefix}.failure_count`: expected >= 1 after this answer's failed MLflow call "
            "(connected false, breaker CLOSED); got 0: the state was read before the failure "
            "was counted"
        )
    j.problems(problems)
    return j.done()


def judge_service_status(obs: HttpObservation) -> Judgment:
    """GET /health/status."""
    j = _Judge(obs)
    if not j.usable(obs, (200,), "200"):
        return j.done()
    view = parse_health_status(obs)
    body = j.json_object(obs)
    if body is None:
        j.problems(p for p in view.problems if not p.startswith("body"))
        return j.done()
    j.record("service_name", "a non-empty string", _raw(body, "service_name"))
    j.record("overall_health", "healthy, degraded or unhealthy", _raw(body, "overall_health"))
    j.record("mlflow.status", "present", _raw(body, "mlflow.status"))
    j.record(
        "mlflow.circuit_breaker.state",
        "CLOSED, OPEN or HALF_OPEN",
        _raw(body, "mlflow.circuit_breaker.state"),
    )
    _timestamp(j, body, view.problems)
    j.problems(view.problems)
    if view.service_name is not None and not view.service_name.strip():
        j.violation("`service_name`: expected a non-empty string; got ''")
    breaker = _raw(body, "mlflow.circuit_breaker")
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
        _system_info(j, view.system_info, "system_info")
    return j.done()


_PROMETHEUS_TYPES = ("text/plain", "application/openmetrics-text")


def judge_metrics(obs: HttpObservation) -> Judgment:
    """GET /metrics: Prometheus text with the breaker series and http_requests_total."""
    j = _Judge(obs)
    if not j.usable(obs, (200,), "200 with Prometheus text"):
        return j.done()
    if obs.status_code != 200:
        j.violation(f"HTTP status: expected 200; got {_answer(obs)}")
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
        j.violation(f"body: expected Prometheus text; got {_excerpt(obs, 80)}")
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
    j = _Judge(health, ready, mlflow, metrics)
    hv, rv = parse_health(health), parse_ready(ready)
    mv = parse_metrics(metrics.body_text) if metrics.status_code == 200 else None
    state, connected, source = _breaker_evidence(mlflow, mv, rv)
    j.record(
        "breaker", "read from /health/mlflow, else /metrics", f"{state or 'unknown'} ({source})"
    )
    j.record("GET /health", "a JSON answer", f"{_answer(health)} status={shown(hv.status)}")
    j.record(
        "GET /ready",
        "a JSON answer",
        f"{_answer(ready)} can_serve_traffic={shown(rv.can_serve_traffic)} "
        f"degraded_mode={shown(rv.degraded_mode)}",
    )
    usable = True
    for obs, view in ((health, hv), (ready, rv)):
        if not view.body_is_json:
            why = _answer(obs) if not obs.answered else f"{_answer(obs)}, body not JSON"
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
        j.expect(
            "GET /health HTTP status",
            f"200 because {why}",
            _answer(health),
            health.status_code == 200,
        )
        j.expect(
            "GET /health status",
            f"'degraded' because {why}",
            shown(hv.status),
            hv.status == "degraded",
        )
        if hv.service("mlflow") is not None:
            j.expect(
                "GET /health services.mlflow",
                f"not 'healthy' because {why}",
                shown(hv.service("mlflow")),
                hv.service("mlflow") != "healthy",
            )
        j.expect(
            "GET /ready HTTP status",
            f"200 (still serving) because {why}",
            _answer(ready),
            ready.status_code == 200,
        )
        j.expect(
            "GET /ready degraded_mode",
            f"true because {why}",
            shown(rv.degraded_mode),
            rv.degraded_mode is True,
        )
        check = rv.check("mlflow")
        if check is not None:
            j.expect(
                "GET /ready mlflow check passed",
                f"false because {why}",
                shown(check.passed),
                check.passed is False,
            )
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


def judge_reset_refused(obs: HttpObservation, credentials: str) -> Judgment:
    """POST /health/mlflow/reset sent `credentials` ("without a key", "with a wrong key")."""
    j = _Judge(obs)
    expected = "401 or 403 (refused)"
    if not obs.answered:
        j.expect("HTTP status", expected, _answer(obs), False)
        return j.done()
    code = obs.status_code or 0
    if j.expect("HTTP status", expected, _answer(obs), code in (401, 403)):
        return j.done()
    if 200 <= code < 300:
        j.violation(f"the reset was accepted {credentials}: anyone can reset the breaker")
    j.record("body", "an error answer", _excerpt(obs))
    j.violation(f"body: {_excerpt(obs)}")
    return j.done()


# -- rendering -----------------------------------------------------------------------------

_MARK = {Outcome.PASSED: "PASS", Outcome.FAILED: "FAIL", Outcome.SKIPPED: "SKIP"}


def _ms(value: float | None) -> str:
    return "" if value is None else f"{value:.0f}"


def tests_table(report: ContractReport) -> list[dict[str, Any]]:
    """Rows for a table artifact: test, outcome, duration_ms, diff (or description)."""
    return [
        {
            "test": name,
            "outcome": r.outcome.value,
            "duration_ms": None if r.duration_ms is None else round(r.duration_ms, 1),
            "evidence": ", ".join(r.evidence),
            "diff": " | ".join(r.diff) if r.diff else r.actual.get("skipped", "as expected"),
        }
        for name, r in report.tests.items()
    ]


def _cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def report_markdown(report: ContractReport) -> str:
    """Outcome first, then the table, then expected/actual/diff of each failure."""
    s = report.summary
    lines = [
        f"# {report.state_name}: {report.target}",
        "",
        f"**{s.passed}/{s.total_tests} contract tests passed** ({s.success_rate:g}%)"
        + (f", {s.skipped} skipped (read-only run)" if s.skipped else "")
        + f" against `{report.api_url}` at {report.start_time} in "
        f"{report.duration_seconds:.1f} s",
        "",
        "| test | outcome | duration (ms) | diff |",
        "|---|---|---:|---|",
    ]
    for row in tests_table(report):
        lines.append(
            f"| {_cell(row['test'])} | {row['outcome']} | {_ms(row['duration_ms'])} | "
            f"{_cell(str(row['diff']))} |"
        )
    failed = [r for r in report.tests.values() if r.outcome is Outcome.FAILED]
    if failed:
        lines += ["", "## Failures"]
    for r in failed:
        lines += ["", f"### {r.name}", "", r.description, ""]
        if r.evidence:
            lines += [f"Evidence: {', '.join(r.evidence)}", ""]
        lines += ["```diff", *(f"- {line}" for line in r.diff), "```", ""]
        lines += ["| aspect | expected | actual |", "|---|---|---|"]
        for aspect, expected in r.expected.items():
            actual = r.actual.get(aspect, "")
            lines.append(f"| {_cell(aspect)} | {_cell(expected)} | {_cell(actual)} |")
    return "\n".join(lines) + "\n"


def human_summary(report: ContractReport, verbose: bool = False) -> str:
    """Terminal output: one line per test, the diff under each failure, the outcome."""
    width = max((len(name) for name in report.tests), default=10)
    lines = [
        f"Health contract of {report.target} at {report.api_url} ({report.start_time})",
        "",
    ]
    for name, r in report.tests.items():
        took = f"{_ms(r.duration_ms):>6} ms" if r.duration_ms is not None else ""
        lines.append(f"  [{_MARK[r.outcome]}] {name:<{width}}  {took}".rstrip())
        for line in r.diff:
            lines.append(f"         - {line}")
        if r.outcome is Outcome.SKIPPED:
            lines.append(f"         {r.actual.get('skipped', '')}")
        if verbose and r.outcome is Outcome.PASSED:
            for aspect, actual in r.actual.items():
                lines.append(f"         {aspect}: {actual}")
    s = report.summary
    skipped = f", {s.skipped} skipped" if s.skipped else ""
    lines += [
        "",
        f"Result: {report.state_name.upper()} - {s.passed}/{s.total_tests} passed "
        f"({s.success_rate:g}%), {s.failed} failed{skipped} in {report.duration_seconds:.1f} s",
    ]
    return "\n".join(lines) + "\n"
