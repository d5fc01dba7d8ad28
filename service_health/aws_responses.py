"""Tolerant readers of the boto3 responses the diagnosis and the recovery use (ELBv2, ECS,
RDS, CloudWatch): one reader per AWS answer.

Each reader returns the entries it could read plus problems; none of them raises.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

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


class LoadBalancerEntry(BaseModel):
    name: str | None = None
    state: str | None = None  # active / provisioning / active_impaired / failed
    dns_name: str | None = None


class EcsServiceEntry(BaseModel):
    name: str | None = None
    arn: str | None = None
    status: str | None = None  # ACTIVE / DRAINING / INACTIVE (MISSING: not in the answer)
    desired: int | None = None
    running: int | None = None
    pending: int | None = None
    # Of the PRIMARY deployment: its rollout state (IN_PROGRESS/COMPLETED/FAILED), id and
    # creation time.
    rollout_state: str | None = None
    rollout_reason: str | None = None
    primary_deployment_id: str | None = None
    primary_created_at: str | None = None
    primary_task_definition: str | None = None  # the ARN the PRIMARY deployment runs
    deployments: int = 0
    recent_events: list[str] = Field(default_factory=list)
    target_group_arns: list[str] = Field(default_factory=list)  # from `loadBalancers`

    @property
    def stable(self) -> bool:
        """boto3's services_stable waiter's success condition (one deployment, running ==
        desired) plus a primary rollout that is not IN_PROGRESS."""
        return (
            self.status == "ACTIVE"
            and self.deployments == 1
            and self.running is not None
            and self.running == self.desired
            and self.rollout_state != "IN_PROGRESS"
        )

    @property
    def gone(self) -> bool:
        """The waiter's failure condition: the service is missing, draining or inactive."""
        return self.status in ("MISSING", "DRAINING", "INACTIVE")

    def describe(self) -> str:
        rollout = f", {self.rollout_state}" if self.rollout_state else ""
        return (
            f"{self.name} {self.running}/{self.desired} running, "
            f"{self.deployments} deployment{'s' if self.deployments != 1 else ''}{rollout}"
            + ("" if self.status in (None, "ACTIVE") else f", {self.status}")
        )


class EcsServicesView(BaseModel):
    services: list[EcsServiceEntry] = Field(default_factory=list)
    failures: dict[str, str] = Field(default_factory=dict)  # service name or ARN -> reason
    problems: list[str] = Field(default_factory=list)

    def named(self) -> dict[str, EcsServiceEntry]:
        return {s.name: s for s in self.services if s.name}

    def for_names(self, names: Sequence[str]) -> list[EcsServiceEntry]:
        """One entry per requested name, in order; MISSING where the answer has none."""
        found = self.named()
        return [found.get(n) or EcsServiceEntry(name=n, status="MISSING") for n in names]


class TargetGroupEntry(BaseModel):
    name: str
    arn: str


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


def _entries(response: Mapping[str, object] | None, key: str, problems: list[str]) -> list[object]:
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


def read_target_health(response: Mapping[str, object] | None) -> TargetHealthView:
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
    response: Mapping[str, object] | None, problems: list[str]
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


def read_target_groups(response: Mapping[str, object] | None) -> list[TargetGroupEntry]:
    """elbv2 DescribeTargetGroups: the groups with both a name and an ARN."""
    problems: list[str] = []
    out = []
    for i, item in enumerate(_entries(response, "TargetGroups", problems)):
        entry = FieldReader(item, problems, f"TargetGroups[{i}].")
        name, arn = entry.string("TargetGroupName"), entry.string("TargetGroupArn")
        if name and arn:
            out.append(TargetGroupEntry(name=name, arn=arn))
    return out


def read_ecs_services(response: Mapping[str, object] | None) -> EcsServicesView:
    """ecs DescribeServices, including its `failures` (e.g. reason MISSING)."""
    view = EcsServicesView()
    for i, item in enumerate(_entries(response, "services", view.problems)):
        entry = FieldReader(item, view.problems, f"services[{i}].")
        service = EcsServiceEntry(
            name=entry.string("serviceName"),
            arn=entry.string("serviceArn", required=False),
            status=entry.string("status"),
            desired=entry.integer("desiredCount"),
            running=entry.integer("runningCount"),
            pending=entry.integer("pendingCount", required=False),
        )
        deployments = [d for d in entry.array("deployments", required=False) or []
                       if isinstance(d, dict)]  # fmt: skip
        service.deployments = len(deployments)
        for j, raw in enumerate(deployments):
            deployment = FieldReader(raw, view.problems, f"services[{i}].deployments[{j}].")
            if deployment.string("status", required=False) == "PRIMARY":
                service.rollout_state = deployment.string("rolloutState", required=False)
                service.rollout_reason = deployment.string("rolloutStateReason", required=False)
                service.primary_deployment_id = deployment.string("id", required=False)
                service.primary_task_definition = deployment.string(
                    "taskDefinition", required=False
                )
                created = deployment.raw("createdAt")
                service.primary_created_at = str(created) if created else None
        for raw in (entry.array("events", required=False) or [])[:3]:
            message = FieldReader(raw, view.problems).string("message", required=False)
            if message:
                service.recent_events.append(message)
        for raw in entry.array("loadBalancers", required=False) or []:
            arn = FieldReader(raw, view.problems).string("targetGroupArn", required=False)
            if arn:
                service.target_group_arns.append(arn)
        view.services.append(service)
    for i, item in enumerate(_entries(response, "failures", [])):
        entry = FieldReader(item, view.problems, f"failures[{i}].")
        arn = entry.string("arn", required=False) or "?"
        view.failures[arn.rsplit("/", 1)[-1]] = entry.string("reason", required=False) or "?"
    return view


def read_db_instances(
    response: Mapping[str, object] | None, problems: list[str]
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


def read_alarms(response: Mapping[str, object] | None, problems: list[str]) -> list[AlarmEntry]:
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
