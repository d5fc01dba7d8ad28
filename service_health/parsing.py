"""Tolerant readers of the health contract (docs/health-contract.md). They never raise.

Unknown fields are ignored, missing or wrong-typed ones become None with a problem, unknown
enum values are kept as sent with a problem, naive timestamps are taken as UTC.
"""

from __future__ import annotations

import math
import re
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from service_health.fields import FieldReader, short, type_name
from service_health.models import BreakerState
from service_health.observations import HttpObservation
from service_health.views import (
    EndpointView,
    HealthView,
    LiveView,
    MetricsView,
    MlflowHealthView,
    MlflowSearchView,
    ReadyCheck,
    ReadyView,
    StatusView,
)

__all__ = [
    "HealthView",
    "LiveView",
    "MetricsView",
    "MlflowHealthView",
    "MlflowSearchView",
    "ReadyCheck",
    "ReadyView",
    "StatusView",
    "breaker_state_from",
    "parse_health",
    "parse_health_status",
    "parse_live",
    "parse_metrics",
    "parse_mlflow_health",
    "parse_mlflow_search",
    "parse_ready",
]

HEALTH_STATES = ("healthy", "degraded", "unhealthy")
SERVICE_STATES = {
    "mlflow": ("healthy", "degraded", "recovering", "unhealthy"),
    "redis": ("healthy", "unhealthy"),
    "postgres": ("healthy", "unhealthy"),
}
KNOWN_BREAKER_STATES = ("CLOSED", "OPEN", "HALF_OPEN")
_LEGACY_SERVICE_KEYS = {"api", "dependency_checks"}

# Numeric encoding of the breaker state in /metrics when its HELP text does not say: the
# contract's. The deployed version documents another one in its HELP text, which wins.
CONTRACT_STATE_BY_VALUE = {0: BreakerState.CLOSED, 1: BreakerState.OPEN, 2: BreakerState.HALF_OPEN}
# "0=CLOSED", "1: HALF_OPEN", "2 OPEN": HALF_OPEN first, so OPEN does not match inside it.
_HELP_STATE = re.compile(r"\b(\d+)\s*[=:]?\s*(HALF[_ -]?OPEN|CLOSED|OPEN)\b", re.IGNORECASE)

# Series the deployed version exposes (docs/health-contract.md, "Observed in a deployed version").
LEGACY_METRIC_NAMES = (
    "mlflow_circuit_breaker_state",
    "mlflow_circuit_breaker_failures_total",
    "mlflow_connection_status",
    "mlflow_connection_attempts_total",
    "mlflow_connection_failures_total",
    "mlflow_response_time_seconds",
    "mlflow_info_info",
)


def breaker_state_from(value: Any) -> tuple[BreakerState | str | None, str | None]:
    """Normalise a breaker state value: (state, problem). Unknown values are kept raw."""
    if value is None:
        return None, None
    if not isinstance(value, str):
        return None, f"expected string, got {type_name(value)}"
    if value in KNOWN_BREAKER_STATES or value == BreakerState.UNKNOWN:
        return BreakerState(value), None
    canonical = value.strip().upper().replace("-", "_").replace(" ", "_")
    # Enum reprs such as "CircuitState.OPEN" carry the state after the dot.
    canonical = canonical.rsplit(".", 1)[-1]
    if canonical in KNOWN_BREAKER_STATES:
        return BreakerState(canonical), f"non-canonical state {short(value)} read as {canonical}"
    return value, f"unknown breaker state {short(value)}"


def _start(
    view: EndpointView, obs: HttpObservation, expected_codes: tuple[int, ...]
) -> FieldReader | None:
    """Common opening: status code and JSON body. Returns a reader of the body object."""
    view.status_code = obs.status_code
    view.answered = obs.answered
    if not obs.answered:
        view.problems.append(f"no answer ({obs.failure_text()})")
        return None
    if obs.status_code not in expected_codes:
        allowed = " or ".join(str(c) for c in expected_codes)
        view.problems.append(f"HTTP {obs.status_code} (contract: {allowed})")
    if (encoding := obs.encoding_problem()) is not None:
        view.problems.append(encoding)
    body, reason = obs.json_body()
    if reason is not None:
        view.problems.append(reason)
        return None
    view.body_is_json = True
    if not isinstance(body, dict):
        view.problems.append(f"body is a JSON {type_name(body)}, expected an object")
        return None
    return FieldReader(body, view.problems)


