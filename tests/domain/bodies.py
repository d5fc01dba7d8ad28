"""Observations as the contract's service and the deployed version answer them."""

from __future__ import annotations

import json
from typing import Any

from service_health.observations import AwsObservation, ErrorKind, HttpObservation

BASE = "https://api.example.test"
TS = "2024-01-01T12:00:00Z"
NAIVE_TS = "2024-01-01T12:00:00.123456"


def http(
    path: str,
    status: int | None = 200,
    body: Any = None,
    *,
    text: str | None = None,
    elapsed_ms: float = 20.0,
    method: str = "GET",
    error: str | None = None,
    kind: ErrorKind | None = None,
    replica: str | None = None,
    content_type: str = "application/json",
) -> HttpObservation:
    if body is not None:
        text = json.dumps(body)
    host = f"http://{replica}" if replica else BASE
    return HttpObservation(
        url=f"{host}{path}",
        method=method,
        status_code=status,
        elapsed_ms=elapsed_ms,
        content_type=content_type if status is not None else None,
        body_text=text,
        error=error,
        error_kind=kind,
        replica=replica,
    )


def no_answer(path: str, kind: ErrorKind = ErrorKind.CONNECT, replica: str | None = None):
    messages = {
        ErrorKind.CONNECT: "All connection attempts failed",
        ErrorKind.TIMEOUT: "timed out after 5.0 s",
        ErrorKind.RESET: "Connection reset by peer",
    }
    return http(
        path, None, error=messages.get(kind, "boom"), kind=kind, replica=replica, elapsed_ms=5.0
    )


# --- contract answers ---------------------------------------------------------------------


def health(
    status: str = "healthy",
    mlflow: str = "healthy",
    redis: str = "healthy",
    postgres: str = "healthy",
    code: int | None = None,
) -> HttpObservation:
    body = {
        "status": status,
        "version": "1.4.2",
        "services": {"mlflow": mlflow, "redis": redis, "postgres": postgres},
        "timestamp": TS,
    }
    return http("/health", code or (503 if status == "unhealthy" else 200), body)


def ready_check(
    name: str,
    passed: bool,
    critical: bool,
    error: str | None = None,
    degraded_mode: bool | None = None,
) -> dict[str, Any]:
    check: dict[str, Any] = {"name": name, "passed": passed, "critical": critical}
    if error is not None:
        check["error"] = error
    if degraded_mode is not None:
        check["degraded_mode"] = degraded_mode
    return check


def ready(
    database: bool = True,
    mlflow: bool = True,
    breaker_open: bool = False,
    extra: list[dict[str, Any]] | None = None,
) -> HttpObservation:
    checks = [ready_check("database", database, True, None if database else "connection refused")]
    if breaker_open:
        checks.append(
            ready_check(
                "mlflow",
                False,
                False,
                "Circuit breaker open - MLflow temporarily unavailable",
                True,
            )
        )
    elif not mlflow:
        checks.append(ready_check("mlflow", False, False, "MLflow unreachable", True))
    else:
        checks.append(ready_check("mlflow", True, False))
    checks += extra or []
    can_serve = database
    degraded = breaker_open or not mlflow
    body = {
        "ready": can_serve and not degraded,
        "can_serve_traffic": can_serve,
        "degraded_mode": degraded,
        "checks": checks,
    }
    return http("/ready", 200 if can_serve else 503, body)


def live(elapsed_ms: float = 5.0) -> HttpObservation:
    return http("/live", 200, {"alive": True, "timestamp": TS}, elapsed_ms=elapsed_ms)


def mlflow_health(
    state: str = "CLOSED",
    *,
    failure_count: int = 0,
    time_until_retry: float | None = None,
    recovery_attempts: int = 0,
    replica: str | None = None,
    code: int | None = None,
) -> HttpObservation:
    connected = state == "CLOSED"
    body = {
        "connected": connected,
        "circuit_breaker_state": state,
        "circuit_breaker_details": {
            "state": state,
            "failure_count": failure_count,
            "time_until_retry": time_until_retry,
            "recovery_attempts": recovery_attempts,
        },
        "timestamp": TS,
    }
    if not connected:
        body["error"] = "Circuit breaker is OPEN - MLflow unavailable"
    return http("/health/mlflow", code or (200 if connected else 503), body, replica=replica)


