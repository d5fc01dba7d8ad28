"""Sandbox-only controls: fault injection, request counting, state (not part of the contract).

The routes live under ``/__sandbox`` and answer 404, like an unknown path, unless the
request carries ``X-Sandbox-Token`` equal to ``SANDBOX_ADMIN_TOKEN``. They are exempt from
the injected faults and from counting, so the supervisor can always heal a wedged replica.
"""

from __future__ import annotations

import asyncio
import hmac
from collections import Counter
from collections.abc import Callable
from enum import StrEnum
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, Field
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

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


class SandboxControls:
    """Mutable per-app sandbox state shared by the middleware and the admin routes."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.fault = Fault()
        self.counts: Counter[str] = Counter()

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
        if not _is_target_health_check(scope):
            self.controls.counts[request_key(scope)] += 1
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


def admin_router(
    controls: SandboxControls,
    force_stuck_open: Callable[[], None],
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
        force_stuck_open()
        return describe()

    @router.get("/requests")
    async def request_counts() -> dict[str, Any]:
        return {"counts": dict(controls.counts)}

    @router.post("/requests/reset")
    async def reset_request_counts() -> dict[str, Any]:
        controls.counts.clear()
        return {"counts": {}}

    @router.get("/state")
    async def state() -> dict[str, Any]:
        return describe()

    return router
