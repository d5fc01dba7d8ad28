"""Wait on real signals: ECS rollout state, target health, the API's and MLflow's answers.

Every wait polls through the one poller (tasks/polling.py: fast first, backing off) and
ends at its timeout with a failed entry saying what was missing; AWS reads ride out
throttling with botocore's adaptive retries.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING
from uuid import UUID

import httpx
from botocore.exceptions import BotoCoreError, ClientError, WaiterError
from prefect.artifacts import acreate_progress_artifact, aupdate_progress_artifact

from service_health.assessment import assess_api_connectivity, assess_health_endpoints
from service_health.deploy_evidence import revision_label
from service_health.endpoints import HEALTH, MLFLOW_HEALTH
from service_health.models import CheckStatus, DiagnosticReport
from service_health.observations import HttpObservation
from service_health.parsing import parse_health
from service_health.recovery import (
    ActionData,
    ActionResult,
    EntryStatus,
    RecoveryStep,
    StepKind,
    action_entry,
)
from service_health.settings import (
    CONSECUTIVE_HEALTHY,
    MLFLOW_WAIT_TIMEOUT_S,
    STABILIZATION_TIMEOUT_S,
    Target,
)
from tasks import aws, http
from tasks.polling import Poller
from tasks.recovery.aws_reads import describe_services, group_health
from tasks.recovery.early import EarlyVerification
from tasks.recovery.registry import ActionContext, action
from tasks.retries import io_task

if TYPE_CHECKING:
    from mypy_boto3_ecs import ECSClient
    from mypy_boto3_elbv2 import ElasticLoadBalancingv2Client

# Between the consecutive /health answers: two GETs a quarter of a second apart cost the
# service nothing. The last answer is asked earlier when the final diagnosis begun at the
# one before has already ended (`_last_answer_after`).
HEALTH_INTERVAL_S = 0.25
# While a rollout converges, read its state at least this often (the poller's 5 s is for
# long waits in general): the end of a rollout is noticed within a quarter of a second,
# for one DescribeServices a poll (the waiter and the target health are read only once it
# looks stable): about four ECS reads a second for the length of a rollout, shared with
# the account's other callers (a throttled read is ridden out by botocore's adaptive mode).
STABILISATION_MAX_INTERVAL_S = 0.25


class WaitData(ActionData):
    elapsed_s: float
    polls: int | None = None  # None: it could not start polling


def healthy_answer(obs: HttpObservation, slow_s: float) -> bool:
    """Whether a /health answer counts toward the streak: healthy by the very rules the
    verification's diagnosis judges it with (reachable, fast enough, HTTP 200 reporting
    `healthy`). A 200 reporting `degraded` does not count: the verification would not
    pass it either."""
    return (
        assess_api_connectivity(obs, slow_s).status is CheckStatus.HEALTHY
        and assess_health_endpoints({HEALTH: obs}, slow_s).status is CheckStatus.HEALTHY
    )


def _health_text(obs: HttpObservation) -> str:
    if not obs.answered:
        return obs.failure_text()
    status = parse_health(obs).status
    return f"HTTP {obs.status_code}" + (f" {status}" if status else "")


class _Progress:
    """A Prefect progress artifact for a wait (the run's Artifacts tab shows how far it
    is). A courtesy: a server that cannot take it must never fail the wait."""

    def __init__(self, description: str) -> None:
        self.description = description
        self.id: UUID | None = None
        self.shown = 0.0

    async def start(self, slug: str, action: str) -> None:
        with contextlib.suppress(Exception):
            self.id = await acreate_progress_artifact(
                progress=0.0,
                key=f"recovery-{action.replace('_', '-')}-{slug}",
                description=self.description,
            )

    async def advance(self, percent: float) -> None:
        percent = min(100.0, percent)
        if self.id is None or percent - self.shown < 5:
            return  # a few updates, not one per poll
        self.shown = percent
        with contextlib.suppress(Exception):
            await aupdate_progress_artifact(self.id, percent)

    async def finish(self) -> None:
        if self.id is not None:  # done is 100 %, however early
            with contextlib.suppress(Exception):
                await aupdate_progress_artifact(self.id, 100.0)


class _Infrastructure:
    """ECS rollout state and target health of the services waited for; for a service rolled
    back, its PRIMARY deployment on the revision rolled back to, COMPLETED."""

    def __init__(
        self, target: Target, services: Sequence[str], revisions: Mapping[str, str] | None = None
    ) -> None:
        self.target = target
        self.services = list(services)
        self.revisions = dict(revisions or {})
        self.ecs: ECSClient | None = None
        self.elb: ElasticLoadBalancingv2Client | None = None
        self.last_ecs = "not read yet"
        self.last_targets = "not read yet"
        self.gone: str | None = None

    async def clients(self) -> str | None:
        """Why the wait cannot read AWS, or None."""
        if not self.services:
            return None
        if not self.target.ecs_cluster:
            return "no ECS cluster configured"
        try:
            self.ecs = await asyncio.to_thread(aws.ecs_client, self.target)
            self.elb = await asyncio.to_thread(aws.elbv2_client, self.target)
        except Exception as exc:
            return f"AWS client unavailable ({type(exc).__name__})"
        return None

    async def stable(self, check_targets: bool) -> bool:
        if not self.services:
            return True
        assert self.ecs is not None and self.elb is not None  # `clients` made them
        services, error = await asyncio.to_thread(
            describe_services, self.ecs, self.target, self.services
        )
        if services is None:
            self.last_ecs = f"ECS unreadable ({error})"
            return False
        self.last_ecs = "; ".join(s.describe() for s in services)
        gone = [s for s in services if s.gone]
        if gone:
            self.gone = ", ".join(f"{s.name} is {s.status}" for s in gone)
            return False
        if not all(s.stable for s in services):
            return False
        elsewhere = [
            f"{s.name} runs {revision_label(s.primary_task_definition) or '?'}, not "
            f"{self.revisions[s.name]}"
            for s in services
            if s.name in self.revisions
            and not (
                revision_label(s.primary_task_definition) == self.revisions[s.name]
                and s.rollout_state == "COMPLETED"
            )
        ]
        if elsewhere:
            self.last_ecs += f" ({'; '.join(elsewhere)})"
            return False
        # The waiter's confirmation and the targets' health are read at once (reads only).
        elb = self.elb
        arns = [a for s in services for a in s.target_group_arns] if check_targets else []
        waiter = asyncio.ensure_future(asyncio.to_thread(self._waiter_agrees, self.ecs))
        healths = await asyncio.gather(*(asyncio.to_thread(group_health, elb, arn) for arn in arns))
        confirmed, why = await waiter
        if not confirmed:
            self.last_ecs += f" (services_stable waiter: {why})"
            return False
        if not check_targets:
            return True
        parts = []
        stable = True
        for arn, (health, error) in zip(arns, healths, strict=True):
            group = arn.rsplit("/", 2)[-2] if arn.count("/") >= 2 else arn
            if health is None:
                parts.append(f"{group} unreadable ({error})")
                stable = False
                continue
            parts.append(f"{group} {health.healthy}/{health.total} healthy")
            stable = stable and health.all_healthy
        self.last_targets = ", ".join(parts) or "no target group attached"
        return stable

    def _waiter_agrees(self, ecs: ECSClient) -> tuple[bool, str]:
        """boto3's own services_stable waiter, one attempt, as the confirmation."""
        try:
            ecs.get_waiter("services_stable").wait(
                cluster=self.target.ecs_cluster or "",
                services=self.services,
                WaiterConfig={"Delay": 1, "MaxAttempts": 1},
            )
        except WaiterError as exc:
            return False, str(exc.kwargs.get("reason") or exc)[:200]
        except (BotoCoreError, ClientError) as exc:
            return False, type(exc).__name__
        return True, ""


