"""Benchmark 4: one `diagnose-fleet` run over 1, 10 and 50 targets, through a worker; then
the 50 through 2 and 4 workers of the same pool (the fleet run's `shards`).

The fleet flow is deployed (through the API) on a process work pool of its own, one
`prefect worker` serves it, and each fleet run is created through the API as the UI
would. The targets are names in a targets file (HOKUSAI_TARGETS_FILE) that all point at the
sandbox, as the fleet test does; each is diagnosed as a subflow of the fleet run (no
`diagnose-<target>` deployments exist), at most `max_concurrency` (8) at a time. With
more workers, the run splits the targets into as many shares: it keeps one and starts a
run of its own deployment per other share, which the other workers (one run at a time
each) pick up; every target must come back diagnosed once.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any
from uuid import UUID

import psutil
import yaml
from prefect import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.exceptions import ObjectNotFound

from bench.cpu import CpuMeter, tree
from bench.environment import ROOT, BenchEnv, RunOptions, wait_until
from bench.harness import BenchResult, ratio, say
from tasks.config import read_targets

POOL = "bench-process"
DEPLOYMENT = "bench-fleet"
FLOW = "diagnose-fleet"
SIZES = (1, 10, 50)
QUICK_SIZES = (1, 10)
WORKER_COUNTS = (2, 4)
CHECK_TASKS = 11  # task runs of one diagnosis (flows/diagnose.CHECKS)
RUN_TIMEOUT_S = 900.0


def write_targets(env: BenchEnv, path: Path, count: int) -> list[str]:
    """`count` target names, each the sandbox entry of targets.yaml with the sandbox's URLs."""
    base = read_targets()["sandbox"].model_dump(mode="json", exclude_unset=True)
    base |= {"api_url": env.info["api_url"], "mlflow_url": env.info["mlflow_url"]}
    names = [f"fleet-{i:03d}" for i in range(1, count + 1)]
    path.write_text(yaml.safe_dump({"targets": {name: base for name in names}}))
    return names


async def deploy_fleet(pool: str = POOL, name: str = DEPLOYMENT) -> UUID:
    """A `diagnose-fleet` deployment from this checkout on the process work pool `pool`."""
    async with get_client() as client:
        try:
            await client.read_work_pool(pool)
        except ObjectNotFound:
            await client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        flow_id = await client.create_flow_from_name(FLOW)
        return await client.create_deployment(
            flow_id=flow_id,
            name=name,
            work_pool_name=pool,
            entrypoint="flows/fleet.py:diagnose_fleet",
            path=str(ROOT),
            pull_steps=[
                {"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}
            ],
            parameter_openapi_schema={"type": "object", "properties": {}},
            enforce_parameter_schema=False,
        )


async def _workers() -> int:
    async with get_client() as client:
        return len(await client.read_workers_for_work_pool(POOL))


async def _check_task_runs(fleet_run_id: UUID) -> int:
    """Task runs recorded in the fleet run's subflows (the diagnoses' checks)."""
    body = {"flow_runs": {"parent_flow_run_id": {"any_": [str(fleet_run_id)]}}}
    async with get_client() as client:
        response = await client.request("POST", "/task_runs/count", json=body)
        return int(response.json())


async def _settled_task_count(fleet_run_id: UUID, expected: int, timeout_s: float = 60.0) -> int:
    """Task runs reach the server through events, a little after the run: wait for them."""
    deadline = time.monotonic() + timeout_s
    last, stable_since = -1, time.monotonic()
    while True:
        count = await _check_task_runs(fleet_run_id)
        if count != last:
            last, stable_since = count, time.monotonic()
        if count >= expected or time.monotonic() - stable_since > 3 or time.monotonic() > deadline:
            return count
        await asyncio.sleep(0.2)


async def _fleet_run(deployment_id: UUID, targets: list[str], shards: int = 1) -> dict[str, Any]:
    async with get_client() as client:
        started = time.perf_counter()
        run = await client.create_flow_run_from_deployment(
            deployment_id,
            parameters={"targets": targets, "use_deployments": False, "shards": shards},
        )
        while True:
            current = await client.read_flow_run(run.id)
            if current.state is not None and current.state.is_final():
                break
            if time.perf_counter() - started > RUN_TIMEOUT_S:
                raise TimeoutError(f"fleet run of {len(targets)} targets still running")
            await asyncio.sleep(0.1)
        end_to_end = time.perf_counter() - started
    tasks = await _settled_task_count(run.id, CHECK_TASKS * len(targets))
    assert current.state is not None
    run_s = None
    if current.start_time is not None and current.end_time is not None:
        run_s = (current.end_time - current.start_time).total_seconds()
    spread = await _spread(current) if shards > 1 else {}
    return {
        "end_to_end_s": end_to_end,
        "run_s": run_s,
        "state": current.state.name,
        "tasks": tasks,
        **spread,
    }


async def _spread(run: Any) -> dict[str, Any]:
    """Which workers ran the fleet run and its shard runs, and whether its table has every
    target once, each with a verdict."""
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
        FlowRunFilter,
        FlowRunFilterParentFlowRunId,
    )

    async with get_client() as client:
        children = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run.id])
            )
        )
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]),
                key=ArtifactFilterKey(any_=["fleet-diagnosis"]),
            )
        )
    shard_runs = [c for c in children if c.deployment_id == run.deployment_id]
    workers = {r.labels.get("prefect.worker.name") for r in [run, *shard_runs]} - {None}
    data = artifacts[0].data if artifacts else None
    rows = json.loads(data) if isinstance(data, str) else (data or [])
    return {"workers": len(workers), "shard_runs": len(shard_runs), "rows": rows}


