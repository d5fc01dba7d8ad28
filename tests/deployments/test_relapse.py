"""The relapse check end to end: a recovery that ends Recovered schedules a run of the
target's diagnosis deployment, a real process worker runs it later, and when the fault is
back it marks the recovery relapsed and holds automatic recovery for approval."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from typing import Any
from uuid import UUID

import pytest

from sandbox.client import SandboxProcess
from sandbox.statefiles import env_lines
from service_health.recovery import EntryStatus
from tests.deployments.servers import Worker
from tests.deployments.test_deploy import run
from tests.deployments.test_operations import client_call, deploy, final_state, flow_run
from tests.flows.test_recover_flow import recover, resets
from tests.flows.test_standdown_flow import APPLIED, clean, get_variable, run_id
from tests.helpers import wait_for

# Longer than a worker's prefetch (10 s): the follow-up cannot start before the fault is back.
DELAY_S = 20.0


def stale_follow_ups() -> None:
    """Relapse checks scheduled by earlier tests' recoveries: not this test's to run."""
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
        FlowRunFilterTags,
    )
    from prefect.client.schemas.objects import StateType

    async def go(client: Any) -> None:
        runs = await client.read_flow_runs(flow_run_filter=FlowRunFilter(
            tags=FlowRunFilterTags(all_=["relapse-check"]),
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])),
        ))  # fmt: skip
        for found in runs:
            await client.delete_flow_run(found.id)

    client_call(go)


@pytest.fixture(scope="module")
def deployed(
    prefect_server: str, sandbox: SandboxProcess, tmp_path_factory: Any
) -> Iterator[dict[str, str]]:
    """The sandbox's diagnosis and recovery deployments and one process worker."""
    env = {**env_lines(sandbox.info), "PREFECT_API_URL": prefect_server}
    assert run(env, sys.executable, "-m", "deployments", "setup").returncode == 0
    deploy(env, "--name", "diagnose-sandbox", "--name", "recover-sandbox")
    stale_follow_ups()
    worker = Worker(env, tmp_path_factory.mktemp("worker") / "worker.log", limit=4)
    yield env
    worker.stop()


def latest_artifact(key: str) -> Any:
    from prefect.artifacts import Artifact

    return asyncio.run(Artifact.aget(key))


def test_a_relapse_is_caught_by_the_follow_up_and_holds_automation_for_approval(
    deployed: dict[str, str], sandbox_env: dict[str, str], healed: SandboxProcess
) -> None:
    created: list[UUID] = []
    clean(created)
    try:
        healed.client.fault("breaker-stuck-open")
        state, result = recover(dry_run=False, relapse_check_delay_seconds=DELAY_S)
        assert state.name == "Recovered", result.message
        recovery = run_id(state)
        (entry,) = [e for e in result.recovery_log if e.action == "relapse_check"]
        assert entry.status is EntryStatus.SUCCESS, entry.details
        assert "Relapse check scheduled: diagnose-service-health/diagnose-sandbox" in entry.details
        follow = UUID(str(entry.data["run"]))
        scheduled = flow_run(follow)
        assert scheduled.parameters["follow_up_of"] == str(recovery)
        assert scheduled.state.is_scheduled()

        # The fault comes back before the follow-up runs; the worker runs it on time.
        healed.client.fault("breaker-stuck-open")
        assert final_state(follow, 240).name == "Degraded"

        hold = get_variable("hokusai-relapse-sandbox")
        assert hold["recovery_run"] == str(recovery) and hold["verdict"] == "degraded"
        assert "relapsed" in flow_run(recovery).tags
        marked = latest_artifact("recovery-sandbox-follow-up")
        assert marked.flow_run_id == recovery and str(marked.data).startswith("# Relapsed")
        report = latest_artifact("diagnosis-sandbox")
        assert report.flow_run_id == follow and "relapsed" in str(report.data)

        # The automation's next recovery asks for approval although it is configured not
        # to; unanswered, it applies nothing.
        healed.client.reset_request_counts()
        trigger = f"prefect.flow-run.{follow}"
        state, result = recover(dry_run=False, triggered_by=trigger, require_approval=False,
                                approval_timeout_seconds=3, approval_poll_seconds=1,
                                relapse_check_delay_seconds=None)  # fmt: skip
        created.append(run_id(state))
        assert state.name == "Rejected", result.message
        assert result.recovery_log[0].action == "stand_down"
        assert "Approval required: recovery recover-sandbox-apply" in result.recovery_log[0].details
        assert "relapsed" in result.recovery_log[0].details
        assert sum(resets(healed).values()) == 0

        # Once an operator clears the hold, the automation applies directly again.
        from prefect.variables import Variable

        Variable.unset("hokusai-relapse-sandbox")
        state, result = recover(dry_run=False, triggered_by=trigger,
                                relapse_check_delay_seconds=None)  # fmt: skip
        created.append(run_id(state))
        assert state.name in APPLIED, result.message
        assert sum(resets(healed).values()) > 0
        wait_for(lambda: healed.client.converged(), 60, "the sandbox to converge")
    finally:
        clean(created)
