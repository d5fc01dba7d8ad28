"""The recovery rules, table-driven: a diagnosis (built by the assessment rules from
synthetic observations) in, a plan out."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest

from service_health.models import Verdict
from service_health.observations import RedisObservation
from service_health.planning import plan_recovery
from service_health.recovery import (
    RecoveryHistory,
    RecoveryPlan,
    ServiceHistory,
    StepKind,
)
from tests.domain import bodies as b
from tests.recovery.world import NOW, R1, R2, World, make_target, service

F, W, S, E = "force_deployment", "wait_for_rollout", "skip", "escalate"
RESET, MLF_WAIT = "reset_breaker", "wait_for_mlflow"
STAB, ALB, VERIFY = "wait_for_stabilization", "check_alb_targets", "verify"


def history(**ages_s: float) -> RecoveryHistory:
    """Each service last deployed `age` seconds before NOW."""
    return RecoveryHistory(
        services={
            name: ServiceHistory(
                name=name,
                primary_deployment_id=f"ecs-svc/{name}-1",
                last_deployment_at=NOW - timedelta(seconds=age),
                target_groups=[f"{name}-tg"],
            )
            for name, age in ages_s.items()
        }
    )


OLD = history(reg=86400, mlf=86400)


@dataclass
class Case:
    id: str
    world: Callable[[World], Any]
    steps: list[tuple[str, str | None]]  # (kind, subject)
    mutates: bool
    text: str = ""  # must appear in some step's reason
    hist: RecoveryHistory = field(default_factory=lambda: OLD)
    cooldown_s: float = 600
    max_restarts: int = 2
    target: dict[str, Any] = field(default_factory=dict)


def ecs_half(w: World) -> None:
    w.services[0] = service("reg", 1)
    w.groups["reg-tg"] = b.target_health("healthy", "unhealthy", reason="Target.Timeout")


def postgres_down_and_half(w: World) -> None:
    w.postgres_down()
    ecs_half(w)


def stuck_and_half(w: World) -> None:
    w.breaker_open(R1, stuck=True)
    ecs_half(w)


def ecs_half_rolling(w: World) -> None:
    w.services[0] = service("reg", 1, rollout="IN_PROGRESS", deployments=2)


def both_down(w: World) -> None:
    w.registry_down()
    w.mlflow_down()


def api_unreachable_ecs_fine(w: World) -> None:
    w.endpoints = {k: b.no_answer(k) for k in w.endpoints}
    w.replicas = {}


def wedged(w: World) -> None:
    page = "Internal Server Error"
    w.endpoints = {k: b.http(k, 500, text=page, content_type="text/plain") for k in w.endpoints}
    w.replicas = {}


def ecs_throttled(w: World) -> None:
    ecs_half(w)
    w.ecs = b.aws("ecs", "DescribeServices", None, "ThrottlingException", "Rate exceeded")


def half_open(w: World) -> None:
    w.replicas[R1] = b.mlflow_health("HALF_OPEN", replica=R1)


CASES = [
    Case("healthy", lambda w: None, [], False),
    Case(
        "stuck-on-one-replica-mlflow-reachable",
        lambda w: w.breaker_open(R1, stuck=True),
        [(RESET, R1), (STAB, "API /health"), (VERIFY, None)],
        True,
        "stuck on 10.0.1.5:8000",
    ),
    Case(
        "open-everywhere-mlflow-reachable",
        lambda w: w.breaker_open(),
        [(RESET, f"{R1}, {R2}"), (STAB, "API /health"), (VERIFY, None)],
        True,
        "MLflow is reachable",
    ),
    Case(
        "sampled-view-resets-once-through-the-api-url",
        lambda w: w.sampled(),
        [(RESET, "API URL"), (STAB, "API /health"), (VERIFY, None)],
        True,
        "Partial view",
    ),
    Case(
        "open-and-mlflow-down-restarts-mlflow-first",
        lambda w: w.breaker_open().mlflow_down(),
        [
            (F, "mlf"),
            (MLF_WAIT, None),
            (RESET, f"{R1}, {R2}"),
            (STAB, "mlf"),
            (ALB, None),
            (VERIFY, None),
        ],
        True,
        "once MLflow answers again",
    ),
    Case(
        "open-and-mlflow-down-within-cooldown-escalates",
        lambda w: w.breaker_open().mlflow_down(),
        [(S, "mlf"), (E, None), (ALB, None), (VERIFY, None)],
        False,
        "within the cooldown",
        hist=history(reg=86400, mlf=60),
    ),
    Case(
        "open-and-mlflow-down-without-mlflow-service-escalates",
        lambda w: w.breaker_open().mlflow_down(),
        [(E, None), (ALB, None), (VERIFY, None)],
        False,
        "no MLflow ECS service is configured",
        target={"mlflow_ecs_service": None, "ecs_services": ["reg"]},
    ),
    Case(
        "ecs-below-desired",
        ecs_half,
        [(F, "reg"), (STAB, "reg"), (ALB, None), (VERIFY, None)],
        True,
        "runs 1 of 2 desired tasks",
    ),
    Case(
        "ecs-below-desired-while-rolling-waits",
        ecs_half_rolling,
        [(W, "reg"), (STAB, "reg"), (ALB, None), (VERIFY, None)],
        False,
        "already rolling",
    ),
    Case(
        "ecs-below-desired-within-cooldown-skips",
        ecs_half,
        [(S, "reg"), (ALB, None), (VERIFY, None)],
        False,
        "started 120 s ago",
        hist=history(reg=120, mlf=86400),
    ),
    Case(
        "cooldown-zero-restarts",
        ecs_half,
        [(F, "reg"), (STAB, "reg"), (ALB, None), (VERIFY, None)],
        True,
        hist=history(reg=120, mlf=86400),
        cooldown_s=0,
    ),
    Case(
        "unhealthy-targets-only",
        lambda w: w.groups.update({"reg-tg": b.target_health("unhealthy", "healthy")}),
        [(F, "reg"), (STAB, "reg"), (ALB, None), (VERIFY, None)],
        True,
        "1 of 2 targets unhealthy in reg-tg",
    ),
    Case(
        "cap-restarts-the-most-urgent-first",
        both_down,
        [(S, "mlf"), (F, "reg"), (STAB, "reg"), (ALB, None), (VERIFY, None)],
        True,
        "cap of 1 service",
        max_restarts=1,
    ),
    Case(
        "cap-zero-restarts-nothing",
        ecs_half,
        [(S, "reg"), (ALB, None), (VERIFY, None)],
        False,
        "cap of 0 services",
        max_restarts=0,
    ),
    Case(
        "postgres-down-escalates-without-mutation",
        lambda w: w.postgres_down(),
        [(E, None), (VERIFY, None)],
        False,
        "No automatic action is taken for the database",
    ),
    Case(
        "postgres-down-holds-registry-restarts",
        postgres_down_and_half,
        [(E, None), (S, "reg"), (ALB, None), (VERIFY, None)],
        False,
        "while the database is down",
    ),
    Case(
        "rds-stopped-escalates",
        lambda w: setattr(w, "rds", b.rds("stopped")),
        [(E, None), (VERIFY, None)],
        False,
        "not available (state stopped)",
    ),
    Case(
        "redis-down-escalates",
        lambda w: setattr(w, "redis", RedisObservation(error="Connection refused")),
        [(E, None), (VERIFY, None)],
        False,
        "Redis down",
    ),
    Case(
        "api-unreachable-all-registry-tasks-down",
        lambda w: w.registry_down(),
        [(F, "reg"), (STAB, "reg"), (ALB, None), (VERIFY, None)],
        True,
        "all registry tasks are down",
    ),
    Case(
        "api-unreachable-with-ecs-fine-escalates",
        api_unreachable_ecs_fine,
        [(E, None), (VERIFY, None)],
        False,
        "not something a new deployment fixes",
    ),
    Case(
        "api-wedged-restarts-registry",
        wedged,
        [(F, "reg"), (STAB, "reg"), (ALB, None), (VERIFY, None)],
        True,
        "replicas likely wedged",
    ),
    Case(
        "inactive-service-escalates",
        lambda w: w.services.__setitem__(0, service("reg", 0, status="INACTIVE")),
        [(E, None), (VERIFY, None)],
        False,
        "a new deployment cannot be forced",
    ),
    Case(
        "scaled-to-zero-escalates",
        lambda w: w.services.__setitem__(0, service("reg", 0, desired=0)),
        [(E, None), (VERIFY, None)],
        False,
        "scaled to zero",
    ),
    Case(
        "ecs-unknown-escalates",
        ecs_throttled,
        [(E, None), (ALB, None), (VERIFY, None)],
        False,
        "ECS state unknown",
    ),
    Case(
        "half-open-only-escalates-with-the-diagnosis-issues",
        half_open,
        [(E, None), (VERIFY, None)],
        False,
        "no automatic recovery applies",
    ),
    Case(
        "registry-restart-replaces-the-breaker-reset",
        stuck_and_half,
        [(S, None), (F, "reg"), (STAB, "reg"), (ALB, None), (VERIFY, None)],
        True,
        "new replicas start with a closed breaker",
    ),
]


def make_plan(case: Case) -> RecoveryPlan:
    world = World()
    case.world(world)
    report = world.report()
    return plan_recovery(
        report,
        make_target(**case.target),
        case.hist,
        NOW,
        cooldown_s=case.cooldown_s,
        max_restarts=case.max_restarts,
    )


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_plan_rules(case: Case) -> None:
    plan = make_plan(case)
    got = [(str(s.kind), s.subject) for s in plan.steps]
    assert got == case.steps, [s.reason for s in plan.steps]
    assert plan.mutates is case.mutates
    assert all(s.reason for s in plan.steps), "every step carries its reason"
    if case.text:
        assert any(case.text in s.reason for s in plan.steps), [s.reason for s in plan.steps]
    assert [s.number for s in plan.steps] == list(range(1, len(plan.steps) + 1))
    for s in plan.steps:
        assert all(0 < d < s.number for d in s.depends_on), "dependencies come earlier"


def test_healthy_plan_is_empty_and_says_so() -> None:
    plan = make_plan(CASES[0])
    assert plan.already_healthy and plan.verdict == Verdict.HEALTHY
    assert plan.steps == [] and plan.notes


def test_mlflow_first_then_reset_after_mlflow_answers() -> None:
    plan = make_plan(next(c for c in CASES if c.id == "open-and-mlflow-down-restarts-mlflow-first"))
    force, wait, reset = plan.steps[0], plan.steps[1], plan.steps[2]
    assert wait.depends_on == [force.number]
    assert reset.depends_on == [wait.number]
    assert force.expected_deployment_id == "ecs-svc/mlf-1"
    stab = plan.of_kind(StepKind.WAIT_FOR_STABILIZATION)[0]
    assert set(stab.depends_on) == {force.number, reset.number}


def test_force_step_carries_the_deployment_id_seen_when_planning() -> None:
    plan = make_plan(next(c for c in CASES if c.id == "ecs-below-desired"))
    (force,) = plan.of_kind(StepKind.FORCE_DEPLOYMENT)
    assert force.expected_deployment_id == "ecs-svc/reg-1"
    assert plan.restarts == ["reg"]


def test_without_history_the_cooldown_is_not_checked_and_noted() -> None:
    world = World()
    ecs_half(world)
    plan = plan_recovery(world.report(), make_target(), None, NOW)
    assert plan.restarts == ["reg"]
    assert any("cooldown could not be checked" in n for n in plan.notes)
    assert plan.of_kind(StepKind.FORCE_DEPLOYMENT)[0].expected_deployment_id is None


def test_target_groups_map_to_services_through_history() -> None:
    """Two registry services: only ECS's own wiring says which one owns a group."""
    world = World()
    world.groups = {
        "api-tg": b.target_health("healthy", "healthy"),
        "worker-tg": b.target_health("unhealthy", "unhealthy"),
    }
    world.services = [service("api", 2), service("worker", 2)]
    target = make_target(
        ecs_services=["api", "worker"],
        mlflow_ecs_service=None,
        target_groups=["api-tg", "worker-tg"],
        mlflow_target_groups=[],
    )

    def report_for(w: World) -> Any:
        from service_health.assessment import assess_ecs

        r = w.report()
        aws = r.checks["aws_infrastructure"]
        aws.components["ecs"] = assess_ecs(b.ecs(*w.services), ["api", "worker"])
        return r

    unmapped = plan_recovery(report_for(world), target, RecoveryHistory(), NOW)
    assert unmapped.restarts == []
    assert any("no ECS service is known to own" in n for n in unmapped.notes)
    mapped = plan_recovery(report_for(world), target, history(api=9999, worker=9999), NOW)
    assert mapped.restarts == ["worker"]


def test_invalid_limits_are_refused() -> None:
    report = World().report()
    with pytest.raises(ValueError):
        plan_recovery(report, make_target(), None, NOW, cooldown_s=-1)
    with pytest.raises(ValueError):
        plan_recovery(report, make_target(), None, NOW, max_restarts=-1)
