"""Sandbox-only controls: fault injection, request accounting, state (not part of the contract).

The routes live under ``/__sandbox`` and answer 404, like an unknown path, unless the
request carries ``X-Sandbox-Token`` equal to ``SANDBOX_ADMIN_TOKEN``. They are exempt from
the injected faults and from counting, so the supervisor can always heal a wedged replica.

Request accounting, per replica: requests by ``METHOD /path``; the most MLflow-touching
requests in flight at once, from arrival to response end; the MLflow calls the breaker
admitted (each reaches MLflow and counts toward opening it) and refused.

Measuring "in flight" against the legacy flavour needs care: its handlers block the event
loop, so a request that arrives meanwhile waits in the kernel and reaches the middleware
only when the loop is free again, after the blocking request would already have ended.
So, before an MLflow-touching response starts, the middleware yields to the loop for a few
turns (an "arrival window"): requests already received are accepted and registered as in
flight, and the legacy handlers wait (``wait_quiet``) before blocking until the window has
closed, so the order in which the blocked loop serves requests does not change.
"""

from __future__ import annotations

import asyncio
import hmac
from collections import Counter
from collections.abc import Callable
from enum import StrEnum
from typing import Any, TypedDict

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, Field
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sandbox.breaker import BreakerConfig, BreakerState, CircuitBreaker

ADMIN_PREFIX = "/__sandbox"
TOKEN_HEADER = "X-Sandbox-Token"  # noqa: S105 - a header name, not a secret


class FaultMode(StrEnum):
    NONE = "none"
    WEDGED = "wedged"  # every route answers 500
    HUNG = "hung"  # every route accepts the request and never answers


class Fault(BaseModel):
    mode: FaultMode = FaultMode.NONE
    latency_ms: int = Field(default=0, ge=0, le=3_600_000)


class FaultUpdate(BaseModel):
    """Fields left out keep their current value, so latency and mode are set independently."""

    mode: FaultMode | None = None
    latency_ms: int | None = Field(default=None, ge=0, le=3_600_000)


class BreakerForce(BaseModel):
    state: BreakerState


# Loop turns an arrival window lasts: enough to accept a new connection, read its request
# and start its task (about six turns), with a margin; a few tens of microseconds.
ARRIVAL_WINDOW_TURNS = 20


class RequestStats(TypedDict):
    counts: dict[str, int]
    mlflow_in_flight: int
    max_mlflow_in_flight: int
    mlflow_checks: int
    mlflow_refused: int


def _never(scope: Scope) -> bool:
    return False


