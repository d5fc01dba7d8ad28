"""Release defects: what a bad task definition revision does to a registry replica.

The `bad-deploy` fault registers a revision whose container environment sets
`SANDBOX_RELEASE_DEFECT`; the ECS simulation starts each task with its revision's
environment, as ECS does, so the defect travels with the revision, not with the process:

- `crash`: the process exits with code 1 as it starts (a release that cannot boot);
- `unhealthy`: the process serves, but its liveness and health routes answer 503, so its
  load balancer target never passes a health check (a release that boots broken).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from enum import StrEnum

from starlette.types import ASGIApp, Receive, Scope, Send

ENV_RELEASE_DEFECT = "SANDBOX_RELEASE_DEFECT"
# The routes a load balancer's health check may probe on the registry.
HEALTH_CHECK_PATHS = frozenset({"/live", "/health"})


class ReleaseDefect(StrEnum):
    NONE = "none"
    CRASH = "crash"
    UNHEALTHY = "unhealthy"


def release_defect(env: Mapping[str, str]) -> ReleaseDefect:
    raw = env.get(ENV_RELEASE_DEFECT, "").strip().lower() or ReleaseDefect.NONE.value
    try:
        return ReleaseDefect(raw)
    except ValueError:
        choices = ", ".join(d.value for d in ReleaseDefect)
        raise ValueError(f"{ENV_RELEASE_DEFECT} must be one of {choices}") from None


class FailingHealthChecks:
    """ASGI wrapper: the health-check routes answer 503, everything else is served."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in HEALTH_CHECK_PATHS:
            await self.app(scope, receive, send)
            return
        body = json.dumps({"status": "unhealthy", "detail": "release defect"}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 503,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
