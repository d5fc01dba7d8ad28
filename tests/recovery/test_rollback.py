"""Rolling a service back to an earlier revision: the write's ambiguity rule against a
scripted ECS, then the whole story against the sandbox (a crashing release, rolled back
once, the service converging on the previous revision, never a redeployment of the bad one)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from sandbox.client import SandboxProcess
from service_health.deploy_evidence import revision_label
from service_health.models import Verdict
from service_health.recovery import ActionResult, EntryStatus, StepKind, build_result
from service_health.settings import Target
from tasks import aws
from tasks.recovery import ActionContext, read_recovery_history
from tasks.recovery.deployments import DeploymentData
from tasks.recovery.rollback import roll_back_service
from tests.flows.test_recover_flow import deployments_started
from tests.helpers import wait_for
from tests.recovery.test_force_deployment import READ_TIMEOUT, FakeEcs, client_error
from tests.recovery.test_recovery_tasks import apply, assert_recovered, run
from tests.recovery.world import make_target
from tests.sandbox.test_bad_deploy import ROLLOUT_S, assert_rolled_back_to, release_settled

REGISTRY = "hokusai-registry"


class RecordingEcs(FakeEcs):
    """The scripted ECS, keeping what each UpdateService asked for."""

    def __init__(self, ids: list[str], writes: list[BaseException | str]) -> None:
        super().__init__(ids, writes)
        self.asked: list[dict[str, Any]] = []

    def update_service(self, **kw: Any) -> dict[str, Any]:
        self.asked.append(kw)
        return super().update_service(**kw)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setattr(time, "sleep", lambda _s: None)  # the settling waits and backoff

    def install(ids: list[str], writes: list[BaseException | str]) -> RecordingEcs:
        ecs = RecordingEcs(ids, writes)
        monkeypatch.setattr(aws, "ecs_client", lambda *a, **kw: ecs)
        monkeypatch.setattr(aws, "ecs_write_client", lambda *a, **kw: ecs)
        return ecs

    yield install


def roll_back(expected: str | None = "d1") -> ActionResult[DeploymentData]:
    target = make_target()
    writers = ActionContext(target).writers
    return asyncio.run(roll_back_service.fn(target, "reg", "reg:41", expected, writers=writers))


def test_the_rollback_names_the_revision_and_applies_once(fake: Any) -> None:
    ecs = fake(["d1"], ["d2"])
    result = roll_back()
    assert result.success and result.data.applied is True and ecs.updates == 1
    assert ecs.asked == [{"cluster": "c", "service": "reg", "taskDefinition": "reg:41"}]
    assert result.entries[0].action == "rollback"
    assert result.entries[0].details.startswith("Rollback of reg to revision reg:41 started (d2")


def test_a_throttled_rollback_is_retried(fake: Any) -> None:
    ecs = fake(["d1"], [client_error("ThrottlingException", 400), "d2"])
    assert roll_back().success and ecs.updates == 2


def test_an_ambiguous_rollback_that_applied_is_not_retried(fake: Any) -> None:
    ecs = fake(["d1", "d2"], [READ_TIMEOUT])  # ECS shows the new deployment afterwards
    result = roll_back()
    assert result.success and result.data.applied is True and ecs.updates == 1
    assert "although UpdateService reported ReadTimeoutError" in result.entries[0].details


def test_an_ambiguous_rollback_that_did_not_apply_is_retried_once_proven(fake: Any) -> None:
    ecs = fake(["d1"], [READ_TIMEOUT, "d2"])
    result = roll_back()
    assert result.success and ecs.updates == 2
    assert "deployment unchanged, not applied" in result.data.attempts[0]


def test_a_service_that_moved_on_is_not_rolled_back(fake: Any) -> None:
    ecs = fake(["d9"], ["never"])
    result = roll_back(expected="d1")
    assert result.success and result.data.applied is False and ecs.updates == 0
    assert "not rolling back" in result.entries[0].details


def test_a_definitive_refusal_is_not_retried(fake: Any) -> None:
    ecs = fake(["d1"], [client_error("InvalidParameterException", 400)])
    result = roll_back()
    assert not result.success and ecs.updates == 1
    assert result.entries[0].status == EntryStatus.FAILED


@pytest.fixture
def target(healed: SandboxProcess, sandbox_env: dict[str, str]) -> Target:
    from tests.recovery.test_recovery_tasks import sandbox_target

    return sandbox_target(healed)


def test_a_crashing_release_is_rolled_back_once_and_the_service_converges(
    prefect_server: str, healed: SandboxProcess, target: Target
) -> None:
    injected = healed.client.fault("bad-deploy", mode="crash")
    bad, previous = injected["revision"], injected["previous"]
    wait_for(lambda: release_settled(healed, previous), ROLLOUT_S, "the release to fail")
    started = deployments_started(healed, REGISTRY)

    plan, results, before = run(apply(target))
    assert before.overall_status == Verdict.DEGRADED  # the previous revision serves
    (rollback,) = plan.of_kind(StepKind.ROLLBACK)
    assert (rollback.service, rollback.revision) == (REGISTRY, revision_label(previous))
    assert f"revision {revision_label(bad)} is failing" in rollback.reason
    assert "Essential container in task exited (exit code 1)" in rollback.reason
    assert not plan.restarts and not plan.of_kind(StepKind.WAIT_FOR_ROLLOUT)
    result = build_result(plan, results, started_at=datetime.now(UTC), duration_s=1, dry_run=False)
    assert_recovered(result)
    done = next(r for r in results if r.step == rollback.number)
    assert done.success and isinstance(done.data, DeploymentData) and done.data.applied
    (wait,) = [e for e in result.recovery_log if e.action == "wait_for_stabilization"]
    assert wait.status == EntryStatus.SUCCESS, wait.details

    # One new deployment, the rollback's: the failing revision was never deployed again.
    assert deployments_started(healed, REGISTRY) == started + 1
    assert_rolled_back_to(healed, previous)
    # Like a restart, it starts the cooldown's clock.
    assert run(read_recovery_history.fn(target)).last_restart(REGISTRY) is not None
    # The same diagnosis again never rolls back twice.
    again = run(roll_back_service.fn(target, REGISTRY, rollback.revision or "",
                                     rollback.expected_deployment_id,
                                     writers=ActionContext(target).writers))  # fmt: skip
    assert again.success and again.data.applied is False, again.entries[0].details
    assert deployments_started(healed, REGISTRY) == started + 1
