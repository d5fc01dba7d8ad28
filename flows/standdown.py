"""Standing down, composed for the recover flow (README "Knowing when to stand down").

service_health/standdown.py decides, tasks/guards.py reads and writes the Prefect server;
this class runs them at the two points of a recovery where they matter:

- before an operator is asked to approve and again right before the first mutating call:
  a freeze (every recovery), the flap guard (automatic ones), the remediation budget
  (automatic ones: peeked at first, a slot taken only right before applying);
- a relapse hold makes an automatic recovery ask for approval even when configured not to;
- after a run ends Recovered: the relapse check, one follow-up diagnosis scheduled later.

`automation_notes` is the diagnose flow's side: it reports a freeze or a relapse hold, and
records the judgment of a follow-up diagnosis on the recovery it follows.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from prefect import get_run_logger
from prefect.context import FlowRunContext

from service_health.models import CheckResult, DiagnosticReport
from service_health.recovery import (
    EntryStatus,
    RecoveryLogEntry,
    RecoveryOutcome,
    RecoveryPlan,
    RecoveryResult,
)
from service_health.redaction import Redactor
from service_health.settings import Target
from service_health.standdown import (
    AUTOMATION_CHECK,
    RELAPSE_ACTION,
    FollowUp,
    RelapseHold,
    StandDown,
    approval_entry,
    automation_check,
    frozen,
    over_budget,
    stood_down,
    unreadable,
    when,
)
from tasks.guards import (
    Guards,
    claim_budget,
    read_guards,
    record_follow_up,
    schedule_follow_up,
)


class StandDownGuard:
    """The stand-down checks of one recovery run."""

    def __init__(
        self,
        target: Target,
        redactor: Redactor,
        *,
        automatic: bool,
        budget_per_target: int,
        budget_all_targets: int,
        flap_threshold: int,
        flap_window_s: float,
    ) -> None:
        self.target, self.redactor, self.automatic = target, redactor, automatic
        self.budget_per_target, self.budget_all_targets = budget_per_target, budget_all_targets
        self.flap_threshold, self.flap_window_s = flap_threshold, flap_window_s
        self.relapse: RelapseHold | None = None
        self._read: Guards | None = None  # what the last check read
        # Entries that head the recovery log (why approval was asked).
        self.entries: list[RecoveryLogEntry] = []

    @property
    def approval_required(self) -> bool:
        """A relapse is on record: an automatic recovery asks for approval."""
        return self.relapse is not None

    async def check(
        self, plan: RecoveryPlan, *, take_budget: bool, reread: bool = True, budget: bool = True
    ) -> StandDown | None:
        """Why the plan must not be applied, or None. With `take_budget` (right before the
        first mutating call) an automatic recovery takes its budget slot. Without `reread`
        the freeze, flap guard and relapse hold are those the previous check read (it ran
        a moment before, with no wait between); the budget is always claimed afresh.
        Without `budget` the budget is not looked at (the slot is taken moments later, and
        only a run about to ask an operator needs to know before)."""
        if not plan.mutates:
            return None  # nothing to hold back: escalations and waits change nothing
        logger = get_run_logger()
        name, slug = self.target.name, self.target.slug
        try:
            guards = self._read if not reread and self._read is not None else None
            if guards is None:
                guards = self._read = await read_guards(
                    slug, self.flap_threshold if self.automatic else None, self.flap_window_s
                )
        except Exception as exc:  # the Prefect server unreachable, a bad answer
            return self._said(unreadable(name, f"{type(exc).__name__}: {exc}"))
        if guards.freeze is not None:
            return self._said(frozen(name, guards.freeze))
        if not self.automatic:
            return None  # started by hand: the operator's decision
        if guards.flapping is not None:
            return self._said(stood_down(name, slug, guards.flapping))
        if guards.relapse is not None and self.relapse is None:
            self.relapse = guards.relapse
            self.entries.append(approval_entry(name, guards.relapse))
            logger.warning("%s", self.redactor.text(self.entries[-1].details))
        if not budget:
            return None
        try:
            decision = await claim_budget(
                slug, name, self.budget_per_target, self.budget_all_targets, take_budget
            )
        except Exception as exc:
            return self._said(unreadable(name, f"{type(exc).__name__}: {exc}"))
        if not decision.granted:
            return self._said(over_budget(decision))
        if take_budget:
            logger.info("Remediation budget of %s: slot taken, %s", name, decision.message)
        return None

    def _said(self, stand_down: StandDown) -> StandDown:
        get_run_logger().warning(
            "%s: %s", stand_down.outcome.state_name, self.redactor.text(stand_down.message)
        )
        return stand_down

    async def follow_up(
        self, result: RecoveryResult, run_id: UUID | None, delay_s: float | None
    ) -> RecoveryResult:
        """After Recovered: schedule the relapse check and say so in the recovery log."""
        if result.outcome is not RecoveryOutcome.RECOVERED or result.dry_run:
            return result
        if delay_s is None or run_id is None:
            return result
        try:
            scheduled = await schedule_follow_up(self.target.slug, run_id, delay_s)
        except Exception as exc:
            entry = _entry(
                EntryStatus.FAILED,
                f"Relapse check could not be scheduled: {type(exc).__name__}: {exc}",
            )
        else:
            if scheduled.run_id is None or scheduled.at is None:
                entry = _entry(
                    EntryStatus.SKIPPED,
                    (
                        f"No relapse check: no deployment {scheduled.deployment} to run it "
                        "(deploy prefect.yaml)"
                    ),
                )
            else:
                entry = _entry(
                    EntryStatus.SUCCESS,
                    (
                        f"Relapse check scheduled: {scheduled.deployment} at {when(scheduled.at)} "
                        f"(flow run {scheduled.run_id}); if it is not healthy, automatic "
                        f"recoveries of {self.target.name} need approval until an operator "
                        "clears the hold"
                    ),
                    run=scheduled.run_id,
                )
        get_run_logger().info("%s", self.redactor.text(entry.details))
        return result.model_copy(update={"recovery_log": [*result.recovery_log, entry]})


def _entry(status: EntryStatus, details: str, **data: Any) -> RecoveryLogEntry:
    return RecoveryLogEntry(action=RELAPSE_ACTION, status=status, details=details, data=data)


async def automation_notes(
    target: Target,
    report: DiagnosticReport,
    redactor: Redactor,
    follow_up_of: str | None = None,
) -> DiagnosticReport:
    """The diagnosis' view of automated recovery: a freeze or a relapse hold in force, and,
    when this diagnosis is the relapse check of a recovery, its judgment (recorded on the
    recovery run). An information-only check: it never moves the verdict, and a Prefect
    server that cannot answer only costs a warning in the logs."""
    logger = get_run_logger()
    checked: FollowUp | None = None
    if follow_up_of:
        context = FlowRunContext.get()
        run_id = context.flow_run.id if context is not None and context.flow_run else None
        try:
            checked = await record_follow_up(target.slug, target.name, follow_up_of, run_id, report)
        except Exception as exc:
            logger.warning(
                "Relapse check of recovery %s not recorded: %s: %s",
                follow_up_of,
                type(exc).__name__,
                redactor.text(str(exc)),
            )
        else:
            log = logger.warning if checked.relapsed else logger.info
            log("%s", redactor.text(checked.message))
    try:
        # A plain call, not a task run: every diagnosis makes this information-only read,
        # and a fleet's profile showed each task run's engine and server cost.
        guards = await read_guards.fn(target.slug)
    except Exception as exc:
        logger.warning(
            "Freeze and relapse hold of %s not read: %s: %s",
            target.name,
            type(exc).__name__,
            redactor.text(str(exc)),
        )
        guards = Guards()
    check = automation_check(target.name, datetime.now(UTC), guards.freeze, guards.relapse, checked)
    if check is None:
        return report
    safe = CheckResult.model_validate(redactor.obj(check.model_dump(mode="json")))
    return report.model_copy(update={"checks": {**report.checks, AUTOMATION_CHECK: safe}})
