"""prefect.yaml deploys from a clean checkout; what it declares exists on the server."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def run(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv), capture_output=True, text=True, timeout=300, cwd=ROOT,
        env={**os.environ, **env},
    )  # fmt: skip


def read_back() -> tuple[dict[str, Any], dict[str, Any]]:
    from prefect import get_client

    async def go() -> tuple[dict[str, Any], dict[str, Any]]:
        async with get_client() as client:
            deployments = {d.name: d for d in await client.read_deployments()}
            automations = {a.name: a for a in await client.read_automations()}
        return deployments, automations

    return asyncio.run(go())


def test_setup_then_deploy_all(prefect_server: str) -> None:
    env = {"PREFECT_API_URL": prefect_server}
    first = run(env, sys.executable, "-m", "deployments", "setup")
    assert first.returncode == 0, first.stderr
    again = run(env, sys.executable, "-m", "deployments", "setup")
    assert again.returncode == 0 and "already exists" in again.stdout  # idempotent

    deploy = run(env, sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all")
    assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]

    deployments, automations = read_back()
    assert {"diagnose-sandbox", "recover-sandbox", "contract-sandbox", "diagnose-production",
            "recover-production", "contract-production"} <= set(deployments)  # fmt: skip

    diagnose = deployments["diagnose-sandbox"]
    assert diagnose.work_pool_name == "hokusai-process"
    assert [(s.schedule.cron, s.active) for s in diagnose.schedules] == [("*/5 * * * *", True)]
    assert diagnose.parameters == {"target": "sandbox"}
    # The UI renders typed, described forms from the flow's signature.
    props = diagnose.parameter_openapi_schema["properties"]
    assert props["deadline_seconds"]["description"].startswith("Deadline")

    recover = deployments["recover-sandbox"]
    assert recover.parameters["dry_run"] is True  # a run started from the UI is safe
    assert recover.schedules == []
    assert recover.global_concurrency_limit is not None
    assert recover.global_concurrency_limit.limit == 1
    assert "require_approval" in recover.parameter_openapi_schema["properties"]

    contract = deployments["contract-sandbox"]
    assert [s.schedule.cron for s in contract.schedules] == ["0 6 * * *"]
    assert deployments["contract-production"].parameters["read_only"] is True
    assert not any(s.active for s in deployments["diagnose-production"].schedules)

    remediate = automations["remediate-sandbox"]
    assert remediate.enabled
    assert remediate.trigger.expect == {"prefect.flow-run.Critical"}
    (action,) = remediate.actions
    assert action.deployment_id == recover.id
    assert action.parameters == {
        "target": "sandbox", "dry_run": False, "require_approval": True,
        "lock_timeout_seconds": 5, "triggered_by": "{{ event.resource.id }}",
    }  # fmt: skip
    assert not automations["remediate-production"].enabled


def test_secret_blocks_from_the_environment(prefect_server: str) -> None:
    canary = "canary-api-key-7f3a"
    env = {"PREFECT_API_URL": prefect_server, "API_KEY": canary,
           "DATABASE_URL": "postgresql://u:canary-db-pw@db.example:5432/x"}  # fmt: skip
    result = run(env, sys.executable, "-m", "deployments", "secrets", "--target", "production")
    assert result.returncode == 0, result.stderr
    assert canary not in result.stdout + result.stderr
    assert "canary-db-pw" not in result.stdout + result.stderr

    from prefect.blocks.system import Secret

    stored: Any = asyncio.run(Secret.aload("hokusai-production-api-key"))
    assert stored.get() == canary