def parse_health(obs: HttpObservation) -> HealthView:
    """GET /health (and /health?detailed=true, detected from the URL)."""
    view = HealthView()
    body = _start(view, obs, (200, 503))
    if body is None:
        return view
    view.status = body.choice("status", HEALTH_STATES)
    view.version = body.string("version")
    view.timestamp = body.timestamp("timestamp")
    services = body.obj("services")
    for key, value in (services or {}).items():
        if not isinstance(value, str):
            view.problems.append(f"`services.{key}`: expected string, got {type_name(value)}")
            continue
        view.services[key] = value
        allowed = SERVICE_STATES.get(key)
        if allowed is not None and value not in allowed:
            view.problems.append(f"`services.{key}`: unknown value {short(value)}")
    missing = [k for k in SERVICE_STATES if k not in view.services]
    view.lightweight = services is not None and len(missing) == len(SERVICE_STATES)
    if view.lightweight:
        present = ", ".join(sorted(view.services)) or "nothing"
        view.problems.append(
            f"`services` names no dependency (has {present}): lightweight answer that "
            "ignores mlflow, redis and postgres"
        )
    elif missing:
        view.problems.append(f"`services` lacks {', '.join(missing)}")
    if "detailed=true" in obs.path.lower():
        view.system_info = body.obj("system_info")
    else:
        view.system_info = body.obj("system_info", required=False)
    _check_health_consistency(view)
    return view


def _check_health_consistency(view: HealthView) -> None:
    if view.status_code == 503 and view.status not in (None, "unhealthy"):
        view.problems.append(f"HTTP 503 but `status` is {view.status!r}")
    if view.status_code == 200 and view.status == "unhealthy":
        view.problems.append("`status` is 'unhealthy' but HTTP 200 (contract: 503)")
    bad = [k for k, v in view.services.items() if k in SERVICE_STATES and v != "healthy"]
    if view.status == "healthy" and bad:
        view.problems.append(f"`status` is 'healthy' although {', '.join(bad)} not healthy")


def parse_ready(obs: HttpObservation) -> ReadyView:
    """GET /ready."""
    view = ReadyView()
    body = _start(view, obs, (200, 503))
    if body is None:
        return view
    view.ready = body.boolean("ready")
    view.can_serve_traffic = body.boolean("can_serve_traffic")
    view.degraded_mode = body.boolean("degraded_mode")
    raw_checks = body.raw("checks")
    if isinstance(raw_checks, list):
        for index, item in enumerate(raw_checks):
            check = _ready_check(item, f"checks[{index}].", None, view.problems)
            if check is not None:
                view.checks.append(check)
    elif isinstance(raw_checks, dict):
        view.problems.append("`checks`: an object keyed by name (contract: array)")
        for name, item in raw_checks.items():
            check = _ready_check(item, f"checks.{name}.", str(name), view.problems)
            if check is not None:
                view.checks.append(check)
    else:
        body.array("checks")  # records the problem: missing or wrong type
    if view.status_code == 503 and view.can_serve_traffic is True:
        view.problems.append("HTTP 503 but `can_serve_traffic` is true")
    if view.status_code == 200 and view.can_serve_traffic is False:
        view.problems.append("HTTP 200 but `can_serve_traffic` is false (contract: 503)")
    return view


def _ready_check(
    item: Any, prefix: str, name: str | None, problems: list[str]
) -> ReadyCheck | None:
    if isinstance(item, bool) and name is not None:
        return ReadyCheck(name=name, passed=item)
    if not isinstance(item, dict):
        problems.append(f"`{prefix.rstrip('.')}`: expected object, got {type_name(item)}")
        return None
    fields = FieldReader(item, problems, prefix)
    return ReadyCheck(
        name=fields.string("name", required=name is None) or name,
        passed=fields.boolean("passed"),
        critical=fields.boolean("critical"),
        degraded_mode=fields.boolean("degraded_mode", required=False),
        error=fields.string("error", required=False, nullable=True),
    )


def parse_live(obs: HttpObservation) -> LiveView:
    """GET /live."""
    view = LiveView()
    body = _start(view, obs, (200,))
    if body is None:
        return view
    view.alive = body.boolean("alive")
    view.timestamp = body.timestamp("timestamp")
    view.uptime = body.number("uptime", required=False)
    view.memory_usage_mb = body.number("memory_usage_mb", required=False)
    return view


