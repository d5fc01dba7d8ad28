"""The report: seed-compatible JSON, verdict names and exit codes, rendering."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

import pytest

from service_health.assessment import (
    assess_alb,
    assess_aws_infrastructure,
    assess_circuit_breaker,
    assess_ecs,
    build_diagnostic_report,
)
from service_health.models import CheckName, CheckResult, CheckStatus, DiagnosticReport, Verdict
from service_health.rendering import checks_table, diagnosis_markdown, diagnosis_text
from tests.domain import bodies as b

SEED_TOP = [
    "timestamp",
    "diagnostic_duration_seconds",
    "overall_status",
    "critical_issues",
    "warnings",
    "recommendations",
    "checks",
]


@pytest.mark.parametrize(
    ("verdict", "code", "name"),
    [
        (Verdict.HEALTHY, 0, "Healthy"),
        (Verdict.DEGRADED, 1, "Degraded"),
        (Verdict.CRITICAL, 2, "Critical"),
    ],
)
def test_verdict_exit_codes(verdict: Verdict, code: int, name: str) -> None:
    assert (verdict.exit_code, verdict.state_name) == (code, name)


def sample_report() -> DiagnosticReport:
    a, c = "10.0.1.5:8000", "10.0.1.6:8000"
    checks = {
        "api_connectivity": CheckResult(
            name="api_connectivity",
            status=CheckStatus.HEALTHY,
            duration_ms=21.5,
            details={"status": "clash", "url": "https://x"},
        ),
        "circuit_breaker": assess_circuit_breaker(
            {
                a: b.mlflow_health("OPEN", recovery_attempts=3, replica=a),
                c: b.mlflow_health(replica=c),
            }
        ),
        "aws_infrastructure": assess_aws_infrastructure(
            {
                "alb": assess_alb(None, {"reg|tg": b.target_health("unhealthy")}),
                "ecs": assess_ecs(b.ecs(b.ecs_service("reg", 2)), ["reg"]),
            }
        ),
        "redis": CheckResult.skipped("redis", "no Redis URL configured"),
        "database": CheckResult.failed("database", "deadline exceeded after 30 s"),
    }
    return build_diagnostic_report("production", checks, datetime(2024, 1, 1, tzinfo=UTC), 3.2)


def test_seed_json_keeps_the_seed_names() -> None:
    data = sample_report().to_seed_json()
    for key in SEED_TOP:
        assert key in data
    assert data["target"] == "production"
    assert data["overall_status"] == "critical"
    json.dumps(data)  # serialisable as is
    api = data["checks"]["api_connectivity"]
    assert api["status"] == "healthy" and api["duration_ms"] == 21.5
    assert api["url"] == "https://x"  # details flattened in
    assert api["detail_status"] == "clash"  # never hides the real status
    breaker = data["checks"]["circuit_breaker"]
    assert breaker["state"] == "OPEN" and breaker["replicas"]["10.0.1.5:8000"]["stuck"] is True
    assert breaker["findings"][0]["severity"] == "warning"
    aws = data["checks"]["aws_infrastructure"]
    assert aws["status"] == "unhealthy"
    assert aws["alb"]["status"] == "unhealthy" and aws["ecs"]["status"] == "healthy"
    assert data["checks"]["database"]["error"] == "deadline exceeded after 30 s"


def test_check_names_are_the_seed_ones() -> None:
    assert {n.value for n in CheckName} >= {
        "api_connectivity",
        "health_endpoints",
        "circuit_breaker",
        "mlflow_service",
        "database",
        "redis",
        "aws_infrastructure",
        "service_metrics",
    }


def test_report_round_trips_through_json() -> None:
    report = sample_report()
    again = DiagnosticReport.model_validate_json(report.model_dump_json())
    assert again == report
    assert again.checks["aws_infrastructure"].components["alb"].status == CheckStatus.UNHEALTHY


def test_checks_table_rows() -> None:
    rows = checks_table(sample_report())
    assert [r["check"] for r in rows] == [
        "api_connectivity",
        "circuit_breaker",
        "aws_infrastructure",
        "aws_infrastructure/alb",
        "aws_infrastructure/ecs",
        "redis",
        "database",
    ]
    assert set(rows[0]) == {"check", "status", "duration_ms", "summary"}
    assert rows[1]["summary"] == "OPEN (1 OPEN, 1 CLOSED)"


def test_markdown_verdict_first_and_table_escaped() -> None:
    text = diagnosis_markdown(sample_report())
    lines = text.splitlines()
    assert lines[0] == "# Critical: production"
    assert "exit code 2" in lines[2]
    assert (
        text.index("## Critical issues")
        < text.index("## Warnings")
        < text.index("## Recommendations")
        < text.index("## Checks")
    )
    assert "reg\\|tg" in text  # a pipe in the data does not break the table
    table = [line for line in lines if line.startswith("| ")]
    assert all(line.count(" | ") == 3 for line in table)


def test_human_summary_is_plain_text() -> None:
    text = diagnosis_text(sample_report())
    assert "\x1b" not in text and not re.search(r"[^\x09\x0a\x20-\x7e]", text)
    assert "Verdict: CRITICAL (exit code 2)" in text
    assert "Critical issues:" in text and "Recommendations:" in text
    assert "aws_infrastructure/alb" in text
    assert text.rstrip().endswith("Diagnosis took 3.2 s")


def test_healthy_report_renders_without_sections() -> None:
    report = build_diagnostic_report(
        "t",
        {"api_connectivity": CheckResult(name="api_connectivity", status=CheckStatus.HEALTHY)},
        datetime.now(UTC),
        0.1,
    )
    assert "Warnings" not in diagnosis_text(report)
    assert "## Recommendations\n\n- none" in diagnosis_markdown(report)


def test_build_report_groups_loose_aws_components() -> None:
    checks = {
        "api_connectivity": CheckResult(name="api_connectivity", status=CheckStatus.HEALTHY),
        "alb": assess_alb(None, {"tg": b.target_health("healthy")}),
        "ecs": assess_ecs(b.ecs(b.ecs_service("reg", 0)), ["reg"]),
        "redis": CheckResult.skipped("redis", "not configured"),
        "cloudwatch": CheckResult(
            name="cloudwatch",
            status=CheckStatus.ERROR,
            error="timed out: still running at the 30s deadline",
        ),
    }
    report = build_diagnostic_report("t", checks, datetime(2024, 1, 1, tzinfo=UTC), 1.0)
    assert list(report.checks) == ["api_connectivity", "aws_infrastructure", "redis"]
    group = report.checks["aws_infrastructure"]
    assert list(group.components) == ["alb", "ecs", "cloudwatch"]
    assert report.overall_status == Verdict.CRITICAL
    assert any("no running task" in issue for issue in report.critical_issues)
    assert "timed out" in (group.error or "")
    assert "cloudwatch is error: timed out: still running at the 30s deadline" in report.warnings
