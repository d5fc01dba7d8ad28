"""Roll an ECS service back to an earlier task definition revision, applied at most once.

`UpdateService(taskDefinition=family:N)` goes through the forced deployment's write path
(tasks/recovery/deployments.py): a client without botocore retries, attempted again only
where the attempt provably did not apply, and never when the service already moved on from
the deployment the diagnosis saw. Like a restart it starts the cooldown's clock (the
service's RESTART_TAG). What follows it (the rollout of revision N completing, the targets
healthy) is the stabilisation wait's, and the final diagnosis verifies it.
"""

from __future__ import annotations

from service_health.recovery import ActionResult, EntryStatus, RecoveryStep, StepKind
from service_health.settings import Target
from tasks.recovery.deployments import (
    ATTEMPTS,
    DeploymentData,
    ServiceUpdate,
    apply_update,
    deployment_result,
)
from tasks.recovery.registry import ActionContext, Writers, action
from tasks.retries import io_task

ACTION = StepKind.ROLLBACK


def rollback_update(service: str, revision: str) -> ServiceUpdate:
    """The UpdateService of a rollback to `revision` ("family:N", which ECS accepts as the
    task definition: the revision is named, never "the latest")."""
    return ServiceUpdate(
        ACTION,
        params={"taskDefinition": revision},
        what=f"Rollback of {{service}} to revision {revision}",
        already="not rolling back",
    )


@io_task(name="roll-back-service", retries=1)
async def roll_back_service(
    target: Target,
    service: str,
    revision: str,
    expected_deployment_id: str | None = None,
    attempts: int = ATTEMPTS,
    *,
    writers: Writers,
) -> ActionResult[DeploymentData]:
    """ECS UpdateService(taskDefinition=`revision`) for `service`, applied at most once,
    through `writers` (the action context's: only the apply path has one).

    With `expected_deployment_id` (the failing PRIMARY deployment seen when planning),
    nothing is done if the service already moved on to another deployment (a second
    recovery, a retry, an operator's release).
    """
    if ":" not in revision:
        return deployment_result(
            service, EntryStatus.FAILED,
            f"Revision {revision!r} names no revision number: nothing done", False,
            rollback_update(service, revision), applied=False,
        )  # fmt: skip
    update = rollback_update(service, revision)
    result = await apply_update(target, service, expected_deployment_id, attempts, writers, update)
    result.data.task_definition = revision
    return result


@action(StepKind.ROLLBACK)
async def _rollback(step: RecoveryStep, context: ActionContext) -> ActionResult[DeploymentData]:
    # The planner names the service and the revision of every such step.
    assert step.service is not None and step.revision is not None
    return await roll_back_service(
        context.target,
        step.service,
        step.revision,
        step.expected_deployment_id,
        writers=context.writers,
    )
