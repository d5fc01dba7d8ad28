"""Contract reports for people: the table artifact, markdown with each failure's diff,
terminal text. Pure."""

from __future__ import annotations

from typing import Any

from service_health.contract.models import ContractOutcome, ContractReport
from service_health.markdown import cell

_MARK = {
    ContractOutcome.PASSED: "PASS",
    ContractOutcome.FAILED: "FAIL",
    ContractOutcome.SKIPPED: "SKIP",
}


def _ms(value: float | None) -> str:
    return "" if value is None else f"{value:.0f}"


def tests_table(report: ContractReport) -> list[dict[str, Any]]:
    """Rows for a table artifact: test, outcome, duration_ms, diff (or description)."""
    return [
        {
            "test": name,
            "outcome": r.outcome.value,
            "duration_ms": None if r.duration_ms is None else round(r.duration_ms, 1),
            "evidence": ", ".join(r.evidence),
            "diff": " | ".join(r.diff) if r.diff else r.actual.get("skipped", "as expected"),
        }
        for name, r in report.tests.items()
    ]


def contract_markdown(report: ContractReport) -> str:
    """Outcome first, then the table, then expected/actual/diff of each failure."""
    s = report.summary
    lines = [
        f"# {report.state_name}: {report.target}",
        "",
        f"**{s.passed}/{s.total_tests} contract tests passed** ({s.success_rate:g}%)"
        + (f", {s.skipped} skipped (read-only run)" if s.skipped else "")
        + f" against `{report.api_url}` at {report.start_time} in "
        f"{report.duration_seconds:.1f} s",
        "",
        "| test | outcome | duration (ms) | diff |",
        "|---|---|---:|---|",
    ]
    for row in tests_table(report):
        lines.append(
            f"| {cell(row['test'])} | {row['outcome']} | {_ms(row['duration_ms'])} | "
            f"{cell(str(row['diff']))} |"
        )
    failed = [r for r in report.tests.values() if r.outcome is ContractOutcome.FAILED]
    if failed:
        lines += ["", "## Failures"]
    for r in failed:
        lines += ["", f"### {r.name}", "", r.description, ""]
        if r.evidence:
            lines += [f"Evidence: {', '.join(r.evidence)}", ""]
        lines += ["```diff", *(f"- {line}" for line in r.diff), "```", ""]
        lines += ["| aspect | expected | actual |", "|---|---|---|"]
        for aspect, expected in r.expected.items():
            actual = r.actual.get(aspect, "")
            lines.append(f"| {cell(aspect)} | {cell(expected)} | {cell(actual)} |")
    return "\n".join(lines) + "\n"


def contract_text(report: ContractReport, verbose: bool = False) -> str:
    """Terminal output: one line per test, the diff under each failure, the outcome."""
    width = max((len(name) for name in report.tests), default=10)
    lines = [
        f"Health contract of {report.target} at {report.api_url} ({report.start_time})",
        "",
    ]
    for name, r in report.tests.items():
        took = f"{_ms(r.duration_ms):>6} ms" if r.duration_ms is not None else ""
        lines.append(f"  [{_MARK[r.outcome]}] {name:<{width}}  {took}".rstrip())
        for line in r.diff:
            lines.append(f"         - {line}")
        if r.outcome is ContractOutcome.SKIPPED:
            lines.append(f"         {r.actual.get('skipped', '')}")
        if verbose and r.outcome is ContractOutcome.PASSED:
            for aspect, actual in r.actual.items():
                lines.append(f"         {aspect}: {actual}")
    s = report.summary
    skipped = f", {s.skipped} skipped" if s.skipped else ""
    lines += [
        "",
        f"Result: {report.state_name.upper()} - {s.passed}/{s.total_tests} passed "
        f"({s.success_rate:g}%), {s.failed} failed{skipped} in {report.duration_seconds:.1f} s",
    ]
    return "\n".join(lines) + "\n"
