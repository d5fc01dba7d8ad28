"""Recovery as data: plan, steps, log entries, action results, outcome. Pure, no I/O.

A recovery is "plan, then apply". `service_health.planning` derives a `RecoveryPlan` from a
diagnosis; the flow applies its steps one by one (each step through one task, see
tasks/recovery.py), collects an `ActionResult` per step, and folds everything into a
`RecoveryResult` whose `outcome` names the flow run's final state.

Helpers here decide, without I/O, what a step becomes once earlier steps have run
(`prepare_step`), what a step that needs no I/O logs (`passive_result`), what a dry run logs
(`dry_run_entries`) and how the run ends (`decide_outcome`, `build_result`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Generic, Self, TypeVar

from pydantic import BaseModel, Field, JsonValue
from pydantic_core import to_jsonable_python

from service_health.models import DiagnosticReport, Verdict

# --- steps and plans ----------------------------------------------------------------------


class Effect(StrEnum):
    """What carrying out a step does to the service."""

    MUTATING = "mutating"  # changes it: a POST to the service, an AWS write
    WAITING = "waiting"  # reads until a condition holds or a timeout passes
    CHECKING = "checking"  # reads once
    PASSIVE = "passive"  # no I/O: only writes its log entry (an escalation, a skip)


class StepKind(StrEnum):
    """The kinds of plan step, each with the title plans show and what it does.

    A kind is declared here once, with its title and effect; the action that carries it
    out is registered against it in tasks/recovery/ (every kind that is not passive must
    have one: tests/recovery/test_registry.py). The title lives here, not with the action,
    because plans are rendered by pure code that never imports tasks/.
    """

    heading: str
    effect: Effect

    def __new__(cls, value: str, heading: str, effect: Effect) -> StepKind:
        member = str.__new__(cls, value)
        member._value_ = value
        member.heading = heading
        member.effect = effect
        return member

    RESET_BREAKER = "reset_breaker", "Reset the MLflow circuit breaker", Effect.MUTATING
    FORCE_DEPLOYMENT = "force_deployment", "Force a new deployment", Effect.MUTATING
    ROLLBACK = "rollback", "Roll back to an earlier revision", Effect.MUTATING
    WAIT_FOR_ROLLOUT = "wait_for_rollout", "Wait for the running deployment", Effect.WAITING
    WAIT_FOR_MLFLOW = "wait_for_mlflow", "Wait for MLflow to answer", Effect.WAITING
    CHECK_ALB_TARGETS = (
        "check_alb_targets",
        "Check load balancer target health",
        Effect.CHECKING,
    )
    WAIT_FOR_STABILIZATION = "wait_for_stabilization", "Wait for stabilisation", Effect.WAITING
    VERIFY = "verify", "Verify with a final diagnosis", Effect.CHECKING
    ESCALATE = "escalate", "Escalate to an operator", Effect.PASSIVE
    SKIP = "skip", "Skip", Effect.PASSIVE

    @property
    def mutating(self) -> bool:
        return self.effect is Effect.MUTATING

    @property
    def passive(self) -> bool:
        return self.effect is Effect.PASSIVE


# Steps that run when at least one of their dependencies succeeded (they narrow to those);
# every other step needs all of its dependencies to succeed.
_ANY_DEPENDENCY = frozenset({StepKind.WAIT_FOR_STABILIZATION})


class RecoveryStep(BaseModel):
    """One step of a plan, with the reason it is there."""

    number: int  # 1-based position in the plan; dependencies refer to it
    kind: StepKind
    reason: str
    # force_deployment, rollback, wait_for_rollout, and a skip of one: the ECS service.
    service: str | None = None
    # wait_for_stabilization: the ECS services to wait for ([] = the API's /health only).
    services: list[str] = Field(default_factory=list)
    # rollback: the revision rolled back to ("family:N") and its task definition ARN;
    # wait_for_stabilization: service -> the revision its PRIMARY deployment must run.
    revision: str | None = None
    task_definition: str | None = None
    revisions: dict[str, str] = Field(default_factory=dict)
    # reset_breaker: replica addresses ("host:port"); None = once through the API URL.
    replicas: list[str] | None = None
    # reset_breaker planned from a partial (sampled) view of the replicas.
    partial_view: bool = False
    # force_deployment, rollback: the primary deployment id seen when planning. The task
    # updates the service only while this is still the primary one, so a retry or a second
    # recovery never restarts (or rolls back) twice.
    expected_deployment_id: str | None = None
    # skip: the kind of step that was not planned.
    skipped: StepKind | None = None
    recommendation: str | None = None
    depends_on: list[int] = Field(default_factory=list)

    @property
    def mutating(self) -> bool:
        return self.kind.mutating

    @property
    def action(self) -> str:
        """The `action` of the recovery log entries this step writes."""
        return str(self.kind)

    @property
    def subject(self) -> str | None:
        """What the step acts on, for tables: a service, replicas, or the API URL."""
        if self.service:
            return self.service
        if self.kind == StepKind.WAIT_FOR_STABILIZATION:
            return ", ".join(self.services) or "API /health"
        if self.kind == StepKind.RESET_BREAKER:
            return ", ".join(self.replicas) if self.replicas is not None else "API URL"
        return None

    @property
    def title(self) -> str:
        if self.kind == StepKind.ROLLBACK and self.service and self.revision:
            return f"Roll back {self.service} to revision {self.revision}"
        if self.kind == StepKind.SKIP and self.skipped is not None:
            title = f"Skip: {self.skipped.heading.lower()}"
        else:
            title = self.kind.heading
        subject = self.subject
        return f"{title} ({subject})" if subject else title


class RecoveryPlan(BaseModel):
    target: str
    created_at: str  # ISO 8601, UTC
    diagnosis_timestamp: str
    verdict: Verdict  # of the diagnosis the plan was derived from
    steps: list[RecoveryStep] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)  # what the rules saw but did not act on
    cooldown_s: float
    max_restarts: int

    @property
    def already_healthy(self) -> bool:
        return self.verdict == Verdict.HEALTHY

    @property
    def mutates(self) -> bool:
        """True when applying the plan changes anything (a reset, a deployment)."""
        return any(s.mutating for s in self.steps)

    @property
    def restarts(self) -> list[str]:
        """ECS services the plan forces a new deployment of."""
        return [s.service for s in self.steps if s.kind == StepKind.FORCE_DEPLOYMENT and s.service]

    @property
    def rollbacks(self) -> list[str]:
        """ECS services the plan rolls back to an earlier revision."""
        return [s.service for s in self.steps if s.kind == StepKind.ROLLBACK and s.service]

    def step(self, number: int) -> RecoveryStep:
        return self.steps[number - 1]

    def of_kind(self, kind: StepKind) -> list[RecoveryStep]:
        return [s for s in self.steps if s.kind == kind]


# --- what ECS says about the services' past -----------------------------------------------


# ECS service tag recording the last restart forced by a recovery (the cooldown's clock).
RESTART_TAG = "hokusai-health:last-recovery-restart"


class ServiceHistory(BaseModel):
    """One ECS service as the cooldown and the plan need it."""

    name: str
    primary_deployment_id: str | None = None
    # When a recovery last forced a new deployment of the service (its ECS tag
    # RESTART_TAG); None when no recovery ever restarted it. Ordinary releases do not
    # start the cooldown.
    last_deployment_at: datetime | None = None
    target_groups: list[str] = Field(default_factory=list)  # names, from loadBalancers


class RecoveryHistory(BaseModel):
    """Read from ECS itself (no local state): the last restart of each service."""

    services: dict[str, ServiceHistory] = Field(default_factory=dict)
    error: str | None = None  # why some of it could not be read

    def last_restart(self, service: str) -> datetime | None:
        entry = self.services.get(service)
        return entry.last_deployment_at if entry else None

    def deployment_id(self, service: str) -> str | None:
        entry = self.services.get(service)
        return entry.primary_deployment_id if entry else None

    def service_of_group(self, group: str) -> str | None:
        for entry in self.services.values():
            if group in entry.target_groups:
                return entry.name
        return None


# --- the recovery log ---------------------------------------------------------------------


class EntryStatus(StrEnum):
    SUCCESS = "success"
    FAILED = "failed"
    SKIPPED = "skipped"  # not done, with the reason (cooldown, cap, a failed dependency)
    PLANNED = "planned"  # dry run: would have been done
    ESCALATED = "escalated"  # no automatic action; an operator must act
    REJECTED = "rejected"  # the operator rejected the plan (or approval timed out)


def utc_now() -> str:
    return datetime.now(UTC).isoformat()


class RecoveryLogEntry(BaseModel):
    """One line of the recovery log. `timestamp`, `action`, `status`, `details` are the
    seed's field names; the rest is added."""

    timestamp: str = Field(default_factory=utc_now)
    action: str
    status: EntryStatus
    details: str
    dry_run: bool = False
    step: int | None = None
    subject: str | None = None  # a service, a replica address, a target group
    data: dict[str, JsonValue] = Field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status in (EntryStatus.SUCCESS, EntryStatus.PLANNED)

    def seed_json(self) -> dict[str, Any]:
        return {
            "timestamp": self.timestamp,
            "action": self.action,
            "status": str(self.status),
            "details": self.details,
            "dry_run": self.dry_run,
            "step": self.step,
            "subject": self.subject,
            "data": to_jsonable_python(self.data, fallback=str),
        }


