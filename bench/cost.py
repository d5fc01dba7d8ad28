"""Benchmark 5: what Prefect costs per task, and the peak memory of a diagnosis.

- Overhead per task: inside one flow run, N trivial tasks (the options our check tasks
  use: no cache, results not persisted) awaited one after another, then gathered at once,
  against N plain calls of the same function; in this process, reported to the
  benchmark's Prefect server. The server records task runs from events after the flow
  has returned, so the end-to-end cost per task (until the server shows every task run
  completed) is reported too, and a whole flow run with no task.
- Peak RSS: `scripts/diagnose_service_health.py --target sandbox` as its own process,
  its peak resident set (the kernel's VmHWM, see bench.peak_rss) when it exits; next to it
  the peak of a process that only imports the flow (Prefect and our modules).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_client, task
from prefect.cache_policies import NONE
from prefect.context import FlowRunContext

from bench.environment import ROOT, BenchEnv, RunOptions
from bench.harness import BenchResult, say, stopwatch

TASKS = 200
QUICK_TASKS = 50
RSS_LIMIT_MB = 300.0
SCRIPT = ROOT / "scripts" / "diagnose_service_health.py"


@task(name="bench-trivial", cache_policy=NONE, persist_result=False)
async def trivial(i: int) -> int:
    return i + 1


@flow(name="bench-trivial-tasks")
async def trivial_tasks(n: int) -> dict[str, Any]:
    """Seconds for `n` trivial calls: as tasks awaited in turn, as tasks gathered at once,
    and as plain function calls, all timed inside one flow run (and that run's id)."""
    context = FlowRunContext.get()
    run = context.flow_run if context is not None else None
    seconds: dict[str, Any] = {"flow_run_id": str(run.id) if run is not None else None}
    started = time.perf_counter()
    for i in range(n):
        await trivial(i)
    seconds["sequential"] = time.perf_counter() - started
    started = time.perf_counter()
    await asyncio.gather(*(trivial(i) for i in range(n)))
    seconds["gathered"] = time.perf_counter() - started
    started = time.perf_counter()
    for i in range(n):
        await trivial.fn(i)
    seconds["bare"] = time.perf_counter() - started
    return seconds


@flow(name="bench-empty-flow")
async def empty_flow() -> None:
    return None


async def wait_recorded(flow_run_id: str, expected: int, timeout_s: float = 300.0) -> None:
    """Until the server shows `expected` completed task runs of the flow run (task runs
    reach it as events, which it writes after the flow has returned)."""
    body = {
        "flow_runs": {"id": {"any_": [flow_run_id]}},
        "task_runs": {"state": {"type": {"any_": ["COMPLETED"]}}},
    }
    deadline = time.monotonic() + timeout_s
    delay = 0.02
    async with get_client() as client:
        while int((await client.request("POST", "/task_runs/count", json=body)).json()) < expected:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the server did not record {expected} task runs")
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.2)


def _empty_flow_seconds() -> float:
    with stopwatch() as elapsed:
        asyncio.run(empty_flow())
    return elapsed()


def peak_rss_mb(argv: list[str], env: dict[str, str], work: Path) -> tuple[float, int, float]:
    """(peak RSS in MB, exit code, seconds) of `argv` (a script and its arguments, or
    `-c CODE`) run as its own Python process under bench.peak_rss."""
    out = work / f"peak-rss-{os.getpid()}-{time.monotonic_ns()}.txt"
    started = time.perf_counter()
    code = subprocess.call(
        [sys.executable, "-m", "bench.peak_rss", str(out), *argv],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    seconds = time.perf_counter() - started
    kib = int(out.read_text()) if out.exists() else 0
    out.unlink(missing_ok=True)
    return kib / 1024, code, seconds


def bench_cost(env: BenchEnv, options: RunOptions) -> list[BenchResult]:
    n = QUICK_TASKS if options.quick else TASKS
    result = BenchResult("cost", f"Prefect overhead per task ({n} trivial tasks), peak RSS")
    result.figure(
        "task_overhead_ms", "ms", f"per task: ({n} tasks awaited in turn - {n} plain calls) / {n}"
    )
    result.figure(
        "task_overhead_concurrent_ms", "ms", f"per task, the same with {n} tasks gathered at once"
    )
    result.figure(
        "task_recorded_ms",
        "ms",
        f"per task, end to end: that flow run's start -> the server shows all {2 * n} task "
        f"runs completed, / {2 * n}",
    )
    result.figure("empty_flow_s", "s", "a whole flow run with no task (the flow's own overhead)")
    result.figure("diagnosis_peak_rss_mb", "MB", "peak RSS of a whole diagnosis (script process)")
    result.figure("import_peak_rss_mb", "MB", "peak RSS of a process that only imports the flow")
    result.figure("diagnosis_process_s", "s", "that diagnosis process, start to exit")
    result.goal(
        f"diagnosis peak RSS under {RSS_LIMIT_MB:g} MB",
        "diagnosis_peak_rss_mb",
        "<",
        RSS_LIMIT_MB,
        "max",
    )

    env.heal()
    say("cost: warm-up flow (not counted)")
    asyncio.run(trivial_tasks(5))
    for rep in range(options.reps(3)):
        say(f"cost: repetition {rep + 1}")
        with stopwatch() as until_recorded:
            calls = asyncio.run(trivial_tasks(n))
            asyncio.run(wait_recorded(calls["flow_run_id"], 2 * n))
        sequential = 1000 * (calls["sequential"] - calls["bare"]) / n
        gathered = 1000 * (calls["gathered"] - calls["bare"]) / n
        result.add("task_overhead_ms", sequential)
        result.add("task_overhead_concurrent_ms", gathered)
        result.add("task_recorded_ms", 1000 * until_recorded() / (2 * n))
        result.add("empty_flow_s", _empty_flow_seconds())
        child_env = {**os.environ, "PYTHONPATH": str(ROOT)}
        rss, code, seconds = peak_rss_mb([str(SCRIPT), "--target", "sandbox"], child_env, env.work)
        if code != 0:
            raise RuntimeError(f"the diagnosis of the healthy sandbox exited {code}")
        result.add("diagnosis_peak_rss_mb", rss)
        result.add("diagnosis_process_s", seconds)
        imports, _, _ = peak_rss_mb(["-c", "import flows.diagnose"], child_env, env.work)
        result.add("import_peak_rss_mb", imports)
        say(
            f"  overhead {sequential:.2f} ms/task in turn, {gathered:.2f} ms/task gathered; "
            f"diagnosis peak RSS {rss:.0f} MB (imports alone {imports:.0f} MB)"
        )
    return [result]
