"""recover-service: plan from a fresh diagnosis, then apply safely (or only show the plan)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import (
    acreate_link_artifact,
    acreate_markdown_artifact,
    acreate_progress_artifact,
    acreate_table_artifact,
    aupdate_progress_artifact,
)
from prefect.context import FlowRunContext
from prefect.exceptions import FlowPauseTimeout, MissingContextError
from prefect.flow_runs import NotPausedError, apause_flow_run, aresume_flow_run
from prefect.input import RunInput
from prefect.logging import get_logger
from prefect.states import Cancelled, Completed, Failed, State
from prefect.utilities.urls import url_for
from pydantic import Field

from flows.diagnose import run_checks
from flows.naming import recover_run_name
from service_health.approval import approval_description, approval_entry, plan_changed
from service_health.assessment import build_report
from service_health.log_lines import verdict_line
from service_health.models import DiagnosticReport
from service_health.planning import DEFAULT_COOLDOWN_S, DEFAULT_MAX_RESTARTS, plan_recovery
from service_health.recovery import (
    PASSIVE_KINDS,
    ActionResult,
    EntryStatus,
    RecoveryLogEntry,
    RecoveryPlan,
    RecoveryResult,
    blocked_result,
    build_result,
    dry_run_entries,
    prepare_step,
    rejection_entry,
)
from service_health.recovery_rendering import (
    log_table,
    plan_markdown,
    plan_table,
    recovery_markdown,
)
from service_health.redaction import Redactor
from service_health.settings import ConfigError, Target
from tasks import events
from tasks.config import load_target, with_secrets
from tasks.locking import TargetLock
from tasks.recovery import execute_step, read_recovery_history

TIMED_OUT = "approval timed out"
CALLED = (EntryStatus.SUCCESS, EntryStatus.FAILED)  # a mutating call was made
PAUSE_GRACE_S = 300  # Prefect's own pause timeout, beyond ours, never reached first


# After approval the run takes the target's lock again; another recovery may be applying
# then (it started in the moment between the approval and this), so wait for it to finish.
REACQUIRE_MARGIN_S = 120


class Approval(RunInput):
    """The operator's answer to the recovery plan shown above (Resume in the Prefect UI)."""

    approve: bool = Field(
        default=False,
        description="Apply the plan above. Leave unticked and Resume to reject it.",
    )
    note: str = Field(
        default="",
        description="Why (recorded in the recovery log with the time of the answer).",
    )


async def diagnose(target: Target) -> DiagnosticReport:
    """A diagnosis inside this run (tasks, not a subflow: it must not look like a scheduled
    diagnosis to the automation that reacts to Critical ones)."""
    started_at, started = datetime.now(UTC), time.perf_counter()
    checks = await run_checks(target, target.thresholds.deadline_s)
    return build_report(target.name, checks, started_at, time.perf_counter() - started)


async def apply(
    plan: RecoveryPlan,
    target: Target,
    stabilization_timeout_s: float,
    redactor: Redactor | None = None,
) -> list[ActionResult]:
    logger = run_logger()
    redactor = redactor or Redactor(target.secret_values())
    results: dict[int, ActionResult] = {}
    for step in plan.steps:
        ready = prepare_step(step, plan, results)
        if isinstance(ready, str):
            results[step.number] = blocked_result(step, ready)
            logger.warning("Step %d not run: %s: %s", step.number, step.title, ready)
            continue
        if step.kind not in PASSIVE_KINDS:  # an escalation or a skip only writes its entry
            logger.info("Step %d starts: %s", step.number, redactor.text(step.title))
        results[step.number] = result = await execute_step(
            ready,
            target,
            target.api_key,
            stabilization_timeout_s=stabilization_timeout_s,
            verify=lambda: diagnose(target),
        )
        for entry in result.entries:
            log = logger.info if entry.ok or str(entry.status) == "escalated" else logger.warning
            log("Step %d %s: %s", step.number, entry.status, redactor.text(entry.details))
            # The audit trail: one event per mutating call made (not per skip or check).
            if step.mutating and entry.action == step.action and entry.status in CALLED:
                safe = RecoveryLogEntry.model_validate(redactor.obj(entry.model_dump(mode="json")))
                events.mutation(target.slug, target.name, safe, step.service)
    return list(results.values())


