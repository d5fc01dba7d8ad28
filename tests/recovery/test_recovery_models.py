"""Recovery models: dependencies, dry run, outcome, seed JSON, rendering."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from service_health.models import DiagnosticReport, Verdict
from service_health.planning import plan_recovery
from service_health.recovery import (
    ActionResult,
    EntryStatus,
    RecoveryHistory,
    RecoveryLogEntry,
    RecoveryOutcome,
    RecoveryPlan,
    RecoveryStep,
    ServiceHistory,
    StepKind,
    blocked_result,
    build_result,
    decide_outcome,
    dry_run_entries,
    parse_time,
    passive_result,
    prepare_step,
    rejection_entry,
    step_batches,
    verification_result,
)
from service_health.recovery_rendering import (
    log_table,
    log_text,
    plan_markdown,
    plan_table,
    recovery_markdown,
    result_text,
)
from tests.recovery.world import NOW, R1, World, make_target


def report(verdict: Verdict, *issues: str) -> DiagnosticReport:
    return DiagnosticReport(
        target="prod",
        timestamp=NOW.isoformat(),
        diagnostic_duration_seconds=1.0,
        overall_status=verdict,
        critical_issues=list(issues) if verdict == Verdict.CRITICAL else [],
        warnings=list(issues) if verdict == Verdict.DEGRADED else [],
    )


def plan_of(verdict: Verdict, *kinds: StepKind, **step: Any) -> RecoveryPlan:
    return RecoveryPlan(
        target="prod",
        created_at=NOW.isoformat(),
        diagnosis_timestamp=NOW.isoformat(),
        verdict=verdict,
        steps=[
            RecoveryStep(number=i + 1, kind=k, reason=f"because {k}", **step)
            for i, k in enumerate(kinds)
        ],
        cooldown_s=600,
        max_restarts=2,
    )


def ok(step: int, success: bool = True) -> ActionResult:
    return ActionResult(step=step, action="x", success=success, data=None)


RESET, FORCE, ESC = StepKind.RESET_BREAKER, StepKind.FORCE_DEPLOYMENT, StepKind.ESCALATE
H, D, C = Verdict.HEALTHY, Verdict.DEGRADED, Verdict.CRITICAL

OUTCOMES = [
    ("already-healthy", plan_of(H), [], report(H), False, False, RecoveryOutcome.ALREADY_HEALTHY),
    ("dry-run", plan_of(D, RESET), [], None, True, False, RecoveryOutcome.PLANNED),
    ("rejected", plan_of(D, RESET), [], None, False, True, RecoveryOutcome.REJECTED),
    ("recovered", plan_of(D, RESET), [ok(1)], report(H), False, False, RecoveryOutcome.RECOVERED),
    ("no-final-diagnosis", plan_of(D, RESET), [ok(1)], None, False, False, RecoveryOutcome.FAILED),
    (
        "escalation-only-stays-critical",
        plan_of(C, ESC),
        [ok(1)],
        report(C, "db down"),
        False,
        False,
        RecoveryOutcome.FAILED,
    ),
    (
        "corrected-but-degraded",
        plan_of(D, RESET),
        [ok(1)],
        report(D, "redis down"),
        False,
        False,
        RecoveryOutcome.PARTIALLY_RECOVERED,
    ),
    (
        "improved-critical-to-degraded",
        plan_of(C, FORCE, service="reg"),
        [ok(1, False)],
        report(D, "x"),
        False,
        False,
        RecoveryOutcome.PARTIALLY_RECOVERED,
    ),
    (
        "action-failed-still-degraded",
        plan_of(D, RESET),
        [ok(1, False)],
        report(D, "x"),
        False,
        False,
        RecoveryOutcome.FAILED,
    ),
    (
        "corrected-but-still-critical",
        plan_of(C, FORCE, service="reg"),
        [ok(1)],
        report(C, "x"),
        False,
        False,
        RecoveryOutcome.FAILED,
    ),
]


@pytest.mark.parametrize(
    ("plan", "results", "final", "dry_run", "rejected", "expected"),
    [o[1:] for o in OUTCOMES],
    ids=[o[0] for o in OUTCOMES],
)
def test_outcome(
    plan: RecoveryPlan,
    results: list[ActionResult],
    final: DiagnosticReport | None,
    dry_run: bool,
    rejected: bool,
    expected: RecoveryOutcome,
) -> None:
    assert decide_outcome(plan, results, final, dry_run=dry_run, rejected=rejected) == expected


def test_outcome_names_exit_codes_and_state_types() -> None:
    assert [o.state_name for o in RecoveryOutcome] == [
        "Recovered",
        "Already healthy",
        "Planned",
        "Rejected",
        "Partially recovered",
        "Failed",
        "Frozen",
        "Stood down",
        "Skipped",
    ]
    assert {o for o in RecoveryOutcome if o.exit_code == 0} == {
        RecoveryOutcome.RECOVERED,
        RecoveryOutcome.ALREADY_HEALTHY,
    }
    assert [o for o in RecoveryOutcome if o.is_failure] == [RecoveryOutcome.FAILED]


def mlflow_down_plan() -> RecoveryPlan:
    world = World().breaker_open().mlflow_down()
    return plan_recovery(world.report(), make_target(), None, NOW, cooldown_s=0)


def test_a_step_runs_only_after_its_dependencies_succeeded() -> None:
    plan = mlflow_down_plan()
    force, wait, reset, stab = plan.steps[:4]
    assert prepare_step(force, plan, {}) is force
    why = prepare_step(wait, plan, {force.number: ok(force.number, False)})
    assert isinstance(why, str) and "Force a new deployment (mlf)" in why
    assert prepare_step(reset, plan, {}) != reset  # not run yet counts as not succeeded
    assert prepare_step(reset, plan, {wait.number: ok(wait.number)}) is reset
    # Stabilisation narrows to what succeeded: here only the reset.
    narrowed = prepare_step(
        stab, plan, {force.number: ok(force.number, False), reset.number: ok(reset.number)}
    )
    assert isinstance(narrowed, RecoveryStep) and narrowed.services == []
    both = prepare_step(stab, plan, {force.number: ok(1), reset.number: ok(3)})
    assert isinstance(both, RecoveryStep) and both.services == ["mlf"]
    none = prepare_step(stab, plan, {force.number: ok(1, False), reset.number: ok(3, False)})
    assert isinstance(none, str)
    blocked = blocked_result(wait, "step 1 failed")
    assert blocked.not_run and not blocked.success
    assert blocked.entries[0].status == EntryStatus.SKIPPED


def test_checking_steps_that_do_not_depend_on_each_other_run_together() -> None:
    crash = plan_of(C, StepKind.FORCE_DEPLOYMENT, StepKind.WAIT_FOR_STABILIZATION,
                    StepKind.CHECK_ALB_TARGETS, StepKind.VERIFY)  # fmt: skip
    assert [[s.kind for s in b] for b in step_batches(crash.steps)] == [
        [StepKind.FORCE_DEPLOYMENT],
        [StepKind.WAIT_FOR_STABILIZATION],
        [StepKind.CHECK_ALB_TARGETS, StepKind.VERIFY],
    ]
    # A check that depends on the one before it waits for it; a mutating or waiting step
    # never joins a batch, and a check after one starts a new batch.
    chained = plan_of(C, StepKind.CHECK_ALB_TARGETS, StepKind.VERIFY)
    chained.steps[1].depends_on = [1]
    assert [len(b) for b in step_batches(chained.steps)] == [1, 1]
    mixed = plan_of(C, StepKind.VERIFY, RESET, StepKind.CHECK_ALB_TARGETS, StepKind.VERIFY,
                    StepKind.WAIT_FOR_MLFLOW, StepKind.VERIFY)  # fmt: skip
    assert [[s.number for s in b] for b in step_batches(mixed.steps)] == [
        [1], [2], [3, 4], [5], [6]
    ]  # fmt: skip


def test_passive_steps_log_without_io() -> None:
    plan = plan_of(D, ESC, StepKind.SKIP, recommendation="restore it")
    esc = passive_result(plan.steps[0])
    assert esc.success and esc.entries[0].status == EntryStatus.ESCALATED
    assert "restore it" in esc.entries[0].details
    skip = passive_result(plan.steps[1])
    assert not skip.success and skip.entries[0].status == EntryStatus.SKIPPED
    with pytest.raises(ValueError):
        passive_result(RecoveryStep(number=1, kind=RESET, reason="r"))


def test_dry_run_logs_every_step_and_changes_nothing() -> None:
    plan = mlflow_down_plan()
    entries = dry_run_entries(plan)
    assert len(entries) == len(plan.steps)
    assert all(e.dry_run for e in entries)
    assert {e.status for e in entries} == {EntryStatus.PLANNED}
    assert entries[0].details.startswith("Would: Force a new deployment (mlf)")
    result = build_result(
        plan, [], started_at=NOW, duration_s=0.5, dry_run=True, extra_entries=entries
    )
    assert result.outcome == RecoveryOutcome.PLANNED and not result.overall_success
    assert "nothing was changed" in result.message


def test_seed_json_keeps_the_seed_field_names() -> None:
    plan = plan_of(D, RESET, StepKind.VERIFY, replicas=[R1])
    reset_entry = RecoveryLogEntry(
        action="reset_breaker", status=EntryStatus.SUCCESS, details="reset", subject=R1
    )
    results = [
        ActionResult(
            step=1, action="reset_breaker", success=True, entries=[reset_entry], data=None
        ).numbered(1),
        verification_result(plan.steps[1], report(H)),
    ]
    result = build_result(
        plan, results, started_at=datetime(2024, 1, 1), duration_s=12.3456, dry_run=False
    )
    data = result.to_seed_json()
    assert list(data)[:5] == [
        "start_time",
        "dry_run",
        "recovery_log",
        "overall_success",
        "duration_seconds",
    ]
    assert data["start_time"] == "2024-01-01T00:00:00+00:00"
    assert data["overall_success"] is True and data["outcome"] == "Recovered"
    assert data["duration_seconds"] == 12.346
    first = data["recovery_log"][0]
    assert {"timestamp", "action", "status", "details", "dry_run"} <= set(first)
    assert first["step"] == 1 and first["status"] == "success"
    assert data["final_status"] == "healthy"


def test_rejection_and_rendering() -> None:
    plan = mlflow_down_plan()
    result = build_result(
        plan,
        [],
        started_at=NOW,
        duration_s=1,
        dry_run=False,
        rejected=True,
        extra_entries=[rejection_entry("rejected by alice")],
    )
    assert result.outcome == RecoveryOutcome.REJECTED and result.exit_code == 1
    md = recovery_markdown(result)
    assert md.startswith("# Rejected: prod") and "rejected by alice" in md
    assert "| 1 | Force a new deployment (mlf) | yes |" in md
    assert plan_markdown(plan).startswith("# Recovery plan: prod")
    rows = plan_table(plan)
    assert rows[0]["kind"] == "force_deployment" and rows[0]["mutating"] is True
    assert log_table(result.recovery_log)[0]["status"] == "rejected"
    text = result_text(result)
    assert "Outcome: Rejected" in text and "[ REJ]" in log_text(result.recovery_log)


def test_markdown_cells_cannot_break_the_table() -> None:
    plan = plan_of(D, ESC, recommendation="a | b\nc")
    assert "a \\| b c" in plan_markdown(plan)


def test_history_and_time_parsing() -> None:
    at = parse_time("2024-01-01T11:00:00")
    assert at == datetime(2024, 1, 1, 11, tzinfo=UTC)
    assert parse_time(0) == datetime(1970, 1, 1, tzinfo=UTC)
    assert parse_time("nonsense") is None and parse_time(None) is None
    h = RecoveryHistory(
        services={
            "reg": ServiceHistory(
                name="reg",
                primary_deployment_id="d1",
                last_deployment_at=NOW - timedelta(seconds=5),
                target_groups=["reg-tg"],
            )
        }
    )
    assert h.service_of_group("reg-tg") == "reg" and h.service_of_group("x") is None
    assert h.deployment_id("reg") == "d1" and h.last_restart("mlf") is None
