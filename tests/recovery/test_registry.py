"""The registry of recovery actions: every step kind that does I/O has its action and a
title, so that a forgotten one fails here rather than when the step first runs."""

from __future__ import annotations

import asyncio

import pytest

from service_health.recovery import Effect, RecoveryStep, StepKind
from tasks.recovery import ACTIONS, ActionContext, execute_step
from tasks.recovery.registry import action
from tests.recovery.world import make_target


@pytest.mark.parametrize("kind", list(StepKind), ids=str)
def test_every_kind_has_a_title_and_every_acting_kind_an_action(kind: StepKind) -> None:
    assert kind.heading.strip(), f"{kind} has no title"
    assert isinstance(kind.effect, Effect)
    if kind.effect in (Effect.MUTATING, Effect.WAITING, Effect.CHECKING):
        assert kind in ACTIONS, f"{kind} ({kind.effect}) has no registered action"
    else:
        assert kind not in ACTIONS, f"{kind} is passive: it must only log"


def test_mutating_and_waiting_kinds_are_the_expected_ones() -> None:
    mutating = {k for k in StepKind if k.mutating}
    waiting = {k for k in StepKind if k.effect is Effect.WAITING}
    assert mutating == {StepKind.RESET_BREAKER, StepKind.FORCE_DEPLOYMENT, StepKind.ROLLBACK}
    assert waiting == {
        StepKind.WAIT_FOR_ROLLOUT,
        StepKind.WAIT_FOR_MLFLOW,
        StepKind.WAIT_FOR_STABILIZATION,
    }


def test_a_kind_is_registered_once_and_never_a_passive_one() -> None:
    async def again(step: RecoveryStep, context: ActionContext) -> object:
        raise AssertionError("never called")

    with pytest.raises(ValueError, match="already has an action"):
        action(StepKind.FORCE_DEPLOYMENT)(again)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="passive"):
        action(StepKind.ESCALATE)(again)  # type: ignore[arg-type]


def test_passive_steps_only_log() -> None:
    step = RecoveryStep(number=3, kind=StepKind.ESCALATE, reason="db down", recommendation="fix")
    result = asyncio.run(execute_step(step, ActionContext(make_target())))
    assert result.step == 3 and result.success and result.data is None
    (entry,) = result.entries
    assert entry.status == "escalated" and "Recommendation: fix" in entry.details