def run_logger() -> Any:
    """The run's logger (its Logs tab) inside a run; the module's outside one, where
    `apply` is composed directly (tests/recovery)."""
    try:
        return get_run_logger()
    except MissingContextError:
        return get_logger("hokusai.recover")


class Answer:
    """What came back from the approval wait."""

    def __init__(self, approved: bool, why: str, note: str = "") -> None:
        self.approved, self.why, self.note = approved, why, note
        self.at = datetime.now(UTC)


async def ask_approval(
    plan: RecoveryPlan, timeout_s: int, poll_s: int, lock: TargetLock, redactor: Redactor
) -> Answer:
    """Pause with the plan until an operator answers, or the deadline passes.

    The approval window is kept here rather than by Prefect's pause timeout: a pause that
    expires on the server can no longer be resumed, and the run could not record the
    rejection. At the deadline the run answers for itself: rejected, approval timed out.
    The target's lease is released once the server reads the run Paused (see
    tasks/locking.py): the wait survives a restart of the Prefect server.
    """
    logger = get_run_logger()
    context = FlowRunContext.get()
    assert context is not None and context.flow_run is not None
    run_id = context.flow_run.id
    deadline = datetime.now(UTC) + timedelta(seconds=timeout_s)
    steps = "; ".join(f"{s.title}: {s.reason}" for s in plan.steps if s.mutating)
    logger.info(
        "Approval asked for the recovery plan of %s (answer by %s UTC): %s",
        plan.target, f"{deadline:%H:%M:%S}", redactor.text(steps),
    )  # fmt: skip
    form = Approval.with_initial_data(
        description=redactor.text(approval_description(plan, deadline)), approve=False
    )
    progress = await acreate_progress_artifact(
        progress=0.0, key=f"recovery-approval-{lock.slug}",
        description=f"Approval wait of {plan.target} ({timeout_s}s)",
    )  # fmt: skip

    async def expire() -> None:
        waited, step = 0.0, max(float(poll_s), timeout_s / 50)
        while waited < timeout_s:
            await asyncio.sleep(min(step, timeout_s - waited))
            waited += step
            # A progress bar is a courtesy: a server restarting meanwhile must not matter.
            with contextlib.suppress(Exception):
                await aupdate_progress_artifact(progress, min(100.0, 100 * waited / timeout_s))
        # NotPausedError: the operator answered meanwhile.
        with contextlib.suppress(NotPausedError):
            await aresume_flow_run(run_id, run_input={"approve": False, "note": TIMED_OUT})

    async def announce() -> None:
        # Once the server reads the run Paused: the lease is given up, and the operators
        # are told (the link then opens a page where Resume is).
        await lock.release_once_paused()
        events.approval_requested(lock.slug, plan.target, redactor.obj(
            [f"{s.title}: {s.reason}" for s in plan.steps if s.mutating]),
            f"{deadline:%Y-%m-%d %H:%M:%S} UTC")  # fmt: skip

    watchdog = asyncio.create_task(expire())
    releaser = asyncio.create_task(announce())
    try:
        answer = await apause_flow_run(
            wait_for_input=form, timeout=timeout_s + PAUSE_GRACE_S, poll_interval=poll_s
        )
    except FlowPauseTimeout:
        answer = None
    finally:
        watchdog.cancel()
        releaser.cancel()
    with contextlib.suppress(Exception):
        await aupdate_progress_artifact(progress, 100.0)
    if answer is None or answer.note == TIMED_OUT:
        result = Answer(False, f"approval timed out after {timeout_s}s: nothing applied")
    elif not answer.approve:
        note = f" ({answer.note})" if answer.note else ""
        result = Answer(False, f"rejected by the operator{note}: nothing applied", answer.note)
    else:
        result = Answer(True, "approved", answer.note)
    told = f"approved ({result.note})" if result.approved else result.why
    logger.info("Approval answered: %s", redactor.text(told))
    return result


