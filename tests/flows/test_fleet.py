"""The fleet flow: five targets, one of them broken, diagnosed in one run (as subflows)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import yaml

from flows.fleet import diagnose_fleet
from sandbox.client import SandboxProcess
from sandbox.ports import free_port


def test_fleet_summary_names_each_verdict(
    prefect_server: str,
    healed: SandboxProcess,
    sandbox_env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    info = healed.info
    base = {
        "api_url": info["api_url"],
        "mlflow_url": info["mlflow_url"],
        "ecs_cluster": info["ecs_cluster"],
        "ecs_services": info["ecs_services"],
        "mlflow_ecs_service": info["mlflow_ecs_service"],
        "target_groups": info["target_groups"],
        "mlflow_target_groups": ["hokusai-mlflow-tg"],
        "rds_instances": info["rds_instances"],
        "alarm_prefix": info["alarm_prefix"],
        # As the sandbox entry of targets.yaml: a shared small machine, loose datastore timing.
        "thresholds": {"db_slow_s": 3.0, "redis_slow_ms": 500.0},
    }
    targets: dict[str, Any] = {f"sandbox-{i}": dict(base) for i in range(1, 5)}
    # The fifth name points at an address where nothing answers: its API is unreachable.
    targets["sandbox-5"] = {**base, "api_url": f"http://127.0.0.1:{free_port()}"}
    path = tmp_path / "targets.yaml"
    path.write_text(yaml.safe_dump({"targets": targets}))
    monkeypatch.setenv("HOKUSAI_TARGETS_FILE", str(path))
    for name in ("API_URL", "MLFLOW_TRACKING_URI"):  # the file decides per target
        monkeypatch.delenv(name)

    async def go() -> Any:
        return await diagnose_fleet(
            targets=sorted(targets), max_concurrency=3, use_deployments=False, return_state=True
        )

    state = asyncio.run(go())
    assert state.name == "Critical" and state.is_failed()
    rows = {r["target"]: r for r in state.result(raise_on_failure=False)}
    assert {t: r["verdict"] for t, r in rows.items()} == {
        "sandbox-1": "healthy",
        "sandbox-2": "healthy",
        "sandbox-3": "healthy",
        "sandbox-4": "healthy",
        "sandbox-5": "critical",
    }, rows
    assert all(r["how"] == "subflow" for r in rows.values())

    from prefect.artifacts import Artifact

    table = asyncio.run(Artifact.aget("fleet-diagnosis"))
    assert table is not None and "sandbox-5" in str(table.data)