class ActionData(BaseModel):
    """What an action reports beyond its log entries, for the steps and tests that read it.
    Each action family defines its own (tasks/recovery/)."""


# The data of an action result; covariant, so that a reset's result is an action result.
DataT = TypeVar("DataT", bound=ActionData | None, covariant=True)


class ActionResult(BaseModel, Generic[DataT]):
    """What one step (one task) did: success, its log entries, and its typed data."""

    step: int | None = None
    action: str
    success: bool
    entries: list[RecoveryLogEntry] = Field(default_factory=list)
    data: DataT
    report: DiagnosticReport | None = None  # verify: the final diagnosis
    # Set when the step was not carried out at all (blocked, skip, escalate, dry run).
    not_run: bool = False

    def numbered(self, step: int) -> Self:
        """A copy attributed to plan step `step` (entries included)."""
        return self.model_copy(
            update={
                "step": step,
                "entries": [e.model_copy(update={"step": step}) for e in self.entries],
            }
        )


# A result whose data is unknown to the reader (the flow applying a plan reads none).
AnyActionResult = ActionResult[ActionData | None]


def entry_for(
    step: RecoveryStep,
    status: EntryStatus,
    details: str,
    *,
    dry_run: bool = False,
    data: dict[str, JsonValue] | None = None,
) -> RecoveryLogEntry:
    return RecoveryLogEntry(
        action=step.action,
        status=status,
        details=details,
        dry_run=dry_run,
        step=step.number,
        subject=step.subject,
        data=dict(data or {}),
    )


