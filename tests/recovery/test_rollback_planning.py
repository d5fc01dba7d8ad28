"""Rolling back a failing revision, table-driven: revisions, rollout states and histories in
(DescribeServices and DescribeTasks answers judged by the assessment rules), a plan out.
Whatever the case, a failing revision is never redeployed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest

from service_health.approval import plan_changed, rollback_approval
from service_health.deploy_evidence import DeployObservations
from service_health.models import Verdict
from service_health.planning import plan_recovery
from service_health.recovery import (
    ActionResult,
    RecoveryHistory,
    RecoveryPlan,
    StepKind,
    prepare_step,
)
from service_health.settings import EnvSettings, resolve_target
from tests.domain import bodies as b
from tests.recovery.test_planning import OLD, history
from tests.recovery.world import NOW, World, make_target

ROLL, F, W, S, E = "rollback", "force_deployment", "wait_for_rollout", "skip", "escalate"
STAB, ALB, VERIFY = "wait_for_stabilization", "check_alb_targets", "verify"
NEW_ID, OLD_ID, OLDER_ID = "ecs-svc/42", "ecs-svc/41", "ecs-svc/40"
CRASH = ("EssentialContainerExited", "Essential container in task exited")
ELB = ("ServiceSchedulerInitiated", "Task failed ELB health checks in (target-group reg-tg)")


def td(revision: int) -> str:
    return f"arn:aws:ecs:eu-west-1:123456789012:task-definition/reg:{revision}"


def deployment(
    dep_id: str, revision: int, status: str, rollout: str, running: int, failed: int = 0,
    created_min: float = 30,
) -> dict[str, Any]:  # fmt: skip
    return {
        "id": dep_id, "status": status, "taskDefinition": td(revision), "desiredCount": 2,
        "runningCount": running, "pendingCount": 0, "failedTasks": failed,
        "rolloutState": rollout,
        "rolloutStateReason": "ECS deployment circuit breaker: tasks failed to start."
        if rollout == "FAILED" else f"ECS deployment {dep_id} {rollout.lower()}.",
        "createdAt": (NOW - timedelta(minutes=created_min)).isoformat(),
    }  # fmt: skip


def stopped(revision: int, stop: tuple[str, str], started_by: str, n: int) -> list[dict[str, Any]]:
    """`n` tasks of `revision` that stopped in the last few minutes."""
    return [
        {
            "taskArn": f"arn:aws:ecs:eu-west-1:123456789012:task/c/{revision}{i}",
            "taskDefinitionArn": td(revision),
            "lastStatus": "STOPPED",
            "desiredStatus": "STOPPED",
            "stopCode": stop[0],
            "stoppedReason": stop[1],
            "startedBy": started_by,
            "stoppedAt": (NOW - timedelta(minutes=i + 1)).isoformat(),
            "containers": [
                {
                    "name": "reg",
                    "lastStatus": "STOPPED",
                    **({"exitCode": 1} if stop == CRASH else {}),
                }
            ],
        }
        for i in range(n)
    ]


def release(
    w: World, deployments: list[dict[str, Any]], tasks: list[dict[str, Any]], running: int = 2
) -> None:
    """The registry service `reg` with these deployments, these stopped tasks read."""
    svc = b.ecs_service("reg", running)
    svc["deployments"] = deployments
    svc["taskDefinition"] = deployments[0]["taskDefinition"]
    w.services[0] = svc
    listed = b.aws("ecs", "ListTasks", {"taskArns": [t["taskArn"] for t in tasks]})
    described = b.aws("ecs", "DescribeTasks", {"tasks": tasks, "failures": []})
    w.deploys = {"reg": DeployObservations(list_stopped=listed, describe_stopped=described)}


def crash(w: World) -> None:
    """Revision 42 crashes at start, its rollout FAILED; revision 41 still runs 2/2."""
    release(w, [deployment(NEW_ID, 42, "PRIMARY", "FAILED", 0, failed=4, created_min=5),
                deployment(OLD_ID, 41, "ACTIVE", "COMPLETED", 2)],
            stopped(42, CRASH, NEW_ID, 4))  # fmt: skip


def unhealthy_rolling(w: World) -> None:
    """Revision 42 fails its health checks while its rollout is still in progress."""
    release(w, [deployment(NEW_ID, 42, "PRIMARY", "IN_PROGRESS", 0, failed=2, created_min=3),
                deployment(OLD_ID, 41, "ACTIVE", "COMPLETED", 2)],
            stopped(42, ELB, NEW_ID, 2))  # fmt: skip
    w.groups["reg-tg"] = b.target_health(
        "healthy", "healthy", "unhealthy", reason="Target.FailedHealthChecks"
    )


def newest_completed_wins(w: World) -> None:
    release(w, [deployment("ecs-svc/43", 43, "PRIMARY", "FAILED", 0, failed=3, created_min=5),
                deployment(NEW_ID, 42, "ACTIVE", "COMPLETED", 2, created_min=60),
                deployment(OLD_ID, 41, "ACTIVE", "COMPLETED", 0, created_min=600)],
            stopped(43, CRASH, "ecs-svc/43", 3))  # fmt: skip


def nothing_completed(w: World) -> None:
    release(w, [deployment(NEW_ID, 42, "PRIMARY", "FAILED", 0, failed=3, created_min=5)],
            stopped(42, CRASH, NEW_ID, 3), running=0)  # fmt: skip


def same_revision_again(w: World) -> None:
    release(w, [deployment(NEW_ID, 41, "PRIMARY", "IN_PROGRESS", 0, failed=2, created_min=5),
                deployment(OLD_ID, 41, "ACTIVE", "COMPLETED", 2)],
            stopped(41, CRASH, NEW_ID, 2))  # fmt: skip


def previous_fails_too(w: World) -> None:
    release(w, [deployment(NEW_ID, 42, "PRIMARY", "FAILED", 0, failed=4, created_min=5),
                deployment(OLD_ID, 41, "ACTIVE", "COMPLETED", 0)],
            stopped(42, CRASH, NEW_ID, 4) + stopped(41, CRASH, OLD_ID, 2), running=0)  # fmt: skip


def previous_lost_a_task_but_serves(w: World) -> None:
    """A task of revision 41 crashed earlier (and was replaced): 41 still runs, it is good."""
    release(w, [deployment(NEW_ID, 42, "PRIMARY", "FAILED", 0, failed=4, created_min=5),
                deployment(OLD_ID, 41, "ACTIVE", "COMPLETED", 2)],
            stopped(42, CRASH, NEW_ID, 4) + stopped(41, CRASH, OLDER_ID, 1))  # fmt: skip


def crash_and_postgres_down(w: World) -> None:
    crash(w)
    w.postgres_down()


def failed_rollout_unread(w: World) -> None:
    """DescribeServices says the rollout FAILED, but no deploy facts were read."""
    svc = b.ecs_service("reg", 1, rollout="FAILED")
    svc["deployments"].append({"status": "ACTIVE", "rolloutState": "COMPLETED", "runningCount": 1})
    w.services[0] = svc


@dataclass
class Case:
    id: str
    world: Callable[[World], Any]
    steps: list[tuple[str, str | None]]  # (kind, subject)
    text: str  # must appear in some step's reason
    revision: str | None = None  # the rollback's revision, when one is planned
    hist: RecoveryHistory = field(default_factory=lambda: OLD)
    max_restarts: int = 2


ROLLED_BACK = [(ROLL, "reg"), (STAB, "reg"), (ALB, None), (VERIFY, None)]

CASES = [
    Case("crash-failed-rollout-rolls-back-to-the-last-completed", crash, ROLLED_BACK,
         "Essential container in task exited (exit code 1)", "reg:41"),
    Case("unhealthy-in-progress-rolls-back-instead-of-waiting", unhealthy_rolling, ROLLED_BACK,
         "Task failed ELB health checks", "reg:41"),
    Case("the-newest-completed-revision-is-the-last-good", newest_completed_wins, ROLLED_BACK,
         "roll back to revision reg:42", "reg:42"),
    Case("a-previous-revision-that-still-serves-is-good", previous_lost_a_task_but_serves,
         ROLLED_BACK, "roll back to revision reg:41", "reg:41"),
    Case("nothing-to-roll-back-to-escalates", nothing_completed, [(E, "reg"), (VERIFY, None)],
         "no earlier revision is known to have completed a deployment"),
    Case("the-same-revision-completed-before-escalates", same_revision_again,
         [(E, "reg"), (VERIFY, None)], "the cause may lie outside it"),
    Case("the-previous-revision-failing-too-escalates", previous_fails_too,
         [(E, "reg"), (VERIFY, None)], "the previous revision reg:41 fails too"),
    Case("within-the-cooldown-the-rollback-is-skipped", crash, [(S, "reg"), (VERIFY, None)],
         "within the cooldown of 600 s: not rolled back again", hist=history(reg=60, mlf=86400)),
    Case("the-per-run-cap-holds-the-rollback", crash, [(S, "reg"), (VERIFY, None)],
         "not rolled back: the cap of 0 services", max_restarts=0),
    Case("database-down-holds-the-rollback", crash_and_postgres_down,
         [(E, None), (S, "reg"), (VERIFY, None)], "not rolled back while the database is down"),
    Case("a-failed-rollout-without-deploy-facts-escalates", failed_rollout_unread,
         [(E, "reg"), (VERIFY, None)], "rollout FAILED"),
]  # fmt: skip


def make_plan(case: Case) -> RecoveryPlan:
    world = World()
    case.world(world)
    return plan_recovery(world.report(), make_target(), case.hist, NOW, cooldown_s=600,
                         max_restarts=case.max_restarts)  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_a_failing_revision_is_rolled_back_or_escalated_never_redeployed(case: Case) -> None:
    plan = make_plan(case)
    reasons = [s.reason for s in plan.steps]
    assert [(str(s.kind), s.subject) for s in plan.steps] == case.steps, reasons
    assert any(case.text in r for r in reasons), reasons
    assert not plan.restarts, "never a forced deployment of a failing revision"
    assert not plan.of_kind(StepKind.WAIT_FOR_ROLLOUT), "never a wait for a failing rollout"
    rollbacks = plan.of_kind(StepKind.ROLLBACK)
    assert [s.revision for s in rollbacks] == ([case.revision] if case.revision else [])
    assert plan.mutates is bool(case.revision)
    for step in rollbacks:
        # The evidence, where it goes, and the deployment it replaces (never twice).
        assert "revision reg:" in step.reason and "is failing" in step.reason
        assert step.title == f"Roll back reg to revision {case.revision}"
        assert step.task_definition == td(int(case.revision.rsplit(":", 1)[1]))  # type: ignore[union-attr]
        assert step.expected_deployment_id is not None
        (wait,) = plan.of_kind(StepKind.WAIT_FOR_STABILIZATION)
        assert wait.revisions == {"reg": case.revision}
        assert f"reg on revision {case.revision}" in wait.reason
    skipped = plan.of_kind(StepKind.SKIP)
    assert all(s.skipped == StepKind.ROLLBACK for s in skipped)


def test_the_failing_revision_makes_the_diagnosis_degraded_not_healthy() -> None:
    world = World()
    crash(world)
    assert world.report().overall_status == Verdict.DEGRADED


def test_the_stabilisation_wait_narrows_its_revisions_with_its_services() -> None:
    plan = make_plan(CASES[0])
    rollback, wait = plan.steps[0], plan.steps[1]
    failed: dict[int, Any] = {
        rollback.number: ActionResult(action="rollback", success=False, data=None)
    }
    assert isinstance(prepare_step(wait, plan, failed), str)  # nothing to wait for
    done: dict[int, Any] = {
        rollback.number: ActionResult(action="rollback", success=True, data=None)
    }
    ready = prepare_step(wait, plan, done)
    assert not isinstance(ready, str) and ready.revisions == {"reg": "reg:41"}


def test_a_rollback_needs_approval_unless_the_target_allows_it() -> None:
    plan = make_plan(CASES[0])
    asked = rollback_approval(plan, allow_automatic_rollback=False)
    assert asked is not None and "Roll back reg to revision reg:41" in asked.details
    assert "allow_automatic_rollback" in asked.details
    assert rollback_approval(plan, allow_automatic_rollback=True) is None
    restart_only = plan.model_copy(update={"steps": []})
    assert rollback_approval(restart_only, allow_automatic_rollback=False) is None


def test_approval_of_one_revision_is_not_approval_of_another() -> None:
    plan = make_plan(CASES[0])
    other = plan.steps[0].model_copy(update={"revision": "reg:40"})
    changed = plan.model_copy(update={"steps": [other, *plan.steps[1:]]})
    why = plan_changed(plan, changed)
    assert why is not None and "Roll back reg to revision reg:40" in why
    moved = plan.steps[0].model_copy(update={"expected_deployment_id": "ecs-svc/99"})
    assert plan_changed(plan, plan.model_copy(update={"steps": [moved, *plan.steps[1:]]})) is None


@pytest.mark.parametrize(("value", "allowed"), [(None, False), ("true", True), ("0", False)])
def test_automatic_rollback_is_a_target_setting_off_by_default(
    monkeypatch: pytest.MonkeyPatch, value: str | None, allowed: bool
) -> None:
    monkeypatch.setenv("API_URL", "http://127.0.0.1:1")
    if value is None:
        monkeypatch.delenv("ALLOW_AUTOMATIC_ROLLBACK", raising=False)
    else:
        monkeypatch.setenv("ALLOW_AUTOMATIC_ROLLBACK", value)
    assert resolve_target(None, {}, EnvSettings()).allow_automatic_rollback is allowed
