"""A recovery waiting for approval survives a restart of the Prefect server: its own server
(restarted as an upgrade would), a real process worker, the real sandbox."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from sandbox.client import SandboxProcess
from tasks.locking import lock_name
from tests.conftest import converged
from tests.deployments.servers import PrefectServer, Worker
from tests.deployments.test_deploy import run
from tests.flows.test_recover_flow import deployments_started
from tests.helpers import wait_for

RECOVER = "recover-service/recover-sandbox"
REGISTRY = "hokusai-registry"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[PrefectServer]:
    home = tmp_path / "server"
    home.mkdir()
    server = PrefectServer(home)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def worker(server: PrefectServer, sandbox_env: dict[str, str], tmp_path: Path) -> Iterator[Worker]:
    env = {**sandbox_env, "PREFECT_API_URL": server.url, "PREFECT_HOME": str(tmp_path)}
    assert run(env, sys.executable, "-m", "deployments", "setup").returncode == 0
    deploy = run(env, sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--name",
                 "recover-sandbox")  # fmt: skip
    assert deploy.returncode == 0, deploy.stdout[-2000:] + deploy.stderr[-2000:]
    worker = Worker(env, tmp_path / "worker.log")
    yield worker
    worker.stop()


def start(server: PrefectServer, **parameters: Any) -> UUID:
    async def go(client: Any) -> UUID:
        found = await client.read_deployment_by_name(RECOVER)
        params = {"target": "sandbox", "dry_run": False, "require_approval": True,
                  "approval_poll_seconds": 1, "cooldown_seconds": 0,
                  "stabilization_timeout_seconds": 150, **parameters}  # fmt: skip
        return (await client.create_flow_run_from_deployment(found.id, parameters=params)).id

    return server.call(go)


def state_of(server: PrefectServer, run_id: UUID) -> Any:
    async def go(client: Any) -> Any:
        return (await client.read_flow_run(run_id)).state

    return server.call(go)


def finished(server: PrefectServer, run_id: UUID, timeout: float) -> Any:
    def done() -> Any:
        state = state_of(server, run_id)
        return state if state is not None and state.is_final() else None

    return wait_for(done, timeout, f"flow run {run_id} to finish")


def approval_form(server: PrefectServer, run_id: UUID) -> str:
    """The description the Resume form shows (stored by the paused run as a run input)."""
    from prefect.input.run_input import keyset_from_paused_state

    async def go(client: Any) -> str:
        run = await client.read_flow_run(run_id)
        keyset = keyset_from_paused_state(run.state)
        return str(await client.read_flow_run_input(run_id, keyset["description"]))

    return server.call(go)


def recovery_log(server: PrefectServer, run_id: UUID) -> list[dict[str, Any]]:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async def go(client: Any) -> Any:
        found = await client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["recovery-sandbox-log"]))
        )
        (mine,) = [a for a in found if a.flow_run_id == run_id]
        return mine.data

    data = server.call(go)
    return list(json.loads(data) if isinstance(data, str) else data)


def test_a_paused_recovery_survives_a_server_restart(
    server: PrefectServer, worker: Worker, healed: SandboxProcess
) -> None:
    from prefect.flow_runs import resume_flow_run
    from prefect.settings import PREFECT_API_URL, temporary_settings

    healed.client.fault("ecs-tasks-crashed", all=True)
    wait_for(lambda: healed.client.status()["services"][REGISTRY]["running"] == 0, 15, "crash")
    before = deployments_started(healed, REGISTRY)

    pending = start(server)
    wait_for(lambda: (s := state_of(server, pending)) and s.is_paused(), 180, "approval wait")
    form = approval_form(server, pending)
    assert f"Force a new deployment ({REGISTRY})" in form, form
    # The run gives up its lease once the server reads it Paused (tasks/locking.py). This
    # server keeps leases in memory: restarted before that, it would lose the lease and
    # keep the slot taken (production keeps leases in Redis, where they outlive it).
    wait_for(lambda: slots_taken(server) == 0, 30, "the paused run to give up its lease")

    server.stop()
    server.start()
    assert state_of(server, pending).is_paused()

    # One recovery per target still holds: a second one stands aside, doing nothing.
    other = start(server, lock_timeout_seconds=5)
    skipped = finished(server, other, 180)
    assert skipped.name == "Skipped" and "waiting for approval" in (skipped.message or "")
    assert state_of(server, pending).is_paused()
    assert deployments_started(healed, REGISTRY) == before

    with temporary_settings({PREFECT_API_URL: server.url}):
        resume_flow_run(pending, run_input={"approve": True, "note": "after the restart"})
    final = finished(server, pending, 300)
    assert final.name == "Recovered", final
    assert deployments_started(healed, REGISTRY) == before + 1  # the approved plan, once
    log = recovery_log(server, pending)
    assert log[0]["action"] == "approval" and "after the restart" in log[0]["details"]
    restarted = [e["subject"] for e in log if e["action"] == "force_deployment"]
    assert REGISTRY in restarted and all(s in form for s in restarted)
    wait_for(lambda: converged(healed), 90, "the sandbox to be healthy")

    # What an operator reads afterwards: the run's name, the approval in its logs.
    assert run_name(server, pending).startswith("recover-sandbox-apply-")
    lines = run_logs(server, pending)
    assert any(line.startswith("Approval asked for the recovery plan of sandbox") for line in lines)
    assert any("Approval answered: approved (after the restart)" in line for line in lines)
    # The audit trail in the event feed: one event per mutating call, the approval, the end.
    # Events reach the feed a moment after the run's end: await the last one.
    wait_for(
        lambda: "hokusai.recovery.finished" in event_names(server, pending),
        30,
        "the recovery's events in the feed",
    )
    names = event_names(server, pending)
    assert names.count("hokusai.recovery.force_deployment.success") == 1, names
    assert "hokusai.recovery.approval-requested" in names and "hokusai.recovery.finished" in names
    # The worker lost the server for a while (its event subscriber says so); the run did not.
    out = worker.output()
    assert "Lease not found" not in out and "over-allocation" not in out, out[-3000:]
    assert "Unexpected result" not in out, out[-3000:]


def slots_taken(server: PrefectServer) -> int:
    """Slots in use of the target's one-slot concurrency limit (its recovery lock)."""

    async def go(client: Any) -> int:
        limit = await client.read_global_concurrency_limit_by_name(lock_name("sandbox"))
        return int(limit.active_slots)

    return server.call(go)


def event_names(server: PrefectServer, run_id: UUID) -> list[str]:
    """The names of the project's own events related to the run (hokusai.*), read back
    from the server's feed."""

    async def go(client: Any) -> list[str]:
        response = await client.request("POST", "/events/filter", json={
            "filter": {"any_resource": {"id": [f"prefect.flow-run.{run_id}"]},
                       "event": {"prefix": ["hokusai."]}},
            "limit": 50,
        })  # fmt: skip
        return [e["event"] for e in response.json()["events"]]

    return server.call(go)


def run_name(server: PrefectServer, run_id: UUID) -> str:
    async def go(client: Any) -> str:
        return str((await client.read_flow_run(run_id)).name)

    return server.call(go)


def run_logs(server: PrefectServer, run_id: UUID) -> list[str]:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    async def go(client: Any) -> list[str]:
        logs = await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
        return [log.message for log in logs]

    return server.call(go)
