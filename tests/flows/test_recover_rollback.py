"""A bad release through the recover flow: the dry run shows the rollback with its evidence
and changes nothing; the real run waits for an operator's approval (the target does not
allow automatic rollback), then rolls back once and the service converges on the previous
revision. A real Prefect server, the real sandbox, approval given through the API."""

from __future__ import annotations

import time

import pytest

from sandbox.client import SandboxProcess
from service_health.deploy_evidence import revision_label
from service_health.recovery import EntryStatus, StepKind
from tests.flows.test_recover_flow import (
    _paused_run_id,
    _run_in_thread,
    deployments_started,
    recover,
)
from tests.helpers import wait_for
from tests.sandbox.test_bad_deploy import ROLLOUT_S, assert_rolled_back_to, release_settled

REGISTRY = "hokusai-registry"


@pytest.fixture
def env(prefect_server: str, sandbox_env: dict[str, str], healed: SandboxProcess) -> dict[str, str]:
    return {**sandbox_env, "PREFECT_API_URL": prefect_server}


def test_a_bad_release_is_rolled_back_once_approved(
    env: dict[str, str], healed: SandboxProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.flow_runs import resume_flow_run

    monkeypatch.delenv("ALLOW_AUTOMATIC_ROLLBACK", raising=False)
    injected = healed.client.fault("bad-deploy", mode="unhealthy")
    bad, previous = injected["revision"], injected["previous"]
    wait_for(lambda: release_settled(healed, previous), ROLLOUT_S, "the release to fail")
    started = deployments_started(healed, REGISTRY)

    state, dry = recover(dry_run=True)
    assert state.name == "Planned"
    (planned,) = dry.plan.of_kind(StepKind.ROLLBACK)
    assert planned.title == f"Roll back {REGISTRY} to revision {revision_label(previous)}"
    (line,) = [e for e in dry.recovery_log if e.action == "rollback"]
    assert line.status == EntryStatus.PLANNED and line.dry_run
    assert f"revision {revision_label(bad)} is failing" in line.details
    assert "Task failed ELB health checks" in line.details  # the evidence
    assert deployments_started(healed, REGISTRY) == started  # the dry run changed nothing

    moment = time.time()
    thread, out = _run_in_thread(dry_run=False, approval_poll_seconds=1)
    run_id = wait_for(lambda: _paused_run_id(moment), 90, "the rollback to wait for approval")
    assert deployments_started(healed, REGISTRY) == started  # nothing applied while waiting
    resume_flow_run(run_id, run_input={"approve": True, "note": "roll back the release"})
    thread.join(ROLLOUT_S)
    assert not thread.is_alive()
    state, result = out["state"], out["result"]
    assert state.name == "Recovered", result.message
    asked, approved = result.recovery_log[0], result.recovery_log[1]
    assert "Approval required: the plan rolls back" in asked.details
    assert approved.action == "approval" and "roll back the release" in approved.details
    rolled = [e for e in result.recovery_log if e.action == "rollback"]
    assert [e.status for e in rolled] == [EntryStatus.SUCCESS], rolled
    assert deployments_started(healed, REGISTRY) == started + 1  # the rollback, once
    assert_rolled_back_to(healed, previous)
    assert not result.plan.restarts
