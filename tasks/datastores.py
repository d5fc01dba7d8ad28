"""Direct reads of PostgreSQL and Redis: connect, one query, timings; never raising.

The probes run in a worker thread with blocking clients: timed on the event loop, they
would also measure every other check sharing it, and report a busy worker as a slow
database. A thread cannot be cancelled, so each probe is bounded by the run's deadline as
well as by the request timeout: every connect and read is given the request timeout or
what is left before the deadline, whichever is shorter, and no probe thread outlives the
deadline that cancels its task.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import socket
import threading
import time
from collections.abc import Iterator

from service_health.observations import PostgresObservation, RedisObservation
from service_health.redaction import Redactor

# libpq's shortest connect timeout (a shorter one is raised to it): with less time left a
# connection attempt could outlive the deadline, so none is made.
PG_MIN_CONNECT_S = 2
# A step (a connect, a read) is not started with less than this left: it could not answer.
MIN_STEP_S = 0.05


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


class _Budget:
    """Each step's time: the request timeout, cut to what is left before the deadline
    (monotonic; None: no deadline)."""

    def __init__(self, timeout_s: float, deadline_at: float | None) -> None:
        self.timeout_s = timeout_s
        self.deadline_at = deadline_at

    def room(self) -> float:
        """Seconds left before the deadline."""
        return math.inf if self.deadline_at is None else self.deadline_at - time.monotonic()

    def left(self) -> float:
        """Seconds the next step may take."""
        return min(self.timeout_s, self.room())

    def spent(self) -> str:
        return "not probed further: the run's deadline left no time"


@contextlib.contextmanager
def _cut_off_at(ends_at: float, fileno: int) -> Iterator[None]:
    """Shut the connection's socket down when the budget ends: a read blocked on it in this
    thread returns at once (libpq has no client-side read timeout of its own)."""

    def cut() -> None:
        with contextlib.suppress(OSError), socket.socket(fileno=os.dup(fileno)) as sock:
            sock.shutdown(socket.SHUT_RDWR)  # the duplicate shares the connection

    timer = threading.Timer(max(0.0, ends_at - time.monotonic()), cut)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        timer.join()  # never cut a descriptor number the connection no longer owns


def _postgres(url: str, budget: _Budget, redactor: Redactor) -> PostgresObservation:
    import psycopg  # imported where used: a command line that never probes skips it

    room = budget.room()
    if room < PG_MIN_CONNECT_S:
        return PostgresObservation(
            connect_ms=None,
            query_ms=None,
            error=f"not probed: {max(0.0, room):.1f}s left before the run's deadline, "
            f"less than PostgreSQL's shortest connect timeout ({PG_MIN_CONNECT_S}s)",
        )
    # libpq takes whole seconds, at least 2: the timeout, or the whole seconds left.
    connect_s = max(PG_MIN_CONNECT_S, min(round(budget.timeout_s), math.floor(room)))
    started = time.perf_counter()
    try:
        conn = psycopg.connect(url, connect_timeout=connect_s, autocommit=True)
    except (psycopg.Error, OSError) as exc:
        return PostgresObservation(
            connect_ms=None, query_ms=None, error=redactor.text(_first_line(exc))
        )
    connect_ms = _ms(started)
    try:
        query_s = budget.left()
        with conn, _cut_off_at(time.monotonic() + query_s, conn.fileno()):
            if query_s < MIN_STEP_S:
                return PostgresObservation(
                    connect_ms=connect_ms, query_ms=None, error=budget.spent()
                )
            started = time.perf_counter()
            conn.execute("SELECT 1").fetchone()
            return PostgresObservation(
                connect_ms=connect_ms,
                query_ms=_ms(started),
                error=None,
                server_version=str(conn.info.server_version),
            )
    except (psycopg.Error, OSError) as exc:
        return PostgresObservation(
            connect_ms=connect_ms, query_ms=None, error=redactor.text(_first_line(exc))
        )


def _redis(url: str, budget: _Budget, redactor: Redactor) -> RedisObservation:
    import redis
    from redis.backoff import NoBackoff
    from redis.exceptions import RedisError, TimeoutError
    from redis.retry import Retry

    def within_budget(conn: redis.connection.AbstractConnection) -> None:
        """Before each step: the socket's timeout is what is left of the budget."""
        left = budget.left()
        if left < MIN_STEP_S:
            raise TimeoutError(budget.spent())
        conn.socket_timeout = left
        conn.update_current_socket_timeout(left)

    def handshake(conn: redis.connection.AbstractConnection) -> None:
        within_budget(conn)  # AUTH and the rest of redis-py's handshake, after the connect
        conn.on_connect()  # type: ignore[no-untyped-call]

    client: redis.Redis | None = None
    try:
        # One connection (made here), whose connect is given what is left, then each step.
        client = redis.Redis.from_url(
            url,
            socket_connect_timeout=max(MIN_STEP_S, budget.left()),
            socket_timeout=max(MIN_STEP_S, budget.left()),
            retry_on_timeout=False,
            retry=Retry(NoBackoff(), 0),  # a probe says what it saw; a retry would outlive it
            single_connection_client=True,
            redis_connect_func=handshake,
        )
        connection = client.connection
        assert connection is not None  # a single-connection client has it from the start
        client.ping()  # the handshake's round trip is not the server's latency
        # The best of a few PINGs: a busy worker's scheduling delays are not Redis's.
        samples = []
        for _ in range(3):
            within_budget(connection)
            started = time.perf_counter()
            client.ping()
            samples.append(_ms(started))
        ping_ms = min(samples)
        within_budget(connection)
        info = client.info("server")
        keep = {k: info[k] for k in ("redis_version", "uptime_in_seconds") if k in info}
        return RedisObservation(ping_ms=ping_ms, error=None, info=keep)
    except (RedisError, OSError) as exc:
        return RedisObservation(ping_ms=None, error=redactor.text(_first_line(exc)))
    finally:
        if client is not None:
            client.close()


async def probe_postgres(
    url: str, timeout_s: float, redactor: Redactor, deadline_at: float | None = None
) -> PostgresObservation:
    """Connect and `SELECT 1`, each within `timeout_s`, all before `deadline_at`
    (monotonic)."""
    return await asyncio.to_thread(_postgres, url, _Budget(timeout_s, deadline_at), redactor)


async def probe_redis(
    url: str, timeout_s: float, redactor: Redactor, deadline_at: float | None = None
) -> RedisObservation:
    """Connect, PING and INFO, each within `timeout_s`, all before `deadline_at`
    (monotonic)."""
    return await asyncio.to_thread(_redis, url, _Budget(timeout_s, deadline_at), redactor)
