"""How long each Prefect API call of this process takes, grouped by endpoint.

Used to show where a flow run waits on the Prefect server (the fleet's slowest path): the
client's async HTTP `send` is timed while the context manager is active.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@dataclass
class ApiTimes:
    calls: dict[str, list[float]] = field(default_factory=dict)

    def add(self, endpoint: str, seconds: float) -> None:
        self.calls.setdefault(endpoint, []).append(seconds)

    def rows(self) -> list[tuple[str, int, float, float, float]]:
        """(endpoint, calls, total s, mean s, max s), the most time first."""
        rows = [(name, len(v), sum(v), sum(v) / len(v), max(v)) for name, v in self.calls.items()]
        return sorted(rows, key=lambda r: r[2], reverse=True)

    def render(self, top: int = 15) -> str:
        lines = [f"{'endpoint':<48} {'calls':>6} {'total s':>8} {'mean s':>7} {'max s':>7}"]
        for name, n, total, mean, longest in self.rows()[:top]:
            lines.append(f"{name:<48} {n:>6} {total:>8.2f} {mean:>7.3f} {longest:>7.2f}")
        return "\n".join(lines)


@contextmanager
def timed_api_calls() -> Iterator[ApiTimes]:
    from prefect.client.base import PrefectHttpxAsyncClient

    times = ApiTimes()
    original = PrefectHttpxAsyncClient.send

    async def send(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await original(self, request, *args, **kwargs)
        finally:
            path = _ID.sub("{id}", str(request.url.path))
            times.add(f"{request.method} {path}", time.perf_counter() - started)

    PrefectHttpxAsyncClient.send = send  # type: ignore[method-assign]
    try:
        yield times
    finally:
        PrefectHttpxAsyncClient.send = original  # type: ignore[method-assign]
