"""The stand-down guards' reads and writes on the Prefect server: the freeze and relapse
Variables, the recovery history (flow runs and their final state names), the budget
Variable, the follow-up diagnosis. The decisions are service_health/standdown.py; no local
state, so every worker sees the same.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from prefect import task
from prefect.cache_policies import NONE
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import ArtifactCreate
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterEndTime,
    FlowRunFilterStartTime,
    FlowRunFilterState,
    FlowRunFilterStateName,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import FlowRun
from prefect.client.schemas.sorting import FlowRunSort
from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError, concurrency
from prefect.deployments.flow_runs import arun_deployment
from prefect.exceptions import ObjectNotFound
from prefect.variables import Variable
from pydantic import BaseModel

from service_health.models import DiagnosticReport
from service_health.standdown import (
    BUDGET_VARIABLE,
    FLAPPING_STATES,
    FREEZE_ALL,
    Budget,
    Flapping,
    FollowUp,
    Freeze,
    PastRecovery,
    RelapseHold,
    active_freeze,
    budget,
    flapping,
    follow_up,
    follow_up_markdown,
    freeze_variable,
    parse_time,
    read_claims,
    read_freeze,
    read_relapse_hold,
    reenable_variable,
    relapse_variable,
)
from tasks.locking import ensure_lock, target_tag

RECOVER_FLOW = "recover-service"
DIAGNOSE_FLOW = "diagnose-service-health"
# One budget decision at a time across every target and worker (read, decide, write).
BUDGET_LOCK = "hokusai-recovery-budget"
TAGS = ["hokusai-health"]
RELAPSED_TAG = "relapsed"
FOLLOW_UP_TAG = "relapse-check"


class Guards(BaseModel):
    """What stands in a recovery's way right now."""

    freeze: Freeze | None = None
    relapse: RelapseHold | None = None
    flapping: Flapping | None = None


async def _variables(names: list[str]) -> dict[str, Any]:
    """The values of those of `names` that exist, read in one request."""
    body = {"variables": {"name": {"any_": names}}, "limit": len(names)}
    async with get_client() as client:
        response = await client.request("POST", "/variables/filter", json=body)
    return {v["name"]: v["value"] for v in response.json() if v.get("name") in names}


@task(name="read-stand-down", cache_policy=NONE, persist_result=False)
async def read_guards(
    slug: str, flap_threshold: int | None = None, flap_window_s: float = 0.0
) -> Guards:
    """The target's freeze and relapse hold, and (with a threshold) whether its automatic
    recoveries have been failing (the flow runs of recover-service tagged
    recovery-target:<target>, their final state names)."""
    now = datetime.now(UTC)
    freeze_names = (freeze_variable(slug), FREEZE_ALL)
    hold_name, reenable_name = relapse_variable(slug), reenable_variable(slug)
    # One round trip for every Variable the guards read (every diagnosis reads them).
    values = await _variables([*freeze_names, hold_name, reenable_name])
    freezes = [read_freeze(name, values.get(name)) for name in freeze_names]
    guards = Guards(
        freeze=active_freeze(now, freezes),
        relapse=read_relapse_hold(hold_name, values.get(hold_name)),
    )
    if flap_threshold is None or flap_threshold < 1:
        return guards
    reenabled = parse_time(values.get(reenable_name))
    since = now - timedelta(seconds=max(0.0, flap_window_s))
    async with get_client() as client:
        runs = await client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[RECOVER_FLOW])),
            flow_run_filter=FlowRunFilter(
                tags=FlowRunFilterTags(all_=[target_tag(slug)]),
                state=FlowRunFilterState(name=FlowRunFilterStateName(any_=list(FLAPPING_STATES))),
                end_time=FlowRunFilterEndTime(after_=since),
            ),
            sort=FlowRunSort.END_TIME_DESC,
            limit=200,
        )
    history = [_past(run) for run in runs if run.state is not None and run.end_time is not None]
    guards.flapping = flapping(
        now,
        history,
        threshold=flap_threshold,
        window_s=flap_window_s,
        reenabled_at=reenabled,
        variable=reenable_variable(slug),
    )
    return guards


def _past(run: FlowRun) -> PastRecovery:
    assert run.state is not None and run.end_time is not None
    return PastRecovery(
        name=run.name,
        state=run.state.name,
        ended_at=run.end_time,
        automatic=bool((run.parameters or {}).get("triggered_by")),
    )


