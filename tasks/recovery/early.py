"""The final diagnosis started during the stabilisation wait's /health streak, rather than
after it: the verification then costs no time of its own.

The wait starts it at the streak's next-to-last healthy answer and accepts it when the
streak completes (its last healthy answer comes after the diagnosis began): a full
diagnosis taken while the service answered healthy, between healthy answers. A streak that
breaks, or any later step that waits or mutates, discards it; the verify step then
diagnoses afresh, as it does when the diagnosis taken early is not healthy.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import Awaitable, Callable

from service_health.models import DiagnosticReport, Verdict


class EarlyVerification:
    """One diagnosis at a time, run in the context it was made in (the flow's: its task runs
    are the flow run's, as the verify step's own would be)."""

    def __init__(self, verify: Callable[[], Awaitable[DiagnosticReport | None]]) -> None:
        self._verify = verify
        self._context = contextvars.copy_context()
        self._running: asyncio.Task[DiagnosticReport | None] | None = None
        self._discarded: list[asyncio.Task[DiagnosticReport | None]] = []
        self.accepted = False

    def start(self) -> None:
        """A diagnosis begins now (one started before is discarded)."""
        self.discard()

        async def run() -> DiagnosticReport | None:
            return await self._verify()

        self._running = asyncio.get_running_loop().create_task(run(), context=self._context)

    @property
    def running(self) -> asyncio.Task[DiagnosticReport | None] | None:
        """The diagnosis begun last and not discarded, finished or not."""
        return self._running

    def accept(self) -> None:
        """The streak completed after the diagnosis began: it may verify the recovery."""
        self.accepted = self._running is not None

    def discard(self) -> None:
        # Left to finish (within the diagnosis' deadline), not cancelled: a cancelled
        # diagnosis would leave crashed check runs in the flow run's view.
        if self._running is not None:
            self._discarded.append(self._running)
        self._running, self.accepted = None, False

    async def close(self) -> None:
        """Let the diagnoses not taken finish (the run ends with none pending)."""
        self.discard()
        for running in self._discarded:
            with contextlib.suppress(Exception):
                await running
        self._discarded.clear()

    async def take(self) -> DiagnosticReport | None:
        """The accepted diagnosis if it found the service healthy, else None (then the
        verification diagnoses afresh). Taken once."""
        running, accepted = self._running, self.accepted
        if running is None or not accepted:
            self.discard()
            return None
        self._running, self.accepted = None, False
        report = None
        with contextlib.suppress(Exception):
            report = await running
        if report is None or report.overall_status is not Verdict.HEALTHY:
            return None
        return report