class _Stabilisation:
    """The infrastructure stable, then `consecutive` healthy /health answers in a row."""

    def __init__(
        self,
        target: Target,
        services: Sequence[str],
        timeout_s: float,
        consecutive: int,
        action: StepKind,
        check_targets: bool,
        revisions: Mapping[str, str] | None = None,
        early: EarlyVerification | None = None,
    ) -> None:
        self.target, self.timeout_s, self.action = target, timeout_s, action
        self.consecutive, self.check_targets = consecutive, check_targets
        self.infrastructure = _Infrastructure(target, services, revisions)
        self.subject = ", ".join(services) or "API /health"
        self.poller = Poller(timeout_s, STABILISATION_MAX_INTERVAL_S)
        # The final diagnosis, started within the streak (consecutive >= 2: it then lies
        # between healthy answers): tasks/recovery/early.py.
        self.early = early if consecutive >= 2 else None
        self.seen = ""
        self.progress = _Progress(
            f"{action} of {target.name}: {self.subject} (at most {timeout_s:g} s)"
        )
        self.streak = 0
        self.last_health = "not asked yet"
        self.statuses: list[str] = []

    async def done(self, status: EntryStatus, text: str) -> ActionResult[WaitData]:
        if self.early is not None:
            if status == EntryStatus.SUCCESS:
                self.early.accept()
            else:
                self.early.discard()
        await self.progress.finish()
        data = WaitData(elapsed_s=round(self.poller.elapsed, 2), polls=self.poller.polls or None)
        fields = data.model_dump(exclude_none=True)
        entry = action_entry(self.action, status, text, self.subject, **fields)
        return ActionResult(
            action=str(self.action),
            success=status == EntryStatus.SUCCESS,
            entries=[entry],
            data=data,
        )

    async def run(self) -> ActionResult[WaitData]:
        problem = await self.infrastructure.clients()
        if problem is not None:
            return await self.done(EntryStatus.FAILED, f"Cannot wait for {self.subject}: {problem}")
        await self.progress.start(self.target.slug, self.action)
        async with http.client("recover", self.target.thresholds.request_timeout_s) as client:
            while True:
                self.poller.poll()
                await self.progress.advance(self.poller.progress)
                answer: HttpObservation | None = None
                if self.consecutive > 0 and self.streak > 0:
                    # Mid-streak the infrastructure was stable a poll ago: /health is asked
                    # while it is read again (the answer counts only if it still is).
                    ready, answer = await asyncio.gather(
                        self.infrastructure.stable(self.check_targets), self._ask(client)
                    )
                else:
                    ready = await self.infrastructure.stable(self.check_targets)
                seen = f"{self.infrastructure.last_ecs} | {self.infrastructure.last_targets}"
                if seen != self.seen:  # tasks started, targets turned healthy: moving
                    self.seen = seen
                    self.poller.progressed()
                if self.infrastructure.gone:
                    return await self.done(
                        EntryStatus.FAILED,
                        f"Not stable: {self.infrastructure.gone}; it will not stabilise by waiting",
                    )
                pause = None
                if ready and self.consecutive > 0:
                    answer = answer if answer is not None else await self._ask(client)
                    pause = HEALTH_INTERVAL_S if self._counts(answer) else None
                elif not ready:
                    self._broken()
                if ready and self.streak >= self.consecutive:
                    return await self.done(EntryStatus.SUCCESS, self._verdict(stable=True))
                if self.poller.expired:
                    return await self.done(EntryStatus.FAILED, self._verdict(stable=False))
                await self.poller.pause(
                    pause, back_off=not ready or self.streak == 0, until=self._last_answer_after()
                )

    async def _ask(self, client: httpx.AsyncClient) -> HttpObservation:
        """One GET /health, within what is left of the wait."""
        return await http.fetch(
            client,
            "GET",
            self.target.api_url.rstrip("/") + HEALTH,
            timeout_s=min(
                self.target.thresholds.request_timeout_s, max(0.2, self.poller.remaining)
            ),
        )

    def _counts(self, obs: HttpObservation) -> bool:
        """Whether the answer extends the streak: healthy as the verification would call it
        (`healthy_answer`); any other answer breaks it."""
        self.last_health = _health_text(obs)
        if healthy_answer(obs, self.target.thresholds.slow_response_s):
            self.streak += 1
            self.statuses.append(self.last_health)
            if self.early is not None and self.streak == self.consecutive - 1:
                self.early.start()
            return True
        self._broken()
        return False

    def _last_answer_after(self) -> asyncio.Task[DiagnosticReport | None] | None:
        """The final diagnosis begun at the streak's next-to-last answer, while it is what
        the last answer waits for: that answer is asked as soon as it has ended (at most
        HEALTH_INTERVAL_S later), so that the diagnosis lies wholly between healthy answers
        and the streak ends no later than it needs to."""
        if self.early is None or self.streak != self.consecutive - 1:
            return None
        return self.early.running

    def _broken(self) -> None:
        self.streak = 0
        self.statuses.clear()
        if self.early is not None:
            self.early.discard()

    def _verdict(self, stable: bool) -> str:
        """What was seen: ECS, the targets, the /health streak, as it ended."""
        parts = []
        if self.infrastructure.services:
            ecs = self.infrastructure.last_ecs
            parts.append(ecs if stable else f"ECS: {ecs}")
            if self.check_targets:
                parts.append(f"targets: {self.infrastructure.last_targets}")
        if self.consecutive > 0 and stable:
            answers = ", ".join(self.statuses)
            parts.append(f"{self.consecutive} consecutive healthy /health answers ({answers})")
        elif self.consecutive > 0:
            parts.append(
                f"/health: {self.streak} of {self.consecutive} consecutive healthy answers "
                f"(last: {self.last_health})"
            )
        if stable:
            return f"Stable after {self.poller.elapsed:.1f} s: {'; '.join(parts)}"
        return f"Not stable after {self.timeout_s:g} s: {'; '.join(parts)}"


