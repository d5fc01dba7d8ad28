"""Direct reads of PostgreSQL and Redis: connect, one query, timings; never raising.

The probes run in a worker thread with blocking clients: timed on the event loop, they
would also measure every other check sharing it, and report a busy worker as a slow
database.
"""

from __future__ import annotations

import asyncio
import time

from service_health.observations import PostgresObservation, RedisObservation
from service_health.redaction import Redactor


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def _postgres(url: str, timeout_s: float, redactor: Redactor) -> PostgresObservation:
    import psycopg  # imported where used: a command line that never probes skips it

    started = time.perf_counter()
    try:
        conn = psycopg.connect(url, connect_timeout=max(1, round(timeout_s)), autocommit=True)
    except (psycopg.Error, OSError) as exc:
        return PostgresObservation(
            connect_ms=None, query_ms=None, error=redactor.text(_first_line(exc))
        )
    connect_ms = _ms(started)
    try:
        with conn:
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


def _redis(url: str, timeout_s: float, redactor: Redactor) -> RedisObservation:
    import redis
    from redis.exceptions import RedisError

    client = redis.Redis.from_url(
        url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s, retry_on_timeout=False
    )
    try:
        client.ping()  # connects: the handshake is not the server's latency
        # The best of a few PINGs: a busy worker's scheduling delays are not Redis's.
        samples = []
        for _ in range(3):
            started = time.perf_counter()
            client.ping()
            samples.append(_ms(started))
        ping_ms = min(samples)
        info = client.info("server")
        keep = {k: info[k] for k in ("redis_version", "uptime_in_seconds") if k in info}
        return RedisObservation(ping_ms=ping_ms, error=None, info=keep)
    except (RedisError, OSError) as exc:
        return RedisObservation(ping_ms=None, error=redactor.text(_first_line(exc)))
    finally:
        client.close()


async def probe_postgres(url: str, timeout_s: float, redactor: Redactor) -> PostgresObservation:
    return await asyncio.to_thread(_postgres, url, timeout_s, redactor)


async def probe_redis(url: str, timeout_s: float, redactor: Redactor) -> RedisObservation:
    return await asyncio.to_thread(_redis, url, timeout_s, redactor)
