"""A small HTTP load balancer standing in for the ALB in front of an ECS service.

It forwards each request round-robin to a backend the simulation currently reports
healthy, answers 503 when there is none and 502 when the chosen backend fails, as an
ALB does. It is also where faults of a whole service are injected from the outside:
added latency, error answers, and slow answers.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
    "host",
    "content-length",
}


@dataclass
class LbFaults:
    latency_ms: int = 0
    errors: bool = False  # every request answered 500 by the service behind

    def clear(self) -> None:
        self.latency_ms = 0
        self.errors = False


@dataclass
class LbStats:
    requests: int = 0
    status_5xx: int = 0
    by_status: dict[int, int] = field(default_factory=dict)


class LoadBalancer:
    """ASGI app; `backends()` returns the (host, port) pairs that are healthy right now."""

    def __init__(
        self, name: str, backends: Callable[[], list[tuple[str, int]]], timeout_s: float = 60.0
    ) -> None:
        self.name = name
        self._backends = backends
        self._counter = itertools.count()
        self.faults = LbFaults()
        self.stats = LbStats()
        # No connection reuse: each forwarded request sees the backend's real behaviour,
        # including connections it drops.
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s, connect=2.0),
            limits=httpx.Limits(max_keepalive_connections=0),
            follow_redirects=False,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        response = await self._handle(request)
        self.stats.requests += 1
        self.stats.by_status[response.status_code] = (
            self.stats.by_status.get(response.status_code, 0) + 1
        )
        if response.status_code >= 500:
            self.stats.status_5xx += 1
        await response(scope, receive, send)

    async def _handle(self, request: Request) -> Response:
        if request.url.path.startswith("/__sandbox"):
            return Response("Not Found", status_code=404)  # admin routes are not exposed
        if self.faults.latency_ms:
            await asyncio.sleep(self.faults.latency_ms / 1000)
        backends = self._backends()
        if not backends:
            return _alb_error(503, "Service Temporarily Unavailable")
        if self.faults.errors:
            return Response(
                b'{"error_code": "INTERNAL_ERROR", "message": "Internal server error"}',
                status_code=500,
                media_type="application/json",
            )
        host, port = backends[next(self._counter) % len(backends)]
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP]
        client_host = request.client.host if request.client else "127.0.0.1"
        headers.append(("x-forwarded-for", client_host))
        url = f"http://{host}:{port}{request.url.path}"
        if request.url.query:
            url += f"?{request.url.query}"
        try:
            upstream = await self._client.request(
                request.method, url, headers=headers, content=await request.body()
            )
        except httpx.TimeoutException:
            return _alb_error(504, "Gateway Time-out")
        except httpx.HTTPError:
            return _alb_error(502, "Bad Gateway")
        out_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP}
        out_headers.pop("content-encoding", None)  # httpx already decoded the body
        return Response(upstream.content, status_code=upstream.status_code, headers=out_headers)


def _alb_error(status: int, title: str) -> Response:
    # The ALB answers its own errors with a small HTML page, not JSON.
    body = (
        f"<html><head><title>{status} {title}</title></head>"
        f"<body><center><h1>{status} {title}</h1></center></body></html>"
    )
    return Response(body, status_code=status, media_type="text/html")