def profile_in_process(env: BenchEnv, targets_file: Path, targets: list[str], out: Path) -> str:
    """One fleet run in this process (subflows, as on the worker), under pyinstrument and
    with every Prefect API call timed; writes the profile and the API table to `out`."""
    from pyinstrument import Profiler

    from bench.apitimes import timed_api_calls
    from flows.fleet import diagnose_fleet

    saved = {k: os.environ.pop(k, None) for k in ("API_URL", "MLFLOW_TRACKING_URI")}
    os.environ["HOKUSAI_TARGETS_FILE"] = str(targets_file)

    async def go() -> Any:
        return await diagnose_fleet(targets=targets, use_deployments=False, return_state=True)

    profiler = Profiler(async_mode="enabled", interval=0.002)
    try:
        with timed_api_calls() as api:
            profiler.start()
            try:
                started = time.perf_counter()
                state = asyncio.run(go())
                seconds = time.perf_counter() - started
            finally:
                profiler.stop()
    finally:
        os.environ.pop("HOKUSAI_TARGETS_FILE", None)
        os.environ.update({k: v for k, v in saved.items() if v is not None})
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"fleet-inprocess-{len(targets)}"
    stem.with_suffix(".txt").write_text(profiler.output_text(unicode=True, show_all=False))
    stem.with_suffix(".html").write_text(profiler.output_html())
    table = api.render()
    header = (
        f"In-process fleet run of {len(targets)} targets: {seconds:.1f} s, {state.name}; "
        f"Prefect API calls of this process, by endpoint ({env.prefect_db} database):\n"
    )
    (out / f"fleet-api-{len(targets)}.txt").write_text(header + table + "\n")
    say(header + table)
    return header + table