def health_status(overall: str = "healthy", state: str = "CLOSED") -> HttpObservation:
    body = {
        "service_name": "hokusai-registry",
        "overall_health": overall,
        "mlflow": {"status": {"connected": True}, "circuit_breaker": {"state": state}},
        "system_info": {"cpu_percent": 12.5, "memory_percent": 40.0},
        "timestamp": TS,
    }
    return http("/health/status", 200, body)


def metrics_text(state: int = 0, failures: int = 0, with_http: bool = True) -> str:
    lines = [
        "# HELP process_cpu_seconds_total Total user and system CPU time.",
        "# TYPE process_cpu_seconds_total counter",
        "process_cpu_seconds_total 1.5",
        "# HELP mlflow_circuit_breaker_state 0 closed, 1 open, 2 half-open",
        "# TYPE mlflow_circuit_breaker_state gauge",
        f"mlflow_circuit_breaker_state {state}.0",
        "# TYPE mlflow_circuit_breaker_failures gauge",
        f"mlflow_circuit_breaker_failures {failures}.0",
        "# TYPE mlflow_circuit_breaker_recovery_attempts gauge",
        "mlflow_circuit_breaker_recovery_attempts 0.0",
    ]
    if with_http:
        lines += [
            "# TYPE http_requests_total counter",
            'http_requests_total{method="GET",path="/health",status="200"} 10.0',
            'http_requests_total{method="GET",path="/ready",status="503"} 2.0',
        ]
    return "\n".join(lines) + "\n"


def metrics(state: int = 0, failures: int = 0) -> HttpObservation:
    return http("/metrics", 200, text=metrics_text(state, failures), content_type="text/plain")


# --- the deployed version (docs/health-contract.md, "Observed in a deployed version") -------------


def legacy_health() -> HttpObservation:
    body = {
        "status": "healthy",
        "services": {"api": "healthy", "dependency_checks": "skipped"},
        "timestamp": NAIVE_TS,
    }
    return http("/health", 200, body)


LEGACY_VALIDATION_ERROR = (
    "1 validation error for HealthStatusResponse\nmlflow.circuit_breaker\n  Input should be a "
    "valid dictionary [type=dict_type]"
)


def legacy_500(path: str) -> HttpObservation:
    return http(path, 500, text=LEGACY_VALIDATION_ERROR, content_type="text/plain")


def legacy_mlflow_unknown(replica: str | None = None) -> HttpObservation:
    body = {
        "connected": False,
        "circuit_breaker_state": "UNKNOWN",
        "error": "Object of type CircuitState is not JSON serializable",
        "timestamp": NAIVE_TS,
    }
    return http("/health/mlflow", 500, body, replica=replica, elapsed_ms=30.0)


def legacy_mlflow_closed(failures: int = 0, replica: str | None = None) -> HttpObservation:
    body = {
        "connected": failures == 0,
        "circuit_breaker_state": "CLOSED",
        "circuit_breaker_details": {
            "state": "CLOSED",
            "failure_count": failures,
            "time_until_retry": 0,
            "recovery_attempts": 0,
            "consecutive_successes": 4,
            "last_failure_time": 1704110400.5,
            "last_success_time": 1704110500.25,
            "time_since_last_failure": 99.75,
            "failure_threshold": 5,
            "recovery_timeout": 60,
        },
        "timestamp": NAIVE_TS,
    }
    return http("/health/mlflow", 200, body, replica=replica)


def legacy_ready(database: bool = True, breaker_open: bool = False) -> HttpObservation:
    checks = [
        ready_check("database", database, True, None if database else "connection refused"),
        ready_check(
            "mlflow",
            not breaker_open,
            False,
            "Circuit breaker open - MLflow temporarily unavailable" if breaker_open else None,
            True if breaker_open else None,
        ),
        ready_check("model_warmup", False, False, "models not loaded yet"),
    ]
    body = {
        "ready": database and not breaker_open,
        "can_serve_traffic": database,
        "degraded_mode": breaker_open,
        "checks": checks,
    }
    return http("/ready", 200 if database else 503, body)


def legacy_live() -> HttpObservation:
    return http("/live", 200, {"alive": True, "uptime": 1234.5, "memory_usage_mb": 210.3})


# The deployed version's own encoding, as its HELP text documents it.
LEGACY_STATE_VALUES = {"CLOSED": 0, "HALF_OPEN": 1, "OPEN": 2}


