from __future__ import annotations

from service_health.models import CheckResult


def severities(result: CheckResult) -> list[str]:
    return sorted(f.severity for f in result.findings if f.severity != "info")


def messages(result: CheckResult) -> str:
    return " | ".join(f.message for f in result.findings)
