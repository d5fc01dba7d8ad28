"""Tolerant readers of the boto3 responses the diagnosis uses (ELBv2, ECS, RDS, CloudWatch).

Each reader returns the entries it could read plus problems; none of them raises.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from service_health.fields import FieldReader, type_name


class TargetHealthEntry(BaseModel):
    id: str | None = None
    port: int | None = None
    state: str | None = None  # healthy / unhealthy / initial / draining / unused / unavailable
    reason: str | None = None
    description: str | None = None

    @property
    def address(self) -> str | None:
        """ "ip:port" for reaching this replica directly, when both are known."""
        if self.id is None or self.port is None:
            return None
        return f"{self.id}:{self.port}"


class TargetHealthView(BaseModel):
    targets: list[TargetHealthEntry] = Field(default_factory=list)
    problems: list[str] = Field(default_factory=list)

    def addresses(self, healthy_only: bool = False) -> list[str]:
        """Replica addresses registered in the group, for per-replica checks and resets."""
        return [
            t.address
            for t in self.targets
            if t.address is not None and (not healthy_only or t.state == "healthy")
        ]


class LoadBalancerEntry(BaseModel):
    name: str | None = None
    state: str | None = None  # active / provisioning / active_impaired / failed
    dns_name: str | None = None


class EcsServiceEntry(BaseModel):
    name: str | None = None
    status: str | None = None  # ACTIVE / DRAINING / INACTIVE
    desired: int | None = None
    running: int | None = None
    pending: int | None = None
    rollout_state: str | None = None  # of the PRIMARY deployment: IN_PROGRESS/COMPLETED/FAILED
    rollout_reason: str | None = None
    deployments: int = 0
    recent_events: list[str] = Field(default_factory=list)


class EcsServicesView(BaseModel):
    services: list[EcsServiceEntry] = Field(default_factory=list)
    failures: dict[str, str] = Field(default_factory=dict)  # service name or ARN -> reason
    problems: list[str] = Field(default_factory=list)


class DbInstanceEntry(BaseModel):
    id: str | None = None
    status: str | None = None
    engine: str | None = None
    multi_az: bool | None = None


class AlarmEntry(BaseModel):
    name: str | None = None
    state: str | None = None  # OK / ALARM / INSUFFICIENT_DATA
    reason: str | None = None
    metric: str | None = None


def _entries(response: dict[str, Any] | None, key: str, problems: list[str]) -> list[Any]:
    if response is None:
        problems.append("no response")
        return []
    value = response.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        problems.append(f"`{key}`: expected array, got {type_name(value)}")
        return []
    return value


def read_target_health(response: dict[str, Any] | None) -> TargetHealthView:
    """elbv2 DescribeTargetHealth."""
    view = TargetHealthView()
    for i, item in enumerate(_entries(response, "TargetHealthDescriptions", view.problems)):
        entry = FieldReader(item, view.problems, f"TargetHealthDescriptions[{i}].")
        target = entry.sub("Target")
        health = entry.sub("TargetHealth")
        view.targets.append(
            TargetHealthEntry(
                id=target.string("Id"),
                port=target.integer("Port", required=False),
                state=health.string("State"),
                reason=health.string("Reason", required=False),
                description=health.string("Description", required=False),
            )
        )
    return view


def read_load_balancers(
    response: dict[str, Any] | None, problems: list[str]
) -> list[LoadBalancerEntry]:
    """elbv2 DescribeLoadBalancers."""
    out = []
    for i, item in enumerate(_entries(response, "LoadBalancers", problems)):
        entry = FieldReader(item, problems, f"LoadBalancers[{i}].")
        out.append(
            LoadBalancerEntry(
                name=entry.string("LoadBalancerName"),
                state=entry.sub("State").string("Code"),
                dns_name=entry.string("DNSName", required=False),
            )
        )
    return out


def read_ecs_services(response: dict[str, Any] | None) -> EcsServicesView:
    """ecs DescribeServices, including its `failures` (e.g. reason MISSING)."""
    view = EcsServicesView()
    for i, item in enumerate(_entries(response, "services", view.problems)):
        entry = FieldReader(item, view.problems, f"services[{i}].")
        service = EcsServiceEntry(
            name=entry.string("serviceName"),
            status=entry.string("status"),
            desired=entry.integer("desiredCount"),
            running=entry.integer("runningCount"),
            pending=entry.integer("pendingCount", required=False),
        )
        deployments = entry.array("deployments", required=False) or []
        service.deployments = len(deployments)
        for j, raw in enumerate(deployments):
            deployment = FieldReader(raw, view.problems, f"services[{i}].deployments[{j}].")
            if deployment.string("status", required=False) == "PRIMARY":
                service.rollout_state = deployment.string("rolloutState", required=False)
                service.rollout_reason = deployment.string("rolloutStateReason", required=False)
        for raw in (entry.array("events", required=False) or [])[:3]:
            message = FieldReader(raw, view.problems).string("message", required=False)
            if message:
                service.recent_events.append(message)
        view.services.append(service)
    for i, item in enumerate(_entries(response, "failures", [])):
        entry = FieldReader(item, view.problems, f"failures[{i}].")
        arn = entry.string("arn", required=False) or "?"
        view.failures[arn.rsplit("/", 1)[-1]] = entry.string("reason", required=False) or "?"
    return view


def read_db_instances(
    response: dict[str, Any] | None, problems: list[str]
) -> list[DbInstanceEntry]:
    """rds DescribeDBInstances."""
    out = []
    for i, item in enumerate(_entries(response, "DBInstances", problems)):
        entry = FieldReader(item, problems, f"DBInstances[{i}].")
        out.append(
            DbInstanceEntry(
                id=entry.string("DBInstanceIdentifier"),
                status=entry.string("DBInstanceStatus"),
                engine=entry.string("Engine", required=False),
                multi_az=entry.boolean("MultiAZ", required=False),
            )
        )
    return out


def read_alarms(response: dict[str, Any] | None, problems: list[str]) -> list[AlarmEntry]:
    """cloudwatch DescribeAlarms (metric and composite alarms)."""
    out: list[AlarmEntry] = []
    if response is None:
        problems.append("no response")
        return out
    for key in ("MetricAlarms", "CompositeAlarms"):
        for i, item in enumerate(_entries(response, key, problems)):
            entry = FieldReader(item, problems, f"{key}[{i}].")
            out.append(
                AlarmEntry(
                    name=entry.string("AlarmName"),
                    state=entry.string("StateValue"),
                    reason=entry.string("StateReason", required=False),
                    metric=entry.string("MetricName", required=False),
                )
            )
    return out
