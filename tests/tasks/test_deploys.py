"""The reads behind "why tasks die", against moto over HTTP (the sandbox's AWS, seeded and
given a failed release through the bridge), and their bound: the run's deadline."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from sandbox.aws import AwsSandbox, Seeded, Topology
from sandbox.moto_bridge import DeploymentState, MotoBridge, TaskStop
from service_health.assessment import assess_ecs
from service_health.deploy_evidence import DeployObservations
from service_health.observations import AwsObservation
from service_health.settings import Target
from tasks.deploys import DEADLINE_MARGIN_S, read_deploys
from tasks.evidence import Evidence
from tests.helpers import moto_server

CLUSTER = Topology().cluster
REGISTRY, MLFLOW = "hokusai-registry", "hokusai-mlflow"
TOKEN = "tok-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def aws() -> Iterator[AwsSandbox]:
    with moto_server() as sandbox:
        yield sandbox


@pytest.fixture(scope="module")
def release(aws: AwsSandbox) -> dict[str, str]:
    """Revision 2 of the registry crashed at start; its rollout FAILED; revision 1 runs."""
    seeded: Seeded = aws.seed(Topology())
    bridge = MotoBridge(aws.region)
    ecs = aws.client("ecs")
    good = seeded.task_definition_arns[REGISTRY]
    spec = ecs.describe_task_definition(taskDefinition=good)["taskDefinition"]
    container = {
        **spec["containerDefinitions"][0],
        "image": "hokusai/hokusai-registry:v2",
        "environment": [{"name": "RELEASE_TOKEN", "value": TOKEN}],
    }
    bad = ecs.register_task_definition(
        family=spec["family"],
        containerDefinitions=[container],
        networkMode=spec["networkMode"],
        requiresCompatibilities=spec["requiresCompatibilities"],
        cpu=spec["cpu"],
        memory=spec["memory"],
    )["taskDefinition"]["taskDefinitionArn"]
    old_id = bridge.primary_deployment_id(CLUSTER, REGISTRY)
    ecs.update_service(cluster=CLUSTER, service=REGISTRY, taskDefinition=bad)
    new_id = bridge.primary_deployment_id(CLUSTER, REGISTRY)
    now = datetime.now(UTC)
    failed = DeploymentState(new_id, "PRIMARY", "FAILED", 2, 0, 0, bad, now, now, failed_tasks=3)
    failed.rollout_state_reason = "ECS deployment circuit breaker: tasks failed to start."
    serving = DeploymentState(old_id, "ACTIVE", "COMPLETED", 2, 2, 0, good, now, now)
    bridge.set_service_state(CLUSTER, REGISTRY, 2, 0, [failed, serving])
    for _ in range(3):
        task_id = uuid.uuid4().hex
        bridge.start_task(CLUSTER, REGISTRY, task_id, bad, new_id, "127.0.9.9")
        stop = TaskStop("EssentialContainerExited", "Essential container in task exited", 1)
        bridge.stop_task(CLUSTER, task_id, stop)
    return {"good": good, "bad": bad}


@pytest.fixture
def target(aws: AwsSandbox, monkeypatch: pytest.MonkeyPatch) -> Target:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    return Target(
        name="deploys",
        api_url="http://127.0.0.1:9",
        aws_region=aws.region,
        aws_endpoint_url=aws.endpoint_url,
        ecs_cluster=CLUSTER,
        ecs_services=[REGISTRY, MLFLOW],
        mlflow_ecs_service=MLFLOW,
    )


Timed = tuple[AwsObservation, dict[str, DeployObservations], float, float]


def read(target: Target, deadline_s: float) -> Timed:
    """DescribeServices, then the deploy reads; when each ended, in seconds after the
    deadline (negative: before it)."""

    async def go() -> Timed:
        deadline_at = time.monotonic() + deadline_s
        async with Evidence(target, None, deadline_at) as ev:
            services = await ev.ecs_services()
            described = time.monotonic() - deadline_at
            observed = await read_deploys(ev, services)
            return services, observed, described, time.monotonic() - deadline_at

    return asyncio.run(go())


def test_reads_the_stopped_tasks_and_the_two_revisions(
    target: Target, release: dict[str, str]
) -> None:
    services, observed, _, ended = read(target, 30)
    assert ended < 0
    registry = observed[REGISTRY]
    assert registry.list_stopped is not None and registry.list_stopped.response
    assert registry.describe_stopped is not None
    assert len(registry.describe_stopped.response["tasks"]) == 3  # type: ignore[index]
    assert list(registry.task_definitions) == [release["bad"], release["good"]]
    # nothing failing in MLflow's service: its task definitions are not read
    assert observed[MLFLOW].task_definitions == {}

    result = assess_ecs(services, target.ecs_services, [MLFLOW], observed, datetime.now(UTC))
    (finding,) = [f for f in result.findings if "is failing" in f.message]
    assert "revision hokusai-registry:2 (image hokusai/hokusai-registry:v2) is failing" in (
        finding.message
    )
    assert (
        "3 tasks stopped in the last 10 min: Essential container in task exited (exit code 1)"
        in finding.message
    )
    assert "revision hokusai-registry:1 runs 2/2" in finding.message
    assert set(result.evidence) >= {
        "ecs:describe_services",
        "ecs:list_tasks",
        "ecs:describe_tasks",
        "ecs:describe_task_definition",
    }
    assert TOKEN not in result.model_dump_json()


@pytest.mark.parametrize("deadline_s", [2.0, 4.5])
def test_the_reads_stop_at_the_deadline(
    aws: AwsSandbox, target: Target, release: dict[str, str], deadline_s: float
) -> None:
    """2 s: no time is left once DescribeServices answered; 4.5 s: the reads start and are
    cut (on a loaded machine DescribeServices may take the time of both)."""
    said = "before the run's deadline"
    aws.latency_ms = 1500  # every AWS answer takes 1.5 s
    try:
        services, observed, described, ended = read(target, deadline_s)
    finally:
        aws.latency_ms = 0
    assert services.response is not None
    # the reads end a margin before the deadline (DescribeServices itself may end late on
    # a loaded machine: then nothing more is read)
    assert ended < max(described, -DEADLINE_MARGIN_S) + 0.3
    assert all(said in (o.not_read or "") for o in observed.values()), observed
    result = assess_ecs(services, target.ecs_services, [MLFLOW], observed, datetime.now(UTC))
    text = " | ".join(f.message for f in result.findings)
    assert "revision hokusai-registry:2 is failing" in text  # DescribeServices still tells it
    assert said in text


def test_nothing_is_read_when_describe_services_failed(target: Target) -> None:
    failed = AwsObservation(service="ecs", operation="describe_services", error_code="Throttling")

    async def go() -> dict[str, Any]:
        async with Evidence(target, None, time.monotonic() + 10) as ev:
            return await read_deploys(ev, failed)

    assert asyncio.run(go()) == {}
