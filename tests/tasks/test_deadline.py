"""gather_by_deadline: outcomes by name under one deadline; a stopped process is no outcome."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest
from prefect.exceptions import TerminationSignal

from tasks.deadline import TimedOut, gather_by_deadline


async def answer(value: int) -> int:
    return value


async def fail() -> int:
    raise ValueError("bad answer")


async def hang(cancelled: asyncio.Event) -> int:
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        cancelled.set()
        raise
    return 0


async def terminated() -> int:
    await asyncio.sleep(0.05)
    raise TerminationSignal(signal=signal.SIGTERM)


def test_results_errors_and_timeouts_are_outcomes() -> None:
    async def go() -> tuple[dict[str, int | BaseException | TimedOut], asyncio.Event]:
        cancelled = asyncio.Event()
        jobs = {"ok": answer(1), "error": fail(), "slow": hang(cancelled)}
        outcomes = await gather_by_deadline(jobs, 0.3)
        await asyncio.sleep(0)  # let the cancellation land
        return outcomes, cancelled

    outcomes, cancelled = asyncio.run(go())
    assert outcomes["ok"] == 1
    assert isinstance(outcomes["error"], ValueError)
    assert isinstance(outcomes["slow"], TimedOut) and cancelled.is_set()


def test_a_termination_signal_stops_the_gathering_at_once() -> None:
    """SIGTERM during a diagnosis must not become a 'check failed' finding and a verdict
    (a Critical one would start a recovery): it is raised, and the other jobs cancelled."""

    async def go() -> asyncio.Event:
        cancelled = asyncio.Event()
        jobs = {"ok": answer(1), "error": fail(), "killed": terminated(), "slow": hang(cancelled)}
        with pytest.raises(TerminationSignal):
            await gather_by_deadline(jobs, 60)
        await asyncio.sleep(0)
        return cancelled

    started = time.monotonic()
    cancelled = asyncio.run(go())
    assert time.monotonic() - started < 30  # not held until the 60 s deadline
    assert cancelled.is_set()
