"""Run named jobs concurrently under one deadline (shared by the diagnose and contract flows)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Mapping
from typing import Any, TypeVar

T = TypeVar("T")


class TimedOut:
    """Marks a job still running at the deadline (it has been cancelled)."""


async def gather_by_deadline(
    jobs: Mapping[str, Coroutine[Any, Any, T]], deadline_s: float
) -> dict[str, T | BaseException | TimedOut]:
    """Each job's result, the exception it raised, or TimedOut; never waits past the deadline."""
    running = {name: asyncio.create_task(job) for name, job in jobs.items()}
    await asyncio.wait(running.values(), timeout=deadline_s)
    outcomes: dict[str, T | BaseException | TimedOut] = {}
    for name, task in running.items():
        if not task.done():
            task.cancel()
            outcomes[name] = TimedOut()
        elif (exc := task.exception()) is not None:
            outcomes[name] = exc
        else:
            outcomes[name] = task.result()
    return outcomes
