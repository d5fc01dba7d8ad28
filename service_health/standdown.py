"""Knowing when to stand down: the freeze, the flap guard, the remediation budget and the
relapse check of recovery, as pure decisions. No I/O, no Prefect.

Everything they read lives on the Prefect server (tasks/guards.py reads and writes it):

- the freeze: Variables `hokusai-freeze-<target>` and `hokusai-freeze` (every target), each
  an ISO 8601 time until which no recovery of the target applies anything (or an object
  `{"until": ..., "reason": ...}`);
- the flap guard: the target's recent recoveries (flow runs) and their final state names,
  and Variable `hokusai-reenabled-<target>`: when an operator last re-enabled automatic
  remediation (failures before it no longer count);
- the remediation budget: Variable `hokusai-recovery-budget`, when each automatic recovery
  of each target took a slot (the last hour's, pruned as it is written);
- the relapse hold: Variable `hokusai-relapse-<target>`, written by the follow-up diagnosis
  that found the target not healthy after a recovery ended Recovered.

The freeze holds every recovery that would change something. The flap guard, the budget
and the relapse hold concern automatic remediation: recoveries started by the automation.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, Field

from service_health.models import CheckResult, CheckStatus, DiagnosticReport, Finding, Verdict
from service_health.recovery import EntryStatus, RecoveryLogEntry, RecoveryOutcome, RecoveryResult
from service_health.recovery import parse_time as _parse_time

FREEZE_ALL = "hokusai-freeze"
BUDGET_VARIABLE = "hokusai-recovery-budget"
BUDGET_WINDOW_S = 3600.0  # the budget is per rolling hour

DEFAULT_BUDGET_PER_TARGET = 3
DEFAULT_BUDGET_ALL_TARGETS = 10
DEFAULT_FLAP_THRESHOLD = 3
DEFAULT_FLAP_WINDOW_S = 6 * 3600.0
DEFAULT_RELAPSE_DELAY_S = 600.0
# A follow-up diagnosis that starts this much later than planned (no worker was free) is
# no longer evidence about the recovery it follows: it marks nothing.
FOLLOW_UP_STALE_S = 900.0

# Final state names of a recovery that did not repair the target (the flap guard counts them).
FLAPPING_STATES = (
    RecoveryOutcome.FAILED.state_name,
    RecoveryOutcome.PARTIALLY_RECOVERED.state_name,
)
STAND_DOWN_ACTION = "stand_down"
RELAPSE_ACTION = "relapse_check"
AUTOMATION_CHECK = "recovery_automation"
_REASON_CHARS = 200


def freeze_variable(slug: str) -> str:
    return f"{FREEZE_ALL}-{slug}"


def reenable_variable(slug: str) -> str:
    return f"hokusai-reenabled-{slug}"


def relapse_variable(slug: str) -> str:
    return f"hokusai-relapse-{slug}"


def unset_command(variable: str) -> str:
    return f"prefect variable unset {variable}"


def reenable_command(slug: str) -> str:
    return f'prefect variable set {reenable_variable(slug)} "$(date -u +%FT%TZ)" --overwrite'


def when(moment: datetime) -> str:
    """A time as the messages show it (the approval form's format)."""
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC"


def parse_time(value: Any) -> datetime | None:
    """An ISO 8601 time (naive taken as UTC); None for anything else."""
    return _parse_time(value) if isinstance(value, str) else None


def _text(value: Any) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= _REASON_CHARS else text[: _REASON_CHARS - 3] + "..."


# --- the freeze ---------------------------------------------------------------------------


class Freeze(BaseModel):
    """One freeze Variable in force."""

    variable: str
    until: datetime | None = None  # None: unreadable, frozen until fixed or removed
    reason: str | None = None
    problem: str | None = None  # why the value could not be read

    def describe(self, target: str) -> str:
        why = f": {self.reason}" if self.reason else ""
        if self.until is None:
            return (
                f"recovery of {target} is frozen: Variable {self.variable} holds "
                f"{self.problem}, taken as a freeze until it is fixed or removed"
            )
        return f"recovery of {target} is frozen until {when(self.until)} ({self.variable}{why})"


def read_freeze(variable: str, value: Any) -> Freeze | None:
    """A freeze Variable's value: an ISO time, or {"until": ISO time, "reason": text}.

    An unreadable value freezes (until it is fixed or removed): whoever set it meant to
    freeze, and a typo must not let automation loose."""
    if value is None:
        return None
    raw = value.get("until") if isinstance(value, Mapping) else value
    reason = value.get("reason") if isinstance(value, Mapping) else None
    until = parse_time(raw)
    if until is None:
        return Freeze(
            variable=variable,
            reason=_text(reason) if reason else None,
            problem=f"{_text(repr(value))}, not an ISO 8601 time",
        )
    return Freeze(variable=variable, until=until, reason=_text(reason) if reason else None)


def active_freeze(now: datetime, freezes: Iterable[Freeze | None]) -> Freeze | None:
    """The freeze in force at `now`: an unreadable one first, else the one lasting longest."""
    current = [f for f in freezes if f is not None and (f.until is None or f.until > now)]
    if not current:
        return None
    unreadable = [f for f in current if f.until is None]
    if unreadable:
        return unreadable[0]
    return max(current, key=lambda f: f.until or now)


# --- the flap guard -----------------------------------------------------------------------


class PastRecovery(BaseModel):
    """A finished recovery of the target, as the server's flow-run history has it."""

    name: str
    state: str  # the final state's name
    ended_at: datetime
    automatic: bool  # started by the automation (it carries `triggered_by`)


class Flapping(BaseModel):
    """Automatic remediation of the target stands down: too many recent failures."""

    failures: list[PastRecovery]
    threshold: int
    window_s: float
    reenable_variable: str

    def describe(self, target: str, slug: str) -> str:
        runs = ", ".join(
            f"{r.name} {r.state} at {r.ended_at:%H:%M:%S}" for r in self.failures[-self.threshold :]
        )
        return (
            f"automatic recovery of {target} stands down: {len(self.failures)} automatic "
            f"recoveries ended {' or '.join(FLAPPING_STATES)} in the last "
            f"{_duration(self.window_s)} (threshold {self.threshold}; {runs} UTC). "
            f"An operator re-enables it: set Variable {self.reenable_variable} to the current "
            f"time (Variables page, or: {reenable_command(slug)})"
        )


def flapping(
    now: datetime,
    recoveries: Sequence[PastRecovery],
    *,
    threshold: int,
    window_s: float,
    reenabled_at: datetime | None,
    variable: str,
) -> Flapping | None:
    """K (`threshold`) automatic recoveries ended Failed or Partially recovered within the
    window, counting only those since the last re-enable. A threshold below 1 turns the
    guard off."""
    if threshold < 1:
        return None
    since = now - timedelta(seconds=max(0.0, window_s))
    if reenabled_at is not None and reenabled_at > since:
        since = reenabled_at
    failures = sorted(
        (
            r
            for r in recoveries
            if r.automatic and r.state in FLAPPING_STATES and since < r.ended_at <= now
        ),
        key=lambda r: r.ended_at,
    )
    if len(failures) < threshold:
        return None
    return Flapping(
        failures=failures, threshold=threshold, window_s=window_s, reenable_variable=variable
    )


def _duration(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        hours = int(seconds // 3600)
        return f"{hours} hour{'s' if hours != 1 else ''}"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)} min"
    return f"{seconds:g} s"


# --- the remediation budget ---------------------------------------------------------------


class Budget(BaseModel):
    """The answer to "may this automatic recovery mutate now?" and the Variable's new value."""

    granted: bool
    message: str
    # The budget Variable's value once this decision is written: each target's slots taken
    # in the last hour (ISO times), this one included when granted.
    claims: dict[str, list[str]] = Field(default_factory=dict)


def read_claims(value: Any, now: datetime) -> dict[str, list[datetime]]:
    """The budget Variable's value, tolerantly: {slug: [ISO time, ...]}, the last hour only."""
    since = now - timedelta(seconds=BUDGET_WINDOW_S)
    claims: dict[str, list[datetime]] = {}
    if not isinstance(value, Mapping):
        return claims
    for slug, times in value.items():
        moments = [
            t
            for t in map(parse_time, times if isinstance(times, list) else [])
            if t is not None and since < t <= now
        ]
        if moments:
            claims[str(slug)] = sorted(moments)
    return claims


def budget(
    now: datetime,
    claims: Mapping[str, Sequence[datetime]],
    slug: str,
    target: str,
    *,
    per_target: int,
    all_targets: int,
    take: bool,
) -> Budget:
    """At most `per_target` automatic mutating recoveries of the target and `all_targets`
    of all targets together in any rolling hour. With `take` the slot is counted in the
    returned claims (the caller writes them)."""
    mine = sorted(claims.get(slug, []))
    every = sorted(t for times in claims.values() for t in times)
    window = timedelta(seconds=BUDGET_WINDOW_S)
    refusals = []
    for taken, limit, scope in (
        (mine, per_target, f"of {target}"),
        (every, all_targets, "of all targets"),
    ):
        if len(taken) >= limit:
            if limit < 1:
                refusals.append(f"no automatic mutating recovery {scope} is allowed (budget 0)")
                continue
            free_at = taken[len(taken) - limit] + window
            refusals.append(
                f"{len(taken)} automatic mutating recoveries {scope} in the last hour "
                f"(at most {limit}; at {', '.join(f'{t:%H:%M:%S}' for t in taken[-limit:])} "
                f"UTC), the next allowed from {when(free_at)}"
            )
    values = {s: [t.isoformat() for t in sorted(times)] for s, times in claims.items() if times}
    if refusals:
        return Budget(
            granted=False,
            claims=values,
            message="budget exhausted: escalate - " + "; ".join(refusals),
        )
    if take:
        values[slug] = [*values.get(slug, []), now.isoformat()]
    left = min(per_target - len(mine), all_targets - len(every)) - (1 if take else 0)
    return Budget(
        granted=True,
        claims=values,
        message=f"within budget: {left} automatic mutating recoveries left this hour",
    )


# --- the relapse check --------------------------------------------------------------------


class RelapseHold(BaseModel):
    """A recovery that ended Recovered did not hold: automatic recoveries need approval."""

    variable: str
    recovery_run: str | None = None
    recovery_name: str | None = None
    diagnosis_run: str | None = None
    verdict: str | None = None
    at: datetime | None = None
    findings: list[str] = Field(default_factory=list)
    problem: str | None = None  # an unreadable value still holds

    def describe(self, target: str) -> str:
        if self.problem:
            return (
                f"a relapse of {target} is on record (Variable {self.variable} holds "
                f"{self.problem})"
            )
        recovery = self.recovery_name or self.recovery_run or "a recovery"
        seen = f" at {when(self.at)}" if self.at else ""
        found = f": {self.findings[0]}" if self.findings else ""
        return (
            f"recovery {recovery} of {target} relapsed: the follow-up diagnosis{seen} "
            f"was {self.verdict or 'not healthy'}{found}"
        )

    def value(self) -> dict[str, Any]:
        """The Variable's value (JSON)."""
        return {
            "recovery_run": self.recovery_run,
            "recovery_name": self.recovery_name,
            "diagnosis_run": self.diagnosis_run,
            "verdict": self.verdict,
            "at": self.at.isoformat() if self.at else None,
            "findings": list(self.findings),
        }


def read_relapse_hold(variable: str, value: Any) -> RelapseHold | None:
    """The relapse Variable's value; present but unreadable is still a hold."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        return RelapseHold(variable=variable, problem=_text(repr(value)))

    def text(key: str) -> str | None:
        item = value.get(key)
        return _text(item) if isinstance(item, str) and item else None

    findings = value.get("findings")
    return RelapseHold(
        variable=variable,
        recovery_run=text("recovery_run"),
        recovery_name=text("recovery_name"),
        diagnosis_run=text("diagnosis_run"),
        verdict=text("verdict"),
        at=parse_time(value.get("at")),
        findings=[_text(f) for f in findings if isinstance(f, str)][:3]
        if isinstance(findings, list)
        else [],
    )


class FollowUp(BaseModel):
    """What a follow-up diagnosis says about the recovery it follows."""

    relapsed: bool
    counts: bool  # False: stale or superseded, marks nothing
    message: str
    hold: RelapseHold | None = None


def follow_up(
    report: DiagnosticReport,
    *,
    target: str,
    variable: str,
    recovery_run: str,
    recovery_name: str | None,
    diagnosis_run: str | None,
    now: datetime,
    scheduled_at: datetime | None,
    later_recoveries: Sequence[str] = (),
) -> FollowUp:
    """The follow-up's judgment: not healthy is a relapse, unless the check no longer says
    anything about that recovery (it ran long after its time, or the target has been
    recovered again since)."""
    recovery = recovery_name or recovery_run
    verdict = report.overall_status
    if later_recoveries:
        return FollowUp(
            relapsed=False,
            counts=False,
            message=(
                f"follow-up of recovery {recovery}: superseded by a later recovery "
                f"({', '.join(later_recoveries[:3])}): nothing marked"
            ),
        )
    late_s = (now - scheduled_at).total_seconds() if scheduled_at is not None else 0.0
    if scheduled_at is not None and late_s > FOLLOW_UP_STALE_S:
        return FollowUp(
            relapsed=False,
            counts=False,
            message=(
                f"follow-up of recovery {recovery}: started {_duration(round(late_s))} "
                f"after its time ({when(scheduled_at)}): too late to judge that recovery; "
                "nothing marked"
            ),
        )
    if verdict is Verdict.HEALTHY:
        return FollowUp(
            relapsed=False,
            counts=True,
            message=f"follow-up of recovery {recovery}: healthy, the recovery held",
        )
    hold = RelapseHold(
        variable=variable,
        recovery_run=recovery_run,
        recovery_name=recovery_name,
        diagnosis_run=diagnosis_run,
        verdict=verdict.value,
        at=now,
        findings=[_text(f) for f in (report.critical_issues + report.warnings)[:3]],
    )
    return FollowUp(
        relapsed=True,
        counts=True,
        hold=hold,
        message=(
            f"{hold.describe(target)}. Automatic recoveries of {target} now need approval "
            f"until an operator clears the hold ({unset_command(variable)})"
        ),
    )


def follow_up_markdown(target: str, result: FollowUp, diagnosis_run: str | None) -> str:
    """The artifact the follow-up leaves on the recovery run it checked."""
    title = "Relapsed" if result.relapsed else "Held" if result.counts else "Not judged"
    lines = [f"# {title}: {target}", "", result.message + ".", ""]
    if diagnosis_run:
        lines += [f"Follow-up diagnosis run: `{diagnosis_run}`.", ""]
    if result.hold and result.hold.findings:
        lines += ["## Findings", "", *(f"- {f}" for f in result.hold.findings), ""]
    return "\n".join(lines)


# --- the outcome of standing down ---------------------------------------------------------


class StandDown(BaseModel):
    """Why a recovery applies nothing, and the state it ends in."""

    outcome: RecoveryOutcome
    message: str


def frozen(target: str, freeze: Freeze) -> StandDown:
    return StandDown(
        outcome=RecoveryOutcome.FROZEN,
        message=(
            f"{freeze.describe(target)}: the plan is published, nothing applied. Clear the "
            f"freeze on the Variables page or with: {unset_command(freeze.variable)}"
        ),
    )


def stood_down(target: str, slug: str, flap: Flapping) -> StandDown:
    return StandDown(
        outcome=RecoveryOutcome.STOOD_DOWN,
        message=f"{flap.describe(target, slug)}. Nothing applied",
    )


def over_budget(decision: Budget) -> StandDown:
    return StandDown(
        outcome=RecoveryOutcome.SKIPPED, message=f"{decision.message}. Nothing applied"
    )


def unreadable(target: str, error: str) -> StandDown:
    """The guards' state could not be read: standing down is the safe side."""
    return StandDown(
        outcome=RecoveryOutcome.STOOD_DOWN,
        message=(
            f"the stand-down settings of {target} could not be read ({_text(error)}): nothing "
            "applied"
        ),
    )


def approval_entry(target: str, hold: RelapseHold) -> RecoveryLogEntry:
    """The log line saying why an automatic recovery asks for approval."""
    return RecoveryLogEntry(
        action=STAND_DOWN_ACTION,
        status=EntryStatus.ESCALATED,
        details=(
            f"Approval required: {hold.describe(target)}; automatic recoveries need approval "
            f"until an operator clears the hold ({unset_command(hold.variable)})"
        ),
    )


def apply_stand_down(result: RecoveryResult, stand_down: StandDown) -> RecoveryResult:
    """`result` (built as if rejected: nothing applied) ending as the stand-down says."""
    entry = RecoveryLogEntry(
        action=STAND_DOWN_ACTION, status=EntryStatus.SKIPPED, details=stand_down.message
    )
    return result.model_copy(
        update={
            "outcome": stand_down.outcome,
            "message": stand_down.message,
            "overall_success": False,
            "recovery_log": [
                *(e for e in result.recovery_log if e.status is not EntryStatus.REJECTED),
                entry,
            ],
        }
    )


# --- what the diagnosis reports -----------------------------------------------------------


def automation_check(
    target: str,
    now: datetime,
    freeze: Freeze | None,
    hold: RelapseHold | None,
    checked: FollowUp | None = None,
) -> CheckResult | None:
    """An information-only check (it never moves the verdict) saying that automated
    recovery of the target is frozen, held for approval after a relapse, or what this
    follow-up diagnosis concluded; None when there is nothing to say."""
    findings: list[Finding] = []
    if freeze is not None and (freeze.until is None or freeze.until > now):
        findings.append(
            Finding(
                severity="info",
                message=f"Automated {freeze.describe(target)}: recoveries plan but apply nothing",
                recommendation=f"Clear it when the window ends: {unset_command(freeze.variable)}",
                evidence=[f"Prefect Variable {freeze.variable}"],
            )
        )
    if checked is not None:
        findings.append(
            Finding(severity="info", message=checked.message[:1].upper() + checked.message[1:])
        )
    if hold is not None and not (checked and checked.relapsed):
        findings.append(
            Finding(
                severity="info",
                message=(f"Automatic recovery needs approval: {hold.describe(target)}"),
                recommendation=f"Clear the hold once understood: {unset_command(hold.variable)}",
                evidence=[f"Prefect Variable {hold.variable}"],
            )
        )
    if not findings:
        return None
    return CheckResult(
        name=AUTOMATION_CHECK,
        status=CheckStatus.HEALTHY,
        summary=findings[0].message,
        findings=findings,
        evidence=[e for f in findings for e in f.evidence],
    )
