from __future__ import annotations

from typing import TypeVar

from service_health.models import CheckResult

F = TypeVar("F")


def facts(result: CheckResult, kind: type[F]) -> F:
    """The check's typed details, which must be of `kind` (BreakerFacts, AlbFacts, ...)."""
    assert isinstance(result.facts, kind), result.facts
    return result.facts


def severities(result: CheckResult) -> list[str]:
    return sorted(f.severity for f in result.findings if f.severity != "info")


def messages(result: CheckResult) -> str:
    return " | ".join(f.message for f in result.findings)
