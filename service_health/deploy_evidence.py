"""Typed evidence of an ECS service's deployments and stopped tasks, read tolerantly from
DescribeServices, ListTasks, DescribeTasks and DescribeTaskDefinition answers.

Each reader returns what it could read and adds problems in words; none of them raises.
Never read: any container environment (task definitions and task overrides carry secrets
there); of a task definition only its family, revision and images are taken.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from service_health.fields import FieldReader
from service_health.observations import AwsObservation

# Bounds: one page of stopped tasks per service, the window they are counted in, how much
# of the service events and of any text field the report keeps.
STOPPED_TASKS_PAGE = 20
STOPPED_WINDOW_S = 600
EVENTS_KEPT = 10
DEPLOYMENTS_KEPT = 10
TEXT_CHARS = 300

_REVISION = re.compile(r"task-definition/(?P<family>[A-Za-z0-9_-]{1,255}):(?P<number>\d{1,9})$")


def clip(text: str | None, limit: int = TEXT_CHARS) -> str | None:
    """One line of at most `limit` characters (AWS text can be long or multi-line)."""
    if text is None:
        return None
    words = " ".join(text.split())
    return words if len(words) <= limit else words[: limit - 3] + "..."


def revision_label(task_definition: str | None) -> str | None:
    """ "family:N" of a task definition ARN (or of "family:N" itself); None if it is neither."""
    if not task_definition:
        return None
    text = task_definition if "/" in task_definition else f"task-definition/{task_definition}"
    m = _REVISION.search(text)
    return f"{m['family']}:{int(m['number'])}" if m else None


def revision_number(label: str | None) -> int | None:
    if not label or ":" not in label:
        return None
    return int(label.rsplit(":", 1)[1])


class Deployment(BaseModel):
    """One deployment of a service (DescribeServices `deployments[]`)."""

    id: str | None = None
    status: str | None = None  # PRIMARY / ACTIVE / INACTIVE
    task_definition: str | None = None  # the ARN
    revision: str | None = None  # "family:N"
    rollout_state: str | None = None  # IN_PROGRESS / COMPLETED / FAILED
    rollout_reason: str | None = None
    desired: int | None = None
    running: int | None = None
    pending: int | None = None
    failed_tasks: int | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


class ServiceEvent(BaseModel):
    at: datetime | None = None
    message: str


class ServiceDeployments(BaseModel):
    """A service's deployments and recent events, newest event first."""

    name: str
    running: int | None = None
    desired: int | None = None
    deployments: list[Deployment] = Field(default_factory=list)
    events: list[ServiceEvent] = Field(default_factory=list)

    @property
    def primary(self) -> Deployment | None:
        return next((d for d in self.deployments if d.status == "PRIMARY"), None)


class ContainerState(BaseModel):
    name: str | None = None
    last_status: str | None = None
    exit_code: int | None = None
    reason: str | None = None
    health: str | None = None


class EcsTask(BaseModel):
    """One task as DescribeTasks tells it (its environment and overrides are never read)."""

    task_id: str | None = None
    task_definition: str | None = None
    revision: str | None = None
    last_status: str | None = None
    desired_status: str | None = None
    stop_code: str | None = None
    stopped_reason: str | None = None
    health: str | None = None
    started_by: str | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    stopped_at: datetime | None = None
    containers: list[ContainerState] = Field(default_factory=list)

    @property
    def exit_codes(self) -> list[int]:
        return [c.exit_code for c in self.containers if c.exit_code is not None]


class TaskDefinitionFacts(BaseModel):
    """What a task definition adds to the story: its revision and images, nothing else."""

    task_definition: str | None = None
    revision: str | None = None
    images: list[str] = Field(default_factory=list)


class DeployObservations(BaseModel):
    """The reads about one service's stopped tasks, as the I/O made them."""

    list_stopped: AwsObservation | None = None
    describe_stopped: AwsObservation | None = None
    task_definitions: dict[str, AwsObservation] = Field(default_factory=dict)
    not_read: str | None = None  # why the reads stopped short (the run's deadline)


def _list(reader: FieldReader, key: str, limit: int) -> list[Any]:
    return (reader.array(key, required=False) or [])[:limit]


def read_service_deployments(
    response: dict[str, Any] | None, problems: list[str]
) -> dict[str, ServiceDeployments]:
    """DescribeServices: each service's deployments and its most recent events."""
    out: dict[str, ServiceDeployments] = {}
    services = response.get("services") if isinstance(response, dict) else None
    if not isinstance(services, list):
        return out
    for i, raw in enumerate(services):
        entry = FieldReader(raw, problems, f"services[{i}].")
        name = entry.string("serviceName", required=False)
        if not name:
            continue
        service = ServiceDeployments(
            name=name,
            running=entry.integer("runningCount", required=False),
            desired=entry.integer("desiredCount", required=False),
        )
        for j, item in enumerate(_list(entry, "deployments", DEPLOYMENTS_KEPT)):
            d = FieldReader(item, problems, f"services[{i}].deployments[{j}].")
            td = d.string("taskDefinition", required=False)
            service.deployments.append(
                Deployment(
                    id=clip(d.string("id", required=False), 100),
                    status=clip(d.string("status", required=False), 40),
                    task_definition=clip(td, 400),
                    revision=revision_label(td),
                    rollout_state=clip(d.string("rolloutState", required=False), 40),
                    rollout_reason=clip(d.string("rolloutStateReason", required=False)),
                    desired=d.integer("desiredCount", required=False),
                    running=d.integer("runningCount", required=False),
                    pending=d.integer("pendingCount", required=False),
                    failed_tasks=d.integer("failedTasks", required=False),
                    created_at=d.timestamp("createdAt", required=False),
                    updated_at=d.timestamp("updatedAt", required=False),
                )
            )
        for j, item in enumerate(_list(entry, "events", EVENTS_KEPT)):
            e = FieldReader(item, problems, f"services[{i}].events[{j}].")
            message = clip(e.string("message", required=False))
            if message:
                service.events.append(
                    ServiceEvent(at=e.timestamp("createdAt", required=False), message=message)
                )
        out[name] = service
    return out


