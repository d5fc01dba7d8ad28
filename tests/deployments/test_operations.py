"""Day-to-day operations end to end: deployed flows run by a real process worker, automatic
remediation through the deployed automation, approval through the API, the fleet fanning
out with run_deployment."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
import yaml

from flows.fleet import diagnose_fleet
from sandbox.client import SandboxProcess
from sandbox.ports import free_port
from sandbox.statefiles import env_lines
from tests.conftest import converged
from tests.deployments.test_deploy import run
from tests.flows.test_recover_flow import breaker_states, deployments_started
from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parents[2]
DIAGNOSE = "diagnose-service-health/diagnose-sandbox"
RECOVER = "recover-service/recover-sandbox"
REGISTRY = "hokusai-registry"


def deploy(env: dict[str, str], *args: str) -> None:
    done = run(env, sys.executable, "-m", "prefect", "--no-prompt", "deploy", *args)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


@pytest.fixture(scope="module")
def worker(
    prefect_server: str, sandbox: SandboxProcess, tmp_path_factory: Any
) -> Iterator[dict[str, str]]:
    """The pool, the sandbox's diagnosis and recovery deployments (with the automation),
    and one process worker with the environment a worker next to the sandbox has."""
    env = {**env_lines(sandbox.info), "PREFECT_API_URL": prefect_server}
    assert run(env, sys.executable, "-m", "deployments", "setup").returncode == 0
    deploy(env, "--name", "diagnose-sandbox", "--name", "recover-sandbox")
    log = (tmp_path_factory.mktemp("worker") / "worker.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefect", "worker", "start", "--pool", "hokusai-process",
         "--limit", "6"],
        cwd=ROOT, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    yield env
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    log.close()


def client_call(call: Any) -> Any:
    from prefect import get_client

    async def go() -> Any:
        async with get_client() as client:
            return await call(client)

    return asyncio.run(go())


def start(deployment: str) -> UUID:
    """A run created through the API, as the UI (or a schedule) creates it."""

    async def go(client: Any) -> UUID:
        found = await client.read_deployment_by_name(deployment)
        return (await client.create_flow_run_from_deployment(found.id)).id

    result: UUID = client_call(go)
    return result


def flow_run(run_id: UUID) -> Any:
    return client_call(lambda client: client.read_flow_run(run_id))


def final_state(run_id: UUID, timeout: float = 180) -> Any:
    def done() -> Any:
        state = flow_run(run_id).state
        return state if state is not None and state.is_final() else None

    return wait_for(done, timeout, f"flow run {run_id} to finish")


def runs_of(deployment: str) -> list[Any]:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    async def go(client: Any) -> list[Any]:
        found = await client.read_deployment_by_name(deployment)
        return list(
            await client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[found.id]))
            )
        )

    result: list[Any] = client_call(go)
    return result


def test_critical_diagnosis_starts_one_recovery_that_waits_for_approval(
    worker: dict[str, str], healed: SandboxProcess
) -> None:
    from prefect.flow_runs import resume_flow_run

    earlier = {r.id for r in runs_of(RECOVER)}

    def new_recoveries() -> list[Any]:
        return [r for r in runs_of(RECOVER) if r.id not in earlier]

    healed.client.fault("ecs-tasks-crashed", all=True)
    wait_for(lambda: healed.client.status()["services"][REGISTRY]["running"] == 0, 15, "crash")
    restarts = deployments_started(healed, REGISTRY)

    assert final_state(start(DIAGNOSE)).name == "Critical"
    paused = wait_for(
        lambda: [r for r in new_recoveries() if r.state and r.state.is_paused()],
        120,
        "the automation's recovery run to wait for approval",
    )
    (pending,) = paused
    assert pending.parameters["require_approval"] is True
    assert pending.parameters["dry_run"] is False

    # Another critical diagnosis while the plan waits: no second recovery takes charge.
    assert final_state(start(DIAGNOSE)).name == "Critical"
    others = wait_for(
        lambda: [r for r in new_recoveries() if r.id != pending.id],
        120,
        "the automation to react to the second critical diagnosis",
    )
    (other,) = others
    assert final_state(other.id, 120).name == "Skipped"
    assert flow_run(pending.id).state.is_paused()
    assert deployments_started(healed, REGISTRY) == restarts  # nothing applied yet

    resume_flow_run(pending.id, run_input={"approve": True, "note": "approved by the test"})
    assert final_state(pending.id, 240).name == "Recovered"
    assert deployments_started(healed, REGISTRY) == restarts + 1
    wait_for(lambda: converged(healed), 60, "the sandbox to be healthy")
    assert [r.id for r in new_recoveries()] and len(new_recoveries()) == 2


def test_remediation_verdicts_and_approval_are_configurable(
    worker: dict[str, str], healed: SandboxProcess, tmp_path: Path
) -> None:
    """React to Degraded too and apply directly: an edit of prefect.yaml and a redeploy."""
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    (recover,) = [d for d in spec["deployments"] if d["name"] == "recover-sandbox"]
    (trigger,) = recover["triggers"]
    trigger["expect"] = ["prefect.flow-run.Critical", "prefect.flow-run.Degraded"]
    trigger["parameters"]["require_approval"] = False
    variant = tmp_path / "prefect.yaml"
    variant.write_text(yaml.safe_dump(spec))
    deploy(worker, "--prefect-file", str(variant), "--name", "recover-sandbox")
    try:
        earlier = {r.id for r in runs_of(RECOVER)}
        healed.client.fault("breaker-stuck-open")
        assert final_state(start(DIAGNOSE)).name == "Degraded"
        (started,) = wait_for(
            lambda: [r for r in runs_of(RECOVER) if r.id not in earlier],
            120,
            "the automation to react to a degraded diagnosis",
        )
        assert started.parameters["require_approval"] is False
        assert final_state(started.id, 180).name == "Recovered"  # applied without a pause
        assert set(breaker_states(healed).values()) == {"CLOSED"}
    finally:
        deploy(worker, "--name", "recover-sandbox")  # back to prefect.yaml as committed


def test_fleet_fans_out_to_deployments_where_they_exist(
    worker: dict[str, str],
    healed: SandboxProcess,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Target `sandbox` has a deployment (run by the worker); `nowhere` has none (a subflow)."""
    targets = yaml.safe_load((ROOT / "targets.yaml").read_text())
    targets["targets"]["sandbox"]["api_url"] = healed.info["api_url"]
    targets["targets"]["nowhere"] = {"api_url": f"http://127.0.0.1:{free_port()}"}
    path = tmp_path / "targets.yaml"
    path.write_text(yaml.safe_dump(targets))
    monkeypatch.setenv("HOKUSAI_TARGETS_FILE", str(path))
    for name in ("API_URL", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)

    async def go() -> Any:
        return await diagnose_fleet(targets=["sandbox", "nowhere"], return_state=True)

    state = asyncio.run(go())
    assert state.name == "Critical"
    rows = {r["target"]: r for r in state.result(raise_on_failure=False)}
    assert rows["sandbox"]["how"] == "deployment" and rows["sandbox"]["state"] == "Healthy"
    assert rows["nowhere"]["how"] == "subflow" and rows["nowhere"]["verdict"] == "critical"
    assert flow_run(UUID(rows["sandbox"]["run"])).deployment_id is not None