def legacy_metrics_text(state: str = "CLOSED") -> str:
    return (
        "# TYPE process_resident_memory_bytes gauge\n"
        "process_resident_memory_bytes 2.1e+08\n"
        "# HELP mlflow_circuit_breaker_state MLflow circuit breaker state "
        "(0=CLOSED, 1=HALF_OPEN, 2=OPEN)\n"
        "# TYPE mlflow_circuit_breaker_state gauge\n"
        f"mlflow_circuit_breaker_state {LEGACY_STATE_VALUES[state]}.0\n"
        "# TYPE mlflow_circuit_breaker_failures_total counter\n"
        "mlflow_circuit_breaker_failures_total 7.0\n"
        "# TYPE mlflow_connection_status gauge\n"
        "mlflow_connection_status 0.0\n"
        "# TYPE mlflow_connection_attempts_total counter\n"
        "mlflow_connection_attempts_total 12.0\n"
        "# TYPE mlflow_connection_failures_total counter\n"
        "mlflow_connection_failures_total 7.0\n"
        "# TYPE mlflow_response_time_seconds histogram\n"
        'mlflow_response_time_seconds_bucket{le="+Inf"} 12.0\n'
        "mlflow_response_time_seconds_count 12.0\n"
        "mlflow_response_time_seconds_sum 50.5\n"
        "# TYPE mlflow_info info\n"
        'mlflow_info_info{error="HTTPConnectionPool(host=mlflow, port=5000): timed out"} 1.0\n'
    )


def legacy_metrics(state: str = "CLOSED") -> HttpObservation:
    return http("/metrics", 200, text=legacy_metrics_text(state), content_type="text/plain")


# --- AWS answers --------------------------------------------------------------------------


def aws(
    service: str,
    operation: str,
    response: dict[str, Any] | None = None,
    error_code: str | None = None,
    message: str | None = None,
) -> AwsObservation:
    return AwsObservation(
        service=service,
        operation=operation,
        response=response,
        error_code=error_code,
        error_message=message,
        elapsed_ms=40.0,
    )


def target_health(*states: str, reason: str | None = None) -> AwsObservation:
    descriptions = []
    for i, state in enumerate(states):
        health: dict[str, Any] = {"State": state}
        if state != "healthy" and reason:
            health["Reason"] = reason
        descriptions.append(
            {"Target": {"Id": f"10.0.1.{i + 5}", "Port": 8000}, "TargetHealth": health}
        )
    return aws("elbv2", "DescribeTargetHealth", {"TargetHealthDescriptions": descriptions})


def load_balancers(state: str = "active", name: str = "hokusai-alb") -> AwsObservation:
    return aws(
        "elbv2",
        "DescribeLoadBalancers",
        {
            "LoadBalancers": [
                {"LoadBalancerName": name, "State": {"Code": state}, "DNSName": "alb.example.test"}
            ]
        },
    )


def ecs_service(
    name: str, running: int, desired: int = 2, status: str = "ACTIVE", rollout: str = "COMPLETED"
) -> dict[str, Any]:
    return {
        "serviceName": name,
        "status": status,
        "desiredCount": desired,
        "runningCount": running,
        "pendingCount": max(0, desired - running),
        "deployments": [{"status": "PRIMARY", "rolloutState": rollout, "runningCount": running}],
        "events": [
            {
                "message": f"(service {name}) has reached a steady state.",
                "createdAt": "2024-01-01T11:59:00+00:00",
            }
        ],
    }


def ecs(*services: dict[str, Any], failures: list[dict[str, str]] | None = None):
    return aws("ecs", "DescribeServices", {"services": list(services), "failures": failures or []})


def rds(*states: str) -> AwsObservation:
    return aws(
        "rds",
        "DescribeDBInstances",
        {
            "DBInstances": [
                {"DBInstanceIdentifier": f"db-{i}", "DBInstanceStatus": s, "Engine": "postgres"}
                for i, s in enumerate(states)
            ]
        },
    )


def alarms(*alarm_states: tuple[str, str]) -> AwsObservation:
    return aws(
        "cloudwatch",
        "DescribeAlarms",
        {
            "MetricAlarms": [
                {
                    "AlarmName": name,
                    "StateValue": state,
                    "StateReason": f"{name} crossed threshold",
                    "MetricName": "CPUUtilization",
                }
                for name, state in alarm_states
            ],
            "CompositeAlarms": [],
        },
    )