def action_entry(
    action: str, status: EntryStatus, details: str, subject: str | None = None, **data: JsonValue
) -> RecoveryLogEntry:
    """An entry an action writes as it goes (`step` is set once the result is numbered)."""
    return RecoveryLogEntry(
        action=str(action), status=status, details=details, subject=subject, data=data
    )


def passive_result(step: RecoveryStep) -> ActionResult[None]:
    """The log of a step that needs no I/O: an escalation or a skip.

    An escalation "succeeds" in the sense that it was recorded; it never counts as a repair
    (see `decide_outcome`). A skip does not succeed, so steps depending on it are blocked.
    """
    if step.kind == StepKind.ESCALATE:
        text = step.reason + (
            f" Recommendation: {step.recommendation}" if step.recommendation else ""
        )
        entry = entry_for(step, EntryStatus.ESCALATED, text)
        return ActionResult(
            step=step.number, action=step.action, success=True, entries=[entry], data=None
        )
    if step.kind == StepKind.SKIP:
        entry = entry_for(
            step, EntryStatus.SKIPPED, step.reason, data={"skipped": str(step.skipped or "")}
        )
        return ActionResult(
            step=step.number,
            action=step.action,
            success=False,
            entries=[entry],
            data=None,
            not_run=True,
        )
    raise ValueError(f"step {step.number} ({step.kind}) needs I/O; run it through its task")


