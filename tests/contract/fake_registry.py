"""A small stand-in of the registry's health endpoints, honouring the contract but for one
deliberate defect; served by a real uvicorn on a free loopback port."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response

from sandbox.ports import free_port

API_KEY = "fake-registry-key"

# Defect name -> the contract tests it must make fail (and no other).
DEFECTS: dict[str, set[str]] = {
    "missing-field": {"basic_health", "detailed_health"},  # /health without `version`
    "wrong-type": {"detailed_health"},  # system_info.cpu_percent is a string
    "ok-while-open": {"mlflow_health"},  # /health/mlflow 200 while the breaker is OPEN
    "unauthenticated-reset": {"reset_without_key_refused", "reset_with_wrong_key_refused"},
    "html-instead-of-json": {"service_status"},  # /health/status answers an HTML page
    "hanging-endpoint": {"mlflow_health", "circuit_breaker_details"},  # never answers
    "ready-disagrees": {"graceful_degradation"},  # /ready always degraded, /health healthy
    # /ready degraded on its first answer only (a dependency flickering): not a violation.
    "ready-flickers-once": set(),
}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def fake_registry(
    defect: str | None = None, breaker_open: bool = False, release: threading.Event | None = None
) -> FastAPI:
    """The contract's answers for a healthy service, or one whose breaker is OPEN."""
    assert defect is None or defect in DEFECTS, defect
    release = release or threading.Event()
    app = FastAPI()
    state = "OPEN" if breaker_open else "CLOSED"
    mlflow_status = "degraded" if breaker_open else "healthy"
    overall = "degraded" if breaker_open else "healthy"

    def details() -> dict[str, Any]:
        return {
            "state": state,
            "failure_count": 3 if breaker_open else 0,
            "time_until_retry": 12.5 if breaker_open else None,
            "recovery_attempts": 0,
        }

    @app.get("/health")
    async def health(detailed: bool = False) -> dict[str, Any]:
        body: dict[str, Any] = {
            "status": overall,
            "version": "2.0.0",
            "services": {"mlflow": mlflow_status, "redis": "healthy", "postgres": "healthy"},
            "timestamp": _now(),
        }
        if defect == "missing-field":
            del body["version"]
        if detailed:
            cpu: Any = "12%" if defect == "wrong-type" else 12.5
            body["system_info"] = {"cpu_percent": cpu, "memory_percent": 40.0}
        return body

    ready_answers = 0

    @app.get("/ready")
    async def ready() -> dict[str, Any]:
        nonlocal ready_answers
        ready_answers += 1
        flicker = defect == "ready-disagrees" or (
            defect == "ready-flickers-once" and ready_answers == 1
        )
        mlflow = {"name": "mlflow", "passed": not breaker_open, "critical": False}
        if flicker:
            mlflow |= {"passed": False, "degraded_mode": True, "error": "MLflow call timed out"}
            return {
                "ready": True,
                "can_serve_traffic": True,
                "degraded_mode": True,
                "checks": [{"name": "database", "passed": True, "critical": True}, mlflow],
                "timestamp": _now(),
            }
        if breaker_open:
            mlflow |= {"degraded_mode": True, "error": "Circuit breaker is OPEN"}
        return {
            "ready": True,
            "can_serve_traffic": True,
            "degraded_mode": breaker_open,
            "checks": [{"name": "database", "passed": True, "critical": True}, mlflow],
        }

    @app.get("/live")
    async def live() -> dict[str, Any]:
        return {"alive": True, "timestamp": _now()}

    @app.get("/health/mlflow")
    async def health_mlflow() -> JSONResponse:
        if defect == "hanging-endpoint":
            # Hangs until the test is over (the server is stopping), not for a fixed time.
            await asyncio.to_thread(release.wait, 60)
        body: dict[str, Any] = {
            "connected": not breaker_open,
            "circuit_breaker_state": state,
            "circuit_breaker_details": details(),
            "timestamp": _now(),
        }
        if breaker_open:
            body["error"] = "Circuit breaker is OPEN - MLflow unavailable"
        ok = not breaker_open or defect == "ok-while-open"
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/health/status", response_model=None)
    async def health_status() -> dict[str, Any] | Response:
        if defect == "html-instead-of-json":
            return HTMLResponse("<html><body><h1>Service status</h1><p>OK</p></body></html>")
        return {
            "service_name": "hokusai-registry",
            "overall_health": overall,
            "mlflow": {"status": {"connected": not breaker_open}, "circuit_breaker": details()},
            "system_info": {"cpu_percent": 12.5, "memory_percent": 40.0},
            "timestamp": _now(),
        }

    @app.post("/health/mlflow/reset")
    async def reset(request: Request) -> JSONResponse:
        header = request.headers.get("authorization", "")
        if defect != "unauthenticated-reset":
            if not header:
                return JSONResponse({"detail": "Bearer token required"}, status_code=401)
            if header != f"Bearer {API_KEY}":
                return JSONResponse({"detail": "Invalid API key"}, status_code=403)
        body = {"message": "reset", "previous_state": state, "state": "CLOSED"}
        return JSONResponse(body | {"timestamp": _now()})

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        code = 1 if breaker_open else 0
        text = (
            "# TYPE mlflow_circuit_breaker_state gauge\n"
            f"mlflow_circuit_breaker_state {code}.0\n"
            "# TYPE mlflow_circuit_breaker_failures gauge\n"
            f"mlflow_circuit_breaker_failures {3 if breaker_open else 0}.0\n"
            "# TYPE mlflow_circuit_breaker_recovery_attempts gauge\n"
            "mlflow_circuit_breaker_recovery_attempts 0.0\n"
            "# TYPE http_requests_total counter\n"
            'http_requests_total{method="GET",path="/health",status="200"} 5.0\n'
        )
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    return app


@contextmanager
def served(app: FastAPI, release: threading.Event | None = None) -> Iterator[str]:
    """Serve `app` with uvicorn in a thread on a free loopback port; yields its URL."""
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"fake registry on port {port} did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        if release is not None:
            release.set()
        server.should_exit = True
        thread.join(15)
