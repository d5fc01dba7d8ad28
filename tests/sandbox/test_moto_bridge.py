"""MotoBridge against a real moto server over HTTP.

These pin the moto internals the bridge relies on: if a moto upgrade moves them, these
fail here, loudly, rather than the sandbox quietly never converging.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from botocore.exceptions import WaiterError
from moto.ecs.models import EC2ContainerServiceBackend
from moto.elbv2.models import FakeTargetGroup

from sandbox import moto_bridge
from sandbox.aws import AwsSandbox, Seeded, Topology
from sandbox.moto_bridge import DeploymentState, MotoBridge, TaskStop
from tests.helpers import moto_server

CLUSTER = Topology().cluster
FAST_WAIT = {"Delay": 0.05, "MaxAttempts": 3}


@pytest.fixture(scope="module")
def aws() -> Iterator[AwsSandbox]:
    with moto_server() as sandbox:
        yield sandbox


@pytest.fixture(scope="module")
def seeded(aws: AwsSandbox) -> Seeded:
    return aws.seed(Topology())


@pytest.fixture(scope="module")
def bridge(aws: AwsSandbox) -> MotoBridge:
    return MotoBridge(aws.region)


@pytest.fixture(scope="module")
def ecs(aws: AwsSandbox) -> Any:
    return aws.client("ecs")


@pytest.fixture(scope="module")
def elbv2(aws: AwsSandbox) -> Any:
    return aws.client("elbv2")


@pytest.fixture
def service(ecs: Any, seeded: Seeded, bridge: MotoBridge) -> str:
    """A fresh desired-2 service in the seeded cluster, so tests do not share state."""
    name = f"svc-{uuid.uuid4().hex[:8]}"
    ecs.create_service(
        cluster=CLUSTER,
        serviceName=name,
        taskDefinition=seeded.task_definition_arns["hokusai-registry"],
        desiredCount=2,
        launchType="FARGATE",
    )
    return name


def _describe(ecs: Any, service: str) -> dict[str, Any]:
    return ecs.describe_services(cluster=CLUSTER, services=[service])["services"][0]


def _stable(ecs: Any, service: str) -> bool:
    try:
        ecs.get_waiter("services_stable").wait(
            cluster=CLUSTER, services=[service], WaiterConfig=FAST_WAIT
        )
        return True
    except WaiterError:
        return False


def _deployment(
    id: str, status: str, rollout: str, desired: int, running: int, pending: int, td: str
) -> DeploymentState:
    now = datetime.now(UTC)
    return DeploymentState(
        id=id,
        status=status,
        rollout_state=rollout,
        desired=desired,
        running=running,
        pending=pending,
        task_definition=td,
        created_at=now,
        updated_at=now,
        rollout_state_reason=f"ECS deployment {id} {rollout.lower()}.",
    )


def _converge(bridge: MotoBridge, ecs: Any, service: str, running: int) -> str:
    """Report one COMPLETED primary deployment with `running` tasks; returns its id."""
    dep_id = bridge.primary_deployment_id(CLUSTER, service)
    td = _describe(ecs, service)["taskDefinition"]
    bridge.set_service_state(
        CLUSTER,
        service,
        running=running,
        pending=0,
        deployments=[_deployment(dep_id, "PRIMARY", "COMPLETED", running, running, 0, td)],
    )
    return dep_id


# -- ECS --------------------------------------------------------------------------


def test_moto_alone_never_converges_a_service(ecs: Any, service: str) -> None:
    got = _describe(ecs, service)
    assert got["runningCount"] == 0
    assert got["pendingCount"] == 2
    (dep,) = got["deployments"]
    assert dep["status"] == "PRIMARY"
    assert dep["rolloutState"] == "IN_PROGRESS"
    assert not _stable(ecs, service)


def test_set_service_state_shows_through_describe_services(
    bridge: MotoBridge, ecs: Any, service: str
) -> None:
    old_id = bridge.primary_deployment_id(CLUSTER, service)
    td = _describe(ecs, service)["taskDefinition"]
    new = _deployment("ecs-svc/1234", "PRIMARY", "IN_PROGRESS", 2, 1, 1, td)
    old = _deployment(old_id, "ACTIVE", "COMPLETED", 2, 1, 0, td)
    # given out of order: the PRIMARY must still come first
    bridge.set_service_state(CLUSTER, service, running=2, pending=1, deployments=[old, new])

    got = _describe(ecs, service)
    assert (got["runningCount"], got["pendingCount"]) == (2, 1)
    primary, active = got["deployments"]
    assert primary["id"] == "ecs-svc/1234"
    assert primary["status"] == "PRIMARY"
    assert primary["rolloutState"] == "IN_PROGRESS"
    assert primary["rolloutStateReason"] == "ECS deployment ecs-svc/1234 in_progress."
    assert (primary["desiredCount"], primary["runningCount"], primary["pendingCount"]) == (2, 1, 1)
    assert primary["taskDefinition"] == td
    assert primary["launchType"] == "FARGATE"  # carried over from moto's own deployment
    assert abs(primary["createdAt"].timestamp() - new.created_at.timestamp()) < 1
    assert abs(primary["updatedAt"].timestamp() - new.updated_at.timestamp()) < 1
    assert active["id"] == old_id
    assert active["status"] == "ACTIVE"
    assert active["rolloutState"] == "COMPLETED"
    assert bridge.primary_deployment_id(CLUSTER, service) == "ecs-svc/1234"


def test_cluster_task_counts_follow_the_services(
    bridge: MotoBridge, ecs: Any, service: str
) -> None:
    def counts() -> tuple[int, int]:
        c = ecs.describe_clusters(clusters=[CLUSTER])["clusters"][0]
        return c["runningTasksCount"], c["pendingTasksCount"]

    _converge(bridge, ecs, service, 0)
    base_running, base_pending = counts()
    _converge(bridge, ecs, service, 2)
    assert counts() == (base_running + 2, base_pending)


def test_services_stable_waiter_succeeds_only_when_converged(
    bridge: MotoBridge, ecs: Any, service: str
) -> None:
    dep_id = bridge.primary_deployment_id(CLUSTER, service)
    td = _describe(ecs, service)["taskDefinition"]

    # running < desired
    bridge.set_service_state(
        CLUSTER, service, 1, 1, [_deployment(dep_id, "PRIMARY", "IN_PROGRESS", 2, 1, 1, td)]
    )
    assert not _stable(ecs, service)

    # running == desired but a second deployment still exists
    bridge.set_service_state(
        CLUSTER,
        service,
        2,
        0,
        [
            _deployment(dep_id, "PRIMARY", "IN_PROGRESS", 2, 1, 0, td),
            _deployment("ecs-svc/old", "ACTIVE", "COMPLETED", 2, 1, 0, td),
        ],
    )
    assert not _stable(ecs, service)

    _converge(bridge, ecs, service, 2)
    assert _stable(ecs, service)


def test_forced_deployment_changes_primary_id_and_opens_a_rollout(
    bridge: MotoBridge, ecs: Any, service: str
) -> None:
    old_id = _converge(bridge, ecs, service, 2)
    assert _stable(ecs, service)

    ecs.update_service(cluster=CLUSTER, service=service, forceNewDeployment=True)

    new_id = bridge.primary_deployment_id(CLUSTER, service)
    assert new_id != old_id
    got = _describe(ecs, service)
    assert got["runningCount"] == 2  # nothing has moved yet
    primary, active = got["deployments"]
    assert (primary["id"], primary["status"], primary["rolloutState"]) == (
        new_id,
        "PRIMARY",
        "IN_PROGRESS",
    )
    assert (primary["runningCount"], primary["desiredCount"]) == (0, 2)
    assert (active["id"], active["status"], active["runningCount"]) == (old_id, "ACTIVE", 2)
    assert not _stable(ecs, service)

    # the simulation finishes the rollout
    _converge(bridge, ecs, service, 2)
    assert bridge.primary_deployment_id(CLUSTER, service) == new_id
    assert _stable(ecs, service)


def test_update_desired_count_is_not_reported_as_converged(
    bridge: MotoBridge, ecs: Any, service: str
) -> None:
    dep_id = _converge(bridge, ecs, service, 2)

    ecs.update_service(cluster=CLUSTER, service=service, desiredCount=3)

    assert bridge.desired_count(CLUSTER, service) == 3
    assert bridge.primary_deployment_id(CLUSTER, service) == dep_id  # a scale, not a rollout
    got = _describe(ecs, service)
    assert got["desiredCount"] == 3
    assert got["runningCount"] == 2  # moto on its own would jump to 3 here
    (dep,) = got["deployments"]
    assert dep["desiredCount"] == 3
    assert not _stable(ecs, service)

    _converge(bridge, ecs, service, 3)
    assert _stable(ecs, service)


def test_task_definition_change_opens_a_new_deployment(
    bridge: MotoBridge, ecs: Any, service: str, seeded: Seeded
) -> None:
    old_id = _converge(bridge, ecs, service, 2)
    family = "hokusai-registry"
    current = ecs.describe_task_definition(taskDefinition=seeded.task_definition_arns[family])
    spec = current["taskDefinition"]
    new_td = ecs.register_task_definition(
        family=family,
        containerDefinitions=spec["containerDefinitions"],
        networkMode=spec["networkMode"],
        requiresCompatibilities=spec["requiresCompatibilities"],
        cpu=spec["cpu"],
        memory=spec["memory"],
    )["taskDefinition"]

    ecs.update_service(
        cluster=CLUSTER, service=service, taskDefinition=f"{family}:{new_td['revision']}"
    )

    assert bridge.primary_deployment_id(CLUSTER, service) != old_id
    got = _describe(ecs, service)
    assert got["taskDefinition"] == new_td["taskDefinitionArn"]
    assert got["deployments"][0]["taskDefinition"] == new_td["taskDefinitionArn"]
    assert got["deployments"][1]["id"] == old_id
    assert not _stable(ecs, service)


def test_service_events_newest_first(bridge: MotoBridge, ecs: Any, service: str) -> None:
    bridge.add_service_event(CLUSTER, service, "first")
    bridge.add_service_event(CLUSTER, service, "second")
    events = _describe(ecs, service)["events"]
    assert [e["message"] for e in events] == ["second", "first"]
    assert all(e["id"] and e["createdAt"] for e in events)


def test_service_can_be_named_by_arn(bridge: MotoBridge, ecs: Any, service: str) -> None:
    arn = _describe(ecs, service)["serviceArn"]
    assert bridge.desired_count(CLUSTER, arn) == 2


def test_failed_tasks_show_through_describe_services(
    bridge: MotoBridge, ecs: Any, service: str
) -> None:
    dep_id = bridge.primary_deployment_id(CLUSTER, service)
    td = _describe(ecs, service)["taskDefinition"]
    failed = _deployment(dep_id, "PRIMARY", "FAILED", 2, 0, 0, td)
    failed.failed_tasks = 3
    failed.rollout_state_reason = "ECS deployment circuit breaker: tasks failed to start."
    bridge.set_service_state(CLUSTER, service, 0, 0, [failed])
    (got,) = _describe(ecs, service)["deployments"]
    assert (got["rolloutState"], got["failedTasks"]) == ("FAILED", 3)
    assert got["rolloutStateReason"] == failed.rollout_state_reason


def test_primary_task_definition_and_its_environment(
    bridge: MotoBridge, ecs: Any, service: str, seeded: Seeded
) -> None:
    seeded_td = seeded.task_definition_arns["hokusai-registry"]
    assert bridge.primary_task_definition(CLUSTER, service) == seeded_td
    assert bridge.container_environment(seeded_td) == {}
    spec = ecs.describe_task_definition(taskDefinition=seeded_td)["taskDefinition"]
    container = {
        **spec["containerDefinitions"][0],
        "environment": [{"name": "MODE", "value": "crash"}, {"name": "EMPTY", "value": ""}],
    }
    new_td = ecs.register_task_definition(
        family="hokusai-registry",
        containerDefinitions=[container],
        networkMode=spec["networkMode"],
        requiresCompatibilities=spec["requiresCompatibilities"],
        cpu=spec["cpu"],
        memory=spec["memory"],
    )["taskDefinition"]["taskDefinitionArn"]
    ecs.update_service(cluster=CLUSTER, service=service, taskDefinition=new_td)
    assert bridge.primary_task_definition(CLUSTER, service) == new_td
    assert bridge.container_environment(new_td) == {"MODE": "crash", "EMPTY": ""}


def _task_arns(ecs: Any, service: str, **params: Any) -> list[str]:
    arns: list[str] = ecs.list_tasks(cluster=CLUSTER, serviceName=service, **params)["taskArns"]
    return arns


def test_tasks_show_through_list_and_describe_tasks(
    bridge: MotoBridge, ecs: Any, service: str, seeded: Seeded
) -> None:
    td = seeded.task_definition_arns["hokusai-registry"]
    task_id = uuid.uuid4().hex
    arn = bridge.start_task(CLUSTER, service, task_id, td, "ecs-svc/77", "127.0.9.9")
    assert arn.endswith(f"/{task_id}")

    # listed for its own service only; with no desired status asked, RUNNING ones (as ECS)
    assert _task_arns(ecs, service) == [arn]
    assert _task_arns(ecs, service, desiredStatus="RUNNING") == [arn]
    assert _task_arns(ecs, service, desiredStatus="STOPPED") == []
    assert arn not in ecs.list_tasks(cluster=CLUSTER, serviceName="hokusai-mlflow")["taskArns"]
    for _ in range(3):  # moto's own state manager would walk it towards STOPPED
        (task,) = ecs.describe_tasks(cluster=CLUSTER, tasks=[arn])["tasks"]
        assert task["lastStatus"] == "RUNNING"
    assert (task["taskDefinitionArn"], task["startedBy"]) == (td, "ecs-svc/77")
    assert task["group"] == f"service:{service}"
    assert task["attachments"][0]["details"] == [
        {"name": "privateIPv4Address", "value": "127.0.9.9"}
    ]
    (container,) = task["containers"]
    assert container["lastStatus"] == "RUNNING" and "exitCode" not in container

    bridge.stop_task(
        CLUSTER,
        task_id,
        TaskStop("EssentialContainerExited", "Essential container in task exited", 1, "boom"),
    )
    assert _task_arns(ecs, service) == []
    assert _task_arns(ecs, service, desiredStatus="STOPPED") == [arn]
    (task,) = ecs.describe_tasks(cluster=CLUSTER, tasks=[arn])["tasks"]
    assert (task["lastStatus"], task["desiredStatus"]) == ("STOPPED", "STOPPED")
    assert (task["stopCode"], task["stoppedReason"]) == (
        "EssentialContainerExited",
        "Essential container in task exited",
    )
    assert task["createdAt"] <= task["startedAt"] <= task["stoppingAt"] <= task["stoppedAt"]
    (container,) = task["containers"]
    assert (container["lastStatus"], container["exitCode"], container["reason"]) == (
        "STOPPED",
        1,
        "boom",
    )
    with pytest.raises(LookupError):
        bridge.stop_task(CLUSTER, uuid.uuid4().hex, TaskStop("UserInitiated", "stop", None))


def test_only_the_latest_stopped_tasks_are_kept(
    bridge: MotoBridge,
    ecs: Any,
    service: str,
    seeded: Seeded,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(moto_bridge, "MAX_STOPPED_TASKS", 2)
    td = seeded.task_definition_arns["hokusai-registry"]
    arns = []
    for _ in range(3):
        task_id = uuid.uuid4().hex
        arns.append(bridge.start_task(CLUSTER, service, task_id, td, "ecs-svc/1", "127.0.9.8"))
        bridge.stop_task(CLUSTER, task_id, TaskStop("UserInitiated", "Task stopped", 0))
    # the newest first, so that one page shows the tasks that stopped last
    assert _task_arns(ecs, service, desiredStatus="STOPPED") == arns[:0:-1]


# -- ALB target health ------------------------------------------------------------


@pytest.fixture
def targets(elbv2: Any, seeded: Seeded) -> Iterator[tuple[str, list[tuple[str, int]]]]:
    tg = seeded.target_group_arns["hokusai-registry"]
    regs = [("127.0.0.2", 8000), ("127.0.0.3", 8000)]
    elbv2.register_targets(TargetGroupArn=tg, Targets=[{"Id": i, "Port": p} for i, p in regs])
    yield tg, regs
    elbv2.deregister_targets(TargetGroupArn=tg, Targets=[{"Id": i, "Port": p} for i, p in regs])


def _health(elbv2: Any, tg: str, **kw: Any) -> dict[tuple[str, int], dict[str, Any]]:
    descs = elbv2.describe_target_health(TargetGroupArn=tg, **kw)["TargetHealthDescriptions"]
    return {(d["Target"]["Id"], d["Target"]["Port"]): d["TargetHealth"] for d in descs}


def test_moto_reports_every_registered_target_healthy(
    elbv2: Any, targets: tuple[str, list[tuple[str, int]]]
) -> None:
    tg, regs = targets
    assert {k: v["State"] for k, v in _health(elbv2, tg).items()} == dict.fromkeys(regs, "healthy")


def test_target_health_override_shows_and_clears(
    bridge: MotoBridge, elbv2: Any, targets: tuple[str, list[tuple[str, int]]]
) -> None:
    tg, _ = targets
    bridge.set_target_health(
        tg,
        "127.0.0.2",
        8000,
        "unhealthy",
        reason="Target.ResponseCodeMismatch",
        description="Health checks failed with these codes: [500]",
    )
    health = _health(elbv2, tg)
    assert health[("127.0.0.2", 8000)] == {
        "State": "unhealthy",
        "Reason": "Target.ResponseCodeMismatch",
        "Description": "Health checks failed with these codes: [500]",
    }
    assert health[("127.0.0.3", 8000)]["State"] == "healthy"
    # and when the caller names the target
    named = _health(elbv2, tg, Targets=[{"Id": "127.0.0.2", "Port": 8000}])
    assert named[("127.0.0.2", 8000)]["State"] == "unhealthy"

    # keyed by (id, port): another port of the same id is not overridden
    bridge.clear_target_health(tg, "127.0.0.2", 8000)
    bridge.set_target_health(tg, "127.0.0.3", 9999, "unhealthy")
    assert {k: v["State"] for k, v in _health(elbv2, tg).items()} == {
        ("127.0.0.2", 8000): "healthy",
        ("127.0.0.3", 8000): "healthy",
    }
    bridge.clear_target_health(tg, "127.0.0.3", 9999)


@pytest.mark.parametrize("state", ["initial", "healthy", "unhealthy", "draining", "unused"])
def test_every_target_health_state_shows_through(
    bridge: MotoBridge, elbv2: Any, targets: tuple[str, list[tuple[str, int]]], state: str
) -> None:
    tg, _ = targets
    bridge.set_target_health(tg, "127.0.0.3", 8000, state)
    try:
        assert _health(elbv2, tg)[("127.0.0.3", 8000)]["State"] == state
    finally:
        bridge.clear_target_health(tg, "127.0.0.3", 8000)


def test_target_health_rejects_unknown_state_and_target_group(
    bridge: MotoBridge, seeded: Seeded
) -> None:
    tg = seeded.target_group_arns["hokusai-registry"]
    with pytest.raises(ValueError, match="state"):
        bridge.set_target_health(tg, "127.0.0.2", 8000, "sick")
    with pytest.raises(LookupError):
        bridge.set_target_health(tg + "0", "127.0.0.2", 8000, "healthy")


def test_patches_are_installed_once(aws: AwsSandbox, bridge: MotoBridge) -> None:
    wrapped = FakeTargetGroup.health_for
    listing = EC2ContainerServiceBackend.list_tasks
    MotoBridge(aws.region)
    assert FakeTargetGroup.health_for is wrapped
    assert EC2ContainerServiceBackend.list_tasks is listing
    assert getattr(wrapped, "_sandbox_override", False)
    assert getattr(listing, "_sandbox_override", False)
