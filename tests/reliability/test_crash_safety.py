"""Crash safety: a recovery killed while applying, started again, restarts nothing twice;
a diagnosis killed mid-run leaves nothing behind that affects the next one."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import psutil
import pytest

from sandbox.client import SandboxProcess
from tests.conftest import converged
from tests.flows.test_diagnose_flow import diagnose
from tests.flows.test_recover_flow import deployments_started, recover
from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parents[2]
REGISTRY = "hokusai-registry"


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


def task_running(name: str) -> bool:
    """Whether a task run called `name` is running (in any flow run of the session)."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        TaskRunFilter,
        TaskRunFilterName,
        TaskRunFilterState,
        TaskRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    async def go() -> bool:
        async with get_client() as client:
            runs = await client.read_task_runs(
                task_run_filter=TaskRunFilter(
                    name=TaskRunFilterName(like_=name),
                    state=TaskRunFilterState(
                        type=TaskRunFilterStateType(any_=[StateType.RUNNING]), name=None
                    ),
                )
            )
        return bool(runs)

    return asyncio.run(go())


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
    proc = script(env, "diagnose_service_health.py", "--deadline", "60")
    me = psutil.Process(proc.pid)
    wait_for(lambda: task_running("check-api-connectivity%"), 90, "the diagnosis to be checking")
    children = me.children(recursive=True)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode != 0
    wait_for(lambda: not any(c.is_running() for c in children), 10, "children to exit")
    healed.client.heal("registry-hung")
    wait_for(lambda: converged(healed), 60, "the registry's targets to be healthy again")
    state, report = diagnose(deadline_seconds=20)
    assert state.name == "Healthy", (report.critical_issues, report.warnings)
