"""The reads behind "why tasks die": each configured ECS service's stopped tasks (one page,
described), and the task definitions of a failing revision and of the last good one.

Bounded: one ListTasks page (STOPPED_TASKS_PAGE) and one DescribeTasks call per service, at
most two DescribeTaskDefinition calls, all within the run's deadline (what is not read in
time is said, and the ECS check still reports what DescribeServices told). The reading and
judging are in service_health.deploy_evidence and service_health.assessment.deploys.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from service_health.assessment.deploys import stopped_task_arns, task_definitions_to_describe
from service_health.deploy_evidence import (
    STOPPED_TASKS_PAGE,
    DeployObservations,
    read_service_deployments,
)
from service_health.observations import AwsObservation
from tasks.evidence import Evidence

# Left for the ECS check to judge and report once the reads stop at the deadline.
DEADLINE_MARGIN_S = 1.0


async def _read_service(
    ev: Evidence, services: AwsObservation, name: str, into: DeployObservations
) -> None:
    cluster = ev.target.ecs_cluster
    into.list_stopped = await ev.aws_call(
        "ecs",
        "list_tasks",
        cluster=cluster,
        serviceName=name,
        desiredStatus="STOPPED",
        maxResults=STOPPED_TASKS_PAGE,
    )
    arns = stopped_task_arns(into)
    if arns:
        into.describe_stopped = await ev.aws_call(
            "ecs", "describe_tasks", cluster=cluster, tasks=arns
        )
    rollout = read_service_deployments(services.response, []).get(name)
    if rollout is None:
        return
    for arn in task_definitions_to_describe(rollout, into, datetime.now(UTC)):
        into.task_definitions[arn] = await ev.aws_call(
            "ecs", "describe_task_definition", taskDefinition=arn
        )


async def read_deploys(ev: Evidence, services: AwsObservation) -> dict[str, DeployObservations]:
    """Per configured ECS service: the reads about its stopped tasks (partial at the
    deadline). Nothing is read when DescribeServices itself failed."""
    t = ev.target
    if not (t.ecs_cluster and t.ecs_services) or services.response is None:
        return {}
    observed = {name: DeployObservations() for name in t.ecs_services}
    limit = ev.seconds_left(DEADLINE_MARGIN_S)
    if limit is not None and limit <= 0:
        for obs in observed.values():
            obs.not_read = "stopped tasks not read: no time left before the run's deadline"
        return observed
    jobs = [_read_service(ev, services, name, observed[name]) for name in t.ecs_services]
    try:
        await asyncio.wait_for(asyncio.gather(*jobs), limit)
    except TimeoutError:
        for obs in observed.values():
            obs.not_read = "stopped tasks not all read before the run's deadline"
    return observed
