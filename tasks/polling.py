"""The one poller: how a wait reads the state of the world again and again until it holds.

Fast first, backing off gently: 0.25 s, growing by half up to 5 s, so that a rollout
finishing a few seconds in is seen within about a second rather than up to one doubled
interval late, and a long wait does not hammer the APIs. Never past the deadline.
(tenacity retries a failing call; this reads a state that is not there yet.)
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

POLL_INITIAL_S = 0.25
POLL_MAX_S = 5.0
POLL_GROWTH = 1.5


class Poller:
    """Counts polls and time against a deadline; `pause` sleeps until the next poll."""

    def __init__(self, timeout_s: float, max_interval_s: float = POLL_MAX_S) -> None:
        self.timeout_s = timeout_s
        self.max_interval_s = max_interval_s
        self.started = time.monotonic()
        self.deadline = self.started + timeout_s
        self.interval = POLL_INITIAL_S
        self.polls = 0

    def poll(self) -> int:
        """Count one poll; returns how many so far."""
        self.polls += 1
        return self.polls

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    @property
    def expired(self) -> bool:
        return time.monotonic() >= self.deadline

    @property
    def progress(self) -> float:
        """Percent of the timeout spent."""
        return 100 * self.elapsed / self.timeout_s

    async def pause(
        self,
        seconds: float | None = None,
        *,
        back_off: bool = True,
        until: asyncio.Future[Any] | None = None,
    ) -> None:
        """Sleep `seconds` (default: the current interval), never past the deadline, or
        only until `until` is done (not at all if it is already); then, when `back_off`
        (nothing progressed), the interval grows."""
        wait = self.interval if seconds is None else seconds
        delay = max(0.0, min(wait, self.remaining))
        if until is None:
            await asyncio.sleep(delay)
        elif not until.done():
            await asyncio.wait({until}, timeout=delay)  # `until` runs on either way
        if back_off:
            self.interval = min(self.interval * POLL_GROWTH, self.max_interval_s)

    def progressed(self) -> None:
        """What is polled moved (a task started, a target turned healthy): the end may be
        near, so poll fast again."""
        self.interval = POLL_INITIAL_S
