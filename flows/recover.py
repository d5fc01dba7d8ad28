"""recover-service: plan from a fresh diagnosis, then apply safely (or only show the plan)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_progress_artifact, aupdate_progress_artifact
from prefect.context import FlowRunContext
from prefect.exceptions import FlowPauseTimeout, MissingContextError
from prefect.flow_runs import NotPausedError, apause_flow_run, aresume_flow_run
from prefect.input import RunInput
from prefect.logging import get_logger
from prefect.states import State
from prefect.utilities.urls import url_for
from pydantic import Field

from flows import publishing
from flows.diagnose import run_checks
from flows.naming import recover_run_name
from flows.standdown import StandDownGuard
from service_health.approval import (
    approval_description,
    approval_entry,
    plan_changed,
    rollback_approval,
)
from service_health.assessment import build_diagnostic_report
from service_health.log_lines import verdict_line
from service_health.models import DiagnosticReport
from service_health.planning import plan_recovery
from service_health.recovery import (
    AnyActionResult,
    Effect,
    EntryStatus,
    RecoveryHistory,
    RecoveryLogEntry,
    RecoveryPlan,
    RecoveryResult,
    RecoveryStep,
    blocked_result,
    build_result,
    dry_run_entries,
    prepare_step,
    rejection_entry,
    step_batches,
)
from service_health.recovery_rendering import (
    log_table,
    plan_markdown,
    plan_table,
    recovery_markdown,
)
from service_health.redaction import Redactor
from service_health.settings import (
    COOLDOWN_S,
    MAX_RESTARTS,
    STABILIZATION_TIMEOUT_S,
    ConfigError,
    Target,
)
from service_health.standdown import (
    DEFAULT_BUDGET_ALL_TARGETS,
    DEFAULT_BUDGET_PER_TARGET,
    DEFAULT_FLAP_THRESHOLD,
    DEFAULT_FLAP_WINDOW_S,
    DEFAULT_RELAPSE_DELAY_S,
    apply_stand_down,
)
from service_health.trigger import trigger_report
from tasks import events
from tasks.config import load_target, with_secrets
from tasks.locking import TargetLock
from tasks.recovery import ActionContext, execute_step, read_recovery_history
from tasks.recovery.early import EarlyVerification
from tasks.retries import io_task
from tasks.trigger_report import WAIT_S, read_trigger_event

TIMED_OUT = "approval timed out"
CALLED = (EntryStatus.SUCCESS, EntryStatus.FAILED)  # a mutating call was made
PAUSE_GRACE_S = 300  # Prefect's own pause timeout, beyond ours, never reached first
TRIGGER_MAX_AGE_S = 60.0  # how old a triggering diagnosis' report may be to plan from


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


@io_task(name="diagnose", retries=0)
async def diagnose(target: Target) -> DiagnosticReport:
    """A diagnosis inside this run: one task run, the checks inside it, each retried as its
    own task run would be (not a subflow: it must not look like a scheduled diagnosis to
    the automation that reacts to Critical ones)."""
    started_at, started = datetime.now(UTC), time.perf_counter()
    checks = await run_checks(target, target.thresholds.deadline_s, task_runs=False)
    return build_diagnostic_report(target.name, checks, started_at, time.perf_counter() - started)


async def apply(
    plan: RecoveryPlan,
    target: Target,
    stabilization_timeout_s: float,
    redactor: Redactor | None = None,
) -> list[AnyActionResult]:
    redactor = redactor or Redactor(target.secret_values())
    early = EarlyVerification(lambda: diagnose(target))
    context = ActionContext(target, stabilization_timeout_s, verify=lambda: diagnose(target),
                            early=early)  # fmt: skip
    try:
        return await _apply_steps(plan, context, redactor)
    finally:
        await early.close()


async def _apply_steps(
    plan: RecoveryPlan, context: ActionContext, redactor: Redactor
) -> list[AnyActionResult]:
    logger = run_logger()
    results: dict[int, AnyActionResult] = {}
    for batch in step_batches(plan.steps):
        ready: dict[int, RecoveryStep] = {}
        for step in batch:
            prepared = prepare_step(step, plan, results)
            if isinstance(prepared, str):
                results[step.number] = blocked_result(step, prepared)
                logger.warning("Step %d not run: %s: %s", step.number, step.title, prepared)
                continue
            if not step.kind.passive:  # an escalation or a skip only writes its entry
                logger.info("Step %d starts: %s", step.number, redactor.text(step.title))
            if step.kind.effect in (Effect.MUTATING, Effect.WAITING) and context.early is not None:
                # A diagnosis taken before this step cannot verify what follows it.
                context.early.discard()
            ready[step.number] = prepared
        # Every step of the batch ends before anything is logged or raised.
        outcomes = await asyncio.gather(
            *(execute_step(step, context) for step in ready.values()), return_exceptions=True
        )
        for number, outcome in zip(ready, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                raise outcome
            results[number] = outcome
            _log_result(plan.step(number), outcome, context, redactor)
    return [results[step.number] for step in plan.steps]


def _log_result(
    step: RecoveryStep, result: AnyActionResult, context: ActionContext, redactor: Redactor
) -> None:
    logger, target = run_logger(), context.target
    for entry in result.entries:
        log = logger.info if entry.ok or str(entry.status) == "escalated" else logger.warning
        log("Step %d %s: %s", step.number, entry.status, redactor.text(entry.details))
        # The audit trail: one event per mutating call made (not per skip or check).
        if step.mutating and entry.action == step.action and entry.status in CALLED:
            safe = RecoveryLogEntry.model_validate(redactor.obj(entry.model_dump(mode="json")))
            events.mutation(target.slug, target.name, safe, step.service)


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


async def publish(result: RecoveryResult, slug: str) -> None:
    await asyncio.gather(
        publishing.markdown(
            f"recovery-{slug}", recovery_markdown(result), f"Recovery of {result.target}"
        ),
        publishing.table(
            f"recovery-{slug}-log",
            log_table(result.recovery_log),
            f"Recovery log of {result.target}",
        ),
    )


def final_state(result: RecoveryResult) -> State[Any]:
    """Message and data (the plan, the log, the final report) redacted, as every state."""
    ending = publishing.failed if result.outcome.is_failure else publishing.completed
    return ending(result.outcome.state_name, result.message, result)


@flow(name="recover-service", flow_run_name=recover_run_name)
async def recover_service(
    target: str = "env",
    dry_run: bool = True,
    require_approval: bool = False,
    approval_timeout_seconds: int = 3600,
    cooldown_seconds: float = COOLDOWN_S,
    max_restarts: int = MAX_RESTARTS,
    stabilization_timeout_seconds: float = STABILIZATION_TIMEOUT_S,
    lock_timeout_seconds: float = 900.0,
    approval_poll_seconds: int = 5,
    api_url: str | None = None,
    aws_region: str | None = None,
    triggered_by: str | None = None,
    budget_per_target: int = DEFAULT_BUDGET_PER_TARGET,
    budget_all_targets: int = DEFAULT_BUDGET_ALL_TARGETS,
    flap_threshold: int = DEFAULT_FLAP_THRESHOLD,
    flap_window_seconds: float = DEFAULT_FLAP_WINDOW_S,
    relapse_check_delay_seconds: float | None = DEFAULT_RELAPSE_DELAY_S,
    plan_from_trigger_max_age_seconds: float = TRIGGER_MAX_AGE_S,
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
            started this recovery (prefect.flow-run.<id>); the run links to it. A run
            with it is automatic remediation: the budget, the flap guard and the relapse
            hold apply to it (a freeze applies to every run).
        budget_per_target: Automatic recoveries that may mutate this target per rolling
            hour; one more ends Skipped ("budget exhausted: escalate").
        budget_all_targets: The same, all targets together.
        flap_threshold: This many automatic recoveries of the target ending Failed or
            Partially recovered within flap_window_seconds stand automation down until an
            operator re-enables it (0 turns the guard off).
        flap_window_seconds: The flap guard's window.
        relapse_check_delay_seconds: After Recovered, the target's diagnosis deployment runs
            once this much later; not healthy marks the recovery relapsed and automatic
            recoveries need approval until cleared. Empty: no relapse check.
        plan_from_trigger_max_age_seconds: A run with triggered_by plans from the report of
            that diagnosis (its event), without diagnosing again, when the report is this
            target's, critical or degraded, and at most this old; otherwise it diagnoses
            afresh and logs why. 0 turns it off. After an approval the plan is always made
            from a fresh diagnosis, and the verification always is one.
    """
    logger = get_run_logger()
    started_at, started = datetime.now(UTC), time.perf_counter()
    try:
        resolved = await with_secrets(
            load_target(target, {"api_url": api_url, "aws_region": aws_region})
        )
    except ConfigError as exc:
        logger.error("Configuration error: %s", exc)
        return publishing.failed("Config error", f"configuration error: {exc}", exc)
    redactor = Redactor(resolved.secret_values())
    guard = StandDownGuard(resolved, redactor, automatic=triggered_by is not None,
                           budget_per_target=budget_per_target,
                           budget_all_targets=budget_all_targets, flap_threshold=flap_threshold,
                           flap_window_s=flap_window_seconds)  # fmt: skip
    publications: list[asyncio.Future[Any]] = []
    # The triggering diagnosis' report is looked for while the lock is taken.
    trigger: asyncio.Future[DiagnosticReport | None] | None = None
    if triggered_by:
        publications.append(asyncio.ensure_future(link_trigger(triggered_by, resolved.slug)))
        if not (api_url or aws_region):  # the run looks elsewhere than the diagnosis did
            trigger = asyncio.ensure_future(
                planning_report(triggered_by, resolved, plan_from_trigger_max_age_seconds)
            )

    async def published() -> None:
        while publications:
            await publications.pop(0)

    # ECS's history, read once the lock is held (a recovery that held it before may have
    # restarted a service): taken by the first plan, made right after.
    history_early: list[asyncio.Future[RecoveryHistory]] = []

    async def make_plan(
        given: asyncio.Future[DiagnosticReport | None] | None = None,
    ) -> tuple[DiagnosticReport, RecoveryPlan]:
        # ECS's history does not depend on the report: read while the diagnosis runs.
        history_read = (
            history_early.pop()
            if history_early
            else asyncio.ensure_future(read_recovery_history(resolved))
        )
        try:
            report = (await given if given is not None else None) or await diagnose(resolved)
        finally:
            history = await history_read
        log_verdict(report, redactor)
        plan = plan_recovery(report, resolved, history, cooldown_s=cooldown_seconds,
                             max_restarts=max_restarts)  # fmt: skip
        # Published while the guards are read and the plan applied (the log lines below
        # tell the plan first); awaited before an approval is asked and by the run's end.
        publications.append(asyncio.ensure_future(asyncio.gather(
            publishing.markdown(f"recovery-plan-{resolved.slug}", plan_markdown(plan),
                                f"Recovery plan for {resolved.name}"),
            publishing.table(f"recovery-plan-{resolved.slug}-steps", plan_table(plan)),
        )))  # fmt: skip
        for step in plan.steps:
            logger.info("Planned step %d: %s: %s", step.number, redactor.text(step.title),
                        redactor.text(step.reason))  # fmt: skip
        return report, plan

    async def plan_and_apply(lock: TargetLock) -> RecoveryResult:
        report, plan = await make_plan(trigger)

        def done(results: list[AnyActionResult], **kw: Any) -> RecoveryResult:
            return build_result(plan, results, started_at=started_at,
                                duration_s=time.perf_counter() - started,
                                configuration_problems=report.configuration_problems(),
                                **kw)  # fmt: skip

        if plan.already_healthy:
            return done([], dry_run=dry_run, final_report=report)
        if dry_run:
            return done([], dry_run=True, extra_entries=dry_run_entries(plan))
        # -- standing down (flows/standdown.py): freeze, flap guard, relapse hold; the budget
        # is taken right before the first mutating call (peeked at before asking anyone) --
        if (stop := await guard.check(plan, take_budget=False, budget=False)) is not None:
            return apply_stand_down(done([], dry_run=False, rejected=True), stop)
        approved: list[RecoveryLogEntry] = []
        # A rollback is a release decision: an operator approves it, unless the target
        # explicitly allows automatic rollback.
        if (asked := rollback_approval(plan, resolved.allow_automatic_rollback)) is not None:
            guard.entries.append(asked)
            logger.info("%s", redactor.text(asked.details))
        if (require_approval or guard.approval_required or asked) and plan.mutates:
            # An operator is not asked to approve what the budget would refuse.
            if (stop := await guard.check(plan, take_budget=False, reread=False)) is not None:
                return apply_stand_down(done([], dry_run=False, rejected=True), stop)
            await published()  # the operator reads the plan there
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
        # -- standing down, again right before the first mutating call (a budget slot taken) --
        # Without an approval wait, the first check's reads are a moment old: not read again.
        if (stop := await guard.check(plan, take_budget=True, reread=bool(approved))) is not None:
            stopped = apply_stand_down(done([], dry_run=False, rejected=True), stop)
            return with_first(stopped, approved)
        results = await apply(plan, resolved, stabilization_timeout_seconds, redactor)
        return with_first(done(results, dry_run=False), approved)

    context = FlowRunContext.get()
    run_id = context.flow_run.id if context is not None and context.flow_run else None

    async def locked() -> RecoveryResult | State[Any]:
        async with TargetLock(resolved.slug, run_id) as lock:
            if not dry_run:  # a dry run mutates nothing: no need to wait for other runs
                try:
                    await lock.acquire(lock_timeout_seconds)
                    history_early.append(asyncio.ensure_future(read_recovery_history(resolved)))
                    waiting = await lock.waiting_holder()
                except TimeoutError:
                    # Another recovery is in charge (applying or waiting for stabilisation):
                    # this one stands aside rather than queueing behind it.
                    message = (f"another recovery of {resolved.name} is in progress (it "
                               f"held the lock for {lock_timeout_seconds:g}s): nothing "
                               "done")  # fmt: skip
                    return skipped(resolved, message)
                if waiting is not None:
                    message = (f"recovery {waiting.name!r} of {resolved.name} is waiting for "
                               "approval: nothing done")  # fmt: skip
                    return skipped(resolved, message)
                await lock.claim()
            return await plan_and_apply(lock)

    try:
        result = await locked()
    finally:
        # What was started meanwhile ends with the run, whichever way it ended.
        await published()
        if trigger is not None:
            await trigger
        for unused in history_early:  # the run stood aside before planning
            with contextlib.suppress(Exception):
                await unused
    if isinstance(result, State):
        return result
    # -- the relapse check after Recovered; why approval was asked heads the log --
    result = await guard.follow_up(with_first(result, guard.entries), run_id,
                                   relapse_check_delay_seconds)  # fmt: skip
    await publish(result, resolved.slug)
    logger.info("Recovery of %s: %s - %s", resolved.name, result.outcome.state_name,
                redactor.text(result.message))  # fmt: skip
    safe = RecoveryResult.model_validate(redactor.obj(result.model_dump(mode="json")))
    events.recovery_finished(resolved.slug, resolved.name, safe, safe.outcome.state_name,
                             safe.message, dry_run)  # fmt: skip
    return final_state(result)


