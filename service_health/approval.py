"""An operator's approval of a recovery plan, as data: what the Resume form shows, what the
recovery log records, and whether the plan still holds once approved. Pure, no I/O."""

from __future__ import annotations

from datetime import UTC, datetime

from service_health.recovery import (
    EntryStatus,
    RecoveryLogEntry,
    RecoveryPlan,
    RecoveryStep,
    StepKind,
)


def approval_description(plan: RecoveryPlan, deadline: datetime) -> str:
    """Markdown shown above the Resume form: what approving will change, and why."""
    mutating = [s for s in plan.steps if s.mutating]
    lines = [
        f"## Recovery plan for {plan.target} ({plan.verdict.value})",
        "",
        f"Approving applies these {len(mutating)} change(s), in order:",
        "",
    ]
    lines += [f"{n}. **{s.title}**: {s.reason}" for n, s in enumerate(mutating, 1)]
    others = [s for s in plan.steps if not s.mutating]
    if others:
        lines += ["", "Then, without changing anything:", ""]
        lines += [f"- {s.title}" for s in others]
    lines += [
        "",
        f"Without an answer by {deadline.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC the plan is "
        "rejected. After approval the service is diagnosed again; if the plan it calls for "
        "differs from this one, nothing is applied.",
    ]
    return "\n".join(lines)


Mutation = tuple[str, str | None, tuple[str, ...] | None, str | None]


def mutations(plan: RecoveryPlan) -> list[Mutation]:
    """What a plan changes, compared between the approved plan and the one re-derived
    after approval (a rollback's revision included: approving a return to revision 41 is
    not approving one to 40). The ECS deployment id is left out on purpose: the task itself
    refuses to restart a service whose primary deployment changed."""

    def key(step: RecoveryStep) -> Mutation:
        replicas = tuple(sorted(step.replicas)) if step.replicas is not None else None
        return (str(step.kind), step.service, replicas, step.revision)

    return [key(s) for s in plan.steps if s.mutating]


def plan_changed(approved: RecoveryPlan, fresh: RecoveryPlan) -> str | None:
    """Why the fresh plan may not be applied under the approval given, or None."""
    before, after = mutations(approved), mutations(fresh)
    if before == after:
        return None
    shown = "; ".join(s.title for s in fresh.steps if s.mutating) or "no change"
    return (
        "the service changed while the plan waited for approval: it now calls for "
        f"{shown}; nothing applied (start a new recovery to review the new plan)"
    )


def approval_entry(note: str, at: datetime | None = None) -> RecoveryLogEntry:
    """The plan was approved: when, and the operator's note."""
    moment = (at or datetime.now(UTC)).astimezone(UTC)
    details = f"approved by the operator at {moment:%Y-%m-%d %H:%M:%S} UTC"
    if note:
        details += f" ({note})"
    return RecoveryLogEntry(
        timestamp=moment.isoformat(),
        action="approval",
        status=EntryStatus.SUCCESS,
        details=details,
        data={"note": note},
    )


def rollback_approval(
    plan: RecoveryPlan, allow_automatic_rollback: bool
) -> RecoveryLogEntry | None:
    """A plan that rolls a service back always asks an operator first, unless the target
    explicitly allows automatic rollback (`allow_automatic_rollback`): returning to an
    older release is a release decision. The entry says why approval is asked; None when
    it need not be."""
    rollbacks = plan.of_kind(StepKind.ROLLBACK)
    if not rollbacks or allow_automatic_rollback:
        return None
    what = "; ".join(s.title for s in rollbacks)
    return RecoveryLogEntry(
        action="approval",
        status=EntryStatus.ESCALATED,
        details=f"Approval required: the plan rolls back ({what}); {plan.target} does not "
        "allow automatic rollback (allow_automatic_rollback, ALLOW_AUTOMATIC_ROLLBACK)",
        data={"rollbacks": [s.service for s in rollbacks if s.service]},
    )
