"""Why tasks die: the deploy evidence of the ECS check, on DescribeServices, DescribeTasks and
DescribeTaskDefinition answers shaped as boto3 returns them (datetimes as ISO text)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from service_health.assessment import assess_ecs
from service_health.assessment.deploys import task_definitions_to_describe
from service_health.deploy_evidence import (
    TEXT_CHARS,
    DeployFacts,
    DeployObservations,
    read_service_deployments,
    read_task_definition,
    revision_label,
)
from service_health.details import EcsFacts
from service_health.models import CheckResult, CheckStatus
from tests.domain.bodies import aws
from tests.domain.helpers import messages, severities

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
SERVICE = "hokusai-registry"
TG = "arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/hokusai-registry-tg/1a2b"
SECRET = "s3cr3t-release-token-value"
NEW, OLD = "ecs-svc/4200000000000000042", "ecs-svc/4100000000000000041"
CRASH = ("EssentialContainerExited", "Essential container in task exited")
ELB = ("ServiceSchedulerInitiated", f"Task failed ELB health checks in (target-group {TG})")
DRAIN = ("ServiceSchedulerInitiated", f"Scaling activity initiated by (deployment {NEW})")


def td(revision: int, family: str = SERVICE) -> str:
    return f"arn:aws:ecs:eu-west-1:123456789012:task-definition/{family}:{revision}"


def ago(minutes: float) -> str:
    return (NOW - timedelta(minutes=minutes)).isoformat()


def deployment(
    dep_id: str,
    revision: int,
    status: str,
    rollout: str,
    running: int,
    failed: int = 0,
    created: float = 30,
) -> dict[str, Any]:
    return {
        "id": dep_id,
        "status": status,
        "taskDefinition": td(revision),
        "desiredCount": 2,
        "runningCount": running,
        "pendingCount": 0,
        "failedTasks": failed,
        "rolloutState": rollout,
        "rolloutStateReason": {
            "FAILED": "ECS deployment circuit breaker: tasks failed to start.",
            "COMPLETED": f"ECS deployment {dep_id} completed.",
        }.get(rollout, f"ECS deployment {dep_id} in progress."),
        "createdAt": ago(created),
        "updatedAt": ago(1),
    }


def task(
    revision: int,
    stop: tuple[str, str],
    exit_code: int | None,
    minutes: float = 2,
    started_by: str = NEW,
    container_reason: str | None = None,
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": SERVICE,
        "lastStatus": "STOPPED",
        "healthStatus": "UNKNOWN",
    }
    if exit_code is not None:
        container["exitCode"] = exit_code
    if container_reason:
        container["reason"] = container_reason
    return {
        "taskArn": f"arn:aws:ecs:eu-west-1:123456789012:task/hokusai/{revision:04d}{minutes:.0f}",
        "taskDefinitionArn": td(revision),
        "lastStatus": "STOPPED",
        "desiredStatus": "STOPPED",
        "stopCode": stop[0],
        "stoppedReason": stop[1],
        "healthStatus": "UNKNOWN",
        "startedBy": started_by,
        "createdAt": ago(minutes + 0.5),
        "startedAt": ago(minutes + 0.4),
        "stoppedAt": ago(minutes),
        "containers": [container],
        # what DescribeTasks also returns, and what must never be read
        "overrides": {"containerOverrides": [{"environment": [{"name": "T", "value": SECRET}]}]},
    }


@dataclass
class World:
    deployments: list[dict[str, Any]]
    running: int = 2
    tasks: list[dict[str, Any]] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    list_error: str | None = None
    describe_error: str | None = None

    def services(self) -> Any:
        return aws(
            "ecs",
            "describe_services",
            {
                "services": [
                    {
                        "serviceName": SERVICE,
                        "status": "ACTIVE",
                        "desiredCount": 2,
                        "runningCount": self.running,
                        "pendingCount": 0,
                        "taskDefinition": self.deployments[0]["taskDefinition"],
                        "deployments": self.deployments,
                        "events": [
                            {"message": m, "createdAt": ago(i + 1)}
                            for i, m in enumerate(self.events)
                        ],
                    }
                ],
                "failures": [],
            },
        )

    def observed(self) -> DeployObservations:
        arns = [t["taskArn"] for t in self.tasks]
        listed = aws("ecs", "list_tasks", None if self.list_error else {"taskArns": arns})
        listed.error_code = self.list_error
        obs = DeployObservations(list_stopped=listed)
        if arns and not self.list_error:
            described = aws(
                "ecs",
                "describe_tasks",
                None if self.describe_error else {"tasks": self.tasks, "failures": []},
            )
            described.error_code = self.describe_error
            obs.describe_stopped = described
        return obs

    def assess(self, critical: bool = True) -> CheckResult:
        non_critical = () if critical else (SERVICE,)
        return assess_ecs(self.services(), [SERVICE], non_critical, {SERVICE: self.observed()}, NOW)


def facts(result: CheckResult) -> DeployFacts:
    assert isinstance(result.facts, EcsFacts)
    return result.facts.deploys[SERVICE]


def crash_world(**kw: Any) -> World:
    """Revision 42 crashes at start; its rollout FAILED; revision 41 still runs 2/2."""
    defaults: dict[str, Any] = {
        "deployments": [
            deployment(NEW, 42, "PRIMARY", "FAILED", 0, failed=4, created=5),
            deployment(OLD, 41, "ACTIVE", "COMPLETED", 2),
        ],
        "tasks": [task(42, CRASH, 1, minutes=m) for m in (1, 2, 3, 4)],
        "events": [
            f"(service {SERVICE}) (deployment {NEW}) deployment failed: tasks failed to start."
        ],
    }
    return World(**{**defaults, **kw})


@dataclass
class Case:
    id: str
    world: World
    severities: list[str]
    failing: str | None
    last_completed: str | None
    says: tuple[str, ...] = ()
    info_says: tuple[str, ...] = ()
    critical: bool = True
    status: CheckStatus | None = None


CASES = [
    Case(
        "crash-failed-rollout-old-revision-serves",
        crash_world(),
        ["warning"],
        f"{SERVICE}:42",
        f"{SERVICE}:41",
        (
            f"revision {SERVICE}:42 is failing: 4 tasks stopped in the last 10 min: "
            "Essential container in task exited (exit code 1)",
            f"its deployment {NEW} FAILED (ECS deployment circuit breaker: tasks failed to "
            "start, 4 failed tasks)",
            f"revision {SERVICE}:41 runs 2/2",
        ),
        status=CheckStatus.DEGRADED,
    ),
    Case(
        "unhealthy-rollout-in-progress",
        World(
            deployments=[
                deployment(NEW, 42, "PRIMARY", "IN_PROGRESS", 0, failed=2, created=5),
                deployment(OLD, 41, "ACTIVE", "COMPLETED", 2),
            ],
            tasks=[task(42, ELB, 143, minutes=m) for m in (1, 3)],
            events=[
                f"(service {SERVICE}) (task abc) (port 8000) is unhealthy in (target-group {TG}) "
                "due to (reason Health checks failed with these codes: [503]).",
            ],
        ),
        ["warning"],
        f"{SERVICE}:42",
        f"{SERVICE}:41",
        (
            f"2 tasks stopped in the last 10 min: Task failed ELB health checks in "
            f"(target-group {TG}) (exit code 143)",
            "its deployment ecs-svc/4200000000000000042 is IN_PROGRESS with 2 failed tasks",
            "ECS says: (service hokusai-registry) (task abc) (port 8000) is unhealthy",
            "with these codes: [503]); revision",
            f"revision {SERVICE}:41 runs 2/2",
        ),
    ),
    Case(
        "nothing-serves-is-critical",
        crash_world(
            running=0,
            deployments=[deployment(NEW, 42, "PRIMARY", "FAILED", 0, failed=3, created=5)],
        ),
        ["critical"],
        f"{SERVICE}:42",
        None,
        (
            "no task of any revision runs: the service serves nothing",
            "no earlier revision is known to have completed a deployment",
        ),
    ),
    Case(
        "nothing-serves-in-a-non-critical-service-degrades",
        crash_world(
            running=0,
            deployments=[deployment(NEW, 42, "PRIMARY", "FAILED", 0, failed=3, created=5)],
        ),
        ["warning"],
        f"{SERVICE}:42",
        None,
        ("no task of any revision runs",),
        critical=False,
        status=CheckStatus.UNHEALTHY,
    ),
    Case(
        "a-deployment-drained-the-old-tasks-healthy",
        World(
            deployments=[deployment(NEW, 42, "PRIMARY", "COMPLETED", 2, created=5)],
            tasks=[task(41, DRAIN, 0, minutes=3, started_by=OLD) for _ in range(1)],
        ),
        [],
        None,
        f"{SERVICE}:42",
        status=CheckStatus.HEALTHY,
    ),
    Case(
        "recovered-the-failed-revision-is-history",
        World(
            deployments=[deployment(OLD, 41, "PRIMARY", "COMPLETED", 2, created=2)],
            tasks=[task(42, CRASH, 1, minutes=m) for m in (3, 4, 5)],
        ),
        [],
        None,
        f"{SERVICE}:41",
        info_says=(
            f"3 tasks of revision {SERVICE}:42 stopped in the last 10 min: "
            "Essential container in task exited (exit code 1)",
        ),
        status=CheckStatus.HEALTHY,
    ),
    Case(
        "a-crashed-task-of-the-completed-revision",
        World(
            deployments=[deployment(OLD, 41, "PRIMARY", "COMPLETED", 1)],
            running=1,
            tasks=[task(41, CRASH, 137, minutes=1, started_by=OLD)],
        ),
        ["warning"],
        None,
        f"{SERVICE}:41",
        ("runs 1 of 2 desired tasks",),
        info_says=(f"1 task of revision {SERVICE}:41 stopped", "(exit code 137)"),
    ),
    Case(
        "the-same-revision-redeployed-fails",
        World(
            deployments=[
                deployment(NEW, 41, "PRIMARY", "IN_PROGRESS", 0, failed=1, created=5),
                deployment(OLD, 41, "ACTIVE", "COMPLETED", 2),
            ],
            tasks=[task(41, CRASH, 1, minutes=1)],
        ),
        ["warning"],
        f"{SERVICE}:41",
        f"{SERVICE}:41",
        ("the same revision completed a deployment before: the cause may lie outside it",),
    ),
    Case(
        "stops-outside-the-window-are-not-counted",
        crash_world(tasks=[task(42, CRASH, 1, minutes=25)]),
        ["warning"],
        f"{SERVICE}:42",
        f"{SERVICE}:41",
        (f"its deployment {NEW} FAILED",),
    ),
    Case(
        "a-latent-rollout-without-failures-is-not-failing",
        World(
            deployments=[
                deployment(NEW, 42, "PRIMARY", "IN_PROGRESS", 0, created=5),
                deployment(OLD, 41, "ACTIVE", "COMPLETED", 2),
            ],
        ),
        ["warning"],
        None,
        f"{SERVICE}:41",
        ("is rolling out a deployment",),
        status=CheckStatus.RECOVERING,
    ),
    Case(
        "no-rollout-state-and-one-deployment-is-steady",
        World(
            deployments=[{**deployment(OLD, 41, "PRIMARY", "COMPLETED", 1), "rolloutState": None}],
            running=1,
            tasks=[task(41, CRASH, 139, minutes=1, started_by=OLD)],
        ),
        ["warning"],
        None,
        None,
        ("runs 1 of 2 desired tasks",),
        info_says=("(exit code 139)",),
    ),
    Case(
        "throttled-list-tasks-still-judges-the-rollout",
        crash_world(list_error="ThrottlingException"),
        ["warning"],
        f"{SERVICE}:42",
        f"{SERVICE}:41",
        (f"its deployment {NEW} FAILED",),
        info_says=("stopped tasks not read (ecs:list_tasks ThrottlingException",),
    ),
    Case(
        "describe-tasks-refused",
        crash_world(describe_error="AccessDeniedException"),
        ["warning"],
        f"{SERVICE}:42",
        f"{SERVICE}:41",
        info_says=("stopped tasks' details not read", "grant ecs:describe_tasks"),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_deploy_judgement(case: Case) -> None:
    result = case.world.assess(case.critical)
    assert severities(result) == sorted(case.severities), messages(result)
    got = facts(result)
    assert got.failing_revision == case.failing
    assert got.last_completed_revision == case.last_completed
    text = messages(result)
    for fragment in case.says:
        assert fragment in text, text
    info = " | ".join(f.message for f in result.findings if f.severity == "info")
    for fragment in case.info_says:
        assert fragment in info, info
    if case.status is not None:
        assert result.status == case.status
    if case.failing and case.last_completed and case.failing != case.last_completed:
        recommendation = next(f.recommendation for f in result.findings if f.severity != "info")
        assert recommendation is not None
        assert f"Roll back {SERVICE} to revision {case.last_completed}" in recommendation
        assert f"do not force a new deployment of {case.failing}" in recommendation


def test_failing_revision_replaces_the_advice_to_wait_or_redeploy() -> None:
    result = crash_world(running=0).assess()
    text = " | ".join(f"{f.message} {f.recommendation}" for f in result.findings)
    assert "Wait for the rollout" not in text
    assert "force a new deployment (recover_service)" not in text
    assert "ECS service hokusai-registry has no running task" not in text  # said once, by deploys


def test_facts_a_planner_needs() -> None:
    got = facts(crash_world().assess())
    assert got.primary is not None
    assert (got.primary.revision, got.primary.rollout_state) == (f"{SERVICE}:42", "FAILED")
    assert got.failing_task_definition == td(42)
    assert got.last_completed_task_definition == td(41)
    assert got.running_revisions == {f"{SERVICE}:41": 2}
    assert [(s.revision, s.stopped, s.failed) for s in got.stopped] == [(f"{SERVICE}:42", 4, 4)]
    assert got.stopped[0].causes[0].exit_codes == [1]
    assert got.stopped_tasks_read == 4
    latest = got.latest_stopped[0]  # the newest, one by one
    assert (latest.revision, latest.stop_code, latest.exit_codes) == (
        f"{SERVICE}:42",
        CRASH[0],
        [1],
    )
    assert latest.stopped_at == NOW - timedelta(minutes=1)
    times = [t.stopped_at for t in got.latest_stopped if t.stopped_at is not None]
    assert len(times) == 4 and times == sorted(times, reverse=True)
    assert got.events[0].message.endswith("deployment failed: tasks failed to start.")


def test_task_definitions_described_only_for_a_failing_revision() -> None:
    world = crash_world()
    rollout = read_service_deployments(world.services().response, [])[SERVICE]
    assert task_definitions_to_describe(rollout, world.observed(), NOW) == [td(42), td(41)]
    healthy = World(deployments=[deployment(OLD, 41, "PRIMARY", "COMPLETED", 2)])
    rollout = read_service_deployments(healthy.services().response, [])[SERVICE]
    assert task_definitions_to_describe(rollout, healthy.observed(), NOW) == []


def task_definition(revision: int, image: str) -> dict[str, Any]:
    return {
        "taskDefinition": {
            "taskDefinitionArn": td(revision),
            "family": SERVICE,
            "revision": revision,
            "containerDefinitions": [
                {
                    "name": SERVICE,
                    "image": image,
                    "environment": [{"name": "RELEASE_TOKEN", "value": SECRET}],
                    "secrets": [{"name": "DB", "valueFrom": f"arn:...:secret:{SECRET}"}],
                }
            ],
        }
    }


def test_images_are_reported_and_environment_values_never() -> None:
    world = crash_world()
    observed = world.observed()
    observed.task_definitions = {
        td(42): aws("ecs", "describe_task_definition", task_definition(42, "registry:v42")),
        td(41): aws("ecs", "describe_task_definition", task_definition(41, "registry:v41")),
    }
    result = assess_ecs(world.services(), [SERVICE], (), {SERVICE: observed}, NOW)
    assert f"revision {SERVICE}:42 (image registry:v42) is failing" in messages(result)
    assert facts(result).images == {
        f"{SERVICE}:42": ["registry:v42"],
        f"{SERVICE}:41": ["registry:v41"],
    }
    dumped = result.model_dump_json()
    assert SECRET not in dumped
    assert "RELEASE_TOKEN" not in dumped


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        ({"tasks": "not a list"}, "`tasks`: expected array"),
        ({"tasks": [{"exitCode": 1, "containers": [{"exitCode": "one"}]}]}, "expected number"),
        ({"tasks": [{"containers": [{"exitCode": 10**30}]}]}, None),
        ({"tasks": [{"stoppedAt": "yesterday", "stoppedReason": "x" * 100_000}]}, "ISO 8601"),
        ({"tasks": [None, 7, "task"]}, None),
        (None, None),
    ],
)
def test_odd_describe_tasks_answers_are_read_not_crashed(answer: Any, problem: str | None) -> None:
    world = crash_world()
    observed = world.observed()
    observed.describe_stopped = aws("ecs", "describe_tasks", answer)
    result = assess_ecs(world.services(), [SERVICE], (), {SERVICE: observed}, NOW)
    got = facts(result)
    assert got.failing_revision == f"{SERVICE}:42"  # the rollout still says so
    if problem:
        assert any(problem in p for p in got.problems), got.problems
    for stops in got.stopped:
        for cause in stops.causes:
            assert len(cause.reason) <= TEXT_CHARS


@pytest.mark.parametrize(
    "mangle",
    [
        lambda s: s.update(deployments="many"),
        lambda s: s.update(events={"message": "x"}),
        lambda s: s["deployments"][0].update(taskDefinition=12, createdAt="soon", failedTasks=-1.5),
        lambda s: s["deployments"][0].update(rolloutStateReason="y" * 50_000, id=None),
        lambda s: s["deployments"].append("junk"),
    ],
)
def test_odd_describe_services_answers_are_read_not_crashed(mangle: Any) -> None:
    world = crash_world()
    services = world.services()
    assert services.response is not None
    mangle(services.response["services"][0])
    result = assess_ecs(services, [SERVICE], (), {SERVICE: world.observed()}, NOW)
    assert result.status != CheckStatus.SKIPPED
    assert all(len(f.message) < 3 * TEXT_CHARS + 400 for f in result.findings)


def test_a_full_page_of_stopped_tasks_is_a_lower_bound() -> None:
    world = crash_world(tasks=[task(42, CRASH, 1, minutes=m / 4) for m in range(1, 21)])
    result = world.assess()
    assert "at least 20 tasks stopped in the last 10 min" in messages(result)
    assert "at least" not in messages(crash_world().assess())


def test_reads_stopped_at_the_deadline_are_said() -> None:
    world = crash_world()
    observed = DeployObservations(not_read="stopped tasks not all read before the run's deadline")
    result = assess_ecs(world.services(), [SERVICE], (), {SERVICE: observed}, NOW)
    assert "not all read before the run's deadline" in messages(result)
    assert facts(result).failing_revision == f"{SERVICE}:42"


def test_without_deploy_reads_the_ecs_check_is_as_before() -> None:
    result = assess_ecs(crash_world().services(), [SERVICE])
    assert isinstance(result.facts, EcsFacts)
    assert not result.facts.deploys
    assert "failed" in messages(result).lower()


@pytest.mark.parametrize(
    ("text", "label"),
    [
        (td(42), f"{SERVICE}:42"),
        ("hokusai-registry:7", f"{SERVICE}:7"),
        ("arn:aws:ecs:eu-west-1:1:task-definition/odd", None),
        ("", None),
        (None, None),
        ("task-definition/x:" + "9" * 40, None),
    ],
)
def test_revision_labels(text: str | None, label: str | None) -> None:
    assert revision_label(text) == label


def test_task_definition_reader_takes_images_only() -> None:
    problems: list[str] = []
    got = read_task_definition(task_definition(42, "registry:v42"), problems)
    assert got is not None
    assert got.model_dump() == {
        "task_definition": td(42),
        "revision": f"{SERVICE}:42",
        "images": ["registry:v42"],
    }
    assert read_task_definition({"taskDefinition": "nope"}, problems) is None
    assert problems