@io_task(name="wait-for-stabilization", retries=2)
async def wait_for_stabilization(
    target: Target,
    services: list[str],
    timeout_s: float = STABILIZATION_TIMEOUT_S,
    consecutive: int = CONSECUTIVE_HEALTHY,
    revisions: dict[str, str] | None = None,
    early: EarlyVerification | None = None,
) -> ActionResult[WaitData]:
    """Wait on real signals, polling fast first (again whenever the rollout moves):
    1. ECS: every service in `services` stable as boto3's services_stable waiter defines it
       (one deployment, running == desired) with its primary rollout not IN_PROGRESS, and
       a service in `revisions` (rolled back) with its PRIMARY deployment on that revision
       ("family:N") and COMPLETED; a MISSING/DRAINING/INACTIVE service fails at once;
    2. every target of the target groups attached to those services healthy;
    3. then `consecutive` healthy answers in a row from the API's GET /health, judged as
       the verification judges them (`healthy_answer`: a 200 saying degraded is not one).
    `services=[]` waits for /health only. At `timeout_s` it stops with a failed
    "not stable" entry saying what was missing. With `early`, the final diagnosis starts
    at the streak's next-to-last healthy answer and is accepted when the streak completes.
    """
    action = StepKind.WAIT_FOR_STABILIZATION
    return await _Stabilisation(
        target, services, timeout_s, consecutive, action, True, revisions, early
    ).run()


