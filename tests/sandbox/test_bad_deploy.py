"""Task definition revisions in the ECS simulation, and the bad-deploy fault, through the
AWS APIs (boto3 against the sandbox's moto) and the load balancer, as production shows them."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from sandbox.client import SandboxProcess
from tests.conftest import converged
from tests.helpers import wait_for
from tests.sandbox.test_sandbox_system import aws, ecs_service, target_states

CLUSTER = "hokusai-sandbox"
REGISTRY = "hokusai-registry"
ROLLOUT_S = 180  # a 2-core machine under load starts a registry process in 2 to 15 s


def tasks(sandbox: SandboxProcess, status: str | None = None) -> list[dict[str, Any]]:
    """The registry service's tasks (RUNNING unless `status` says otherwise), described."""
    ecs = aws(sandbox, "ecs")
    params = {"desiredStatus": status} if status else {}
    arns = ecs.list_tasks(cluster=CLUSTER, serviceName=REGISTRY, **params)["taskArns"]
    if not arns:
        return []
    described: list[dict[str, Any]] = ecs.describe_tasks(cluster=CLUSTER, tasks=arns)["tasks"]
    return described


def serving(sandbox: SandboxProcess, seen: list[int]) -> Callable[[], None]:
    """A probe of the API through the load balancer that records each status code."""

    def probe() -> None:
        seen.append(httpx.get(sandbox.info["api_url"] + "/health", timeout=10).status_code)

    return probe


def primary(sandbox: SandboxProcess) -> dict[str, Any]:
    deployment: dict[str, Any] = ecs_service(sandbox, REGISTRY)["deployments"][0]
    return deployment


def release_settled(sandbox: SandboxProcess, previous: str) -> bool:
    """The bad revision's rollout FAILED and only the previous revision's tasks run (a task
    started just before the circuit breaker tripped fails on its own a moment later)."""
    running = {t["taskDefinitionArn"] for t in tasks(sandbox)}
    return primary(sandbox)["rolloutState"] == "FAILED" and running == {previous}


def rollout_failed(sandbox: SandboxProcess, previous: str, probe: Callable[[], None]) -> bool:
    probe()
    return release_settled(sandbox, previous)


def settled_on(sandbox: SandboxProcess, revision: str) -> bool:
    """One COMPLETED deployment, of `revision`, and the sandbox converged."""
    deployments = ecs_service(sandbox, REGISTRY)["deployments"]
    return [(d["taskDefinition"], d["rolloutState"]) for d in deployments] == [
        (revision, "COMPLETED")
    ] and converged(sandbox)


def assert_rolled_back_to(sandbox: SandboxProcess, previous: str) -> None:
    wait_for(lambda: settled_on(sandbox, previous), ROLLOUT_S, "the rollback to converge")
    assert ecs_service(sandbox, REGISTRY)["taskDefinition"] == previous
    running = tasks(sandbox)
    assert len(running) == 2
    assert {t["taskDefinitionArn"] for t in running} == {previous}
    assert target_states(sandbox, "hokusai-registry-tg") == ["healthy", "healthy"]


def test_crashing_revision_fails_its_rollout_while_the_old_tasks_serve(
    healed: SandboxProcess,
) -> None:
    sandbox = healed
    before = {t["taskArn"] for t in tasks(sandbox)}
    injected = sandbox.client.fault("bad-deploy", mode="crash")
    revision, previous = injected["revision"], injected["previous"]
    assert revision.rsplit(":", 1)[0] == previous.rsplit(":", 1)[0]  # the same family
    assert int(revision.rsplit(":", 1)[1]) > int(previous.rsplit(":", 1)[1])

    seen: list[int] = []
    wait_for(
        lambda: rollout_failed(sandbox, previous, serving(sandbox, seen)),
        ROLLOUT_S,
        "the rollout to fail",
    )
    assert set(seen) == {200}, seen  # the previous revision's tasks served throughout

    svc = ecs_service(sandbox, REGISTRY)
    failed, active = svc["deployments"]
    assert (failed["status"], failed["taskDefinition"]) == ("PRIMARY", revision)
    assert failed["rolloutStateReason"] == "ECS deployment circuit breaker: tasks failed to start."
    assert failed["failedTasks"] >= 3  # ECS's threshold for 2 desired tasks
    assert (active["status"], active["taskDefinition"]) == ("ACTIVE", previous)
    assert (active["rolloutState"], active["runningCount"]) == ("COMPLETED", 2)
    assert svc["runningCount"] == 2
    assert {t["taskArn"] for t in tasks(sandbox)} == before  # the old tasks were left alone

    stopped = [t for t in tasks(sandbox, "STOPPED") if t["taskDefinitionArn"] == revision]
    assert len(stopped) >= 3
    for task in stopped:
        assert (task["lastStatus"], task["desiredStatus"]) == ("STOPPED", "STOPPED")
        assert task["stopCode"] == "EssentialContainerExited"
        assert task["stoppedReason"] == "Essential container in task exited"
        assert [c["exitCode"] for c in task["containers"]] == [1]
        assert task["startedBy"] == failed["id"]
        assert task["group"] == f"service:{REGISTRY}"
        assert task["createdAt"] <= task["startedAt"] <= task["stoppedAt"]
    messages = [e["message"] for e in svc["events"]]
    assert (
        f"(service {REGISTRY}) (deployment {failed['id']}) deployment failed: "
        "tasks failed to start." in messages
    )
    assert any(m.startswith(f"(service {REGISTRY}) has started ") for m in messages)

    assert sandbox.client.heal("bad-deploy") == ["bad-deploy"]
    assert_rolled_back_to(sandbox, previous)


