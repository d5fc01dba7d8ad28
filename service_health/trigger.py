"""Whether a recovery started by the automation may plan from the report of the diagnosis
that started it, rather than diagnose again. Pure: the event is read in
tasks/trigger_report.py.

The report may be used when it is this target's, its verdict is one the automation reacts
to (critical or degraded), and it is at most `max_age_s` old (from the diagnosis' start).
The trade-off: a plan made from a report up to that old, instead of a diagnosis of a few
seconds more; the apply path re-reads what it acts on (the ECS deployment it expects, the
breaker's state), and the verification is always a fresh diagnosis.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import ValidationError

from service_health.models import DiagnosticReport, Verdict
from service_health.recovery import parse_time
from service_health.standdown import AUTOMATION_CHECK

ACTIONABLE = (Verdict.CRITICAL, Verdict.DEGRADED)


def trigger_report(
    payload: dict[str, Any], target: str, now: datetime, max_age_s: float
) -> DiagnosticReport | str:
    """The report to plan from, or why not (said in the run's log)."""
    body = payload.get("report")
    if not isinstance(body, dict):
        return "its event carries no report"
    try:
        report = DiagnosticReport.model_validate(body)
    except ValidationError:
        return "its report is unreadable"
    taken = parse_time(report.timestamp)
    if taken is None:
        return f"its report's time is unreadable ({report.timestamp!r})"
    if report.target != target:
        return f"it diagnosed {report.target}, not {target}"
    if report.overall_status not in ACTIONABLE:
        return f"its verdict is {report.overall_status.value}"
    age = (now - taken).total_seconds()
    if age > max_age_s:
        return f"its report is {age:.0f} s old (more than {max_age_s:g} s)"
    if age < -5:  # the diagnosis ran on a machine whose clock is ahead: no age to trust
        return f"its report is dated {-age:.0f} s in the future"
    # The information-only automation note is the diagnosis flow's, not a finding.
    checks = {k: v for k, v in report.checks.items() if k != AUTOMATION_CHECK}
    return report.model_copy(update={"checks": checks})
