"""The contract flavour: the health endpoints exactly as docs/health-contract.md states."""

from __future__ import annotations

import asyncio
import hmac
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, generate_latest
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sandbox.breaker import STATE_CODES, BreakerState
from sandbox.registry.admin import is_admin_path
from sandbox.registry.dependencies import (
    CheckResult,
    MlflowCheck,
    check_mlflow,
    check_postgres,
    check_redis,
)
from sandbox.registry.runtime import Runtime, epoch_to_iso, system_info, utc_now


class RequestMetricsMiddleware:
    """Counts requests into http_requests_total, labelled by route template, not raw path."""

    def __init__(self, app: ASGIApp, counter: Counter) -> None:
        self.app = app
        self.counter = counter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_admin_path(scope["path"]):
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            # The router stores the matched route in the shared scope; unmatched paths
            # share one label so scanners cannot blow up the series count.
            path = getattr(route, "path", None) or "unmatched"
            self.counter.labels(scope["method"], path, str(status)).inc()


def register_process_metrics(runtime: Runtime) -> None:
    """The default process/platform/GC series, in this app's own registry."""
    ProcessCollector(registry=runtime.metrics)
    PlatformCollector(registry=runtime.metrics)
    GCCollector(registry=runtime.metrics)


def mlflow_service_status(check: MlflowCheck, state: BreakerState) -> str:
    if state is BreakerState.OPEN:
        return "degraded"
    if state is BreakerState.HALF_OPEN:
        return "recovering"
    return "healthy" if check.connected else "unhealthy"


def overall_status(postgres: CheckResult, redis: CheckResult, mlflow_status: str) -> str:
    if not postgres.ok:
        return "unhealthy"
    if not redis.ok or mlflow_status != "healthy":
        return "degraded"
    return "healthy"


def breaker_details(runtime: Runtime) -> dict[str, Any]:
    snap = runtime.breaker.snapshot()
    retry = snap["time_until_retry"]
    return {
        "state": snap["state"],
        "failure_count": snap["failure_count"],
        "success_count": snap["success_count"],
        "time_until_retry": None if retry is None else round(retry, 3),
        "recovery_attempts": snap["recovery_attempts"],
        "max_recovery_attempts": snap["max_recovery_attempts"],
        "last_failure_time": epoch_to_iso(snap["last_failure_time"]),
        "last_success_time": epoch_to_iso(snap["last_success_time"]),
    }


