"""The recovery actions' pure judgements, without a service: what a failed reset says, a
target group's health, and whether a failed ECS write may have been applied."""

from __future__ import annotations

import pytest

from service_health.action_rules import (
    GroupHealth,
    WriteFailure,
    applied_after_ambiguity,
    classify_write_failure,
    reset_refusal,
)
from service_health.aws_responses import TargetHealthEntry


def test_reset_refusals_say_what_to_do() -> None:
    assert "none is configured" in reset_refusal(401, None, False, "")
    assert "none is configured" not in reset_refusal(401, None, True, "")
    assert reset_refusal(403, "x", True, "").startswith("HTTP 403: the API key was rejected")
    assert reset_refusal(500, "boom" * 100, True, "") == "HTTP 500: " + ("boom" * 100)[:200]
    assert reset_refusal(None, None, True, "timed out after 5s") == "no answer (timed out after 5s)"


@pytest.mark.parametrize(
    ("code", "status", "sent", "expected"),
    [
        ("ThrottlingException", 400, True, WriteFailure.NOT_APPLIED),
        ("EndpointConnectionError", None, False, WriteFailure.NOT_APPLIED),
        ("ServerException", 500, True, WriteFailure.AMBIGUOUS),
        ("ReadTimeoutError", None, True, WriteFailure.AMBIGUOUS),
        ("AccessDeniedException", 400, True, WriteFailure.DEFINITIVE),
        ("ServiceNotFoundException", 400, True, WriteFailure.DEFINITIVE),
    ],
)
def test_the_ambiguous_write_rule(
    code: str, status: int | None, sent: bool, expected: WriteFailure
) -> None:
    assert classify_write_failure(code, status, sent=sent) is expected


def test_ecs_decides_after_an_ambiguous_failure() -> None:
    assert applied_after_ambiguity("d1", "d2") is True
    assert applied_after_ambiguity("d1", "d1") is False
    assert applied_after_ambiguity("d1", None) is None


def target(state: str, reason: str | None = None) -> TargetHealthEntry:
    return TargetHealthEntry(id="10.0.0.1", port=8000, state=state, reason=reason)


def test_group_health() -> None:
    ok = GroupHealth.of([target("healthy"), target("draining")])
    assert (ok.healthy, ok.total, ok.unhealthy, ok.all_healthy) == (1, 2, [], True)
    bad = GroupHealth.of([target("healthy"), target("unhealthy", "Target.Timeout")])
    assert bad.unhealthy == ["10.0.0.1:8000 (Target.Timeout)"] and not bad.all_healthy
    assert bad.states == {"healthy": 1, "unhealthy": 1}
    assert not GroupHealth.of([]).all_healthy
    assert not GroupHealth.of([target("draining")]).all_healthy
