"""The report for people: markdown artifact, table rows, terminal summary."""

from __future__ import annotations

from typing import Any

from service_health.markdown import cell
from service_health.models import CheckResult, DiagnosticReport

_MARK = {"healthy": "OK", "degraded": "WARN", "recovering": "WAIT", "unhealthy": "FAIL",
         "error": "ERR", "skipped": "--"}  # fmt: skip


def _summary(check: CheckResult) -> str:
    if check.summary:
        text = check.summary
    elif check.findings:
        text = check.findings[0].message
    else:
        text = str(check.status)
    return text + (" (partial view)" if check.partial else "")


def _rows(report: DiagnosticReport) -> list[tuple[str, CheckResult]]:
    """Top-level checks, each followed by its components ("aws_infrastructure/ecs")."""
    rows = []
    for name, check in report.checks.items():
        rows.append((name, check))
        rows.extend((f"{name}/{sub}", c) for sub, c in check.components.items())
    return rows


def checks_table(report: DiagnosticReport) -> list[dict[str, Any]]:
    """Rows for a table artifact: check, status, duration_ms, summary."""
    return [
        {
            "check": name,
            "status": str(check.status),
            "duration_ms": None if check.duration_ms is None else round(check.duration_ms, 1),
            "summary": _summary(check),
        }
        for name, check in _rows(report)
    ]


def _bullets(items: list[str]) -> list[str]:
    return [f"- {item}" for item in items] if items else ["- none"]


def diagnosis_markdown(report: DiagnosticReport) -> str:
    """Verdict first, then issues, recommendations and a table of checks."""
    verdict = report.overall_status
    lines = [
        f"# {verdict.state_name}: {report.target}",
        "",
        f"**Verdict: {verdict.value}** (exit code {verdict.exit_code}) - diagnosed at "
        f"{report.timestamp} in {report.diagnostic_duration_seconds:.1f} s",
        "",
    ]
    if report.critical_issues:
        lines += ["## Critical issues", "", *_bullets(report.critical_issues), ""]
    if report.warnings:
        lines += ["## Warnings", "", *_bullets(report.warnings), ""]
    lines += ["## Recommendations", "", *_bullets(report.recommendations), ""]
    lines += [
        "## Checks",
        "",
        "| check | status | duration (ms) | summary |",
        "|---|---|---:|---|",
    ]
    for row in checks_table(report):
        duration = "" if row["duration_ms"] is None else f"{row['duration_ms']:.0f}"
        lines.append(
            f"| {cell(row['check'])} | {row['status']} | {duration} | {cell(row['summary'])} |"
        )
    evidence = [
        f"- **{name}**: {', '.join(check.evidence)}"
        for name, check in report.checks.items()
        if check.evidence
    ]
    if evidence:
        lines += ["", "## Evidence", "", *evidence]
    return "\n".join(lines) + "\n"


def diagnosis_text(report: DiagnosticReport) -> str:
    """Plain-text terminal output: components, verdict, issues, recommendations, duration."""
    rows = _rows(report)
    width = max((len(name) for name, _ in rows), default=10)
    lines = [f"Service health: {report.target} ({report.timestamp})", "", "Components:"]
    for name, check in rows:
        duration = "" if check.duration_ms is None else f"{check.duration_ms:.0f} ms"
        lines.append(
            f"  [{_MARK.get(str(check.status), '?'):>4}] {name:<{width}}  "
            f"{check.status!s:<10} {duration:>8}  {_summary(check)}"
        )
    verdict = report.overall_status
    lines += ["", f"Verdict: {verdict.value.upper()} (exit code {verdict.exit_code})"]
    for title, items in (
        ("Critical issues", report.critical_issues),
        ("Warnings", report.warnings),
        ("Recommendations", report.recommendations),
    ):
        if items:
            lines += ["", f"{title}:", *(f"  - {item}" for item in items)]
    lines += ["", f"Diagnosis took {report.diagnostic_duration_seconds:.1f} s"]
    return "\n".join(lines) + "\n"
