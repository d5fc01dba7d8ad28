"""Property tests: no reader, and no judgment built on them, raises on any input."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service_health.assessment import (
    assess_api_connectivity,
    assess_circuit_breaker,
    assess_database_from_service,
    assess_health_endpoints,
    assess_metrics,
    assess_mlflow,
    assess_redis_from_service,
)
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
from service_health.views import EndpointView
from tests.domain import bodies as b

FAST = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Whole judgments cost more per example; fewer still cover the branches.
SLOWER = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from(
        [
            "OPEN",
            "CLOSED",
            "HALF_OPEN",
            "UNKNOWN",
            "healthy",
            "unhealthy",
            "degraded",
            "2024-01-01T12:00:00",
            "2024-01-01T12:00:00Z",
            "database",
            "mlflow",
            "redis",
            "postgres",
        ]
    )
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
CONTRACT_KEYS = [
    "status",
    "version",
    "services",
    "timestamp",
    "system_info",
    "ready",
    "can_serve_traffic",
    "degraded_mode",
    "checks",
    "alive",
    "uptime",
    "connected",
    "circuit_breaker_state",
    "circuit_breaker_details",
    "error",
    "service_name",
    "overall_health",
    "mlflow",
    "experiments",
    "error_code",
    "message",
    "name",
    "passed",
    "critical",
    "state",
    "failure_count",
    "time_until_retry",
    "recovery_attempts",
    "mlflow",
    "postgres",
    "redis",
]
# Objects shaped like the contract's, with arbitrary values at every level.
contract_like = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from(CONTRACT_KEYS), children, max_size=6)
    ),
    max_leaves=25,
)
status_codes = st.sampled_from([200, 500, 503, 404, 302, None])
PARSERS: list[Callable[[HttpObservation], EndpointView]] = [
    parse_health,
    parse_ready,
    parse_live,
    parse_mlflow_health,
    parse_health_status,
    parse_mlflow_search,
]
decoded_bytes = st.binary(max_size=300).map(lambda raw: raw.decode("utf-8", errors="replace"))


def _obs(path: str, code: int | None, text: str | None) -> HttpObservation:
    if code is None:
        return b.no_answer(path, ErrorKind.RESET)
    return HttpObservation(url=f"http://h{path}", status_code=code, body_text=text, elapsed_ms=10.0)


def _all_parsers_survive(obs: HttpObservation) -> None:
    for parse in PARSERS:
        view = parse(obs)
        assert isinstance(view.problems, list)
        view.model_dump_json()  # the view is serialisable, whatever came in


@FAST
@given(value=json_values | contract_like, code=status_codes)
def test_parsers_never_raise_on_arbitrary_json(value: Any, code: int | None) -> None:
    _all_parsers_survive(_obs("/health?detailed=true", code, json.dumps(value)))


@FAST
@given(text=st.text(max_size=300) | decoded_bytes, code=status_codes)
def test_parsers_never_raise_on_arbitrary_text(text: str, code: int | None) -> None:
    _all_parsers_survive(_obs("/ready", code, text))
    parse_metrics(text)


metric_lines = st.lists(
    st.one_of(
        st.sampled_from(
            [
                "# TYPE mlflow_circuit_breaker_state gauge",
                "# HELP x y",
                "# TYPE http_requests counter",
                "# EOF",
                "",
            ]
        ),
        st.builds(
            lambda name, labels, value: f"{name}{labels} {value}",
            st.sampled_from(
                [
                    "mlflow_circuit_breaker_state",
                    "http_requests_total",
                    "mlflow_circuit_breaker_failures",
                    "x",
                    "mlflow_info_info",
                ]
            ),
            st.sampled_from(
                ["", '{status="500"}', '{mlflow_circuit_breaker_state="OPEN"}', '{a="b"', "{}"]
            ),
            st.sampled_from(["0", "1", "2", "7", "NaN", "+Inf", "-1e400", "abc", "1e999"]),
        ),
        st.text(max_size=30),
    ),
    max_size=12,
).map("\n".join)


@FAST
@given(text=metric_lines)
def test_parse_metrics_never_raises_on_metric_like_text(text: str) -> None:
    view = parse_metrics(text)
    view.model_dump_json()


@SLOWER
@given(
    bodies=st.dictionaries(
        st.sampled_from(
            [
                "/health",
                "/health?detailed=true",
                "/ready",
                "/live",
                "/health/mlflow",
                "/health/status",
                "/metrics",
            ]
        ),
        st.tuples(status_codes, (json_values | contract_like).map(json.dumps) | decoded_bytes),
        max_size=7,
    )
)
def test_judgment_never_raises_on_arbitrary_answers(
    bodies: dict[str, tuple[int | None, str]],
) -> None:
    endpoints = {path: _obs(path, code, text) for path, (code, text) in bodies.items()}
    results = [assess_health_endpoints(endpoints)]
    ready, metrics, health = (endpoints.get(p) for p in ("/ready", "/metrics", "/health"))
    mlflow = {k: v for k, v in endpoints.items() if k == "/health/mlflow"}
    results.append(assess_circuit_breaker(mlflow, ready, metrics, partial=True))
    results.append(assess_database_from_service(health, ready))
    results.append(assess_redis_from_service(health, ready))
    results.append(assess_metrics(metrics))
    results.append(assess_mlflow(health, ready))
    if health is not None:
        results.append(assess_api_connectivity(health))
    for result in results:
        result.model_dump_json()
        result.seed_json()
