"""Force a new deployment of an ECS service, applied at most once; the one write path of
every UpdateService a recovery makes (a rollback, tasks/recovery/rollback.py, goes through
`update_service_once` too).

UpdateService is not idempotent: each call starts a deployment. The write goes through a
client without botocore retries (tasks/retries.py) and is attempted again only where the
attempt provably did not apply (service_health.action_rules.classify_write_failure): a
throttled request (refused before processing), a connection that was never made, or an
ambiguous failure after which ECS still shows the same primary deployment as before. A
changed primary deployment id means it applied. The step's expected deployment id makes a
Prefect-level retry (or a second recovery) a no-op once a new deployment exists.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
)
from pydantic import Field

from service_health.action_rules import (
    WriteFailure,
    applied_after_ambiguity,
    classify_write_failure,
)
from service_health.aws_responses import EcsServiceEntry
from service_health.recovery import (
    RESTART_TAG,
    ActionData,
    ActionResult,
    EntryStatus,
    RecoveryStep,
    StepKind,
    action_entry,
)
from service_health.settings import Target
from tasks import aws
from tasks.recovery.aws_reads import describe_services
from tasks.recovery.registry import ActionContext, Writers, action
from tasks.retries import NotApplied, io_task, write_retrying

if TYPE_CHECKING:
    from mypy_boto3_ecs import ECSClient

ACTION = StepKind.FORCE_DEPLOYMENT
ATTEMPTS = 4
# After an ambiguous failure, ECS is read again after these pauses before concluding that
# the write did not apply (a request still being processed shows up meanwhile).
SETTLE_WAITS_S = (0.5, 1.0, 2.0)
# Raised before the request left the worker: it cannot have been applied.
_NOT_SENT = (EndpointConnectionError, ConnectTimeoutError, NoCredentialsError)


class DeploymentData(ActionData):
    service: str
    applied: bool | None = None  # None: unknown (an ambiguous failure, ECS unreadable)
    deployment_id: str | None = None
    deployment_id_before: str | None = None
    attempts: list[str] = Field(default_factory=list)  # what each attempt met
    restart_tag_error: str | None = None  # the cooldown's tag could not be written
    task_definition: str | None = None  # a rollback: the revision the service was set to


@dataclass(frozen=True)
class ServiceUpdate:
    """One kind of UpdateService a recovery makes: its parameters besides the cluster and
    the service, and the words its log entries use."""

    action: StepKind
    params: dict[str, Any] = field(default_factory=lambda: {"forceNewDeployment": True})
    what: str = "New deployment of {service}"  # ... started
    already: str = "not forcing another"  # when the service moved on since the diagnosis

    def started(self, service: str) -> str:
        return self.what.format(service=service)


FORCE = ServiceUpdate(ACTION)


def deployment_result(
    service: str,
    status: EntryStatus,
    text: str,
    success: bool,
    update: ServiceUpdate = FORCE,
    **fields: Any,
) -> ActionResult[DeploymentData]:
    data = DeploymentData(service=service, **fields)
    entry = action_entry(
        update.action, status, text, service, **data.model_dump(exclude_unset=True)
    )
    return ActionResult(action=str(update.action), success=success, entries=[entry], data=data)


class _ForcedDeployment:
    """The attempts at one UpdateService (forceNewDeployment=True, or a rollback's
    taskDefinition)."""

    def __init__(
        self,
        target: Target,
        service: str,
        read: ECSClient,
        write: ECSClient,
        before: str,
        update: ServiceUpdate = FORCE,
    ) -> None:
        self.target, self.service = target, service
        self.read, self.write = read, write
        self.before = before  # the primary deployment before the first attempt
        self.update = update
        self.history: list[str] = []

    def result(
        self, status: EntryStatus, text: str, success: bool, **fields: Any
    ) -> ActionResult[DeploymentData]:
        return deployment_result(
            self.service, status, text, success, self.update, attempts=self.history, **fields
        )

    def attempt(self) -> ActionResult[DeploymentData]:
        """One attempt; raises NotApplied where another one is safe."""
        n = len(self.history) + 1
        try:
            response = self.write.update_service(
                cluster=self.target.ecs_cluster or "", service=self.service,
                **self.update.params,
            )  # fmt: skip
        except ClientError as exc:
            err = exc.response.get("Error", {})
            code = str(err.get("Code", "ClientError"))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            failure = classify_write_failure(code, status, sent=True)
            if failure is WriteFailure.NOT_APPLIED:
                self.history.append(f"attempt {n}: {code} (refused, not applied)")
                raise NotApplied from exc
            if failure is WriteFailure.DEFINITIVE:
                self.history.append(f"attempt {n}: {code}")
                return self.result(
                    EntryStatus.FAILED,
                    f"UpdateService refused for {self.service}: {code}: "
                    f"{str(err.get('Message', ''))[:200]} (definitive, not retried)",
                    False,
                    applied=False,
                )
            return self.settle(n, f"{code} (HTTP {status})")
        except _NOT_SENT as exc:
            self.history.append(f"attempt {n}: {type(exc).__name__} (never sent)")
            raise NotApplied from exc
        except BotoCoreError as exc:  # the request left: a read timeout, a dropped connection
            return self.settle(n, type(exc).__name__)
        primary = next(
            (d for d in response["service"].get("deployments", []) if d.get("status") == "PRIMARY"),
            None,
        )
        new_id = primary.get("id") if primary else None
        self.history.append(f"attempt {n}: applied")
        return self.result(
            EntryStatus.SUCCESS,
            f"{self.update.started(self.service)} started ({new_id}; was {self.before})"
            + (f" after {n} attempts" if n > 1 else ""),
            True,
            applied=True,
            deployment_id=new_id,
            deployment_id_before=self.before,
        )

    def settle(self, n: int, ambiguous: str) -> ActionResult[DeploymentData]:
        """After an ambiguous failure the request may have been applied: ECS decides."""
        current, read_error = self._settled_primary()
        applied = applied_after_ambiguity(self.before, current)
        if applied:
            self.history.append(f"attempt {n}: {ambiguous}, but the deployment changed")
            return self.result(
                EntryStatus.SUCCESS,
                f"{self.update.started(self.service)} started ({current}) although "
                f"UpdateService reported {ambiguous}; not retried",
                True,
                applied=True,
                deployment_id=current,
                deployment_id_before=self.before,
            )
        if applied is None:
            self.history.append(f"attempt {n}: {ambiguous}; state unreadable ({read_error})")
            return self.result(
                EntryStatus.FAILED,
                f"UpdateService for {self.service} failed ambiguously ({ambiguous}) and the "
                f"service could not be re-read ({read_error}): not retried, to never restart "
                "twice",
                False,
                applied=None,
            )
        self.history.append(f"attempt {n}: {ambiguous}; deployment unchanged, not applied")
        raise NotApplied

    def _settled_primary(self) -> tuple[str | None, str | None]:
        """(primary deployment id, error), read again until it changes or the waits end."""
        current: str | None = None
        error: str | None = None
        for delay in SETTLE_WAITS_S:
            time.sleep(delay)
            services, error = describe_services(self.read, self.target, [self.service])
            if services is None:
                continue
            current = services[0].primary_deployment_id
            if current != self.before:
                return current, None
        return current, error


def _before(read: ECSClient, target: Target, service: str) -> EcsServiceEntry | str:
    """The service as it is before acting, or why it cannot be read."""
    services, error = describe_services(read, target, [service])
    if services is None or services[0].primary_deployment_id is None:
        why = error or f"{service} is {services[0].status if services else 'unknown'}"
        return f"Could not read {service} before acting ({why}): nothing done"
    return services[0]


def update_service_once(
    target: Target,
    service: str,
    expected: str | None,
    attempts: int,
    writers: Writers,
    update: ServiceUpdate = FORCE,
) -> ActionResult[DeploymentData]:
    """One UpdateService, applied at most once (blocking: call it in a thread).

    With `expected` (the primary deployment seen when planning), nothing is done if the
    service already moved on to another deployment.
    """
    if not target.ecs_cluster:
        return deployment_result(
            service, EntryStatus.FAILED, "No ECS cluster configured: nothing done", False, update
        )
    try:
        read, write = aws.ecs_client(target), writers.ecs()
    except Exception as exc:  # a credentials block that cannot load, a bad region
        return deployment_result(
            service, EntryStatus.FAILED,
            f"AWS client unavailable ({type(exc).__name__}): nothing done", False, update,
            applied=False,
        )  # fmt: skip
    before = _before(read, target, service)
    if isinstance(before, str):
        return deployment_result(service, EntryStatus.FAILED, before, False, update, applied=False)
    if expected is not None and before.primary_deployment_id != expected:
        return deployment_result(
            service,
            EntryStatus.SUCCESS,
            f"{service} already has a newer deployment ({before.primary_deployment_id}, "
            f"started {before.primary_created_at}) than the one diagnosed ({expected}): "
            f"{update.already}",
            True,
            update,
            applied=False,
            deployment_id=before.primary_deployment_id,
            deployment_id_before=expected,
        )
    assert before.primary_deployment_id is not None  # _before says why otherwise
    forced = _ForcedDeployment(target, service, read, write, before.primary_deployment_id, update)
    try:
        return write_retrying(attempts)(forced.attempt)
    except NotApplied:
        return forced.result(
            EntryStatus.FAILED,
            f"No {update.started(service)[0].lower()}{update.started(service)[1:]} after "
            f"{attempts} attempts: {'; '.join(forced.history)}",
            False,
            applied=False,
        )


def mark_restart(target: Target, service: str, writers: Writers) -> str | None:
    """Tag the service with the time of this restart; the error code if that failed."""
    services, error = describe_services(aws.ecs_client(target), target, [service])
    arn = services[0].arn if services else None
    if arn is None:
        return error or "service ARN unknown"
    obs = aws.call_sync(  # tagging is idempotent: retries are safe
        writers.ecs(idempotent=True), "ecs", "tag_resource", resourceArn=arn,
        tags=[{"key": RESTART_TAG, "value": datetime.now(UTC).isoformat()}],
    )  # fmt: skip
    return obs.error_code


async def apply_update(
    target: Target,
    service: str,
    expected: str | None,
    attempts: int,
    writers: Writers,
    update: ServiceUpdate = FORCE,
) -> ActionResult[DeploymentData]:
    """`update_service_once` off the event loop, then, if it applied, the restart tag: a
    forced deployment or a rollback is a restart by a recovery, and starts the cooldown's
    clock (an ordinary release does not)."""
    result = await asyncio.to_thread(
        update_service_once, target, service, expected, attempts, writers, update
    )
    if result.data.applied:
        problem = await asyncio.to_thread(mark_restart, target, service, writers)
        if problem:
            result.data.restart_tag_error = problem
    return result


@io_task(name="force-new-deployment", retries=1)
async def force_new_deployment(
    target: Target,
    service: str,
    expected_deployment_id: str | None = None,
    attempts: int = ATTEMPTS,
    *,
    writers: Writers,
) -> ActionResult[DeploymentData]:
    """ECS UpdateService(forceNewDeployment=True) for `service`, applied at most once,
    through `writers` (the action context's: only the apply path has one).

    With `expected_deployment_id` (the primary deployment seen when planning), nothing is
    forced if the service already moved on to another deployment.
    """
    return await apply_update(target, service, expected_deployment_id, attempts, writers)


@action(StepKind.FORCE_DEPLOYMENT)
async def _force(step: RecoveryStep, context: ActionContext) -> ActionResult[DeploymentData]:
    assert step.service is not None  # the planner names the service of every such step
    return await force_new_deployment(
        context.target, step.service, step.expected_deployment_id, writers=context.writers
    )
