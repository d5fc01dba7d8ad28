"""The stand-down decisions, table-driven: frozen until when, flapping, over budget, relapsed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from service_health.models import CheckStatus, DiagnosticReport, Verdict
from service_health.recovery import (
    EntryStatus,
    RecoveryLogEntry,
    RecoveryOutcome,
    RecoveryPlan,
    RecoveryResult,
)
from service_health.standdown import (
    FREEZE_ALL,
    Budget,
    PastRecovery,
    active_freeze,
    apply_stand_down,
    automation_check,
    budget,
    flapping,
    follow_up,
    freeze_variable,
    frozen,
    over_budget,
    read_claims,
    read_freeze,
    read_relapse_hold,
    relapse_variable,
    stood_down,
)

NOW = datetime(2026, 12, 1, 22, 0, tzinfo=UTC)


def at(minutes: float) -> datetime:
    """NOW shifted by `minutes` (negative: in the past)."""
    return NOW + timedelta(minutes=minutes)


# --- frozen until when --------------------------------------------------------------------

TARGET_VAR = freeze_variable("sandbox")


@pytest.mark.parametrize(
    ("values", "until", "variable", "reason"),
    [
        ({}, None, None, None),
        ({TARGET_VAR: "2026-12-01T23:00:00Z"}, at(60), TARGET_VAR, None),
        ({TARGET_VAR: "2026-12-01T23:00:00"}, at(60), TARGET_VAR, None),  # naive: UTC
        ({TARGET_VAR: "2026-12-02T00:00:00+01:00"}, at(60), TARGET_VAR, None),
        ({TARGET_VAR: "2026-12-01T21:00:00Z"}, None, None, None),  # over
        ({TARGET_VAR: {"until": "2026-12-01T23:30:00Z", "reason": "release 42"}},
         at(90), TARGET_VAR, "release 42"),
        # Both in force: the one lasting longer.
        ({TARGET_VAR: "2026-12-01T23:00:00Z", FREEZE_ALL: "2026-12-02T01:00:00Z"},
         at(180), FREEZE_ALL, None),
        ({TARGET_VAR: "2026-12-01T23:00:00Z", FREEZE_ALL: "2026-12-01T20:00:00Z"},
         at(60), TARGET_VAR, None),
    ],
)  # fmt: skip
def test_frozen_until(
    values: dict[str, Any], until: datetime | None, variable: str | None, reason: str | None
) -> None:
    freeze = active_freeze(NOW, [read_freeze(name, value) for name, value in values.items()])
    if variable is None:
        assert freeze is None
        return
    assert freeze is not None
    assert (freeze.until, freeze.variable, freeze.reason) == (until, variable, reason)


@pytest.mark.parametrize("value", ["tomorrow", 42, "", ["2026-12-01T23:00:00Z"], {"reason": "x"}])
def test_an_unreadable_freeze_freezes_and_says_why(value: Any) -> None:
    freeze = active_freeze(NOW, [read_freeze(TARGET_VAR, value),
                                 read_freeze(FREEZE_ALL, "2026-12-01T23:00:00Z")])  # fmt: skip
    assert freeze is not None and freeze.until is None and freeze.variable == TARGET_VAR
    message = frozen("sandbox", freeze).message
    assert "not an ISO 8601 time" in message
    assert f"prefect variable unset {TARGET_VAR}" in message


def test_the_frozen_message_names_the_time_the_variable_and_how_to_clear_it() -> None:
    freeze = read_freeze(TARGET_VAR, {"until": "2026-12-01T23:00:00Z", "reason": "change window"})
    assert freeze is not None
    stop = frozen("sandbox", freeze)
    assert stop.outcome is RecoveryOutcome.FROZEN and stop.outcome.state_name == "Frozen"
    assert "frozen until 2026-12-01 23:00:00 UTC" in stop.message
    assert "change window" in stop.message
    assert f"prefect variable unset {TARGET_VAR}" in stop.message


# --- flapping -----------------------------------------------------------------------------


def run(minutes_ago: float, state: str = "Failed", automatic: bool = True) -> PastRecovery:
    return PastRecovery(name=f"recover-{minutes_ago:g}", state=state, ended_at=at(-minutes_ago),
                        automatic=automatic)  # fmt: skip


@pytest.mark.parametrize(
    ("history", "threshold", "window_min", "reenabled", "stands_down"),
    [
        ([], 3, 360, None, False),
        ([run(10), run(20)], 3, 360, None, False),
        ([run(10), run(20), run(30)], 3, 360, None, True),
        ([run(10), run(20, "Partially recovered"), run(30)], 3, 360, None, True),
        # Recovered, Skipped, Frozen, Rejected and Stood down runs are no failures.
        ([run(10), run(20, "Recovered"), run(30), run(40, "Rejected"), run(50, "Stood down")],
         3, 360, None, False),
        # Outside the window.
        ([run(10), run(20), run(400)], 3, 360, None, False),
        # Runs started by hand are the operator's business.
        ([run(10), run(20), run(30, automatic=False)], 3, 360, None, False),
        # Re-enabled by an operator 15 minutes ago: only what failed since counts.
        ([run(10), run(20), run(30)], 3, 360, at(-15), False),
        ([run(1), run(5), run(10), run(20)], 3, 360, at(-15), True),
        # A threshold of 0 turns the guard off; of 1, one failure is enough.
        ([run(10), run(20), run(30)], 0, 360, None, False),
        ([run(10)], 1, 360, None, True),
    ],
)  # fmt: skip
def test_flapping(
    history: list[PastRecovery],
    threshold: int,
    window_min: float,
    reenabled: datetime | None,
    stands_down: bool,
) -> None:
    found = flapping(NOW, history, threshold=threshold, window_s=window_min * 60,
                     reenabled_at=reenabled, variable="hokusai-reenabled-sandbox")  # fmt: skip
    assert (found is not None) is stands_down


def test_standing_down_says_which_runs_and_how_to_re_enable() -> None:
    found = flapping(NOW, [run(10), run(20, "Partially recovered"), run(30)], threshold=3,
                     window_s=6 * 3600, reenabled_at=None,
                     variable="hokusai-reenabled-sandbox")  # fmt: skip
    assert found is not None
    stop = stood_down("sandbox", "sandbox", found)
    assert stop.outcome.state_name == "Stood down"
    assert "3 automatic recoveries ended Failed or Partially recovered" in stop.message
    assert "in the last 6 hours" in stop.message
    assert "recover-20 Partially recovered at 21:40:00" in stop.message
    assert "hokusai-reenabled-sandbox" in stop.message and "date -u" in stop.message


# --- over budget --------------------------------------------------------------------------


def claims(**times: list[float]) -> dict[str, list[datetime]]:
    return {slug: [at(-m) for m in minutes] for slug, minutes in times.items()}


@pytest.mark.parametrize(
    ("taken", "per_target", "all_targets", "granted", "words"),
    [
        ({}, 1, 10, True, "0 automatic mutating recoveries left"),
        (claims(sandbox=[10]), 1, 10, False, "1 automatic mutating recoveries of sandbox"),
        (claims(sandbox=[10]), 2, 10, True, "0 automatic mutating recoveries left"),
        (claims(sandbox=[10, 20]), 2, 10, False, "the next allowed from 2026-12-01 22:40:00"),
        (claims(other=[5, 10]), 3, 2, False, "2 automatic mutating recoveries of all targets"),
        (claims(other=[5], sandbox=[50]), 3, 3, True, "0 automatic mutating recoveries left"),
        ({}, 0, 10, False, "budget 0"),
    ],
)  # fmt: skip
def test_over_budget(
    taken: dict[str, list[datetime]], per_target: int, all_targets: int, granted: bool,
    words: str,
) -> None:  # fmt: skip
    decision = budget(NOW, taken, "sandbox", "sandbox", per_target=per_target,
                      all_targets=all_targets, take=True)  # fmt: skip
    assert decision.granted is granted
    assert words in decision.message
    mine = len(decision.claims.get("sandbox", []))
    assert mine == len(taken.get("sandbox", [])) + (1 if granted else 0)
    if not granted:
        assert decision.message.startswith("budget exhausted: escalate")
        assert over_budget(decision).outcome.state_name == "Skipped"


def test_a_peek_takes_nothing() -> None:
    decision = budget(NOW, {}, "sandbox", "sandbox", per_target=1, all_targets=1, take=False)
    assert decision.granted and decision.claims == {}


def test_the_budget_variable_is_read_tolerantly_and_keeps_only_the_last_hour() -> None:
    value = {
        "sandbox": [at(-10).isoformat(), at(-70).isoformat(), "garbage", 5, None],
        "other": "not a list",
        "future": [at(10).isoformat()],
    }
    assert read_claims(value, NOW) == {"sandbox": [at(-10)]}
    assert read_claims("nonsense", NOW) == {}
    assert read_claims(None, NOW) == {}
    # Written back, only the last hour's remain (the Variable never grows).
    decision = budget(NOW, read_claims(value, NOW), "sandbox", "sandbox", per_target=5,
                      all_targets=5, take=True)  # fmt: skip
    assert decision.claims == {"sandbox": [at(-10).isoformat(), NOW.isoformat()]}
    assert Budget.model_validate(decision.model_dump()).granted


# --- relapsed -----------------------------------------------------------------------------


def report(verdict: Verdict, *issues: str) -> DiagnosticReport:
    critical = list(issues) if verdict is Verdict.CRITICAL else []
    warnings = list(issues) if verdict is Verdict.DEGRADED else []
    return DiagnosticReport(target="sandbox", timestamp=NOW.isoformat(),
                            diagnostic_duration_seconds=1.0, overall_status=verdict,
                            critical_issues=critical, warnings=warnings)  # fmt: skip


@pytest.mark.parametrize(
    ("verdict", "late_min", "later", "relapsed", "counts", "words"),
    [
        (Verdict.HEALTHY, 0, [], False, True, "healthy, the recovery held"),
        (Verdict.DEGRADED, 0, [], True, True, "relapsed: the follow-up diagnosis"),
        (Verdict.CRITICAL, 1, [], True, True, "was critical: API down"),
        # Long after its time (no worker was free), it says nothing about the recovery.
        (Verdict.CRITICAL, 20, [], False, False, "too late to judge"),
        # The target was recovered again since.
        (Verdict.CRITICAL, 0, ["recover-sandbox-apply-2"], False, False, "superseded"),
    ],
)  # fmt: skip
def test_relapsed(
    verdict: Verdict, late_min: float, later: list[str], relapsed: bool, counts: bool, words: str
) -> None:
    judged = follow_up(
        report(verdict, "API down"), target="sandbox", variable=relapse_variable("sandbox"),
        recovery_run="r-1", recovery_name="recover-sandbox-apply-1", diagnosis_run="d-1",
        now=NOW, scheduled_at=at(-late_min), later_recoveries=later,
    )  # fmt: skip
    assert (judged.relapsed, judged.counts) == (relapsed, counts)
    assert words in judged.message
    assert (judged.hold is not None) is relapsed
    if judged.hold is not None:
        # What the Variable keeps reads back as the same hold.
        again = read_relapse_hold(judged.hold.variable, judged.hold.value())
        assert again == judged.hold
        assert "prefect variable unset hokusai-relapse-sandbox" in judged.message


@pytest.mark.parametrize("value", ["yes", 1, ["x"]])
def test_an_unreadable_relapse_hold_still_holds(value: Any) -> None:
    hold = read_relapse_hold("hokusai-relapse-sandbox", value)
    assert hold is not None and hold.problem


def test_the_diagnosis_reports_a_freeze_and_a_hold_without_moving_the_verdict() -> None:
    assert automation_check("sandbox", NOW, None, None) is None
    freeze = read_freeze(TARGET_VAR, "2026-12-01T23:00:00Z")
    hold = read_relapse_hold("hokusai-relapse-sandbox", {"recovery_name": "recover-1",
                                                         "verdict": "critical"})  # fmt: skip
    check = automation_check("sandbox", NOW, freeze, hold)
    assert check is not None and check.status is CheckStatus.HEALTHY
    assert {f.severity for f in check.findings} == {"info"}
    messages = [f.message for f in check.findings]
    assert "frozen until 2026-12-01 23:00:00 UTC" in messages[0]
    assert "needs approval: recovery recover-1 of sandbox relapsed" in messages[1]
    # A freeze that has ended is no longer reported.
    assert automation_check("sandbox", at(120), freeze, None) is None


def test_a_stood_down_result_names_its_state_and_applied_nothing() -> None:
    plan = RecoveryPlan(target="sandbox", created_at="", diagnosis_timestamp="",
                        verdict=Verdict.DEGRADED, cooldown_s=0, max_restarts=2)  # fmt: skip
    base = RecoveryResult(
        target="sandbox", start_time=NOW.isoformat(), dry_run=False, overall_success=False,
        duration_seconds=1.0, outcome=RecoveryOutcome.REJECTED, message="not approved", plan=plan,
        initial_verdict=Verdict.DEGRADED,
        recovery_log=[RecoveryLogEntry(action="approval", status=EntryStatus.REJECTED,
                                       details="x")],
    )  # fmt: skip
    freeze = read_freeze(TARGET_VAR, "2026-12-01T23:00:00Z")
    assert freeze is not None
    result = apply_stand_down(base, frozen("sandbox", freeze))
    assert result.outcome is RecoveryOutcome.FROZEN and not result.overall_success
    assert [(e.action, e.status) for e in result.recovery_log] == [
        ("stand_down", EntryStatus.SKIPPED)
    ]
    assert result.exit_code == 1