@io_task(name="wait-for-rollout", retries=2)
async def wait_for_rollout(
    target: Target, service: str, timeout_s: float = STABILIZATION_TIMEOUT_S
) -> ActionResult[WaitData]:
    """Wait for a deployment already in progress: ECS rollout state and target health only."""
    action = StepKind.WAIT_FOR_ROLLOUT
    return await _Stabilisation(target, [service], timeout_s, 0, action, True).run()


@io_task(name="wait-for-mlflow", retries=2)
async def wait_for_mlflow(
    target: Target, timeout_s: float = MLFLOW_WAIT_TIMEOUT_S
) -> ActionResult[WaitData]:
    """Poll MLflow's GET /health until it answers 200."""
    action = StepKind.WAIT_FOR_MLFLOW
    poller = Poller(timeout_s)

    def result(status: EntryStatus, text: str, subject: str | None) -> ActionResult[WaitData]:
        data = WaitData(elapsed_s=round(poller.elapsed, 2), polls=poller.polls or None)
        fields = data.model_dump(exclude_none=True) if data.polls else {}
        entry = action_entry(action, status, text, subject, **fields)
        return ActionResult(
            action=str(action), success=status == EntryStatus.SUCCESS, entries=[entry], data=data
        )

    if not target.mlflow_url:
        return result(EntryStatus.FAILED, "No MLflow URL configured: cannot wait", None)
    url = target.mlflow_url.rstrip("/") + MLFLOW_HEALTH
    timeout = target.thresholds.request_timeout_s
    async with http.client("recover", timeout) as client:
        while True:
            polls = poller.poll()
            obs = await http.fetch(
                client, "GET", url, timeout_s=min(timeout, max(0.2, poller.remaining))
            )
            if obs.status_code == 200:
                return result(
                    EntryStatus.SUCCESS,
                    f"MLflow answers GET /health 200 (after {poller.elapsed:.1f} s, {polls} polls)",
                    "MLflow",
                )
            if poller.expired:
                return result(
                    EntryStatus.FAILED,
                    f"MLflow did not answer GET /health 200 within {timeout_s:g} s "
                    f"(last: {obs.failure_text()})",
                    "MLflow",
                )
            await poller.pause()


@action(StepKind.WAIT_FOR_ROLLOUT)
async def _rollout(step: RecoveryStep, context: ActionContext) -> ActionResult[WaitData]:
    assert step.service is not None  # the planner names the service of every such step
    return await wait_for_rollout(context.target, step.service, context.stabilization_timeout_s)


@action(StepKind.WAIT_FOR_MLFLOW)
async def _mlflow(step: RecoveryStep, context: ActionContext) -> ActionResult[WaitData]:
    # Part of the stabilisation after the restart: never longer than the run allows it.
    timeout_s = min(MLFLOW_WAIT_TIMEOUT_S, context.stabilization_timeout_s)
    return await wait_for_mlflow(context.target, timeout_s)


@action(StepKind.WAIT_FOR_STABILIZATION)
async def _stabilisation(step: RecoveryStep, context: ActionContext) -> ActionResult[WaitData]:
    return await wait_for_stabilization(
        context.target,
        list(step.services),
        context.stabilization_timeout_s,
        revisions=dict(step.revisions) or None,
        early=context.early,
    )