def parse_mlflow_health(obs: HttpObservation) -> MlflowHealthView:
    """GET /health/mlflow, including the deployed version's 500 with state "UNKNOWN"."""
    view = MlflowHealthView()
    body = _start(view, obs, (200, 503))
    if body is None:
        return view
    view.connected = body.boolean("connected")
    view.error = body.string("error", required=False, nullable=True)
    view.timestamp = body.timestamp("timestamp")
    top, problem = breaker_state_from(body.raw("circuit_breaker_state"))
    if problem:
        view.problems.append(f"`circuit_breaker_state`: {problem}")
    elif not body.has("circuit_breaker_state"):
        view.problems.append("`circuit_breaker_state`: missing")
    elif top is None:
        view.problems.append("`circuit_breaker_state`: is null")
    details = body.sub("circuit_breaker_details")
    inner, problem = breaker_state_from(details.raw("state"))
    if problem:
        view.problems.append(f"`circuit_breaker_details.state`: {problem}")
    elif details.present and inner is None:
        view.problems.append(
            "`circuit_breaker_details.state`: " + ("is null" if details.has("state") else "missing")
        )
    if top is not None and inner is not None and top != inner:
        view.problems.append(f"breaker state disagrees: {top} at top level, {inner} in details")
    view.breaker_state = top if top is not None else inner
    view.failure_count = details.integer("failure_count", required=details.present)
    view.time_until_retry = details.number(
        "time_until_retry", required=details.present, nullable=True
    )
    view.recovery_attempts = details.integer("recovery_attempts", required=details.present)
    view.consecutive_successes = details.integer("consecutive_successes", required=False)
    view.failure_threshold = details.integer("failure_threshold", required=False)
    view.recovery_timeout = details.number("recovery_timeout", required=False)
    view.state_readable = view.breaker_state in KNOWN_BREAKER_STATES
    _check_mlflow_consistency(view)
    return view


def _check_mlflow_consistency(view: MlflowHealthView) -> None:
    state = view.breaker_state
    if state == BreakerState.UNKNOWN:
        view.problems.append("breaker state reported as UNKNOWN")
    if state in ("CLOSED", "HALF_OPEN") and view.time_until_retry is not None:
        view.problems.append(
            f"`time_until_retry` is {view.time_until_retry:g} while {state} (contract: null)"
        )
    if view.status_code == 200 and view.connected is False:
        view.problems.append("HTTP 200 but `connected` is false (contract: 503)")
    if view.status_code == 503 and view.connected is True and state != BreakerState.OPEN:
        view.problems.append("HTTP 503 although connected and breaker not OPEN")


def parse_health_status(obs: HttpObservation) -> StatusView:
    """GET /health/status."""
    view = StatusView()
    body = _start(view, obs, (200,))
    if body is None:
        if view.answered and not view.body_is_json and obs.body_text:
            # The deployed version returns its validation error's text here; keep the start.
            view.error_text = obs.body_text.strip()[:300]
        return view
    view.service_name = body.string("service_name")
    view.overall_health = body.choice("overall_health", HEALTH_STATES)
    view.system_info = body.obj("system_info")
    view.timestamp = body.timestamp("timestamp")
    view.mlflow = body.obj("mlflow")
    mlflow = FieldReader(view.mlflow, view.problems, "mlflow.")
    if mlflow.present and not mlflow.has("status"):
        view.problems.append("`mlflow.status`: missing")
    breaker = mlflow.sub("circuit_breaker", required=mlflow.present)
    raw_state = breaker.raw("state")
    if raw_state is None:
        raw_state = breaker.raw("circuit_breaker_state")
    state, problem = breaker_state_from(raw_state)
    if problem:
        view.problems.append(f"`mlflow.circuit_breaker.state`: {problem}")
    view.breaker_state = state
    return view


def parse_mlflow_search(obs: HttpObservation) -> MlflowSearchView:
    """MLflow's POST /api/2.0/mlflow/experiments/search answer."""
    view = MlflowSearchView()
    body = _start(view, obs, (200,))
    if body is None:
        return view
    if body.has("error_code"):
        view.error_code = body.string("error_code")
        view.message = body.string("message", required=False)
        return view
    # MLflow leaves empty repeated fields out, so `{}` means "no experiments".
    experiments = body.array("experiments", required=False)
    if experiments is None:
        view.experiment_count = 0 if not body.has("experiments") else None
        return view
    view.experiment_count = len(experiments)
    for index, item in enumerate(experiments):
        name = FieldReader(item, view.problems, f"experiments[{index}].").string("name")
        if name is not None:
            view.experiment_names.append(name)
    return view


