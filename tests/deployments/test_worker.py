"""A run started through the API, as the UI does, is picked up by a real process worker."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandbox.client import SandboxProcess
from tests.deployments.servers import Worker
from tests.deployments.test_deploy import run
from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def worker(prefect_server: str, sandbox_env: dict[str, str], tmp_path: Path) -> Iterator[Path]:
    env = {**os.environ, **sandbox_env, "PREFECT_API_URL": prefect_server}
    assert run(env, sys.executable, "-m", "deployments", "setup").returncode == 0
    deploy = run(env, sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--name",
                 "diagnose-sandbox")  # fmt: skip
    assert deploy.returncode == 0, deploy.stderr[-2000:]
    worker = Worker(env, tmp_path / "worker.log", limit=2)
    yield worker.log
    worker.stop()


def start_diagnosis() -> Any:
    from prefect import get_client

    async def go() -> Any:
        async with get_client() as client:
            deployment = await client.read_deployment_by_name(
                "diagnose-service-health/diagnose-sandbox"
            )
            return await client.create_flow_run_from_deployment(deployment.id)

    return asyncio.run(go())


def final_state(run_id: Any) -> Any:
    from prefect import get_client

    async def state() -> Any:
        async with get_client() as client:
            return (await client.read_flow_run(run_id)).state

    return wait_for(lambda: (s := asyncio.run(state())) and s.is_final() and s, 180, "the run")


def test_ui_style_run_completes_through_the_worker(worker: Path, healed: SandboxProcess) -> None:
    from prefect.artifacts import Artifact

    flow_run = start_diagnosis()
    final = final_state(flow_run.id)
    assert final.name == "Healthy", final
    artifact: Any = asyncio.run(Artifact.aget("diagnosis-sandbox"))
    assert artifact is not None and artifact.flow_run_id == flow_run.id


def test_a_critical_diagnosis_ends_cleanly_in_the_worker(
    worker: Path, healed: SandboxProcess
) -> None:
    """Critical is the run's verdict, not a crash: no traceback, exit 0, state as ever."""
    from prefect.artifacts import Artifact

    healed.client.fault("ecs-tasks-crashed", all=True)
    wait_for(lambda: healed.client.status()["services"]["hokusai-registry"]["running"] == 0,
             15, "crash")  # fmt: skip
    flow_run = start_diagnosis()
    final = final_state(flow_run.id)
    assert final.name == "Critical" and final.is_failed(), final
    assert (final.message or "").startswith("sandbox: critical - "), final.message
    artifact: Any = asyncio.run(Artifact.aget("diagnosis-sandbox"))
    assert artifact is not None and artifact.flow_run_id == flow_run.id

    # The Logs tab tells the story: one line per check, the verdict with its reasons.
    # (The run's process sends its lines in batches: the last may land after its state.)
    def story() -> list[str] | None:
        lines = run_logs(flow_run.id)
        checked = any(line.startswith("Check api_connectivity: unhealthy - ") for line in lines)
        judged = any(line.startswith("Verdict for sandbox: critical - ") for line in lines)
        return lines if checked and judged else None

    wait_for(story, 60, "the check and verdict lines in the run's logs")
    # The worker logs the end of the run's process once it is reaped (under the name the
    # run had when it was submitted: the only run this worker ran).
    assert flow_run_named(flow_run.id).startswith("diagnose-sandbox-")
    wait_for(lambda: re.search(r"Process for flow run '.*' exited", worker.read_text()), 60,
             "the worker to reap the run")  # fmt: skip
    log = worker.read_text()
    assert re.search(r"Process for flow run '.*' exited cleanly", log), log[-3000:]
    assert "Traceback" not in log and "Unexpected result" not in log, log[-3000:]


def flow_run_named(run_id: Any) -> str:
    from prefect import get_client

    async def go() -> str:
        async with get_client() as client:
            return str((await client.read_flow_run(run_id)).name)

    return asyncio.run(go())


def run_logs(run_id: Any) -> list[str]:
    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    async def go() -> list[str]:
        async with get_client() as client:
            logs = await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
        return [log.message for log in logs]

    return asyncio.run(go())


def test_a_fleet_deployed_from_code_ending_critical_ends_cleanly(
    worker: Path, healed: SandboxProcess
) -> None:
    """The fleet deployed without job variables of its own (from code or the API, as
    bench/fleet.py does; no prefect.yaml block) runs with the pool's defaults, which
    `deployments setup` sets to the project's engine: its Critical verdict, a Failed state
    carrying the fleet's table, ends the process cleanly (Prefect's own engine raised
    "TypeError: Unexpected result for failed state ... list" and exited 1)."""
    from prefect import get_client

    healed.client.fault("ecs-tasks-crashed", all=True)
    wait_for(lambda: healed.client.status()["services"]["hokusai-registry"]["running"] == 0,
             15, "crash")  # fmt: skip

    async def deploy_and_start() -> Any:
        async with get_client() as client:
            flow_id = await client.create_flow_from_name("diagnose-fleet")
            deployment_id = await client.create_deployment(
                flow_id=flow_id, name="fleet-from-code", work_pool_name="hokusai-process",
                entrypoint="flows/fleet.py:diagnose_fleet", enforce_parameter_schema=False,
                path=str(ROOT), pull_steps=[{
                    "prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}
                }],
            )  # fmt: skip
            return await client.create_flow_run_from_deployment(
                deployment_id, parameters={"targets": ["sandbox"], "use_deployments": False}
            )

    flow_run = asyncio.run(deploy_and_start())
    final = final_state(flow_run.id)
    assert final.name == "Critical" and final.is_failed(), final
    wait_for(lambda: re.search(r"Process for flow run '.*' exited", worker.read_text()), 60,
             "the worker to reap the run")  # fmt: skip
    log = worker.read_text()
    assert re.search(r"Process for flow run '.*' exited cleanly", log), log[-3000:]
    assert "Traceback" not in log and "Unexpected result" not in log, log[-3000:]
