"""A stand-in for an MLflow tracking server, serving the REST endpoints the system calls.

- ``GET /health`` -> 200 ``OK`` (text), as ``mlflow server`` answers.
- ``GET /version`` -> the version string, as ``mlflow server`` answers.
- ``POST /api/2.0/mlflow/experiments/search`` -> the ``Default`` experiment, shaped like
  MLflow's JSON (``max_results`` and ``view_type`` are validated and honoured; ``filter``
  and ``order_by`` are accepted and not evaluated, since one experiment matches anything
  the system asks for).
- Any other ``/api/2.0/...`` or ``/ajax-api/2.0/...`` path -> 404 with MLflow's error body;
  that includes ``GET /api/2.0/mlflow/experiments/list``, which MLflow 2.x removed.

Run: ``python -m sandbox.mlflow_stub --host 127.0.0.1 --port 5000``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse

STUB_VERSION = "2.17.0"
# MLflow rejects larger pages with INVALID_PARAMETER_VALUE.
MAX_RESULTS_LIMIT = 50000
VIEW_TYPES = ("ACTIVE_ONLY", "DELETED_ONLY", "ALL")


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error_code": code, "message": message}, status_code=status)


def create_app(artifact_root: str = "mlflow-artifacts:/") -> FastAPI:
    app = FastAPI(title="mlflow-stub", docs_url=None, redoc_url=None, openapi_url=None)
    created_ms = int(time.time() * 1000)
    default_experiment: dict[str, Any] = {
        "experiment_id": "0",
        "name": "Default",
        "artifact_location": f"{artifact_root.rstrip('/')}/0",
        "lifecycle_stage": "active",
        "last_update_time": created_ms,
        "creation_time": created_ms,
    }

    @app.get("/health", response_class=PlainTextResponse)
    async def health() -> str:
        return "OK"

    @app.get("/version", response_class=PlainTextResponse)
    async def version() -> str:
        return STUB_VERSION

    @app.post("/api/2.0/mlflow/experiments/search")
    @app.post("/ajax-api/2.0/mlflow/experiments/search")
    async def search_experiments(request: Request) -> JSONResponse:
        raw = await request.body()
        try:
            body = json.loads(raw) if raw.strip() else {}
        except ValueError as exc:
            return _error(400, "MALFORMED_REQUEST", f"Failed to parse request body: {exc}")
        if not isinstance(body, dict):
            return _error(400, "MALFORMED_REQUEST", "Request body must be a JSON object")

        max_results = body.get("max_results", 1000)
        if isinstance(max_results, str) and max_results.isdigit():
            max_results = int(max_results)  # proto JSON allows int64 as a string
        if not isinstance(max_results, int) or isinstance(max_results, bool):
            return _error(400, "INVALID_PARAMETER_VALUE", "max_results must be an integer")
        if not 1 <= max_results <= MAX_RESULTS_LIMIT:
            return _error(
                400,
                "INVALID_PARAMETER_VALUE",
                f"Invalid value {max_results} for parameter 'max_results' supplied. "
                f"It must be a positive integer not greater than {MAX_RESULTS_LIMIT}",
            )
        view_type = body.get("view_type", "ACTIVE_ONLY")
        if view_type not in VIEW_TYPES:
            return _error(
                400, "INVALID_PARAMETER_VALUE", f"Invalid value {view_type!r} for view_type"
            )

        experiments = [] if view_type == "DELETED_ONLY" else [default_experiment]
        # Proto JSON omits empty repeated fields, so an empty page is {}.
        payload = {"experiments": experiments[:max_results]} if experiments else {}
        return JSONResponse(payload)

    @app.api_route("/api/2.0/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
    @app.api_route("/ajax-api/2.0/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
    async def unknown_endpoint(request: Request, rest: str) -> JSONResponse:
        return _error(
            404,
            "ENDPOINT_NOT_FOUND",
            f"No API route found for {request.method} {request.url.path}",
        )

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="MLflow tracking server stand-in")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    uvicorn.run(
        create_app(),
        host=args.host,
        port=args.port,
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=5,
    )


if __name__ == "__main__":
    main()
