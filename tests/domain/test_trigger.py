"""Which triggering diagnosis' report a recovery may plan from (service_health/trigger.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from service_health.models import CheckResult, CheckStatus, DiagnosticReport, Verdict
from service_health.standdown import AUTOMATION_CHECK
from service_health.trigger import trigger_report

NOW = datetime(2026, 12, 7, 12, 0, 0, tzinfo=UTC)


def payload(age_s: float = 10, target: str = "sandbox", verdict: Verdict = Verdict.CRITICAL,
            **report: Any) -> dict[str, Any]:  # fmt: skip
    body = DiagnosticReport(
        target=target,
        timestamp=(NOW - timedelta(seconds=age_s)).isoformat(),
        diagnostic_duration_seconds=1.0,
        overall_status=verdict,
        checks={
            "api_connectivity": CheckResult(name="api_connectivity", status=CheckStatus.UNHEALTHY),
            AUTOMATION_CHECK: CheckResult(name=AUTOMATION_CHECK, status=CheckStatus.HEALTHY),
        },
    ).model_dump(mode="json")
    return {"target": target, "report": {**body, **report}}


def test_a_recent_critical_or_degraded_report_of_this_target_is_planned_from() -> None:
    for verdict in (Verdict.CRITICAL, Verdict.DEGRADED):
        found = trigger_report(payload(verdict=verdict), "sandbox", NOW, 60)
        assert isinstance(found, DiagnosticReport), found
        assert found.overall_status is verdict
        # The diagnosis flow's information-only note is not a finding to plan from.
        assert set(found.checks) == {"api_connectivity"}


def test_stale_other_healthy_missing_or_unreadable_reports_are_not() -> None:
    cases = {
        "its report is 61 s old (more than 60 s)": payload(age_s=61),
        "it diagnosed production, not sandbox": payload(target="production"),
        "its verdict is healthy": payload(verdict=Verdict.HEALTHY),
        "its event carries no report": {"target": "sandbox", "report": None},
        "its report is unreadable": payload(overall_status="splendid"),
        "its report's time is unreadable ('yesterday')": payload(timestamp="yesterday"),
        "its report is dated 30 s in the future": payload(age_s=-30),
    }
    for why, given in cases.items():
        assert trigger_report(given, "sandbox", NOW, 60) == why
    # The limit is the parameter's.
    assert isinstance(trigger_report(payload(age_s=61), "sandbox", NOW, 120), DiagnosticReport)
