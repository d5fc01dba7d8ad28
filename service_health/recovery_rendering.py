"""Recovery plans and logs for people: markdown artifacts, table rows, terminal text."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from service_health.markdown import cell
from service_health.recovery import RecoveryLogEntry, RecoveryPlan, RecoveryResult

_MARK = {"success": "OK", "failed": "FAIL", "skipped": "SKIP", "planned": "PLAN",
         "escalated": "ESC", "rejected": "REJ"}  # fmt: skip


def plan_table(plan: RecoveryPlan) -> list[dict[str, Any]]:
    """Rows for a table artifact: one per step."""
    return [
        {
            "step": s.number,
            "kind": str(s.kind),
            "subject": s.subject or "",
            "mutating": s.mutating,
            "depends_on": ", ".join(str(n) for n in s.depends_on),
            "reason": s.reason,
        }
        for s in plan.steps
    ]


def log_table(entries: Sequence[RecoveryLogEntry]) -> list[dict[str, Any]]:
    """Rows for a table artifact: one per recovery log entry."""
    return [
        {
            "timestamp": e.timestamp,
            "step": e.step,
            "action": e.action,
            "subject": e.subject or "",
            "status": str(e.status),
            "dry_run": e.dry_run,
            "details": e.details,
        }
        for e in entries
    ]


def _plan_lines(plan: RecoveryPlan) -> list[str]:
    mutating = sum(1 for s in plan.steps if s.mutating)
    lines = [
        f"Derived from the diagnosis of {plan.diagnosis_timestamp} (verdict "
        f"**{plan.verdict.value}**); cooldown {plan.cooldown_s:g} s, at most "
        f"{plan.max_restarts} service(s) restarted per run.",
        "",
    ]
    if not plan.steps:
        return [*lines, "No step: nothing to recover.", ""]
    lines += [
        f"{len(plan.steps)} step(s), {mutating} of them mutating.",
        "",
        "| # | step | mutating | after | reason |",
        "|---:|---|---|---|---|",
    ]
    for s in plan.steps:
        after = ", ".join(str(n) for n in s.depends_on)
        reason = s.reason + (f" **Recommendation:** {s.recommendation}" if s.recommendation else "")
        lines.append(
            f"| {s.number} | {cell(s.title)} | {'yes' if s.mutating else ''} | {after} | "
            f"{cell(reason)} |"
        )
    lines.append("")
    if plan.notes:
        lines += ["Notes:", "", *(f"- {n}" for n in plan.notes), ""]
    return lines


def plan_markdown(plan: RecoveryPlan) -> str:
    """The plan on its own (published before applying, e.g. while waiting for approval)."""
    title = f"# Recovery plan: {plan.target}"
    return "\n".join([title, "", *_plan_lines(plan)])


def _log_lines(entries: Sequence[RecoveryLogEntry]) -> list[str]:
    if not entries:
        return ["No log entry.", ""]
    lines = ["| time | step | action | subject | status | details |", "|---|---:|---|---|---|---|"]
    for e in entries:
        status = f"{e.status}" + (" (dry run)" if e.dry_run else "")
        lines.append(
            f"| {e.timestamp} | {e.step if e.step is not None else ''} | {e.action} | "
            f"{cell(e.subject or '')} | {status} | {cell(e.details)} |"
        )
    lines.append("")
    return lines


def recovery_markdown(result: RecoveryResult) -> str:
    """Outcome first, then the plan and the log."""
    final = result.final_verdict.value if result.final_verdict else "not verified"
    lines = [
        f"# {result.outcome.state_name}: {result.target}",
        "",
        f"**{result.message}**",
        "",
        f"Started {result.start_time}, took {result.duration_seconds:.1f} s"
        f"{' (dry run)' if result.dry_run else ''}; diagnosis before: "
        f"{result.initial_verdict.value}, after: {final}.",
        "",
    ]
    issues = result.final_critical_issues + result.final_warnings
    if issues:
        lines += ["## Remaining issues", "", *(f"- {i}" for i in issues), ""]
    lines += ["## Plan", "", *_plan_lines(result.plan)]
    lines += ["## Recovery log", "", *_log_lines(result.recovery_log)]
    return "\n".join(lines)


def plan_text(plan: RecoveryPlan) -> str:
    """Plain-text plan for the terminal."""
    lines = [f"Recovery plan for {plan.target} (diagnosis: {plan.verdict.value})"]
    if not plan.steps:
        lines.append("  nothing to do")
    for s in plan.steps:
        flag = " [mutating]" if s.mutating else ""
        after = f" (after {', '.join(str(n) for n in s.depends_on)})" if s.depends_on else ""
        lines.append(f"  {s.number}. {s.title}{flag}{after}")
        lines.append(f"     why: {s.reason}")
        if s.recommendation:
            lines.append(f"     recommendation: {s.recommendation}")
    for note in plan.notes:
        lines.append(f"  note: {note}")
    return "\n".join(lines) + "\n"


def log_text(entries: Sequence[RecoveryLogEntry]) -> str:
    """Plain-text recovery log for the terminal."""
    lines = ["Recovery log:"] if entries else ["Recovery log: empty"]
    for e in entries:
        mark = _MARK.get(str(e.status), "?")
        step = f"{e.step}." if e.step is not None else "-"
        subject = f" [{e.subject}]" if e.subject else ""
        dry = " (dry run)" if e.dry_run else ""
        lines.append(f"  [{mark:>4}] {step:<3} {e.action}{subject}{dry}: {e.details}")
    return "\n".join(lines) + "\n"


def result_text(result: RecoveryResult) -> str:
    """Plan, log and outcome, for the terminal."""
    return (
        plan_text(result.plan)
        + "\n"
        + log_text(result.recovery_log)
        + f"\nOutcome: {result.outcome.state_name} - {result.message} "
        f"(exit code {result.exit_code}, {result.duration_seconds:.1f} s)\n"
    )