def blocked_result(step: RecoveryStep, reason: str) -> ActionResult[None]:
    """A step not carried out because a step it depends on did not succeed."""
    entry = entry_for(step, EntryStatus.SKIPPED, f"Not run: {reason}")
    return ActionResult(
        step=step.number, action=step.action, success=False, entries=[entry], data=None,
        not_run=True,
    )  # fmt: skip


def prepare_step(
    step: RecoveryStep, plan: RecoveryPlan, results: Mapping[int, AnyActionResult]
) -> RecoveryStep | str:
    """The step as it should run now, or the reason it must not run.

    Most steps need every dependency to have succeeded. wait_for_stabilization needs at
    least one, and waits only for the services whose deployment succeeded or was already
    rolling (waiting for a service whose restart failed would only burn the timeout).
    """
    if not step.depends_on:
        return step
    done = {n: results.get(n) for n in step.depends_on}
    failed = [n for n, r in done.items() if r is None or not r.success]
    if step.kind in _ANY_DEPENDENCY:
        if len(failed) == len(done):
            return f"none of steps {_numbers(failed)} succeeded"
        ok_services = {
            plan.step(n).service for n in done if n not in failed and plan.step(n).service
        }
        resets = any(plan.step(n).kind == StepKind.RESET_BREAKER for n in done if n not in failed)
        services = [s for s in step.services if s in ok_services]
        if not services and not resets:
            return f"none of steps {_numbers(failed)} succeeded"
        revisions = {s: r for s, r in step.revisions.items() if s in services}
        return step.model_copy(update={"services": services, "revisions": revisions})
    if failed:
        what = ", ".join(f"{n} ({plan.step(n).title})" for n in failed)
        return f"step{'s' if len(failed) > 1 else ''} {what} did not succeed"
    return step


def step_batches(steps: Sequence[RecoveryStep]) -> list[list[RecoveryStep]]:
    """The plan's steps in the order they run: consecutive checking steps (each reads
    once, changes nothing) that do not depend on one another run together; every other
    step runs alone, after the batch before it has ended. Reading the load balancer's
    targets and taking the final diagnosis at once changes nothing either reads, and the
    recovery ends a read's length sooner."""
    batches: list[list[RecoveryStep]] = []
    for step in steps:
        last = batches[-1] if batches else []
        if (
            step.kind.effect is Effect.CHECKING
            and last
            and all(s.kind.effect is Effect.CHECKING for s in last)
            and not {s.number for s in last} & set(step.depends_on)
        ):
            last.append(step)
        else:
            batches.append([step])
    return batches


def _numbers(numbers: Sequence[int]) -> str:
    return ", ".join(str(n) for n in numbers)


def dry_run_entries(plan: RecoveryPlan) -> list[RecoveryLogEntry]:
    """The log of a dry run: each step as it would be done, nothing carried out."""
    entries = []
    for step in plan.steps:
        if step.kind == StepKind.ESCALATE:
            status = EntryStatus.ESCALATED
        elif step.kind == StepKind.SKIP:
            status = EntryStatus.SKIPPED
        else:
            status = EntryStatus.PLANNED
        verb = "Would" if status == EntryStatus.PLANNED else "Dry run"
        entries.append(
            entry_for(
                step,
                status,
                f"{verb}: {step.title}. {step.reason}"
                + (f" Recommendation: {step.recommendation}" if step.recommendation else ""),
                dry_run=True,
            )
        )
    return entries


def rejection_entry(reason: str) -> RecoveryLogEntry:
    """The plan was not applied: rejected by the operator or approval timed out."""
    return RecoveryLogEntry(action="approval", status=EntryStatus.REJECTED, details=reason)


