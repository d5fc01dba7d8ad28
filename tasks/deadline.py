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
    """Each job's result, the exception it raised, or TimedOut; never waits past the deadline.

    A job stopped by something other than an error (Prefect's TerminationSignal when the
    process is sent SIGTERM, any BaseException that is not an Exception) is not a job's
    outcome but the run being stopped: the other jobs are cancelled and it is raised, so a
    killed run ends Crashed instead of reporting on checks it never finished.
    """
    running = {name: asyncio.create_task(job) for name, job in jobs.items()}
    loop = asyncio.get_running_loop()
    until = loop.time() + deadline_s
    pending = set(running.values())
    while pending and (left := until - loop.time()) > 0:
        done, pending = await asyncio.wait(
            pending, timeout=left, return_when=asyncio.FIRST_EXCEPTION
        )
        if any(_stopping(task) for task in done):
            break
    outcomes: dict[str, T | BaseException | TimedOut] = {}
    stopped: BaseException | None = None
    for name, task in running.items():
        if not task.done():
            task.cancel()
            outcomes[name] = TimedOut()
        elif (exc := task.exception()) is not None:
            outcomes[name] = exc
            if _stopping(task) and stopped is None:
                stopped = exc
        else:
            outcomes[name] = task.result()
    if stopped is not None:
        raise stopped
    return outcomes


def _stopping(task: asyncio.Task[Any]) -> bool:
    """The job ended on a BaseException that is no error: the process is being stopped."""
    if task.cancelled():
        return False
    exc = task.exception()
    return exc is not None and not isinstance(exc, Exception)
