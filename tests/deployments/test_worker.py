"""A run started through the API, as the UI does, is picked up by a real process worker."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandbox.client import SandboxProcess
from tests.deployments.test_deploy import run
from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def worker(prefect_server: str, sandbox_env: dict[str, str], tmp_path: Path) -> Iterator[None]:
    env = {**os.environ, **sandbox_env, "PREFECT_API_URL": prefect_server}
    assert run(env, sys.executable, "-m", "deployments", "setup").returncode == 0
    deploy = run(env, sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--name",
                 "diagnose-sandbox")  # fmt: skip
    assert deploy.returncode == 0, deploy.stderr[-2000:]
    log = (tmp_path / "worker.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefect", "worker", "start", "--pool", "hokusai-process",
         "--limit", "2"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    yield
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    log.close()


def test_ui_style_run_completes_through_the_worker(worker: None, healed: SandboxProcess) -> None:
    from prefect import get_client
    from prefect.artifacts import Artifact

    async def start() -> Any:
        async with get_client() as client:
            deployment = await client.read_deployment_by_name(
                "diagnose-service-health/diagnose-sandbox"
            )
            return await client.create_flow_run_from_deployment(deployment.id)

    flow_run = asyncio.run(start())

    async def state() -> Any:
        async with get_client() as client:
            return (await client.read_flow_run(flow_run.id)).state

    final = wait_for(lambda: (s := asyncio.run(state())) and s.is_final() and s, 180, "the run")
    assert final.name == "Healthy", final
    artifact: Any = asyncio.run(Artifact.aget("diagnosis-sandbox"))
    assert artifact is not None and artifact.flow_run_id == flow_run.id
