"""The lines a diagnosis writes to its run's Logs tab, so that an operator reading only the
logs knows what was found and why the verdict is what it is. Pure, no I/O; the caller
passes text through its Redactor."""

from __future__ import annotations

from service_health.models import CheckResult, DiagnosticReport

_MAX = 300  # one line stays one line in the UI


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX else text[: _MAX - 3] + "..."


def main_finding(check: CheckResult) -> str:
    """The most severe finding, else the error, else the summary."""
    if check.findings:
        worst = max(check.findings, key=lambda f: _RANK.get(str(f.severity), 0))
        return worst.message
    return check.error or check.summary or ""


_RANK = {"critical": 3, "warning": 2, "info": 1}


def check_lines(report: DiagnosticReport) -> list[str]:
    """One line per check: name, status, main finding."""
    lines = []
    for name, check in report.checks.items():
        finding = main_finding(check)
        lines.append(_short(f"Check {name}: {check.status}" + (f" - {finding}" if finding else "")))
    return lines


def verdict_line(report: DiagnosticReport) -> str:
    """The verdict and its reasons (critical issues first, then warnings)."""
    reasons = [*report.critical_issues, *report.warnings]
    line = f"Verdict for {report.target}: {report.overall_status.value}"
    if reasons:
        line += f" - {len(reasons)} reason(s): " + "; ".join(reasons)
    return line if len(line) <= 4 * _MAX else line[: 4 * _MAX - 3] + "..."