@task(name="claim-recovery-budget", cache_policy=NONE, persist_result=False)
async def claim_budget(
    slug: str, target: str, per_target: int, all_targets: int, take: bool
) -> Budget:
    """Whether an automatic recovery of the target may mutate now; with `take`, the slot
    is recorded in the budget Variable (its last hour only). Read, decide and write happen
    under a one-slot global concurrency limit, so two targets deciding at once cannot both
    take the last slot."""
    if not take:
        now = datetime.now(UTC)
        claims = read_claims(await Variable.aget(BUDGET_VARIABLE, default=None), now)
        return budget(
            now, claims, slug, target, per_target=per_target, all_targets=all_targets, take=False
        )

    async def take_slot() -> Budget:
        async with concurrency(BUDGET_LOCK, occupy=1, timeout_seconds=60, strict=True):
            now = datetime.now(UTC)
            claims = read_claims(await Variable.aget(BUDGET_VARIABLE, default=None), now)
            decision = budget(
                now, claims, slug, target, per_target=per_target, all_targets=all_targets,
                take=True,
            )  # fmt: skip
            if decision.granted:
                await Variable.aset(BUDGET_VARIABLE, decision.claims, tags=TAGS, overwrite=True)
        return decision

    try:
        return await take_slot()
    except ConcurrencySlotAcquisitionError:
        # `strict`: the limit is missing (its first use, or deleted), never ignored; it is
        # created then, rather than looked up before every claim.
        await ensure_lock(BUDGET_LOCK)
        return await take_slot()


class Scheduled(BaseModel):
    """The follow-up diagnosis a Recovered run asked for (None fields: none could be)."""

    deployment: str
    run_id: str | None = None
    at: datetime | None = None


@task(name="schedule-relapse-check", cache_policy=NONE, persist_result=False)
async def schedule_follow_up(slug: str, recovery_run_id: UUID, delay_s: float) -> Scheduled:
    """One run of the target's diagnosis deployment, scheduled `delay_s` from now, that
    checks whether the recovery held. It lives on the server: the worker that picks it up
    runs it whatever became of this process. Without the deployment, there is none."""
    deployment = f"{DIAGNOSE_FLOW}/diagnose-{slug}"
    at = datetime.now(UTC) + timedelta(seconds=max(0.0, delay_s))
    try:
        run = await arun_deployment(
            deployment,
            parameters={"follow_up_of": str(recovery_run_id)},
            scheduled_time=at,
            timeout=0,
            as_subflow=False,
            tags=[*TAGS, FOLLOW_UP_TAG],
            # One follow-up per recovery, however often this task is retried.
            idempotency_key=f"relapse-check-{recovery_run_id}",
        )
    except ObjectNotFound:
        return Scheduled(deployment=deployment)
    return Scheduled(deployment=deployment, run_id=str(run.id), at=at)


@task(name="record-relapse-check", cache_policy=NONE, persist_result=False)
async def record_follow_up(
    slug: str,
    target: str,
    recovery_run_id: str,
    diagnosis_run_id: UUID | None,
    report: DiagnosticReport,
) -> FollowUp:
    """Judge the recovery this diagnosis follows and leave the judgment where an operator
    looks: an artifact on the recovery run (`recovery-<target>-follow-up`); on a relapse
    also the tag `relapsed` on that run and the hold Variable `hokusai-relapse-<target>`
    (the recover flow then asks approval for automatic recoveries)."""
    now = datetime.now(UTC)
    async with get_client() as client:
        recovery = await _read_run(client, recovery_run_id)
        me = await _read_run(client, str(diagnosis_run_id)) if diagnosis_run_id else None
        later: list[str] = []
        if recovery is not None and recovery.end_time is not None:
            runs = await client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=[RECOVER_FLOW])),
                flow_run_filter=FlowRunFilter(
                    tags=FlowRunFilterTags(all_=[target_tag(slug)]),
                    start_time=FlowRunFilterStartTime(after_=recovery.end_time),
                ),
                limit=10,
            )
            later = [r.name for r in runs if r.id != recovery.id]
        judged = follow_up(
            report,
            target=target,
            variable=relapse_variable(slug),
            recovery_run=recovery_run_id,
            recovery_name=recovery.name if recovery else None,
            diagnosis_run=str(diagnosis_run_id) if diagnosis_run_id else None,
            now=now,
            scheduled_at=me.expected_start_time if me else None,
            later_recoveries=later,
        )
        if judged.hold is not None:
            await Variable.aset(
                relapse_variable(slug),
                judged.hold.value(),
                tags=[*TAGS, "relapse-hold"],
                overwrite=True,
            )
            if recovery is not None:
                await client.update_flow_run(
                    recovery.id, tags=sorted({*recovery.tags, RELAPSED_TAG})
                )
        if recovery is not None:
            await client.create_artifact(
                ArtifactCreate(
                    key=f"recovery-{slug}-follow-up",
                    type="markdown",
                    data=follow_up_markdown(
                        target, judged, str(diagnosis_run_id) if diagnosis_run_id else None
                    ),
                    description=f"Relapse check of {recovery.name}",
                    flow_run_id=recovery.id,
                )
            )
    return judged


async def _read_run(client: Any, run_id: str) -> FlowRun | None:
    try:
        found: FlowRun = await client.read_flow_run(UUID(run_id))
    except (ValueError, ObjectNotFound):
        return None
    return found
