"""The registry's health endpoints (DESIGN.md section 4), by path and query."""

from __future__ import annotations

HEALTH = "/health"
HEALTH_DETAILED = "/health?detailed=true"
READY = "/ready"
LIVE = "/live"
HEALTH_MLFLOW = "/health/mlflow"
HEALTH_STATUS = "/health/status"
METRICS = "/metrics"
ENDPOINTS = (HEALTH, HEALTH_DETAILED, READY, LIVE, HEALTH_MLFLOW, HEALTH_STATUS, METRICS)
