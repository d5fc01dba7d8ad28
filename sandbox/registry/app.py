"""Assembly of the registry stand-in: runtime, flavour routes, sandbox controls."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Any

from fastapi import FastAPI
from starlette.types import Scope

from sandbox.registry import contract, legacy
from sandbox.registry.admin import CountedBreaker, SandboxControls, SandboxMiddleware, admin_router
from sandbox.registry.config import Flavor, RegistryConfig
from sandbox.registry.runtime import Runtime


def create_app(config: RegistryConfig | None = None) -> FastAPI:
    """One registry replica; `config` defaults to the process environment."""
    config = config if config is not None else RegistryConfig.from_env(os.environ)
    name = f"mlflow[{config.replica_id}]" if config.replica_id else "mlflow"
    controls = SandboxControls(config.sandbox_admin_token)
    runtime = Runtime(
        config=config,
        breaker=CountedBreaker(config.breaker, controls, name=name),
        controls=controls,
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
        controls.touches_mlflow = legacy.touches_mlflow
    else:
        contract.install(app, runtime)
        controls.touches_mlflow = _contract_touches_mlflow

    def describe() -> dict[str, Any]:
        return {
            "replica_id": config.replica_id,
            "flavor": config.flavor.value,
            "service_name": config.service_name,
            "pid": os.getpid(),
            "breaker": runtime.breaker.snapshot(),
            "fault": runtime.controls.fault.model_dump(mode="json"),
            "mlflow_timeout": config.mlflow_timeout,
            "legacy_retry_budget": asdict(config.legacy),
        }

    app.include_router(admin_router(runtime.controls, runtime.breaker, describe))
    # Added last, so outermost: faults and counting apply before anything else runs.
    app.add_middleware(SandboxMiddleware, controls=runtime.controls)
    return app


# Every contract endpoint that calls MLflow through the breaker.
_CONTRACT_MLFLOW_PATHS = frozenset({"/health", "/ready", "/health/mlflow", "/health/status"})


def _contract_touches_mlflow(scope: Scope) -> bool:
    return scope["method"] == "GET" and scope["path"] in _CONTRACT_MLFLOW_PATHS
