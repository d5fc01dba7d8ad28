"""Crash safety: a recovery killed while applying, started again, restarts nothing twice;
a diagnosis killed mid-run ends Crashed in Prefect, leaves no process or unfinished task
run behind, and the next run is unaffected."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

import psutil
import pytest
from prefect import get_client
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterStartTime,
    TaskRunFilter,
    TaskRunFilterName,
    TaskRunFilterState,
    TaskRunFilterStateType,
)
from prefect.client.schemas.objects import FlowRun, StateType, TaskRun

from sandbox.client import SandboxProcess
from tests.conftest import converged
from tests.flows.test_diagnose_flow import diagnose
from tests.flows.test_recover_flow import deployments_started, recover
from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parents[2]
REGISTRY = "hokusai-registry"
UNFINISHED = {StateType.RUNNING, StateType.PENDING, StateType.SCHEDULED}
T = TypeVar("T")


@pytest.fixture
def env(prefect_server: str, sandbox_env: dict[str, str]) -> dict[str, str]:
    return {**os.environ, **sandbox_env, "PREFECT_API_URL": prefect_server}


def script(env: dict[str, str], name: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / name), "--target", "sandbox", *args],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def rolling(sandbox: SandboxProcess) -> bool:
    deployments = sandbox.client.status()["services"][REGISTRY]["deployments"]
    return len(deployments) == 2 and deployments[0]["rollout_state"] == "IN_PROGRESS"


def _prefect(call: Callable[[PrefectClient], Awaitable[T]]) -> T:
    async def go() -> T:
        async with get_client() as client:
            return await call(client)

    return asyncio.run(go())


def flow_runs_with_task_running(name: str, since: datetime | None = None) -> set[UUID]:
    """The flow runs (started after `since`) in which a task run called `name` is running."""
    runs = _prefect(
        lambda client: client.read_task_runs(
            task_run_filter=TaskRunFilter(
                name=TaskRunFilterName(like_=name),
                state=TaskRunFilterState(
                    type=TaskRunFilterStateType(any_=[StateType.RUNNING]), name=None
                ),
            ),
            flow_run_filter=FlowRunFilter(
                start_time=FlowRunFilterStartTime(after_=since) if since else None
            ),
        )
    )
    return {r.flow_run_id for r in runs if r.flow_run_id is not None}


def task_running(name: str) -> bool:
    """Whether a task run called `name` is running (in any flow run of the session)."""
    return bool(flow_runs_with_task_running(name))


def flow_run(run_id: UUID) -> FlowRun:
    return _prefect(lambda client: client.read_flow_run(run_id))


def task_runs_of(run_id: UUID) -> list[TaskRun]:
    return _prefect(
        lambda client: client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id]))
        )
    )


def test_recovery_killed_while_applying_is_not_applied_twice(
    healed: SandboxProcess, env: dict[str, str]
) -> None:
    # New registry tasks fail their health checks: the forced deployment keeps rolling.
    healed.client.fault("ecs-rollout-stalled")
    healed.client.fault("ecs-tasks-crashed")
    wait_for(lambda: healed.client.status()["services"][REGISTRY]["running"] == 1, 15, "crash")
    before = deployments_started(healed, REGISTRY)

    first = script(env, "recover_service.py", "--stabilization-timeout", "120", "--cooldown", "0")
    try:
        wait_for(lambda: rolling(healed), 120, "the first recovery to force a deployment")
    finally:
        first.send_signal(signal.SIGTERM)
        output, _ = first.communicate(timeout=60)
    assert first.returncode != 0, output
    assert deployments_started(healed, REGISTRY) == before + 1

    # Started again while the deployment still rolls: it plans to wait, not to restart.
    _, planned = recover(dry_run=True)
    kinds = [(s.kind.value, s.service) for s in planned.plan.steps]
    assert ("wait_for_rollout", REGISTRY) in kinds, kinds
    assert ("force_deployment", REGISTRY) not in kinds, kinds

    out: dict[str, Any] = {}

    def again() -> None:
        out["state"], out["result"] = recover(dry_run=False)

    second = threading.Thread(target=again, daemon=True)
    second.start()
    wait_for(lambda: task_running("wait-for-rollout%"), 90, "the second recovery to wait")
    healed.client.heal("ecs-rollout-stalled")  # the deployment can now complete
    second.join(180)
    assert out["state"].name == "Recovered", out["result"].message
    assert deployments_started(healed, REGISTRY) == before + 1  # one restart in all


def test_diagnosis_killed_mid_run_leaves_nothing_behind(
    healed: SandboxProcess, env: dict[str, str]
) -> None:
    healed.client.fault("registry-hung")  # the diagnosis waits on the registry
    started = datetime.now(UTC)
    proc = script(env, "diagnose_service_health.py", "--deadline", "60")
    checking = partial(flow_runs_with_task_running, "check-api-connectivity%", started)
    # The script's own run, caught mid-check (asking again could miss it: between a
    # timed-out try and its retry the check is not running).
    (killed,) = wait_for(checking, 90, "the diagnosis to be checking")
    # The script and whatever it started: never empty, the script itself is in it.
    tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode != 0, output
    wait_for(lambda: not any(p.is_running() for p in tree), 10, "its processes to exit")

    # The killed run ends in a final state that says so; none of its task runs is left
    # running or pending (a run shown as still running would mislead the on-call engineer).
    run = flow_run(killed)
    assert run.state is not None and run.state.type == StateType.CRASHED, run.state
    tasks = task_runs_of(killed)
    assert any(t.name.startswith("check-api-connectivity") for t in tasks), tasks
    left = [(t.name, t.state_type) for t in tasks if t.state_type in UNFINISHED]
    assert not left, left

    healed.client.heal("registry-hung")
    wait_for(lambda: converged(healed), 60, "the registry's targets to be healthy again")
    state, report = diagnose(deadline_seconds=20)
    assert state.name == "Healthy", (report.critical_issues, report.warnings)
    next_run = flow_run(state.state_details.flow_run_id)
    assert next_run.id != killed and next_run.state_type == StateType.COMPLETED
    # Every check ran in the next run, none cut short by anything the killed one left.
    assert all(c.status.value == "healthy" for c in report.checks.values()), report.checks
    assert flow_run(killed).state_type == StateType.CRASHED  # and it stays what it was