async def planning_report(
    triggered_by: str, target: Target, max_age_s: float
) -> DiagnosticReport | None:
    """The triggering diagnosis' report to plan from, or None (diagnose afresh; the log
    says why)."""
    logger = get_run_logger()
    if max_age_s <= 0:
        return None
    try:
        payload = await read_trigger_event(triggered_by, max_age_s)
    except Exception as exc:  # the event feed is a shortcut: never a reason to fail
        logger.info("Diagnosing afresh: the triggering diagnosis' event is unreadable (%s)",
                    type(exc).__name__)  # fmt: skip
        return None
    if payload is None:
        logger.info("Diagnosing afresh: no report of the triggering diagnosis in the event "
                    "feed within %g s", WAIT_S)  # fmt: skip
        return None
    found = trigger_report(payload, target.name, datetime.now(UTC), max_age_s)
    if isinstance(found, str):
        logger.info("Diagnosing afresh, not from the triggering diagnosis: %s", found)
        return None
    logger.info("The triggering diagnosis' report of %s is recent enough to plan from "
                "(at most %g s old)", found.timestamp, max_age_s)  # fmt: skip
    return found


async def link_trigger(resource: str, slug: str) -> None:
    """A link artifact to the diagnosis run that started this recovery."""
    run_id = resource.removeprefix("prefect.flow-run.")
    get_run_logger().info("Started by the diagnosis run %s", run_id)
    link = url_for("flow-run", obj_id=run_id) or resource
    await publishing.link(f"recovery-{slug}-trigger", link, f"diagnosis {run_id}",
                          "The diagnosis run whose verdict started this recovery")  # fmt: skip


def skipped(target: Target, message: str) -> State[Any]:
    """Another recovery is in charge: stand aside, doing nothing, and say so."""
    get_run_logger().warning(message)
    events.recovery_finished(target.slug, target.name, None, "Skipped", message, False)
    return publishing.cancelled("Skipped", message)


def with_first(result: RecoveryResult, entries: list[RecoveryLogEntry]) -> RecoveryResult:
    """The result with `entries` (the approval) at the head of its log, where they happened."""
    if not entries:
        return result
    return result.model_copy(update={"recovery_log": [*entries, *result.recovery_log]})


def log_verdict(report: DiagnosticReport, redactor: Redactor) -> None:
    get_run_logger().info("%s", redactor.text(verdict_line(report)))