def read_task_arns(response: dict[str, Any] | None, problems: list[str]) -> list[str]:
    """ListTasks: the task ARNs of one page (at most STOPPED_TASKS_PAGE)."""
    arns = FieldReader(response, problems).array("taskArns", required=False) or []
    good = [a for a in arns if isinstance(a, str) and 0 < len(a) <= 400]
    if len(good) < len(arns):
        problems.append(f"`taskArns`: {len(arns) - len(good)} entries are not task ARNs")
    return good[:STOPPED_TASKS_PAGE]


def read_tasks(response: dict[str, Any] | None, problems: list[str]) -> list[EcsTask]:
    """DescribeTasks: each task's status, why it stopped, its containers' exit codes."""
    out: list[EcsTask] = []
    reader = FieldReader(response, problems)
    for i, raw in enumerate(_list(reader, "tasks", STOPPED_TASKS_PAGE)):
        t = FieldReader(raw, problems, f"tasks[{i}].")
        arn = t.string("taskArn", required=False)
        td = t.string("taskDefinitionArn", required=False)
        task = EcsTask(
            task_id=clip(arn.rsplit("/", 1)[-1], 64) if arn else None,
            task_definition=clip(td, 400),
            revision=revision_label(td),
            last_status=clip(t.string("lastStatus", required=False), 40),
            desired_status=clip(t.string("desiredStatus", required=False), 40),
            stop_code=clip(t.string("stopCode", required=False), 60),
            stopped_reason=clip(t.string("stoppedReason", required=False)),
            health=clip(t.string("healthStatus", required=False), 40),
            started_by=clip(t.string("startedBy", required=False), 100),
            created_at=t.timestamp("createdAt", required=False),
            started_at=t.timestamp("startedAt", required=False),
            stopped_at=t.timestamp("stoppedAt", required=False)
            or t.timestamp("stoppingAt", required=False),
        )
        for j, item in enumerate(_list(t, "containers", 10)):
            c = FieldReader(item, problems, f"tasks[{i}].containers[{j}].")
            task.containers.append(
                ContainerState(
                    name=clip(c.string("name", required=False), 100),
                    last_status=clip(c.string("lastStatus", required=False), 40),
                    exit_code=c.integer("exitCode", required=False),
                    reason=clip(c.string("reason", required=False)),
                    health=clip(c.string("healthStatus", required=False), 40),
                )
            )
        out.append(task)
    return out


def read_task_definition(
    response: dict[str, Any] | None, problems: list[str]
) -> TaskDefinitionFacts | None:
    """DescribeTaskDefinition: its ARN, revision and images. The container definitions'
    environment, secrets and everything else are left unread."""
    td = FieldReader(response, problems).sub("taskDefinition", required=False)
    if not td.present:
        return None
    arn = td.string("taskDefinitionArn", required=False)
    images = []
    for j, item in enumerate(_list(td, "containerDefinitions", 10)):
        image = FieldReader(item, problems, f"containerDefinitions[{j}].").string(
            "image", required=False
        )
        if image:
            images.append(clip(image, 200) or "")
    return TaskDefinitionFacts(
        task_definition=clip(arn, 400), revision=revision_label(arn), images=images
    )


# --- what the diagnosis concludes of one service's deployments (typed facts) ----------


class StopCause(BaseModel):
    """One reason tasks stopped for, with how often and the exit codes it came with."""

    reason: str
    stop_code: str | None = None
    exit_codes: list[int] = Field(default_factory=list)
    container_reasons: list[str] = Field(default_factory=list)
    count: int = 0
    last_at: datetime | None = None

    def text(self) -> str:
        details = []
        if self.exit_codes:
            word = "exit code" if len(self.exit_codes) == 1 else "exit codes"
            details.append(f"{word} {', '.join(str(c) for c in self.exit_codes)}")
        details.extend(self.container_reasons[:2])
        return self.reason + (f" ({'; '.join(details)})" if details else "")


class RevisionStops(BaseModel):
    """The stopped tasks of one revision within the window."""

    revision: str | None = None
    task_definition: str | None = None
    stopped: int = 0
    failed: int = 0  # of those, stopped for a reason that is the revision's
    causes: list[StopCause] = Field(default_factory=list)


class DeployFacts(BaseModel):
    """What the diagnosis knows of one ECS service's deployments, for people and planners:
    the PRIMARY deployment (its revision and rollout state), the failing revision with its
    evidence, and the last revision that completed a deployment (what a rollback targets)."""

    service: str
    window_s: int = STOPPED_WINDOW_S
    primary: Deployment | None = None
    deployments: list[Deployment] = Field(default_factory=list)
    failing_revision: str | None = None
    failing_task_definition: str | None = None
    failing_evidence: list[str] = Field(default_factory=list)
    last_completed_revision: str | None = None
    last_completed_task_definition: str | None = None
    running_revisions: dict[str, int] = Field(default_factory=dict)  # revision -> running
    stopped: list[RevisionStops] = Field(default_factory=list)
    latest_stopped: list[EcsTask] = Field(default_factory=list)  # newest first, a few
    stopped_tasks_read: int = 0
    images: dict[str, list[str]] = Field(default_factory=dict)  # revision -> images
    events: list[ServiceEvent] = Field(default_factory=list)
    problems: list[str] = Field(default_factory=list)
    not_read: list[str] = Field(default_factory=list)  # reads that failed, and why
