"""The legacy flavour: a deployed version of the service, deviations included.

Every item of docs/health-contract.md "Observed in a deployed version" is reproduced on
purpose, so that the flows can be shown to reach the right verdict against it:

- ``/health`` is lightweight (``api``/``dependency_checks`` only) and always healthy.
- ``/health?detailed=true`` and ``/health/status`` fail response validation (a real pydantic
  error, produced by putting a dict where the response model wants a string) and answer 500
  with ``Connection: close``, so the server drops the keep-alive connection.
- ``/ready`` checks the database, MLflow (twice) and a model warm-up that never passed.
- ``/health/mlflow`` reports the breaker as read *before* its own call, ``time_until_retry``
  0 while CLOSED, 200 even when MLflow is down, and 500 with state ``UNKNOWN`` whenever the
  state it read was OPEN (the deployed code could not serialise its datetime then).
- MLflow is called with a synchronous, retrying client inside async handlers: a failing
  check (refused, timed out or 5xx) costs two application-level attempts with urllib3-style
  retries and backoff, about 10 s (``LegacyRetryBudget``), during which the whole event
  loop, ``/live`` included, is blocked; concurrent requests queue behind each other. A call
  the breaker refuses is instant. ``/health/mlflow`` and ``/health?detailed=true`` make one
  check, ``/ready`` and ``/health/status`` two, ``/metrics`` one per scrape, each counted
  by the breaker (threshold 5, recovery timeout 60 s, 5 recovery attempts).
- The database check is synchronous too, retried with blocking sleeps (1 s, 2 s).
- ``/metrics``: the state gauge's HELP text gives its mapping (0=CLOSED, 1=HALF_OPEN,
  2=OPEN), not the contract's; ``mlflow_info_info``'s error label carries the breaker's
  message, whose ``retry in Ns`` changes every second while OPEN.
- ``/api/health/mlflow`` probes MLflow once without the breaker; ``/metrics`` has the legacy
  series after the process metrics; reset needs no credentials; timestamps are naive;
  ``/live`` answers ``alive``, ``uptime``, ``memory_usage_mb``.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, Info, generate_latest
from pydantic import BaseModel, ValidationError
from starlette.types import Scope

from sandbox.breaker import BreakerState, CircuitOpenError
from sandbox.registry.contract import register_process_metrics
from sandbox.registry.dependencies import (
    MlflowCheck,
    check_postgres_blocking,
    check_redis,
    describe_error,
    probe_mlflow_blocking,
    probe_mlflow_retrying,
    redact_url,
    refused_message,
)
from sandbox.registry.runtime import Runtime, naive_now, process_memory_mb, system_info

logger = logging.getLogger(__name__)

BREAKER_OPEN_ERROR = "Circuit breaker open - MLflow temporarily unavailable"
# What the deployed /health/mlflow said when it failed to serialise an OPEN status.
SERIALISATION_ERROR = "Object of type datetime is not JSON serializable"

# The deployed gauge's own mapping, stated in its HELP text (the contract's differs).
LEGACY_STATE_CODES: dict[BreakerState, int] = {
    BreakerState.CLOSED: 0,
    BreakerState.HALF_OPEN: 1,
    BreakerState.OPEN: 2,
}
STATE_HELP = "MLflow circuit breaker state (0=CLOSED, 1=HALF_OPEN, 2=OPEN)"

# Endpoints that call MLflow (all but /api/health/mlflow through the breaker); /health too
# when detailed.
_MLFLOW_PATHS = frozenset(
    {"/health/mlflow", "/ready", "/health/status", "/metrics", "/api/health/mlflow"}
)
_TRUE = frozenset({"1", "on", "t", "true", "y", "yes"})  # what FastAPI reads as True


def touches_mlflow(scope: Scope) -> bool:
    """Whether a request calls MLflow in this flavour (for the sandbox's accounting)."""
    if scope["method"] != "GET":
        return False
    path = scope["path"]
    if path in _MLFLOW_PATHS:
        return True
    if path == "/health":
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        return any(v.lower() in _TRUE for v in query.get("detailed", [])[-1:])
    return False


class _DetailedHealthModel(BaseModel):
    """The deployed response model: `services` only admits strings."""

    status: str
    version: str
    services: dict[str, str]
    timestamp: datetime
    system_info: dict[str, float] | None = None


class _ServiceStatusModel(BaseModel):
    """The deployed status model: `mlflow` only admits strings."""

    service_name: str
    overall_health: str
    mlflow: dict[str, str]
    system_info: dict[str, float]
    timestamp: datetime


def _validation_error_text(model: type[BaseModel], payload: dict[str, Any]) -> str:
    try:
        model.model_validate(payload)
    except ValidationError as exc:
        return str(exc)
    raise AssertionError(f"{model.__name__} unexpectedly accepted the payload")


def _dropping_500(content: str | dict[str, Any]) -> Response:
    # `Connection: close` makes uvicorn close the socket once the body is sent: a client
    # that reuses the connection afterwards gets a reset, as observed in production.
    headers = {"Connection": "close"}
    if isinstance(content, str):
        return Response(content, status_code=500, media_type="text/plain", headers=headers)
    return JSONResponse(content, status_code=500, headers=headers)


class LegacyMlflow:
    """The deployed MLflow check: blocking, retrying, through the breaker, with its metrics."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.breaker = runtime.breaker
        self.consecutive_successes = 0
        registry = runtime.metrics
        breaker = runtime.breaker
        Gauge("mlflow_circuit_breaker_state", STATE_HELP, registry=registry).set_function(
            lambda: LEGACY_STATE_CODES[breaker.state]
        )
        self.breaker_failures = Counter(
            "mlflow_circuit_breaker_failures", "MLflow failures recorded", registry=registry
        )
        self.connection_status = Gauge(
            "mlflow_connection_status", "1 when the last MLflow check connected", registry=registry
        )
        self.attempts = Counter(
            "mlflow_connection_attempts", "MLflow connection attempts", registry=registry
        )
        self.failures = Counter(
            "mlflow_connection_failures", "MLflow connection failures", registry=registry
        )
        self.response_time = Histogram(
            "mlflow_response_time_seconds", "MLflow response time", registry=registry
        )
        self.info = Info("mlflow_info", "MLflow connection information", registry=registry)
        self.info.info({"status": "unknown", "error": ""})

    def _observe(self, start: float, exc: Exception | None) -> MlflowCheck:
        elapsed = time.perf_counter() - start
        if exc is not None:
            error = describe_error(exc, self.runtime.config.mlflow_timeout)
            self.failures.inc()
            self.connection_status.set(0)
            self.info.info({"status": "error", "error": error})
            return MlflowCheck(
                False, latency_ms=elapsed * 1000, error=error, error_type=type(exc).__name__
            )
        self.response_time.observe(elapsed)
        self.connection_status.set(1)
        self.info.info({"status": "connected", "error": ""})
        return MlflowCheck(True, latency_ms=elapsed * 1000)

    async def probe(self) -> MlflowCheck:
        """One request to MLflow, without the breaker or retries; blocks the event loop."""
        await self.runtime.controls.wait_quiet()
        self.attempts.inc()
        start = time.perf_counter()
        try:
            probe_mlflow_blocking(
                self.runtime.blocking_client(), self.runtime.config.mlflow_tracking_uri
            )
        except Exception as exc:
            return self._observe(start, exc)
        return self._observe(start, None)

    def _call_with_retries(self) -> Exception | None:
        """The deployed client's call: application-level attempts, each with HTTP retries.
        Runs on the event loop's thread, so nothing else is served until it returns."""
        config = self.runtime.config
        sleeps = config.legacy.mlflow_retry_sleeps()
        error: Exception | None = None
        for _ in range(config.legacy.mlflow_attempts):
            self.attempts.inc()
            try:
                probe_mlflow_retrying(
                    self.runtime.blocking_client(), config.mlflow_tracking_uri, sleeps
                )
            except Exception as exc:  # any failure of the call is MLflow being unavailable
                error = exc
                continue
            return None
        return error

    async def check(self) -> MlflowCheck:
        """One MLflow check through the breaker; a refused call is instant and leaves the
        breaker's message (with its countdown) in the info metric."""
        await self.runtime.controls.wait_quiet()
        permit = self.breaker.acquire()
        if permit is None:
            message = refused_message(
                CircuitOpenError(self.breaker.state, self.breaker.time_until_retry())
            )
            self.connection_status.set(0)
            self.info.info({"status": "error", "error": message})
            return MlflowCheck(
                False, refused=True, error=BREAKER_OPEN_ERROR, error_type="CircuitBreakerOpen"
            )
        start = time.perf_counter()
        result = self._observe(start, self._call_with_retries())
        if result.connected:
            self.breaker.record_success(permit)
            self.consecutive_successes += 1
        else:
            self.breaker.record_failure(permit)
            self.breaker_failures.inc()
            self.consecutive_successes = 0
        return result

    def details(self, snap: dict[str, Any]) -> dict[str, Any]:
        last_failure = snap["last_failure_time"]
        retry = snap["time_until_retry"]
        return {
            "state": snap["state"],
            "failure_count": snap["failure_count"],
            "consecutive_successes": self.consecutive_successes,
            "recovery_attempts": snap["recovery_attempts"],
            "last_failure_time": last_failure,
            "last_success_time": snap["last_success_time"],
            "time_since_last_failure": (
                None if last_failure is None else time.time() - last_failure
            ),
            # The deployed breaker said 0 whenever it was not OPEN.
            "time_until_retry": 0 if retry is None else retry,
            "failure_threshold": snap["failure_threshold"],
            "recovery_timeout": snap["recovery_timeout"],
        }


def install(app: FastAPI, runtime: Runtime) -> None:
    config = runtime.config
    breaker = runtime.breaker
    # Process metrics first: the deployed /metrics listed them before the MLflow series.
    register_process_metrics(runtime)
    mlflow = LegacyMlflow(runtime)

    async def dependency_checks() -> tuple[bool, bool]:
        # The deployed database check was synchronous, with blocking sleeps between tries.
        await runtime.controls.wait_quiet()
        postgres = check_postgres_blocking(
            config.database_url, config.dependency_timeout, config.legacy.db_retry_sleeps()
        )
        redis = await check_redis(config.redis_url, config.dependency_timeout)
        return postgres.ok, redis.ok

    @app.get("/health", response_model=None)
    async def health(detailed: bool = False) -> dict[str, Any] | Response:
        if not detailed:
            return {
                "status": "healthy",
                "version": config.service_version,
                "services": {"api": "healthy", "dependency_checks": "skipped"},
                "timestamp": naive_now(),
            }
        postgres_ok, redis_ok = await dependency_checks()
        check = await mlflow.check()
        payload = {
            "status": "healthy" if postgres_ok and redis_ok and check.connected else "degraded",
            "version": config.service_version,
            "services": {
                "api": "healthy",
                "postgres": "healthy" if postgres_ok else "unhealthy",
                "redis": "healthy" if redis_ok else "unhealthy",
                "mlflow": "healthy" if check.connected else "unhealthy",
                "mlflow_details": {"connected": check.connected, "error": check.error},
            },
            "timestamp": naive_now(),
            "system_info": system_info(runtime.uptime()),
        }
        # The deployed handler crashed here; the text went to the log, the client got 500.
        error = _validation_error_text(_DetailedHealthModel, payload)
        logger.warning("legacy /health?detailed=true: response validation failed: %s", error)
        return _dropping_500("Internal Server Error")

    @app.get("/ready")
    async def ready() -> JSONResponse:
        postgres_ok, _ = await dependency_checks()
        # The deployed readiness check called MLflow twice: status, then connectivity.
        await mlflow.check()
        check = await mlflow.check()
        mlflow_entry: dict[str, Any] = {
            "name": "mlflow",
            "passed": check.connected,
            "critical": False,
            "degraded_mode": not check.connected,
        }
        if check.error:
            mlflow_entry["error"] = check.error
        database_entry: dict[str, Any] = {
            "name": "database",
            "passed": postgres_ok,
            "critical": True,
        }
        if not postgres_ok:
            database_entry["error"] = "Database connection failed"
        checks = [
            database_entry,
            mlflow_entry,
            {
                "name": "model_warmup",
                "passed": False,
                "critical": False,
                "error": "Models not warmed up",
            },
        ]
        can_serve = postgres_ok
        degraded = not check.connected
        body = {
            "ready": can_serve and not degraded,
            "can_serve_traffic": can_serve,
            "degraded_mode": degraded,
            "checks": checks,
            "timestamp": naive_now(),
        }
        return JSONResponse(body, status_code=200 if can_serve else 503)

    @app.get("/live")
    async def live() -> dict[str, Any]:
        return {
            "alive": True,
            "uptime": round(runtime.uptime(), 1),
            "memory_usage_mb": process_memory_mb(),
        }

    @app.get("/health/mlflow")
    async def health_mlflow() -> JSONResponse:
        await runtime.controls.wait_quiet()
        snap = breaker.snapshot()  # read before this call's outcome is counted
        check = await mlflow.check()
        if snap["state"] == BreakerState.OPEN.value:
            body = {
                "error": SERIALISATION_ERROR,
                "connected": False,
                "circuit_breaker_state": "UNKNOWN",
                "timestamp": naive_now(),
            }
            return JSONResponse(body, status_code=500)
        status: dict[str, Any] = {
            "circuit_breaker_state": snap["state"],
            "circuit_breaker_details": mlflow.details(snap),
            "connected": check.connected,
            "tracking_uri": redact_url(config.mlflow_tracking_uri),
            "connection_timeout": config.mlflow_timeout,
            "error": check.error,
            "last_check_time": naive_now(),
            "timestamp": naive_now(),
        }
        if check.connected and check.latency_ms is not None:
            status["response_time_ms"] = check.latency_ms
        return JSONResponse(status)

    @app.get("/health/status", response_model=None)
    async def health_status() -> Response:
        postgres_ok, redis_ok = await dependency_checks()
        first = await mlflow.check()
        second = await mlflow.check()
        payload = {
            "service_name": config.service_name,
            "overall_health": (
                "healthy" if postgres_ok and redis_ok and second.connected else "degraded"
            ),
            "mlflow": {
                "status": {"connected": first.connected, "error": first.error},
                "circuit_breaker": mlflow.details(breaker.snapshot()),
            },
            "system_info": system_info(runtime.uptime()),
            "timestamp": naive_now(),
        }
        error = _validation_error_text(_ServiceStatusModel, payload)
        return _dropping_500({"detail": f"Failed to get service status: {error}"})

    @app.get("/api/health/mlflow")
    async def api_health_mlflow() -> JSONResponse:
        check = await mlflow.probe()
        body: dict[str, Any] = {
            "status": "ok" if check.connected else "error",
            "tracking_uri": redact_url(config.mlflow_tracking_uri),
            "timestamp": naive_now(),
        }
        if check.latency_ms is not None:
            body["response_time_ms"] = round(check.latency_ms, 2)
        if not check.connected:
            body["error"] = check.error
            body["error_type"] = check.error_type
        return JSONResponse(body, status_code=200 if check.connected else 503)

    @app.post("/health/mlflow/reset")
    async def reset_breaker() -> dict[str, Any]:
        previous = breaker.reset()
        mlflow.consecutive_successes = 0
        return {
            "message": "Circuit breaker reset successfully",
            "previous_state": previous.value,
            "state": breaker.state.value,
            "timestamp": naive_now(),
        }

    @app.get("/metrics")
    async def metrics() -> Response:
        # The deployed exporter read the MLflow status through the breaker on every scrape.
        await mlflow.check()
        return Response(generate_latest(runtime.metrics), media_type=CONTENT_TYPE_LATEST)
