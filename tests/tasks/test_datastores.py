"""The direct PostgreSQL and Redis probes are bounded by the run's deadline: against a
server that accepts connections and never answers, the probe thread ends before the
deadline that cancels its task (a thread cannot be cancelled), and against real servers
the same budget is plenty."""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import psycopg  # noqa: F401  imported before the clock starts: a first import is slow
import pytest
import redis as _redis  # noqa: F401
from pydantic import SecretStr

import tasks.datastores
from sandbox.servers import PostgresServer, RedisServer
from service_health.redaction import Redactor
from service_health.settings import Target
from tasks.checks import check_redis
from tasks.datastores import probe_postgres, probe_redis
from tasks.deadline import TimedOut, gather_by_deadline
from tasks.evidence import Evidence
from tests.helpers import wait_for

DEADLINE_S = 3.0  # shorter than the request timeout (5 s), which the probes used to get
PROBE_FILE = Path(tasks.datastores.__file__).resolve()


class HungServer:
    """A TCP server on loopback that accepts every connection and never sends a byte."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            self.accepted.append(conn)  # held open, never answered

    def close(self) -> None:
        self.sock.close()
        for conn in self.accepted:
            conn.close()


@pytest.fixture
def hung() -> Iterator[HungServer]:
    server = HungServer()
    yield server
    server.close()


def probe_threads() -> list[str]:
    """Threads whose stack is inside tasks/datastores.py now (a probe still running)."""
    names = {t.ident: t.name for t in threading.enumerate()}
    running = []
    for ident, frame in sys._current_frames().items():
        f: FrameType | None = frame
        while f is not None:
            if Path(f.f_code.co_filename).resolve() == PROBE_FILE:
                running.append(names.get(ident, str(ident)))
                break
            f = f.f_back
    return running


def target(database_url: str | None = None, redis_url: str | None = None) -> Target:
    return Target(
        name="probes",
        api_url="http://127.0.0.1:9",
        database_url=SecretStr(database_url) if database_url else None,
        redis_url=SecretStr(redis_url) if redis_url else None,
    )


def under_deadline(t: Target) -> tuple[dict[str, Any], float]:
    """Both probes as the diagnosis runs them (Evidence, the check's own call), under the
    run's deadline; what each gave, and when every probe thread had ended (seconds from
    the start, measured here)."""

    async def go() -> dict[str, Any]:
        async with Evidence(t, None, time.monotonic() + DEADLINE_S) as ev:

            async def postgres() -> Any:
                return await ev.postgres()

            jobs = {"postgres": postgres(), "redis": check_redis.fn(ev)}
            return await gather_by_deadline(jobs, DEADLINE_S)

    started = time.monotonic()
    outcomes = asyncio.run(go())
    wait_for(lambda: not probe_threads(), 30, "the probe threads to end")
    return outcomes, time.monotonic() - started


def test_probes_of_a_hung_server_end_within_the_deadline(hung: HungServer) -> None:
    url = f"127.0.0.1:{hung.port}"
    t = target(f"postgresql://u:pw@{url}/db", f"redis://:pw@{url}/0")
    assert t.thresholds.request_timeout_s > DEADLINE_S  # the budget, not the timeout, bounds
    outcomes, ended = under_deadline(t)
    # Every thread ended within the deadline (a little scheduling slack, not a probe's).
    assert ended < DEADLINE_S + 0.5, (ended, outcomes)
    assert len(hung.accepted) >= 2  # both really connected, and were never answered
    postgres, redis = outcomes["postgres"], outcomes["redis"]
    # Each probe answered itself, before the deadline cancelled it, with the reason.
    assert not isinstance(postgres, TimedOut | BaseException), postgres
    assert "timeout" in (postgres.error or "").lower(), postgres
    assert not isinstance(redis, TimedOut | BaseException), redis
    assert redis.status == "unhealthy" and "Timeout" in str(redis.error), redis


def test_no_time_left_means_no_attempt(hung: HungServer) -> None:
    """With less than libpq's shortest connect timeout left, PostgreSQL is not tried; Redis
    with almost nothing left ends within it."""
    redactor = Redactor([])
    url = f"127.0.0.1:{hung.port}"
    started = time.monotonic()
    pg = asyncio.run(probe_postgres(f"postgresql://u:pw@{url}/db", 5.0, redactor, started + 1.5))
    assert time.monotonic() - started < 0.5 and len(hung.accepted) == 0
    assert pg.error is not None and pg.error.startswith("not probed: "), pg
    started = time.monotonic()
    rd = asyncio.run(probe_redis(f"redis://:pw@{url}/0", 5.0, redactor, started + 0.3))
    assert time.monotonic() - started < 0.3 + 0.3 and rd.error is not None, rd


def test_real_servers_answer_within_the_same_budget(
    postgres_server: PostgresServer, redis_server: RedisServer
) -> None:
    outcomes, ended = under_deadline(target(postgres_server.url, redis_server.url))
    postgres, redis = outcomes["postgres"], outcomes["redis"]
    assert postgres.error is None and postgres.query_ms is not None, postgres
    assert redis.status == "healthy", redis
    assert ended < DEADLINE_S