def test_unhealthy_revision_is_stopped_by_the_scheduler_until_its_rollout_fails(
    healed: SandboxProcess,
) -> None:
    sandbox = healed
    injected = sandbox.client.fault("bad-deploy", mode="unhealthy")
    revision, previous = injected["revision"], injected["previous"]

    seen: list[int] = []
    wait_for(
        lambda: rollout_failed(sandbox, previous, serving(sandbox, seen)),
        ROLLOUT_S,
        "the rollout to fail",
    )
    assert set(seen) == {200}, seen

    tg = aws(sandbox, "elbv2").describe_target_groups(Names=["hokusai-registry-tg"])
    tg_arn = tg["TargetGroups"][0]["TargetGroupArn"]
    stopped = [t for t in tasks(sandbox, "STOPPED") if t["taskDefinitionArn"] == revision]
    assert len(stopped) >= 3
    for task in stopped:
        assert task["stopCode"] == "ServiceSchedulerInitiated"
        assert task["stoppedReason"] == f"Task failed ELB health checks in (target-group {tg_arn})"
        # stopped with SIGTERM: the container's exit code says how it ended
        assert all(isinstance(c["exitCode"], int) for c in task["containers"])
    messages = [e["message"] for e in ecs_service(sandbox, REGISTRY)["events"]]
    assert any(
        f"is unhealthy in (target-group {tg_arn}) due to (reason Health checks failed with "
        "these codes: [503])." in m
        for m in messages
    )
    assert any(m.startswith(f"(service {REGISTRY}) has stopped 1 running tasks:") for m in messages)
    wait_for(
        lambda: target_states(sandbox, "hokusai-registry-tg") == ["healthy", "healthy"],
        30,
        "only the previous revision's targets",
    )

    sandbox.client.heal()
    assert_rolled_back_to(sandbox, previous)


def test_update_service_rolls_to_another_revision_for_real(healed: SandboxProcess) -> None:
    sandbox = healed
    ecs = aws(sandbox, "ecs")
    previous = ecs_service(sandbox, REGISTRY)["taskDefinition"]
    spec = ecs.describe_task_definition(taskDefinition=previous)["taskDefinition"]
    container = {**spec["containerDefinitions"][0], "image": "hokusai/hokusai-registry:next"}
    revision = ecs.register_task_definition(
        family=spec["family"],
        containerDefinitions=[container],
        networkMode=spec["networkMode"],
        requiresCompatibilities=spec["requiresCompatibilities"],
        cpu=spec["cpu"],
        memory=spec["memory"],
    )["taskDefinition"]["taskDefinitionArn"]
    status = sandbox.client.status()["services"][REGISTRY]
    before = {r["address"] for r in status["replicas"]}
    started = status["deployments_started"]

    ecs.update_service(cluster=CLUSTER, service=REGISTRY, taskDefinition=revision)
    assert primary(sandbox)["taskDefinition"] == revision
    ecs.get_waiter("services_stable").wait(
        cluster=CLUSTER, services=[REGISTRY], WaiterConfig={"Delay": 1, "MaxAttempts": ROLLOUT_S}
    )
    replicas = sandbox.client.status()["services"][REGISTRY]["replicas"]
    assert before.isdisjoint(r["address"] for r in replicas)
    assert {r["task_definition"] for r in replicas} == {revision}
    assert {t["taskDefinitionArn"] for t in tasks(sandbox)} == {revision}
    drained = [t for t in tasks(sandbox, "STOPPED") if t["taskDefinitionArn"] == previous]
    assert any(
        t["stopCode"] == "ServiceSchedulerInitiated"
        and t["stoppedReason"].startswith("Scaling activity initiated by (deployment ")
        for t in drained
    )

    ecs.update_service(cluster=CLUSTER, service=REGISTRY, taskDefinition=previous)
    assert_rolled_back_to(sandbox, previous)
    assert sandbox.client.status()["services"][REGISTRY]["deployments_started"] == started + 2


def test_bad_deploy_needs_a_mode(sandbox: SandboxProcess) -> None:
    with pytest.raises(ValueError, match="--mode"):
        sandbox.client.fault("bad-deploy")
    cli = subprocess.run(
        [sys.executable, "-m", "sandbox", "fault", "bad-deploy",
         "--state-dir", str(sandbox.state_dir)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert cli.returncode == 64 and "--mode" in cli.stderr, cli.stderr
    assert "bad-deploy" not in sandbox.client.status()["faults"]