def bench_fleet(env: BenchEnv, options: RunOptions) -> list[BenchResult]:
    sizes = QUICK_SIZES if options.quick else SIZES
    result = BenchResult(
        "fleet", f"One diagnose-fleet run of {', '.join(map(str, sizes))} targets, one worker"
    )
    for n in sizes:
        result.figure(f"e2e_{n}_s", "s", f"{n} target(s): run created -> final state seen")
        result.figure(f"run_{n}_s", "s", f"{n} target(s): the run's own start -> end (server)")
        result.figure(
            f"tasks_per_s_{n}", "tasks/s", f"{n} target(s): check task runs recorded / run_{n}_s"
        )
        result.figure(
            f"server_cpu_share_{n}_pct", "%", f"{n} target(s): server CPU / all CPU of the run"
        )
        result.figure(f"server_busy_{n}_pct", "%", f"{n} target(s): server CPU / wall time")
    big = max(sizes)
    result.figure(f"ratio_{big}_to_1", "x", f"e2e_{big}_s / e2e_1_s, per repetition")
    result.figure(f"run_ratio_{big}_to_1", "x", f"run_{big}_s / run_1_s, per repetition")
    result.goal(f"{big} targets in at most 5x the time of one", f"ratio_{big}_to_1", "<=", 5.0)
    for k in WORKER_COUNTS:
        result.figure(f"e2e_{big}_w{k}_s", "s", f"{big} targets through {k} workers (shards)")
        result.figure(f"ratio_{big}_w{k}_to_1", "x", f"e2e_{big}_w{k}_s / e2e_1_s")
        result.figure(f"workers_used_w{k}", "count", f"workers that ran the {k} runs")
        result.figure(
            f"each_target_once_w{k}", "bool", "1 when every target has one row with a verdict"
        )
        result.goal(
            f"{k} workers: every target diagnosed once", f"each_target_once_w{k}", ">=", 1.0,
            stat="min",
        )  # fmt: skip

    env.heal()
    targets_file = env.work / "fleet-targets.yaml"
    names = write_targets(env, targets_file, big)
    deployment_id = asyncio.run(deploy_fleet())
    worker_env = {
        **env.flow_env(),
        "HOKUSAI_TARGETS_FILE": str(targets_file),
        "PYTHONPATH": str(ROOT),
        # Picks a scheduled run up within a second (default 15 s: noise, not Prefect's cost).
        "PREFECT_WORKER_QUERY_SECONDS": "1",
    }
    # The file names each target's URLs; the environment would override them.
    for name in ("API_URL", "MLFLOW_TRACKING_URI"):
        worker_env.pop(name, None)
    argv = [sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL]
    argv += ["--type", "process", "--limit", "1"]
    worker = env.spawn(argv, "fleet-worker.log", worker_env, inherit=False)
    states: set[str] = set()
    ones: list[float] = []  # e2e_1_s of each repetition: the base of every ratio
    extra: list[Any] = []
    try:
        wait_until(lambda: asyncio.run(_workers()) > 0, 120, "the worker to register")
        for rep in range(options.reps(2)):
            e2e: dict[int, float] = {}
            runs: dict[int, float] = {}
            for n in sizes:
                say(f"fleet: repetition {rep + 1}, {n} target(s)")
                groups = {
                    "server": env.server_processes,
                    "worker": lambda: tree(worker.pid),
                    "sandbox": env.sandbox_processes,
                    "bench": lambda: [psutil.Process()],  # this process alone (polling)
                }
                with CpuMeter(groups) as meter:
                    outcome = asyncio.run(_fleet_run(deployment_id, names[:n]))
                cpu = meter.seconds()
                states.add(str(outcome["state"]))
                e2e[n] = outcome["end_to_end_s"]
                result.add(f"e2e_{n}_s", e2e[n])
                if outcome["run_s"] is not None:
                    runs[n] = outcome["run_s"]
                    result.add(f"run_{n}_s", runs[n])
                    result.add(f"tasks_per_s_{n}", outcome["tasks"] / runs[n])
                total_cpu = sum(cpu.values())
                if env.prefect is not None and total_cpu > 0:
                    result.add(f"server_cpu_share_{n}_pct", 100 * cpu["server"] / total_cpu)
                    result.add(f"server_busy_{n}_pct", 100 * cpu["server"] / e2e[n])
                say(
                    f"  {outcome['state']}: {e2e[n]:.2f} s end to end, run "
                    f"{outcome['run_s'] or 0:.2f} s, {outcome['tasks']} task runs, CPU s "
                    + ", ".join(f"{k} {v:.1f}" for k, v in cpu.items())
                )
            result.add(f"ratio_{big}_to_1", ratio(e2e[big], e2e[1]))
            ones.append(e2e[1])
            if big in runs and 1 in runs:
                result.add(f"run_ratio_{big}_to_1", ratio(runs[big], runs[1]))
        # More workers on the same pool (each one run at a time): the extra ones join only
        # now, so that the single-worker figures above are one worker's.
        for k in WORKER_COUNTS:
            while len(extra) + 1 < k:
                extra.append(
                    env.spawn(
                        [*argv, "--name", f"bench-worker-{len(extra) + 2}"],
                        f"fleet-worker-{len(extra) + 2}.log",
                        worker_env,
                        inherit=False,
                    )
                )
            wait_until(lambda k=k: asyncio.run(_workers()) >= k, 120, f"{k} workers")  # type: ignore[misc]
            for rep in range(options.reps(2)):
                say(f"fleet: repetition {rep + 1}, {big} targets through {k} workers")
                outcome = asyncio.run(_fleet_run(deployment_id, names[:big], shards=k))
                states.add(str(outcome["state"]))
                seconds = outcome["end_to_end_s"]
                result.add(f"e2e_{big}_w{k}_s", seconds)
                result.add(f"ratio_{big}_w{k}_to_1", ratio(seconds, ones[rep % len(ones)]))
                result.add(f"workers_used_w{k}", outcome["workers"])
                rows = outcome["rows"]
                once = Counter(r.get("target") for r in rows) == Counter(names[:big]) and all(
                    r.get("verdict") != "No verdict" for r in rows
                )
                result.add(f"each_target_once_w{k}", 1.0 if once else 0.0)
                say(
                    f"  {outcome['state']}: {seconds:.2f} s end to end, "
                    f"{outcome['shard_runs']} shard runs on {outcome['workers']} workers, "
                    f"{len(rows)} rows, each target once: {once}"
                )
    finally:
        for proc in extra:
            env.release(proc)
        env.release(worker)
    if options.profile_dir is not None:
        say(f"fleet: profiling one in-process fleet run of {big} targets (not counted)")
        profile_in_process(env, targets_file, names, options.profile_dir)
    result.note(f"fleet final states: {', '.join(sorted(states))}")
    if env.prefect is None:
        result.note("server CPU share not measured: the Prefect server was not started here")
    if options.quick:
        result.note(f"quick run: sizes {sizes} (the full run measures {SIZES})")
    return [result]
