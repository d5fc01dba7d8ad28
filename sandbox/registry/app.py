"""Assembly of the registry stand-in: runtime, flavour routes, sandbox controls."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from sandbox.breaker import CircuitBreaker
from sandbox.registry import contract, legacy
from sandbox.registry.admin import SandboxControls, SandboxMiddleware, admin_router
from sandbox.registry.config import Flavor, RegistryConfig
from sandbox.registry.runtime import Runtime


def create_app(config: RegistryConfig | None = None) -> FastAPI:
    """One registry replica; `config` defaults to the process environment."""
    config = config if config is not None else RegistryConfig.from_env(os.environ)
    name = f"mlflow[{config.replica_id}]" if config.replica_id else "mlflow"
    runtime = Runtime(
        config=config,
        breaker=CircuitBreaker(config.breaker, name=name),
        controls=SandboxControls(config.sandbox_admin_token),
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        runtime.open_clients()
        try:
            yield
        finally:
            await runtime.close_clients()

    app = FastAPI(
        title=config.service_name,
        version=config.service_version,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.runtime = runtime
    if config.flavor is Flavor.LEGACY:
        legacy.install(app, runtime)
    else:
        contract.install(app, runtime)

    def describe() -> dict[str, Any]:
        return {
            "replica_id": config.replica_id,
            "flavor": config.flavor.value,
            "service_name": config.service_name,
            "pid": os.getpid(),
            "breaker": runtime.breaker.snapshot(),
            "fault": runtime.controls.fault.model_dump(mode="json"),
        }

    app.include_router(admin_router(runtime.controls, runtime.breaker.force_stuck_open, describe))
    # Added last, so outermost: faults and counting apply before anything else runs.
    app.add_middleware(SandboxMiddleware, controls=runtime.controls)
    return app
