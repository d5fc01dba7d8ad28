"""What the tolerant readers found in each answer of the health contract (section 4).

Every field is None when it was missing or of the wrong type; `problems` says why, in words
the contract-test flow can show as violations.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from service_health.models import BreakerState


class EndpointView(BaseModel):
    status_code: int | None = None
    answered: bool = False  # an HTTP answer arrived (whatever its status)
    body_is_json: bool = False
    problems: list[str] = Field(default_factory=list)


class HealthView(EndpointView):
    status: str | None = None  # healthy / degraded / unhealthy, or the raw unknown value
    version: str | None = None
    services: dict[str, str] = Field(default_factory=dict)
    timestamp: datetime | None = None
    system_info: dict[str, Any] | None = None
    # The deployed version's answer: services names no dependency (only api/dependency_checks).
    lightweight: bool = False

    def service(self, name: str) -> str | None:
        return self.services.get(name)


class ReadyCheck(BaseModel):
    name: str | None = None
    passed: bool | None = None
    critical: bool | None = None
    degraded_mode: bool | None = None
    error: str | None = None


class ReadyView(EndpointView):
    ready: bool | None = None
    can_serve_traffic: bool | None = None
    degraded_mode: bool | None = None
    checks: list[ReadyCheck] = Field(default_factory=list)

    def check(self, *names: str) -> ReadyCheck | None:
        """First check whose name matches one of `names` (case-insensitive)."""
        wanted = {n.lower() for n in names}
        for item in self.checks:
            if item.name is not None and item.name.lower() in wanted:
                return item
        return None


class LiveView(EndpointView):
    alive: bool | None = None
    timestamp: datetime | None = None
    uptime: float | None = None
    memory_usage_mb: float | None = None


class MlflowHealthView(EndpointView):
    connected: bool | None = None
    # A BreakerState member when recognised, else the raw value as sent.
    breaker_state: BreakerState | str | None = None
    failure_count: int | None = None
    time_until_retry: float | None = None
    recovery_attempts: int | None = None
    error: str | None = None
    timestamp: datetime | None = None
    consecutive_successes: int | None = None
    failure_threshold: int | None = None
    recovery_timeout: float | None = None
    # False when the state cannot be read, e.g. the deployed version's 500 "UNKNOWN".
    state_readable: bool = False


class StatusView(EndpointView):
    service_name: str | None = None
    overall_health: str | None = None
    mlflow: dict[str, Any] | None = None
    breaker_state: BreakerState | str | None = None
    system_info: dict[str, Any] | None = None
    timestamp: datetime | None = None
    error_text: str | None = None  # start of a non-JSON body, e.g. a validation error


class MetricsView(BaseModel):
    parsed: bool = False  # at least one metric family was read
    families: list[str] = Field(default_factory=list)
    breaker_state: BreakerState | str | None = None
    breaker_state_value: float | None = None
    # The gauge's value -> state mapping as its HELP text documents it; None: not documented
    # there, read with the contract's mapping.
    breaker_state_mapping: dict[int, BreakerState] | None = None
    breaker_failures: float | None = None
    breaker_recovery_attempts: float | None = None
    connection_status: float | None = None  # deployed version: 1 connected, 0 not
    has_http_requests_total: bool = False
    http_requests_by_status_class: dict[str, float] = Field(default_factory=dict)
    legacy_names: list[str] = Field(default_factory=list)  # deployed-version series present
    mlflow_info_labels: dict[str, str] = Field(default_factory=dict)
    problems: list[str] = Field(default_factory=list)


class MlflowSearchView(EndpointView):
    experiment_count: int | None = None
    experiment_names: list[str] = Field(default_factory=list)
    error_code: str | None = None  # MLflow's own error answer {"error_code", "message"}
    message: str | None = None