async def publish(result: RecoveryResult, slug: str, redactor: Redactor) -> None:
    await acreate_markdown_artifact(
        key=f"recovery-{slug}",
        markdown=redactor.text(recovery_markdown(result)),
        description=f"Recovery of {result.target}",
    )
    await acreate_table_artifact(
        key=f"recovery-{slug}-log",
        table=redactor.obj(log_table(result.recovery_log)),
        description=f"Recovery log of {result.target}",
    )


def final_state(result: RecoveryResult) -> State[Any]:
    state = Failed if result.outcome.is_failure else Completed
    return state(name=result.outcome.state_name, message=result.message, data=result)


@flow(name="recover-service", flow_run_name=recover_run_name)
async def recover_service(
    target: str = "env",
    dry_run: bool = True,
    require_approval: bool = False,
    approval_timeout_seconds: int = 3600,
    cooldown_seconds: float = DEFAULT_COOLDOWN_S,
    max_restarts: int = DEFAULT_MAX_RESTARTS,
    stabilization_timeout_seconds: float = 300.0,
    lock_timeout_seconds: float = 900.0,
    approval_poll_seconds: int = 5,
    api_url: str | None = None,
    aws_region: str | None = None,
    triggered_by: str | None = None,
) -> State[Any]:
    """Recover the service: diagnose, plan by fixed rules, then apply (or only show the plan).

    Args:
        target: Target name from targets.yaml; "env" reads everything from the environment.
        dry_run: Compute and publish the plan only; no mutating call at all.
        require_approval: Pause with the plan until an operator approves or rejects it.
        approval_timeout_seconds: Without an answer by then, the plan is rejected.
        cooldown_seconds: An ECS service restarted more recently than this is not restarted.
        max_restarts: At most this many ECS services restarted in one run.
        stabilization_timeout_seconds: Longest wait for the service to stabilise.
        lock_timeout_seconds: Longest wait for another recovery of this target to finish;
            past it this run ends Skipped, doing nothing (the automation uses a few seconds,
            so critical diagnoses during a pending recovery do not queue more recoveries).
        approval_poll_seconds: How often a paused run checks for the operator's answer.
        api_url: Override the target's API URL.
        aws_region: Override the target's AWS region.
        triggered_by: Set by the automation: the event resource of the diagnosis run that
            started this recovery (prefect.flow-run.<id>); the run links to it.
    """
    logger = get_run_logger()
    started_at, started = datetime.now(UTC), time.perf_counter()
    try:
        resolved = await with_secrets(
            load_target(target, {"api_url": api_url, "aws_region": aws_region})
        )
    except ConfigError as exc:
        logger.error("Configuration error: %s", exc)
        return Failed(name="Config error", message=f"configuration error: {exc}", data=exc)
    redactor = Redactor(resolved.secret_values())
    if triggered_by:
        await link_trigger(triggered_by, resolved.slug)

    async def make_plan() -> tuple[DiagnosticReport, RecoveryPlan]:
        report = await diagnose(resolved)
        log_verdict(report, redactor)
        history = await read_recovery_history(resolved)
        plan = plan_recovery(report, resolved, history, cooldown_s=cooldown_seconds,
                             max_restarts=max_restarts)  # fmt: skip
        await acreate_markdown_artifact(
            key=f"recovery-plan-{resolved.slug}",
            markdown=redactor.text(plan_markdown(plan)),
            description=f"Recovery plan for {resolved.name}",
        )
        await acreate_table_artifact(
            key=f"recovery-plan-{resolved.slug}-steps", table=redactor.obj(plan_table(plan))
        )
        for step in plan.steps:
            logger.info("Planned step %d: %s: %s", step.number, redactor.text(step.title),
                        redactor.text(step.reason))  # fmt: skip
        return report, plan

    async def plan_and_apply(lock: TargetLock) -> RecoveryResult:
        report, plan = await make_plan()

        def done(results: list[ActionResult], **kw: Any) -> RecoveryResult:
            return build_result(plan, results, started_at=started_at,
                                duration_s=time.perf_counter() - started,
                                configuration_problems=report.configuration_problems(),
                                **kw)  # fmt: skip

        if plan.already_healthy:
            return done([], dry_run=dry_run, final_report=report)
        if dry_run:
            return done([], dry_run=True, extra_entries=dry_run_entries(plan))
        approved: list[RecoveryLogEntry] = []
        if require_approval and plan.mutates:
            answer = await ask_approval(
                plan, approval_timeout_seconds, approval_poll_seconds, lock, redactor
            )
            if not answer.approved:
                return done([], dry_run=False, rejected=True,
                            extra_entries=[rejection_entry(answer.why)])  # fmt: skip
            approved = [approval_entry(answer.note, answer.at)]
            # The lease was given up during the wait; the service may have changed too.
            wait = max(lock_timeout_seconds, stabilization_timeout_seconds + REACQUIRE_MARGIN_S)
            try:
                await lock.acquire(wait)
            except TimeoutError:
                why = (f"approved, but another recovery of {resolved.name} held the lock for "
                       f"{wait:g}s: nothing applied")  # fmt: skip
                return done([], dry_run=False, rejected=True,
                            extra_entries=[*approved, rejection_entry(why)])  # fmt: skip
            approved_plan = plan
            report, plan = await make_plan()
            if plan.already_healthy:
                return with_first(done([], dry_run=False, final_report=report), approved)
            if (changed := plan_changed(approved_plan, plan)) is not None:
                logger.warning("Not applied: %s", redactor.text(changed))
                return done([], dry_run=False, rejected=True,
                            extra_entries=[*approved, rejection_entry(changed)])  # fmt: skip
        results = await apply(plan, resolved, stabilization_timeout_seconds, redactor)
        return with_first(done(results, dry_run=False), approved)

    context = FlowRunContext.get()
    run_id = context.flow_run.id if context is not None and context.flow_run else None
    async with TargetLock(resolved.slug, run_id) as lock:
        if not dry_run:  # a dry run mutates nothing: no need to wait for other runs
            try:
                await lock.acquire(lock_timeout_seconds)
                waiting = await lock.waiting_holder()
            except TimeoutError:
                # Another recovery is in charge (applying or waiting for stabilisation):
                # this one stands aside rather than queueing behind it.
                message = (f"another recovery of {resolved.name} is in progress (it held the "
                           f"lock for {lock_timeout_seconds:g}s): nothing done")  # fmt: skip
                return skipped(resolved, message)
            if waiting is not None:
                message = (f"recovery {waiting.name!r} of {resolved.name} is waiting for "
                           "approval: nothing done")  # fmt: skip
                return skipped(resolved, message)
            await lock.claim()
        result = await plan_and_apply(lock)
    await publish(result, resolved.slug, redactor)
    logger.info("Recovery of %s: %s - %s", resolved.name, result.outcome.state_name,
                redactor.text(result.message))  # fmt: skip
    safe = RecoveryResult.model_validate(redactor.obj(result.model_dump(mode="json")))
    events.recovery_finished(resolved.slug, resolved.name, safe, safe.outcome.state_name,
                             safe.message, dry_run)  # fmt: skip
    return final_state(result)


async def link_trigger(resource: str, slug: str) -> None:
    """A link artifact to the diagnosis run that started this recovery."""
    run_id = resource.removeprefix("prefect.flow-run.")
    get_run_logger().info("Started by the diagnosis run %s", run_id)
    link = url_for("flow-run", obj_id=run_id) or resource
    await acreate_link_artifact(
        key=f"recovery-{slug}-trigger", link=link, link_text=f"diagnosis {run_id}",
        description="The diagnosis run whose verdict started this recovery",
    )  # fmt: skip


def skipped(target: Target, message: str) -> State[Any]:
    """Another recovery is in charge: stand aside, doing nothing, and say so."""
    get_run_logger().warning(message)
    events.recovery_finished(target.slug, target.name, None, "Skipped", message, False)
    return Cancelled(name="Skipped", message=message)


def with_first(result: RecoveryResult, entries: list[RecoveryLogEntry]) -> RecoveryResult:
    """The result with `entries` (the approval) at the head of its log, where they happened."""
    if not entries:
        return result
    return result.model_copy(update={"recovery_log": [*entries, *result.recovery_log]})


def log_verdict(report: DiagnosticReport, redactor: Redactor) -> None:
    get_run_logger().info("%s", redactor.text(verdict_line(report)))
