"""The sandbox's control API: inject and heal faults, read status, count requests."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

from sandbox.system import FaultError, Sandbox


class FaultRequest(BaseModel):
    replica: int | None = None
    all: bool = False
    ms: int | None = None
    component: str | None = None
    mode: str | None = None


class HealRequest(BaseModel):
    name: str | None = None


def create_control_app(sandbox: Sandbox, info: dict[str, Any]) -> FastAPI:
    app = FastAPI(title="Hokusai sandbox control")

    @app.get("/info")
    async def get_info() -> dict[str, Any]:
        return info

    @app.get("/status")
    async def status() -> dict[str, Any]:
        return sandbox.status()

    @app.post("/faults/{name}")
    async def inject(name: str, req: FaultRequest) -> dict[str, Any]:
        try:
            return await sandbox.inject(
                name,
                replica=req.replica,
                everything=req.all,
                ms=req.ms,
                component=req.component,
                mode=req.mode,
            )
        except FaultError as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from exc

    @app.post("/heal")
    async def heal(req: HealRequest) -> dict[str, Any]:
        try:
            return {"healed": await sandbox.heal(req.name)}
        except FaultError as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from exc

    @app.get("/requests")
    async def requests() -> dict[str, Any]:
        stats = await sandbox.request_stats()
        # "replicas" keeps its first shape (counts by request); "stats" has everything.
        return {"replicas": {a: s["counts"] for a, s in stats.items()}, "stats": stats}

    @app.post("/breaker/{state}")
    async def force_breaker(state: str, req: FaultRequest) -> dict[str, Any]:
        try:
            return {"replicas": await sandbox.force_breaker(state, replica=req.replica)}
        except FaultError as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from exc

    @app.get("/breakers")
    async def breakers() -> dict[str, Any]:
        return {"replicas": await sandbox.breaker_states()}

    @app.post("/requests/reset")
    async def reset_requests() -> dict[str, str]:
        await sandbox.reset_request_counts()
        return {"status": "reset"}

    return app
