"""Direct reads of PostgreSQL and Redis: connect, one query, timings; never raising."""

from __future__ import annotations

import time

import psycopg
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from service_health.observations import PostgresObservation, RedisObservation
from service_health.redaction import Redactor


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)


async def probe_postgres(url: str, timeout_s: float, redactor: Redactor) -> PostgresObservation:
    started = time.perf_counter()
    try:
        conn = await psycopg.AsyncConnection.connect(
            url, connect_timeout=max(1, round(timeout_s)), autocommit=True
        )
    except (psycopg.Error, OSError) as exc:
        return PostgresObservation(
            connect_ms=None, query_ms=None, error=redactor.text(_first_line(exc))
        )
    connect_ms = _ms(started)
    try:
        async with conn:
            started = time.perf_counter()
            cur = await conn.execute("SELECT 1")
            await cur.fetchone()
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


async def probe_redis(url: str, timeout_s: float, redactor: Redactor) -> RedisObservation:
    client = aioredis.from_url(
        url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s, retry_on_timeout=False
    )
    try:
        await client.ping()  # connects; the second PING measures the server, not the handshake
        started = time.perf_counter()
        await client.ping()
        ping_ms = _ms(started)
        info = await client.info("server")
        keep = {k: info[k] for k in ("redis_version", "uptime_in_seconds") if k in info}
        return RedisObservation(ping_ms=ping_ms, error=None, info=keep)
    except (RedisError, OSError) as exc:
        return RedisObservation(ping_ms=None, error=redactor.text(_first_line(exc)))
    finally:
        await client.aclose()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]
