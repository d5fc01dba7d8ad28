"""One fleet run spread over the process workers of one pool: shards of its targets run as
runs of its own deployment, each on a worker of its own; every target is diagnosed once."""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
import yaml

from bench.fleet import deploy_fleet
from sandbox.client import SandboxProcess
from tests.deployments.servers import Worker, stop_workers
from tests.helpers import wait_for

POOL = "fleet-shards"
WORKERS = 4
TARGETS = [f"fleet-{i}" for i in range(1, 9)]


def _targets_file(sandbox: SandboxProcess, path: Path) -> None:
    info = sandbox.info
    base = {
        "api_url": info["api_url"],
        "mlflow_url": info["mlflow_url"],
        "ecs_cluster": info["ecs_cluster"],
        "ecs_services": info["ecs_services"],
        "mlflow_ecs_service": info["mlflow_ecs_service"],
        "target_groups": info["target_groups"],
        "rds_instances": info["rds_instances"],
        "alarm_prefix": info["alarm_prefix"],
    }
    path.write_text(yaml.safe_dump({"targets": {name: base for name in TARGETS}}))


async def _online_workers() -> int:
    from prefect import get_client

    async with get_client() as client:
        workers = await client.read_workers_for_work_pool(POOL)
    return sum(1 for w in workers if str(w.status).endswith("ONLINE"))


@pytest.fixture
def workers(
    prefect_server: str, sandbox_env: dict[str, str], healed: SandboxProcess, tmp_path: Path
) -> Iterator[UUID]:
    """WORKERS process workers, one run at a time each, on a pool of their own."""
    targets = tmp_path / "targets.yaml"
    _targets_file(healed, targets)
    deployment = asyncio.run(deploy_fleet(POOL, "fleet-shards"))
    env = {
        **os.environ,
        **sandbox_env,
        "PREFECT_API_URL": prefect_server,
        "HOKUSAI_TARGETS_FILE": str(targets),
        "PREFECT_WORKER_QUERY_SECONDS": "1",
    }
    for name in ("API_URL", "MLFLOW_TRACKING_URI"):  # the file decides per target
        env.pop(name, None)
    workers = [
        Worker(env, tmp_path / f"worker-{i}.log", limit=1, pool=POOL,
               name=f"shard-worker-{i}", inherit=False)
        for i in range(WORKERS)
    ]  # fmt: skip
    try:
        wait_for(lambda: asyncio.run(_online_workers()) >= WORKERS, 120, "the workers")
        yield deployment
    finally:
        stop_workers(workers)


async def _fleet(deployment: UUID, shards: int) -> tuple[Any, list[Any], Any]:
    """Run the fleet; (its final run, its shard runs, its table's data)."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    async with get_client() as client:
        run = await client.create_flow_run_from_deployment(
            deployment, parameters={"targets": TARGETS, "use_deployments": False, "shards": shards}
        )
        for _ in range(3000):
            run = await client.read_flow_run(run.id)
            if run.state is not None and run.state.is_final():
                break
            await asyncio.sleep(0.1)
        children = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run.id])
            )
        )
    from prefect.artifacts import Artifact

    table = await Artifact.aget("fleet-diagnosis")
    return run, [c for c in children if c.deployment_id == deployment], table


@pytest.mark.timeout(600)
def test_fleet_shards_spread_over_workers(workers: UUID) -> None:
    import json

    for shards in (2, WORKERS):
        run, shard_runs, table = asyncio.run(_fleet(workers, shards))
        assert run.state is not None and run.state.is_final(), run.state
        assert len(shard_runs) == shards - 1, shard_runs  # one share stays in the fleet run
        assert all(c.state is not None and c.state.is_completed() for c in shard_runs), [
            c.state for c in shard_runs
        ]
        # Each run on a worker of its own: a worker takes one run at a time.
        ran_on = [r.labels.get("prefect.worker.name") for r in [run, *shard_runs]]
        assert len(set(ran_on)) == shards and None not in ran_on, ran_on
        assert table is not None and table.flow_run_id == run.id
        rows = json.loads(table.data) if isinstance(table.data, str) else table.data
        # Every target diagnosed, and once: no row without a verdict, none twice.
        assert Counter(r["target"] for r in rows) == Counter(TARGETS), rows
        assert all(r["verdict"] != "No verdict" for r in rows), rows
        shards_seen = Counter(r["shard"] for r in rows)
        assert set(shards_seen) == {"", *(str(c.id) for c in shard_runs)}, shards_seen
        assert max(shards_seen.values()) - min(shards_seen.values()) <= 1, shards_seen