def verification_result(step: RecoveryStep, report: DiagnosticReport | None) -> ActionResult[None]:
    """The verify step's result from the final diagnosis (None: it could not run)."""
    if report is None:
        entry = entry_for(step, EntryStatus.FAILED, "Final diagnosis could not run")
        return ActionResult(
            step=step.number, action=step.action, success=False, entries=[entry], data=None
        )
    verdict = report.overall_status
    issues = report.critical_issues or report.warnings
    details = f"Final diagnosis: {verdict.value}"
    if issues:
        details += f" - {issues[0]}" + (f" (+{len(issues) - 1} more)" if len(issues) > 1 else "")
    entry = entry_for(
        step,
        EntryStatus.SUCCESS if verdict == Verdict.HEALTHY else EntryStatus.FAILED,
        details,
        data={
            "verdict": verdict.value,
            "critical_issues": list(report.critical_issues),
            "warnings": list(report.warnings),
        },
    )
    return ActionResult(
        step=step.number,
        action=step.action,
        success=verdict == Verdict.HEALTHY,
        entries=[entry],
        data=None,
        report=report,
    )


# --- times ------------------------------------------------------------------------------


def parse_time(value: object) -> datetime | None:
    """An ISO 8601 time (naive taken as UTC), a datetime, or epoch seconds."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, int | float) and not isinstance(value, bool):
        try:
            moment = datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):  # beyond the platform's time range, NaN
            return None
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    else:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# --- the outcome --------------------------------------------------------------------------


class RecoveryOutcome(StrEnum):
    """How a recovery run ended; the value is the flow run's final state name."""

    RECOVERED = "Recovered"
    ALREADY_HEALTHY = "Already healthy"
    PLANNED = "Planned"  # dry run
    REJECTED = "Rejected"  # the operator rejected the plan, or approval timed out
    PARTIALLY_RECOVERED = "Partially recovered"
    FAILED = "Failed"
    # Standing down (service_health/standdown.py): the plan is published, nothing applied.
    FROZEN = "Frozen"  # a freeze Variable is in force
    STOOD_DOWN = "Stood down"  # the flap guard: too many recent failed automatic recoveries
    SKIPPED = "Skipped"  # automatic remediation over its budget: escalate

    @property
    def state_name(self) -> str:
        return self.value

    @property
    def succeeded(self) -> bool:
        """The service ended healthy (or was healthy): the seed's overall_success."""
        return self in (RecoveryOutcome.RECOVERED, RecoveryOutcome.ALREADY_HEALTHY)

    @property
    def exit_code(self) -> int:
        """Command line: 0 when the service ends healthy (or was), 1 otherwise."""
        return 0 if self.succeeded else 1

    @property
    def is_failure(self) -> bool:
        """Whether the flow run should end in a Failed-type state (the others are
        Completed-type states with the outcome as their name)."""
        return self == RecoveryOutcome.FAILED


def decide_outcome(
    plan: RecoveryPlan,
    results: Sequence[AnyActionResult],
    final_report: DiagnosticReport | None,
    *,
    dry_run: bool,
    rejected: bool = False,
) -> RecoveryOutcome:
    """Already healthy > Planned (dry run) > Rejected > what the final diagnosis says.

    Recovered: the final diagnosis is healthy. Partially recovered: not healthy, but better
    than before, or a corrective step (reset, deployment) succeeded and the service is no
    longer critical. Failed otherwise (escalations alone never count as a repair).
    """
    if plan.already_healthy:
        return RecoveryOutcome.ALREADY_HEALTHY
    if dry_run:
        return RecoveryOutcome.PLANNED
    if rejected:
        return RecoveryOutcome.REJECTED
    if final_report is None:
        return RecoveryOutcome.FAILED
    final = final_report.overall_status
    if final == Verdict.HEALTHY:
        return RecoveryOutcome.RECOVERED
    corrected = any(
        r.success and r.step is not None and plan.step(r.step).mutating
        for r in results
        if r.step is not None and 0 < r.step <= len(plan.steps)
    )
    improved = final.rank < plan.verdict.rank
    if improved or (corrected and final != Verdict.CRITICAL):
        return RecoveryOutcome.PARTIALLY_RECOVERED
    return RecoveryOutcome.FAILED