def parse_metrics(text: str | None) -> MetricsView:
    """Prometheus text from GET /metrics. Never raises, even on garbage."""
    view = MetricsView()
    if not text or not text.strip():
        view.problems.append("no metrics text")
        return view
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    try:
        for family in text_string_to_metric_families(text):
            view.families.append(family.name)
            if family.name == "mlflow_circuit_breaker_state":
                view.breaker_state_mapping = state_mapping_from_help(family.documentation)
            for sample in family.samples:
                # The parser yields int for "7" and float for "7.0"; compare as floats.
                value = float(sample.value)
                samples.setdefault(sample.name, []).append((dict(sample.labels), value))
    except Exception as exc:  # the parser raises several exception types on bad input
        view.problems.append(
            f"metrics text unparseable after {len(view.families)} families: "
            f"{type(exc).__name__}: {short(str(exc), 120)}"
        )
    view.parsed = bool(view.families)
    _read_breaker_metrics(view, samples)
    view.has_http_requests_total = "http_requests_total" in samples
    for labels, value in samples.get("http_requests_total", []):
        code = labels.get("status") or labels.get("status_code") or labels.get("code") or ""
        klass = f"{code[0]}xx" if code[:1].isdigit() else "other"
        if math.isfinite(value):
            view.http_requests_by_status_class[klass] = (
                view.http_requests_by_status_class.get(klass, 0.0) + value
            )
    if not view.has_http_requests_total and view.parsed:
        view.problems.append("`http_requests_total` missing")
    view.legacy_names = [name for name in LEGACY_METRIC_NAMES if name in samples]
    for labels, _ in samples.get("mlflow_info_info", [])[:1]:
        view.mlflow_info_labels = labels
    return view


def state_mapping_from_help(help_text: str | None) -> dict[int, BreakerState] | None:
    """The value -> state mapping a gauge's HELP text documents, e.g. "(0=CLOSED,
    1=HALF_OPEN, 2=OPEN)"; None unless it names at least two states unambiguously."""
    mapping: dict[int, BreakerState] = {}
    for number, name in _HELP_STATE.findall(help_text or ""):
        state = BreakerState(re.sub(r"[ -]", "_", name.upper()))
        if mapping.get(int(number), state) != state or state in mapping.values():
            return None  # one value documented twice, or one state under two values
        mapping[int(number)] = state
    return mapping if len(mapping) >= 2 else None


def _first_value(
    samples: dict[str, list[tuple[dict[str, str], float]]], *names: str
) -> float | None:
    for name in names:
        for _, value in samples.get(name, []):
            if math.isfinite(value):
                return value
    return None


def _read_breaker_metrics(
    view: MetricsView, samples: dict[str, list[tuple[dict[str, str], float]]]
) -> None:
    state_samples = samples.get("mlflow_circuit_breaker_state", [])
    labelled = [
        (labels.get("mlflow_circuit_breaker_state") or labels.get("state"), value)
        for labels, value in state_samples
    ]
    current = [name for name, value in labelled if name is not None and value == 1]
    if current:
        # Enum-style series: one sample per state, the value 1 marking the current one.
        state, problem = breaker_state_from(current[0])
        view.breaker_state = state
        if problem:
            view.problems.append(f"`mlflow_circuit_breaker_state`: {problem}")
    elif state_samples:
        if len(state_samples) > 1:
            view.problems.append(
                f"`mlflow_circuit_breaker_state` has {len(state_samples)} samples; "
                "reading the first"
            )
        value = state_samples[0][1]
        view.breaker_state_value = value if math.isfinite(value) else None
        by_value = view.breaker_state_mapping or CONTRACT_STATE_BY_VALUE
        if math.isfinite(value) and value.is_integer() and int(value) in by_value:
            view.breaker_state = by_value[int(value)]
        else:
            view.breaker_state = short(value)
            view.problems.append(f"`mlflow_circuit_breaker_state`: unknown value {short(value)}")
    if "mlflow_circuit_breaker_state" not in samples and view.parsed:
        view.problems.append("`mlflow_circuit_breaker_state` missing")
    view.breaker_failures = _first_value(
        samples,
        "mlflow_circuit_breaker_failures",
        "mlflow_circuit_breaker_failures_total",
        "mlflow_circuit_breaker_failure_count",
    )
    view.breaker_recovery_attempts = _first_value(
        samples,
        "mlflow_circuit_breaker_recovery_attempts",
        "mlflow_circuit_breaker_recovery_attempts_total",
    )
    view.connection_status = _first_value(samples, "mlflow_connection_status")
