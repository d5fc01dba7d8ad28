"""Endurance: 200 diagnosis runs against the sandbox, eight at a time, in this process (the
worker here), with no growth in open file descriptors, threads or sockets."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import psutil
import pytest

from flows.diagnose import diagnose_service_health
from sandbox.client import SandboxProcess
from tests.reliability.figures import record

RUNS, AT_ONCE, WARM_UP = 200, 8, 24
# What may legitimately vary between two quiet moments: a pooled connection to the Prefect
# API opened or closed, a thread of a pool started on demand.
SLACK = {"fds": 8, "threads": 4, "sockets": 8}


def usage() -> dict[str, int]:
    gc.collect()
    me = psutil.Process()
    return {
        "fds": me.num_fds(),
        "threads": me.num_threads(),
        "sockets": len(me.net_connections(kind="inet")),
    }


@pytest.mark.timeout(900)  # 200 flow runs, each with a dozen task runs, on a shared machine
def test_two_hundred_diagnoses_leak_nothing(
    prefect_server: str, sandbox_env: dict[str, str], healed: SandboxProcess
) -> None:
    async def batch(n: int) -> list[Any]:
        return list(
            await asyncio.gather(
                *(diagnose_service_health(target="sandbox", return_state=True) for _ in range(n))
            )
        )

    async def all_runs() -> tuple[list[str], dict[str, int], list[dict[str, int]]]:
        names: list[str] = []
        samples: list[dict[str, int]] = []
        baseline: dict[str, int] = {}
        done = 0
        while done < RUNS:
            names += [s.name for s in await batch(AT_ONCE)]
            done += AT_ONCE
            if done == WARM_UP:
                baseline = usage()
            elif done > WARM_UP:
                samples.append(usage())
        return names, baseline, samples

    names, baseline, samples = asyncio.run(all_runs())
    assert len(names) == RUNS
    # Every run reached a verdict. The sandbox is healthy, but eight diagnoses at once
    # saturate it on two cores (MLflow and the registry then answer slowly), and a run may
    # fairly say Degraded; this test is about what the runs leave behind.
    tally = {n: names.count(n) for n in set(names)}
    assert set(names) <= {"Healthy", "Degraded"}, tally
    final = samples[-1]
    for key, slack in SLACK.items():
        peak = max(s[key] for s in samples)
        assert final[key] <= baseline[key] + slack, (key, baseline, final)
        assert peak <= baseline[key] + 3 * slack, (key, baseline, peak)
    record(
        "diagnosis runs",
        RUNS,
        detail=f"{AT_ONCE} at a time against the healthy sandbox: "
        + ", ".join(f"{count} {name}" for name, count in sorted(tally.items())),
        section="Endurance",
    )
    for key in SLACK:
        record(
            f"{key} after warm-up / at the end",
            f"{baseline[key]} / {final[key]}",
            detail=f"measured after {WARM_UP} runs and after {RUNS}",
            section="Endurance",
        )