class SandboxControls:
    """Mutable per-app sandbox state shared by the middleware and the admin routes."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.fault = Fault()
        self.counts: Counter[str] = Counter()
        # Set by the flavour: which requests call MLflow (through the breaker or not).
        self.touches_mlflow: Callable[[Scope], bool] = _never
        self.mlflow_in_flight = 0
        self.max_mlflow_in_flight = 0
        self.mlflow_checks = 0
        self.mlflow_refused = 0
        self._windows_open = 0
        self._quiet = asyncio.Event()
        self._quiet.set()

    def stats(self) -> RequestStats:
        return {
            "counts": dict(self.counts),
            "mlflow_in_flight": self.mlflow_in_flight,
            "max_mlflow_in_flight": self.max_mlflow_in_flight,
            "mlflow_checks": self.mlflow_checks,
            "mlflow_refused": self.mlflow_refused,
        }

    def reset_stats(self) -> None:
        self.counts.clear()
        # Requests still in flight stay counted: they are the floor of the next maximum.
        self.max_mlflow_in_flight = self.mlflow_in_flight
        self.mlflow_checks = self.mlflow_refused = 0

    def mlflow_request_started(self) -> None:
        self.mlflow_in_flight += 1
        self.max_mlflow_in_flight = max(self.max_mlflow_in_flight, self.mlflow_in_flight)

    def mlflow_request_ended(self) -> None:
        self.mlflow_in_flight -= 1

    async def open_arrival_window(self) -> None:
        self._windows_open += 1
        self._quiet.clear()
        for _ in range(ARRIVAL_WINDOW_TURNS):
            await asyncio.sleep(0)

    def close_arrival_window(self) -> None:
        self._windows_open -= 1
        if self._windows_open == 0:
            self._quiet.set()

    async def wait_quiet(self) -> None:
        """Before blocking the loop: wait while an arrival window is open. Returns at once,
        without yielding, when none is (``Event.wait`` on a set event does not suspend)."""
        while self._windows_open:
            await self._quiet.wait()

    def token_matches(self, presented: str | None) -> bool:
        if not self.token or presented is None:
            return False
        return hmac.compare_digest(presented.encode(), self.token.encode())


def is_admin_path(path: str) -> bool:
    return path == ADMIN_PREFIX or path.startswith(ADMIN_PREFIX + "/")


def request_key(scope: Scope) -> str:
    """`METHOD /path` plus `?query` when there is one, e.g. `GET /health?detailed=true`."""
    key = f"{scope['method']} {scope['path']}"
    query = scope.get("query_string", b"")
    return f"{key}?{query.decode('latin-1')}" if query else key


async def _wait_for_disconnect(receive: Receive) -> None:
    # Drain the body, then park until the client goes away: the request ends with the
    # connection instead of leaking a task per hung request.
    while (await receive())["type"] != "http.disconnect":
        pass


def _is_target_health_check(scope: Scope) -> bool:
    # The load balancer's own health checks are infrastructure, not client requests.
    agent = dict(scope.get("headers") or []).get(b"user-agent", b"")
    return agent.startswith(b"ELB-HealthChecker")


class SandboxMiddleware:
    """Outermost layer: counts every non-admin request, then applies the injected fault."""

    def __init__(self, app: ASGIApp, controls: SandboxControls) -> None:
        self.app = app
        self.controls = controls

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_admin_path(scope["path"]):
            await self.app(scope, receive, send)
            return
        counted = not _is_target_health_check(scope)
        if counted:
            self.controls.counts[request_key(scope)] += 1
        if counted and self.controls.touches_mlflow(scope):
            await self._serve_in_flight(scope, receive, send)
        else:
            await self._serve(scope, receive, send)

    async def _serve_in_flight(self, scope: Scope, receive: Receive, send: Send) -> None:
        controls = self.controls
        controls.mlflow_request_started()
        window = False

        async def send_after_window(message: Message) -> None:
            nonlocal window
            if message["type"] == "http.response.start" and not window:
                window = True
                await controls.open_arrival_window()
            await send(message)

        try:
            await self._serve(scope, receive, send_after_window)
        finally:
            controls.mlflow_request_ended()
            if window:
                controls.close_arrival_window()

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        latency_ms = self.controls.fault.latency_ms
        if latency_ms:
            await asyncio.sleep(latency_ms / 1000)
        mode = self.controls.fault.mode
        if mode is FaultMode.WEDGED:
            await PlainTextResponse("Internal Server Error", status_code=500)(scope, receive, send)
            return
        if mode is FaultMode.HUNG:
            await _wait_for_disconnect(receive)
            return
        await self.app(scope, receive, send)


class CountedBreaker(CircuitBreaker):
    """The breaker, counting into the sandbox controls every call it admits or refuses."""

    def __init__(self, config: BreakerConfig, controls: SandboxControls, name: str) -> None:
        super().__init__(config, name=name)
        self._controls = controls

    def acquire(self) -> int | None:
        permit = super().acquire()
        if permit is None:
            self._controls.mlflow_refused += 1
        else:
            self._controls.mlflow_checks += 1
        return permit


def admin_router(
    controls: SandboxControls,
    breaker: CircuitBreaker,
    describe: Callable[[], dict[str, Any]],
) -> APIRouter:
    def require_token(request: Request) -> None:
        if not controls.token_matches(request.headers.get(TOKEN_HEADER)):
            raise HTTPException(status_code=404, detail="Not Found")

    router = APIRouter(
        prefix=ADMIN_PREFIX, dependencies=[Depends(require_token)], include_in_schema=False
    )

    @router.post("/fault")
    async def set_fault(update: FaultUpdate) -> dict[str, Any]:
        controls.fault = controls.fault.model_copy(update=update.model_dump(exclude_none=True))
        return {"fault": controls.fault.model_dump(mode="json")}

    @router.get("/fault")
    async def get_fault() -> dict[str, Any]:
        return {"fault": controls.fault.model_dump(mode="json")}

    @router.post("/breaker/stuck-open")
    async def stuck_open() -> dict[str, Any]:
        breaker.force_stuck_open()
        return describe()

    @router.post("/breaker/state")
    async def force_breaker(force: BreakerForce) -> dict[str, Any]:
        # OPEN with automatic retries, or HALF_OPEN, without waiting for failures or timeouts.
        breaker.force_state(force.state)
        return describe()

    # Plain dicts out: FastAPI cannot build a response model from typing.TypedDict on 3.11.
    @router.get("/requests")
    async def request_counts() -> dict[str, Any]:
        return dict(controls.stats())

    @router.post("/requests/reset")
    async def reset_request_counts() -> dict[str, Any]:
        controls.reset_stats()
        return dict(controls.stats())

    @router.get("/state")
    async def state() -> dict[str, Any]:
        return describe()

    return router