def install(app: FastAPI, runtime: Runtime) -> None:
    config = runtime.config
    breaker = runtime.breaker
    register_process_metrics(runtime)
    Gauge(
        "mlflow_circuit_breaker_state",
        "MLflow circuit breaker state (0 CLOSED, 1 OPEN, 2 HALF_OPEN)",
        registry=runtime.metrics,
    ).set_function(lambda: STATE_CODES[breaker.state])
    Gauge(
        "mlflow_circuit_breaker_failures",
        "Failures counted by the MLflow circuit breaker",
        registry=runtime.metrics,
    ).set_function(lambda: breaker.failure_count)
    Gauge(
        "mlflow_circuit_breaker_recovery_attempts",
        "Failed recoveries of the MLflow circuit breaker since it last closed",
        registry=runtime.metrics,
    ).set_function(lambda: breaker.recovery_attempts)
    http_requests = Counter(
        "http_requests_total",
        "HTTP requests by method, route and status",
        ["method", "path", "status"],
        registry=runtime.metrics,
    )
    app.add_middleware(RequestMetricsMiddleware, counter=http_requests)

    def authorize(request: Request, *, required: bool) -> None:
        header = request.headers.get("authorization")
        if header is None:
            if required:
                raise HTTPException(
                    401, "Bearer token required", headers={"WWW-Authenticate": "Bearer"}
                )
            return
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise HTTPException(
                401, "Malformed Authorization header", headers={"WWW-Authenticate": "Bearer"}
            )
        # Constant-time comparison; with no API_KEY configured every key is wrong.
        if not config.api_key or not hmac.compare_digest(token.encode(), config.api_key.encode()):
            raise HTTPException(403, "Invalid API key")

    async def probe_all() -> tuple[CheckResult, CheckResult, MlflowCheck]:
        return await asyncio.gather(
            check_postgres(config.database_url, config.dependency_timeout),
            check_redis(config.redis_url, config.dependency_timeout),
            check_mlflow(
                breaker, runtime.async_client(), config.mlflow_tracking_uri, config.mlflow_timeout
            ),
        )

    def mlflow_details(check: MlflowCheck) -> dict[str, Any]:
        out: dict[str, Any] = {
            "status": mlflow_service_status(check, breaker.state),
            "connected": check.connected,
            "called": not check.refused,
            "circuit_breaker": breaker_details(runtime),
        }
        if check.latency_ms is not None:
            out["latency_ms"] = round(check.latency_ms, 2)
        if check.error:
            out["error"] = check.error
        return out

    @app.get("/health")
    async def health(detailed: bool = False) -> JSONResponse:
        postgres, redis, mlflow = await probe_all()
        services = {
            "mlflow": mlflow_service_status(mlflow, breaker.state),
            "redis": "healthy" if redis.ok else "unhealthy",
            "postgres": "healthy" if postgres.ok else "unhealthy",
        }
        status = overall_status(postgres, redis, services["mlflow"])
        body: dict[str, Any] = {
            "status": status,
            "version": config.service_version,
            "service": config.service_name,
            "services": services,
            "timestamp": utc_now(),
        }
        if detailed:
            body["system_info"] = system_info(runtime.uptime())
            body["details"] = {
                "postgres": postgres.details(),
                "redis": redis.details(),
                "mlflow": mlflow_details(mlflow),
            }
        return JSONResponse(body, status_code=503 if status == "unhealthy" else 200)

    @app.get("/ready")
    async def ready() -> JSONResponse:
        postgres, redis, mlflow = await probe_all()
        checks: list[dict[str, Any]] = [
            {"name": "database", "passed": postgres.ok, "critical": True},
            {"name": "redis", "passed": redis.ok, "critical": False, "degraded_mode": not redis.ok},
            {
                "name": "mlflow",
                "passed": mlflow.connected,
                "critical": False,
                "degraded_mode": not mlflow.connected,
            },
        ]
        for check, error in zip(checks, (postgres.error, redis.error, mlflow.error), strict=True):
            if not check["passed"] and error:
                check["error"] = error
        can_serve = all(c["passed"] for c in checks if c["critical"])
        degraded = any(not c["passed"] for c in checks if not c["critical"])
        body = {
            "ready": can_serve,
            "can_serve_traffic": can_serve,
            "degraded_mode": degraded,
            "checks": checks,
            "timestamp": utc_now(),
        }
        return JSONResponse(body, status_code=200 if can_serve else 503)

    @app.get("/live")
    async def live() -> dict[str, Any]:
        return {"alive": True, "timestamp": utc_now()}

    @app.get("/health/mlflow")
    async def health_mlflow(request: Request) -> JSONResponse:
        authorize(request, required=False)
        mlflow = await check_mlflow(
            breaker, runtime.async_client(), config.mlflow_tracking_uri, config.mlflow_timeout
        )
        details = breaker_details(runtime)
        body: dict[str, Any] = {
            "connected": mlflow.connected,
            "circuit_breaker_state": details["state"],
            "circuit_breaker_details": details,
            "timestamp": utc_now(),
        }
        if mlflow.latency_ms is not None:
            body["response_time_ms"] = round(mlflow.latency_ms, 2)
        if mlflow.error:
            body["error"] = mlflow.error
        return JSONResponse(body, status_code=200 if mlflow.connected else 503)

    @app.get("/health/status")
    async def health_status(request: Request) -> dict[str, Any]:
        authorize(request, required=False)
        postgres, redis, mlflow = await probe_all()
        mlflow_status = mlflow_service_status(mlflow, breaker.state)
        info = system_info(runtime.uptime())
        status: dict[str, Any] = {"connected": mlflow.connected, "state": mlflow_status}
        if mlflow.error:
            status["error"] = mlflow.error
        return {
            "service_name": config.service_name,
            "version": config.service_version,
            "replica_id": config.replica_id,
            "overall_health": overall_status(postgres, redis, mlflow_status),
            "mlflow": {"status": status, "circuit_breaker": breaker_details(runtime)},
            "services": {
                "postgres": postgres.details(),
                "redis": redis.details(),
            },
            "system_info": {
                "cpu_percent": info["cpu_percent"],
                "memory_percent": info["memory_percent"],
                "uptime_seconds": info["uptime_seconds"],
            },
            "timestamp": utc_now(),
        }

    @app.post("/health/mlflow/reset")
    async def reset_breaker(request: Request) -> dict[str, Any]:
        authorize(request, required=True)
        previous = breaker.reset()
        return {
            "message": "MLflow circuit breaker reset",
            "previous_state": previous.value,
            "state": breaker.state.value,
            "timestamp": utc_now(),
        }

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(runtime.metrics), media_type=CONTENT_TYPE_LATEST)
