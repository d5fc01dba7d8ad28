"""recover-service: plan from a fresh diagnosis, then apply safely (or only show the plan)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_markdown_artifact, acreate_table_artifact
from prefect.context import FlowRunContext
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import NotPausedError, apause_flow_run, aresume_flow_run
from prefect.input import RunInput
from prefect.states import Cancelled, Completed, Failed, State

from flows.diagnose import run_checks
from service_health.assessment import build_report
from service_health.models import DiagnosticReport
from service_health.planning import DEFAULT_COOLDOWN_S, DEFAULT_MAX_RESTARTS, plan_recovery
from service_health.recovery import (
    ActionResult,
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
from tasks.config import load_target, with_secrets
from tasks.locking import target_lock
from tasks.recovery import execute_step, read_recovery_history

TIMED_OUT = "approval timed out"
PAUSE_GRACE_S = 300  # Prefect's own pause timeout, beyond ours, never reached first


class Approval(RunInput):
    """The operator's answer to a recovery plan waiting in the Prefect UI."""

    approve: bool = False
    note: str = ""


async def diagnose(target: Target) -> DiagnosticReport:
    """A diagnosis inside this run (tasks, not a subflow: it must not look like a scheduled
    diagnosis to the automation that reacts to Critical ones)."""
    started_at, started = datetime.now(UTC), time.perf_counter()
    checks = await run_checks(target, target.thresholds.deadline_s)
    return build_report(target.name, checks, started_at, time.perf_counter() - started)


async def apply(
    plan: RecoveryPlan, target: Target, stabilization_timeout_s: float
) -> list[ActionResult]:
    results: dict[int, ActionResult] = {}
    for step in plan.steps:
        ready = prepare_step(step, plan, results)
        if isinstance(ready, str):
            results[step.number] = blocked_result(step, ready)
            continue
        results[step.number] = await execute_step(
            ready,
            target,
            target.api_key,
            stabilization_timeout_s=stabilization_timeout_s,
            verify=lambda: diagnose(target),
        )
    return list(results.values())


async def ask_approval(plan: RecoveryPlan, timeout_s: int, poll_s: int) -> str | None:
    """None when approved; otherwise why the plan will not be applied.

    The approval window is kept here rather than by Prefect's pause timeout: a pause that
    expires on the server can no longer be resumed, and the run could not record the
    rejection. At the deadline the run answers for itself: rejected, approval timed out.
    """
    logger = get_run_logger()
    logger.info("Recovery plan for %s waits for approval (%ss)", plan.target, timeout_s)
    context = FlowRunContext.get()
    assert context is not None and context.flow_run is not None
    run_id = context.flow_run.id

    async def expire() -> None:
        await asyncio.sleep(timeout_s)
        # NotPausedError: the operator answered meanwhile.
        with contextlib.suppress(NotPausedError):
            await aresume_flow_run(run_id, run_input={"approve": False, "note": TIMED_OUT})

    watchdog = asyncio.create_task(expire())
    try:
        answer = await apause_flow_run(
            wait_for_input=Approval, timeout=timeout_s + PAUSE_GRACE_S, poll_interval=poll_s
        )
    except FlowPauseTimeout:
        answer = None
    finally:
        watchdog.cancel()
    if answer is None or answer.note == TIMED_OUT:
        return f"approval timed out after {timeout_s}s: nothing applied"
    if not answer.approve:
        note = f" ({answer.note})" if answer.note else ""
        return f"rejected by the operator{note}: nothing applied"
    return None


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


@flow(name="recover-service")
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

    async def plan_and_apply() -> RecoveryResult:
        report = await diagnose(resolved)
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

        def done(results: list[ActionResult], **kw: Any) -> RecoveryResult:
            return build_result(plan, results, started_at=started_at,
                                duration_s=time.perf_counter() - started,
                                configuration_problems=report.configuration_problems(),
                                **kw)  # fmt: skip

        if plan.already_healthy:
            return done([], dry_run=dry_run, final_report=report)
        if dry_run:
            return done([], dry_run=True, extra_entries=dry_run_entries(plan))
        if require_approval and plan.mutates:
            why = await ask_approval(plan, approval_timeout_seconds, approval_poll_seconds)
            if why is not None:
                return done([], dry_run=False, rejected=True, extra_entries=[rejection_entry(why)])
        return done(await apply(plan, resolved, stabilization_timeout_seconds), dry_run=False)

    async with contextlib.AsyncExitStack() as held:
        if not dry_run:  # a dry run mutates nothing: no need to wait for other runs
            try:
                await held.enter_async_context(target_lock(resolved.slug, lock_timeout_seconds))
            except TimeoutError:
                # Another recovery is in charge (pending approval, applying or waiting):
                # this one stands aside rather than queueing behind it.
                message = (f"another recovery of {resolved.name} is in progress (it held the "
                           f"lock for {lock_timeout_seconds:g}s): nothing done")  # fmt: skip
                logger.warning(message)
                return Cancelled(name="Skipped", message=message)
        result = await plan_and_apply()
    await publish(result, resolved.slug, redactor)
    logger.info("Recovery of %s: %s", resolved.name, result.outcome.state_name)
    return final_state(result)
