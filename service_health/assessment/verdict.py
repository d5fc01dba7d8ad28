"""From check results to the verdict and the report."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from service_health.assessment.aws import assess_aws_infrastructure
from service_health.assessment.common import DEGRADING, unexplained
from service_health.models import (
    AWS_COMPONENTS,
    CheckName,
    CheckResult,
    DiagnosticReport,
    Verdict,
)


def group_aws_components(checks: Mapping[str, CheckResult]) -> dict[str, CheckResult]:
    """Fold top-level alb/ecs/rds/cloudwatch results into `aws_infrastructure`, the seed's
    check name, in the place of the first of them. Checks already grouped are kept as is."""
    loose = {str(name): checks[name] for name in AWS_COMPONENTS if name in checks}
    if not loose or CheckName.AWS_INFRASTRUCTURE in checks:
        return dict(checks)
    grouped: dict[str, CheckResult] = {}
    for name, check in checks.items():
        if name not in loose:
            grouped[name] = check
        elif CheckName.AWS_INFRASTRUCTURE not in grouped:
            grouped[CheckName.AWS_INFRASTRUCTURE] = assess_aws_infrastructure(loose)
    return grouped


def _add(items: list[str], text: str) -> None:
    if text not in items:
        items.append(text)


def assess(
    checks: Mapping[str, CheckResult],
) -> tuple[Verdict, list[str], list[str], list[str]]:
    """(verdict, critical_issues, warnings, recommendations) from top-level checks.

    Critical when any finding is critical; degraded when any finding is a warning or any
    check is degraded, recovering, unhealthy or in error; healthy otherwise. Skipped checks
    and info findings never move the verdict. Severity lives in the findings, so a breaker
    OPEN (a warning) degrades and never makes the verdict critical.
    """
    critical: list[str] = []
    warnings: list[str] = []
    recommendations: list[str] = []
    degraded = False
    for name, check in checks.items():
        for finding in check.findings:
            if finding.severity == "info":
                continue
            _add(critical if finding.severity == "critical" else warnings, finding.message)
            if finding.recommendation:
                _add(recommendations, finding.recommendation)
        if check.status in DEGRADING:
            degraded = True
            extra = unexplained(name, check)
            if extra is not None:
                _add(warnings, extra.message)
    if critical:
        verdict = Verdict.CRITICAL
    elif warnings or degraded:
        verdict = Verdict.DEGRADED
    else:
        verdict = Verdict.HEALTHY
    return verdict, critical, warnings, recommendations


def build_diagnostic_report(
    target: str,
    checks: Mapping[str, CheckResult],
    started_at: datetime,
    duration_s: float,
) -> DiagnosticReport:
    """The diagnosis report; a naive `started_at` is taken as UTC.

    AWS component results given at top level are grouped under aws_infrastructure first.
    """
    if started_at.tzinfo is None:
        started_at = started_at.replace(tzinfo=UTC)
    checks = group_aws_components(checks)
    verdict, critical, warnings, recommendations = assess(checks)
    return DiagnosticReport(
        target=target,
        timestamp=started_at.astimezone(UTC).isoformat(),
        diagnostic_duration_seconds=round(duration_s, 3),
        overall_status=verdict,
        critical_issues=critical,
        warnings=warnings,
        recommendations=recommendations,
        checks=checks,
    )