class RecoveryResult(BaseModel):
    """The whole run. `to_seed_json` keeps the seed's field names."""

    target: str
    start_time: str
    dry_run: bool
    recovery_log: list[RecoveryLogEntry] = Field(default_factory=list)
    overall_success: bool
    duration_seconds: float
    outcome: RecoveryOutcome
    message: str
    plan: RecoveryPlan
    initial_verdict: Verdict
    final_verdict: Verdict | None = None
    final_critical_issues: list[str] = Field(default_factory=list)
    final_warnings: list[str] = Field(default_factory=list)
    # Configuration mistakes the diagnosis ran into (AWS credentials, permission, region).
    configuration_problems: list[str] = Field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return self.outcome.exit_code

    def to_seed_json(self) -> dict[str, Any]:
        return {
            "start_time": self.start_time,
            "dry_run": self.dry_run,
            "recovery_log": [e.seed_json() for e in self.recovery_log],
            "overall_success": self.overall_success,
            "duration_seconds": self.duration_seconds,
            "target": self.target,
            "outcome": self.outcome.value,
            "message": self.message,
            "initial_status": self.initial_verdict.value,
            "final_status": self.final_verdict.value if self.final_verdict else None,
            "final_critical_issues": list(self.final_critical_issues),
            "final_warnings": list(self.final_warnings),
            "configuration_problems": list(self.configuration_problems),
            "plan": self.plan.model_dump(mode="json"),
        }


def _message(outcome: RecoveryOutcome, plan: RecoveryPlan, final: DiagnosticReport | None) -> str:
    target = plan.target
    if outcome == RecoveryOutcome.ALREADY_HEALTHY:
        return f"{target} was already healthy: nothing to do"
    if outcome == RecoveryOutcome.PLANNED:
        mutations = sum(1 for s in plan.steps if s.mutating)
        return (
            f"Dry run for {target}: {len(plan.steps)} step(s) planned, {mutations} of them "
            "mutating; nothing was changed"
        )
    if outcome == RecoveryOutcome.REJECTED:
        return f"Recovery of {target} was not approved: nothing was changed"
    if final is None:
        return f"Recovery of {target} could not verify the result"
    verdict = final.overall_status.value
    issue = (final.critical_issues or final.warnings or [""])[0]
    tail = f": {issue}" if issue else ""
    if outcome == RecoveryOutcome.RECOVERED:
        return f"{target} recovered: the final diagnosis is healthy"
    if outcome == RecoveryOutcome.PARTIALLY_RECOVERED:
        return f"{target} partially recovered: the final diagnosis is {verdict}{tail}"
    return f"Recovery of {target} failed: the final diagnosis is {verdict}{tail}"


def build_result(
    plan: RecoveryPlan,
    results: Sequence[AnyActionResult],
    *,
    started_at: datetime,
    duration_s: float,
    dry_run: bool,
    final_report: DiagnosticReport | None = None,
    rejected: bool = False,
    extra_entries: Sequence[RecoveryLogEntry] = (),
    configuration_problems: Sequence[str] = (),
) -> RecoveryResult:
    """Fold the plan, the step results (in order) and the final diagnosis into the result.

    For a dry run pass `results=[]` and `extra_entries=dry_run_entries(plan)`; for a
    rejection pass `extra_entries=[rejection_entry(...)]`. When `final_report` is None the
    verify step's report (if any) is used.
    """
    if final_report is None:
        final_report = next((r.report for r in reversed(results) if r.report is not None), None)
    outcome = decide_outcome(plan, results, final_report, dry_run=dry_run, rejected=rejected)
    log = [e for r in results for e in r.entries] + list(extra_entries)
    if started_at.tzinfo is None:
        started_at = started_at.replace(tzinfo=UTC)
    return RecoveryResult(
        target=plan.target,
        start_time=started_at.astimezone(UTC).isoformat(),
        dry_run=dry_run,
        recovery_log=log,
        overall_success=outcome.succeeded,
        duration_seconds=round(duration_s, 3),
        outcome=outcome,
        message=_message(outcome, plan, final_report),
        plan=plan,
        initial_verdict=plan.verdict,
        final_verdict=final_report.overall_status if final_report else None,
        final_critical_issues=list(final_report.critical_issues) if final_report else [],
        final_warnings=list(final_report.warnings) if final_report else [],
        configuration_problems=list(configuration_problems),
    )
