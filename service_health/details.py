"""Typed details of the checks the recovery reads: the API's answer, the breaker of each
replica, the ECS services, the target groups. Pure.

The assessment produces them (`CheckResult.facts`) and the planner consumes them by type.
In the JSON output their fields appear flattened among the check's other details, under
the seed's names, exactly as when they were free-form.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from service_health.deploy_evidence import DeployFacts


class _Facts(BaseModel):
    def seed_fields(self) -> dict[str, JsonValue]:
        """The fields as the JSON output shows them, flattened into the check."""
        return self.model_dump(mode="json", exclude={"kind"})


class ApiFacts(_Facts):
    """api_connectivity: the answer of GET /health through the load balancer."""

    kind: Literal["api_connectivity"] = "api_connectivity"
    url: str
    status_code: int | None
    response_time_ms: float | None


class ReplicaBreaker(BaseModel):
    """One replica's breaker, read from its /health/mlflow (or inferred, and then says so)."""

    state: str  # CLOSED, OPEN, HALF_OPEN or UNKNOWN (or what an answer said instead)
    failure_count: int | None
    time_until_retry: float | None
    recovery_attempts: int | None
    stuck: bool | None  # OPEN with no retry scheduled: waits for a manual reset
    connected: bool | None
    readable: bool
    inferred_from: str | None  # the evidence an unreadable state was inferred from
    http_status: int | None
    replica: str | None  # "host:port" when read directly; None when sampled through the LB


class BreakerFacts(_Facts):
    """circuit_breaker: the state per replica (or per sampled answer) and overall."""

    kind: Literal["circuit_breaker"] = "circuit_breaker"
    replicas: dict[str, ReplicaBreaker]  # address, or "sample-N" through the load balancer
    state: str
    open_replicas: list[str]
    sampled_through_load_balancer: bool


class EcsServiceState(BaseModel):
    """One ECS service as DescribeServices told it."""

    model_config = ConfigDict(extra="forbid")

    status: str | None
    desired: int | None
    running: int | None
    pending: int | None
    rollout_state: str | None  # of the PRIMARY deployment
    deployments: int
    recent_events: list[str]


class MissingService(BaseModel):
    """A configured ECS service DescribeServices did not return."""

    model_config = ConfigDict(extra="forbid")

    status: Literal["MISSING"] = "MISSING"


class EcsFacts(_Facts):
    """ecs: every configured service."""

    kind: Literal["ecs"] = "ecs"
    services: dict[str, EcsServiceState | MissingService]
    # Why tasks die, per service (read where the stopped tasks could be): for planners.
    deploys: dict[str, DeployFacts] = Field(default_factory=dict)


class TargetState(BaseModel):
    address: str | None
    state: str | None  # healthy / unhealthy / initial / draining / unused / unavailable
    reason: str | None


class TargetGroupState(BaseModel):
    model_config = ConfigDict(extra="forbid")

    healthy: int
    total: int
    targets: list[TargetState]


class TargetGroupError(BaseModel):
    """A target group whose health could not be read."""

    model_config = ConfigDict(extra="forbid")

    error: str | None


class AlbFacts(_Facts):
    """alb: the load balancers' states and each target group's health."""

    kind: Literal["alb"] = "alb"
    load_balancers: dict[str, str | None] | None = None  # None: no load balancer configured
    target_groups: dict[str, TargetGroupState | TargetGroupError]
    mlflow_target_groups: list[str]  # configured, or derived from ECS

    def seed_fields(self) -> dict[str, JsonValue]:
        fields = super().seed_fields()
        if self.load_balancers is None:
            del fields["load_balancers"]
        return fields


CheckFacts = Annotated[ApiFacts | BreakerFacts | EcsFacts | AlbFacts, Field(discriminator="kind")]
