"""The recover flow end to end: a real Prefect server, the real sandbox, real ECS rollouts."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest

from flows.recover import recover_service
from sandbox.client import SandboxProcess
from service_health.recovery import RecoveryResult
from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parents[2]
REGISTRY, MLFLOW = "hokusai-registry", "hokusai-mlflow"


def recover(**params: Any) -> tuple[Any, RecoveryResult]:
    params = {"target": "sandbox", "cooldown_seconds": 0, "stabilization_timeout_seconds": 90,
              **params}  # fmt: skip

    async def go() -> Any:
        return await recover_service(return_state=True, **params)

    state = asyncio.run(go())
    result = state.result(raise_on_failure=False)
    assert isinstance(result, RecoveryResult), state
    return state, result


def ecs(sandbox: SandboxProcess) -> Any:
    info = sandbox.info
    return boto3.client(
        "ecs",
        region_name=info["aws_region"],
        endpoint_url=info["aws_endpoint_url"],
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def deployments_started(sandbox: SandboxProcess, service: str) -> int:
    """New deployments of `service` since the sandbox started (its own count: ECS's service
    events keep only the latest 100 messages, and a session makes more)."""
    count: int = sandbox.client.status()["services"][service]["deployments_started"]
    return count


def breaker_states(sandbox: SandboxProcess) -> dict[str, str]:
    replicas = sandbox.client.status()["services"][REGISTRY]["replicas"]
    return {
        r["address"]: httpx.get(f"http://{r['address']}/health/mlflow", timeout=10).json()[
            "circuit_breaker_state"
        ]
        for r in replicas
    }


def resets(sandbox: SandboxProcess) -> dict[str, int]:
    return {
        replica: counts.get("POST /health/mlflow/reset", 0)
        for replica, counts in sandbox.client.request_counts().items()
    }


@pytest.fixture
def env(prefect_server: str, sandbox_env: dict[str, str], healed: SandboxProcess) -> dict[str, str]:
    return {**sandbox_env, "PREFECT_API_URL": prefect_server}


def test_stuck_breaker_dry_run_changes_nothing_then_recovery_resets_it(
    env: dict[str, str], healed: SandboxProcess, tmp_path: Path
) -> None:
    healed.client.fault("breaker-stuck-open")
    healed.client.reset_request_counts()
    started = deployments_started(healed, REGISTRY)
    state, result = recover(dry_run=True)
    assert state.name == "Planned"
    assert [e.status.value for e in result.recovery_log] and all(
        e.dry_run for e in result.recovery_log
    )
    assert set(breaker_states(healed).values()) == {"OPEN"}
    assert sum(resets(healed).values()) == 0
    assert deployments_started(healed, REGISTRY) == started

    out = tmp_path / "recovery.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "recover_service.py"), "--target", "sandbox",
         "--output", str(out)],
        capture_output=True, text=True, timeout=240, env={**os.environ, **env}, cwd=ROOT,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    data = json.loads(out.read_text())
    assert {"start_time", "dry_run", "recovery_log", "overall_success", "duration_seconds"} <= set(
        data
    )
    assert data["overall_success"] is True and data["dry_run"] is False
    assert {"timestamp", "action", "status", "details"} <= set(data["recovery_log"][0])
    assert set(breaker_states(healed).values()) == {"CLOSED"}
    assert deployments_started(healed, REGISTRY) == started  # a reset needs no restart
    assert healed.info["api_key"] not in run.stdout + run.stderr + out.read_text()
    # The stabilisation wait showed its progress, and ended at 100 %.
    from prefect.artifacts import Artifact

    progress = asyncio.run(Artifact.aget("recovery-wait-for-stabilization-sandbox"))
    assert progress is not None and progress.type == "progress", progress
    assert float(progress.data) == 100.0  # type: ignore[arg-type]


def test_stuck_on_one_replica_resets_only_that_one(
    healed: SandboxProcess, env: dict[str, str]
) -> None:
    (stuck,) = healed.client.fault("breaker-stuck-open", replica=1)["replicas"]
    healed.client.reset_request_counts()
    state, _ = recover(dry_run=False)
    assert state.name == "Recovered"
    counts = resets(healed)
    assert counts[stuck] == 1
    assert sum(counts.values()) == 1
    # Each diagnosis of the run (the plan's, the verification's, and one started early by
    # the wait and discarded if its streak broke) is one task run with the checks inside
    # it, not a task run per check.
    names = [t.name for t in task_runs(state.state_details.flow_run_id)]
    assert sum(n.startswith("diagnose-") for n in names) >= 2, names
    assert not [n for n in names if n.startswith("check-") and "alb-targets" not in n], names


def task_runs(flow_run_id: Any) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async def read() -> list[Any]:
        async with get_client() as client:
            runs: list[Any] = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
            return runs

    return asyncio.run(read())


def test_two_recoveries_at_once_apply_once(healed: SandboxProcess, env: dict[str, str]) -> None:
    healed.client.fault("ecs-tasks-crashed")
    wait_for(lambda: healed.client.status()["services"][REGISTRY]["running"] == 1, 10, "crash")
    before = deployments_started(healed, REGISTRY)

    async def both() -> list[Any]:
        params: dict[str, Any] = {
            "target": "sandbox",
            "dry_run": False,
            "cooldown_seconds": 0,
            "stabilization_timeout_seconds": 90,
            "return_state": True,
        }
        return list(await asyncio.gather(recover_service(**params), recover_service(**params)))

    states = asyncio.run(both())
    assert sorted(s.name for s in states) == ["Already healthy", "Recovered"]
    assert deployments_started(healed, REGISTRY) == before + 1


def test_cooldown_and_cap_are_honoured(healed: SandboxProcess, env: dict[str, str]) -> None:
    healed.client.fault("ecs-tasks-crashed")
    wait_for(lambda: healed.client.status()["services"][REGISTRY]["running"] == 1, 10, "crash")
    state, _ = recover(dry_run=False)  # restarts the registry: the cooldown starts now
    assert state.name == "Recovered"
    healed.client.fault("ecs-tasks-crashed")
    wait_for(lambda: healed.client.status()["services"][REGISTRY]["running"] == 1, 10, "crash")
    before = deployments_started(healed, REGISTRY)
    state, result = recover(dry_run=False, cooldown_seconds=600, stabilization_timeout_seconds=5)
    assert state.name != "Recovered"
    assert any("cooldown" in e.details for e in result.recovery_log if e.status.value == "skipped")
    state, result = recover(dry_run=False, max_restarts=0, stabilization_timeout_seconds=5)
    assert any("restart" in e.details for e in result.recovery_log if e.status.value == "skipped")
    assert deployments_started(healed, REGISTRY) == before


def _run_in_thread(**params: Any) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def target() -> None:
        out["state"], out["result"] = recover(**params)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, out


def _paused_run_id(started_after: float) -> Any:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    async def find() -> Any:
        async with get_client() as client:
            runs = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))
                )
            )
        fresh = [r for r in runs if r.start_time and r.start_time.timestamp() >= started_after - 5]
        return fresh[0].id if fresh else None

    return asyncio.run(find())


@pytest.mark.parametrize("answer", [True, False])
def test_approval_gates_the_plan(healed: SandboxProcess, env: dict[str, str], answer: bool) -> None:
    from prefect.flow_runs import resume_flow_run

    healed.client.fault("breaker-stuck-open")
    healed.client.reset_request_counts()
    started = time.time()
    thread, out = _run_in_thread(dry_run=False, require_approval=True, approval_poll_seconds=1)
    run_id = wait_for(lambda: _paused_run_id(started), 60, "the recovery to wait for approval")
    assert sum(resets(healed).values()) == 0  # nothing applied while waiting
    resume_flow_run(run_id, run_input={"approve": answer, "note": "test"})
    thread.join(120)
    assert out["state"].name == ("Recovered" if answer else "Rejected")
    assert (sum(resets(healed).values()) > 0) is answer


def test_approval_timeout_rejects(healed: SandboxProcess, env: dict[str, str]) -> None:
    healed.client.fault("breaker-stuck-open")
    healed.client.reset_request_counts()
    state, result = recover(dry_run=False, require_approval=True, approval_timeout_seconds=2,
                            approval_poll_seconds=1)  # fmt: skip
    assert state.name == "Rejected"
    assert any("timed out" in e.details for e in result.recovery_log)
    assert sum(resets(healed).values()) == 0


def test_aws_throttling_is_ridden_out_without_a_double_deployment(
    healed: SandboxProcess, env: dict[str, str]
) -> None:
    healed.client.fault("ecs-tasks-crashed")
    wait_for(lambda: healed.client.status()["services"][REGISTRY]["running"] == 1, 10, "crash")
    healed.client.fault("aws-throttling")
    before = deployments_started(healed, REGISTRY)
    state, result = recover(dry_run=False)
    assert state.name == "Recovered", result.message
    healed.client.heal("aws-throttling")
    assert deployments_started(healed, REGISTRY) == before + 1


def test_an_approved_plan_is_applied_only_while_it_still_holds() -> None:
    """Pure: what the Resume form shows, and when the re-derived plan differs from it."""
    from datetime import UTC, datetime

    from service_health.approval import approval_description, plan_changed
    from service_health.models import Verdict
    from service_health.recovery import RecoveryPlan, RecoveryStep, StepKind

    restart = RecoveryStep(number=1, kind=StepKind.FORCE_DEPLOYMENT, reason="0/2 running",
                           service=REGISTRY, expected_deployment_id="d1")  # fmt: skip
    plan = RecoveryPlan(target="sandbox", created_at="", diagnosis_timestamp="",
                        verdict=Verdict.CRITICAL, steps=[restart], cooldown_s=0,
                        max_restarts=2)  # fmt: skip
    form = approval_description(plan, datetime(2026, 12, 1, 23, 0, tzinfo=UTC))
    assert f"1. **Force a new deployment ({REGISTRY})**: 0/2 running" in form
    assert "2026-12-01 23:00:00 UTC" in form
    # Another deployment became primary meanwhile: still the restart that was approved.
    moved = restart.model_copy(update={"expected_deployment_id": "d2"})
    assert plan_changed(plan, plan.model_copy(update={"steps": [moved]})) is None
    # A different service now: not what was approved.
    other = restart.model_copy(update={"service": MLFLOW})
    why = plan_changed(plan, plan.model_copy(update={"steps": [other]}))
    assert why is not None and f"Force a new deployment ({MLFLOW})" in why
    assert plan_changed(plan, plan.model_copy(update={"steps": []})) is not None
