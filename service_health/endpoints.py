"""The registry's health endpoints (docs/health-contract.md), by path and query: the one
list the diagnosis, the recovery and the contract tests read."""

from __future__ import annotations

HEALTH = "/health"
HEALTH_DETAILED = "/health?detailed=true"
READY = "/ready"
LIVE = "/live"
HEALTH_MLFLOW = "/health/mlflow"
HEALTH_STATUS = "/health/status"
METRICS = "/metrics"
ENDPOINTS = (HEALTH, HEALTH_DETAILED, READY, LIVE, HEALTH_MLFLOW, HEALTH_STATUS, METRICS)
# The ones sent with the bearer key.
AUTHENTICATED = frozenset({HEALTH_MLFLOW, HEALTH_STATUS})
# The only endpoint that changes the service: POST, bearer key required.
RESET = "/health/mlflow/reset"

# MLflow's own endpoints, read directly by the diagnosis and the recovery.
MLFLOW_HEALTH = "/health"
MLFLOW_SEARCH = "/api/2.0/mlflow/experiments/search"  # POST, read-only
