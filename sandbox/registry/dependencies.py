"""Real checks of the registry's dependencies: PostgreSQL, Redis and MLflow."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from sandbox.breaker import BreakerState, CircuitBreaker, CircuitOpenError

MLFLOW_SEARCH_PATH = "/api/2.0/mlflow/experiments/search"
# The cheapest call that proves the tracking server and its backend store answer.
MLFLOW_SEARCH_BODY = {"max_results": 1}

log = logging.getLogger("sandbox.registry")


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    latency_ms: float
    error: str | None = None
    error_type: str | None = None

    def details(self) -> dict[str, object]:
        out: dict[str, object] = {
            "status": "healthy" if self.ok else "unhealthy",
            "latency_ms": round(self.latency_ms, 2),
        }
        if self.error:
            out["error"] = self.error
        return out


@dataclass(frozen=True)
class MlflowCheck:
    connected: bool
    # True when the breaker refused the call and MLflow was not contacted at all.
    refused: bool = False
    latency_ms: float | None = None
    error: str | None = None
    error_type: str | None = None


class MlflowHttpError(RuntimeError):
    """MLflow answered, but not with a success."""


def _elapsed_ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000


def describe_error(exc: BaseException, timeout: float | None = None) -> str:
    """A one-line description; never the URL (it may carry credentials)."""
    if isinstance(exc, TimeoutError | httpx.TimeoutException):
        return f"timed out after {timeout:g}s" if timeout else "timed out"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def check_postgres(url: str, time_limit: float) -> CheckResult:
    """Connect and run SELECT 1, all within `time_limit` seconds."""
    start = time.perf_counter()
    if not url:
        return CheckResult(False, 0.0, "DATABASE_URL is not configured", "ConfigurationError")
    try:
        async with asyncio.timeout(time_limit):
            # libpq rounds connect_timeout below 2 up to 2; asyncio.timeout is the real bound.
            conn = await psycopg.AsyncConnection.connect(
                url, connect_timeout=max(2, int(time_limit)), autocommit=True
            )
            async with conn:
                await conn.execute("SELECT 1")
    except (TimeoutError, psycopg.Error, OSError) as exc:
        return CheckResult(
            False, _elapsed_ms(start), describe_error(exc, time_limit), type(exc).__name__
        )
    return CheckResult(True, _elapsed_ms(start))


async def check_redis(url: str, time_limit: float) -> CheckResult:
    """PING on a fresh connection, without redis-py's retries (a health check must not wait)."""
    start = time.perf_counter()
    if not url:
        return CheckResult(False, 0.0, "REDIS_URL is not configured", "ConfigurationError")
    client = Redis.from_url(
        url,
        socket_timeout=time_limit,
        socket_connect_timeout=time_limit,
        retry=Retry(NoBackoff(), 0),
    )
    try:
        async with asyncio.timeout(time_limit):
            await client.ping()
    except Exception as exc:  # redis raises its own hierarchy plus OSError variants
        return CheckResult(
            False, _elapsed_ms(start), describe_error(exc, time_limit), type(exc).__name__
        )
    finally:
        await client.aclose()
    return CheckResult(True, _elapsed_ms(start))


def mlflow_search_url(tracking_uri: str) -> str:
    return tracking_uri.rstrip("/") + MLFLOW_SEARCH_PATH


def redact_url(url: str) -> str:
    """The URL without its user info, for showing in answers and labels."""
    parts = urlsplit(url)
    if not parts.hostname:
        return url
    host = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


# Enough of a refusing answer to say why ("Invalid Host header ..."), never a whole page.
_BODY_QUOTE_LIMIT = 300


def _check_response(response: httpx.Response) -> None:
    if response.status_code != 200:
        # Worded as the real service's MLflow client words it (mlflow.utils.rest_utils
        # verify_rest_response: RestException for MLflow's JSON errors, else the body
        # quoted): the body is what tells a refusal (host validation, authentication)
        # apart from an MLflow that is failing.
        try:
            error = response.json()
        except ValueError:
            error = None
        if isinstance(error, dict) and "error_code" in error:  # MLflow's own error answer
            raise MlflowHttpError(f"{error['error_code']}: {error.get('message', '')}")
        body = " ".join(response.text.split())[:_BODY_QUOTE_LIMIT]
        raise MlflowHttpError(
            f"API request to endpoint {MLFLOW_SEARCH_PATH} failed with error code "
            f"{response.status_code} != 200. Response body: '{body}'"
        )
    try:
        body = response.json()
    except ValueError:
        raise MlflowHttpError("MLflow answered 200 with a body that is not JSON") from None
    if not isinstance(body, dict):
        raise MlflowHttpError("MLflow answered 200 with an unexpected JSON body")


async def probe_mlflow(client: httpx.AsyncClient, tracking_uri: str) -> None:
    response = await client.post(mlflow_search_url(tracking_uri), json=MLFLOW_SEARCH_BODY)
    _check_response(response)


def probe_mlflow_blocking(client: httpx.Client, tracking_uri: str) -> None:
    """The same probe with a synchronous client: it blocks whichever thread runs it."""
    response = client.post(mlflow_search_url(tracking_uri), json=MLFLOW_SEARCH_BODY)
    _check_response(response)


def refused_message(exc: CircuitOpenError) -> str:
    if exc.state is BreakerState.OPEN and exc.time_until_retry is None:
        return "Circuit breaker is OPEN - MLflow unavailable (manual reset required)"
    if exc.state is BreakerState.OPEN:
        return (
            "Circuit breaker is OPEN - MLflow unavailable "
            f"(retry in {exc.time_until_retry or 0:.0f}s)"
        )
    return "Circuit breaker is HALF_OPEN - trial calls in flight, MLflow not called"


async def check_mlflow(
    breaker: CircuitBreaker, client: httpx.AsyncClient, tracking_uri: str, time_limit: float
) -> MlflowCheck:
    """One MLflow call through the breaker; a refused call does not touch MLflow."""
    start = time.perf_counter()
    try:
        await breaker.call(lambda: probe_mlflow(client, tracking_uri))
    except CircuitOpenError as exc:
        return MlflowCheck(
            False, refused=True, error=refused_message(exc), error_type=type(exc).__name__
        )
    except Exception as exc:  # any failure of the call is MLflow being unavailable
        error = describe_error(exc, time_limit)
        # In the replica's log: a failure on a healthy sandbox must be explainable afterwards.
        log.warning("MLflow call failed after %d ms: %s: %s", _elapsed_ms(start),
                    type(exc).__name__, error)  # fmt: skip
        return MlflowCheck(
            False, latency_ms=_elapsed_ms(start), error=error, error_type=type(exc).__name__
        )
    return MlflowCheck(True, latency_ms=_elapsed_ms(start))


# -- the deployed version's blocking clients (legacy flavour only) --------------------------

# urllib3's status_forcelist as the MLflow client sets it: these answers are retried too.
LEGACY_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


def probe_mlflow_retrying(
    client: httpx.Client,
    tracking_uri: str,
    retry_sleeps: list[float],
) -> None:
    """One application-level attempt of the deployed MLflow client: the request plus one
    retry per entry of `retry_sleeps` (slept first), on a refused connection, a timeout or
    a retryable status. Blocks the calling thread throughout; raises the last error."""
    last: Exception | None = None
    for sleep in [None, *retry_sleeps]:
        if sleep:
            time.sleep(sleep)
        try:
            response = client.post(mlflow_search_url(tracking_uri), json=MLFLOW_SEARCH_BODY)
        except httpx.TransportError as exc:  # refused, reset, timed out
            last = exc
            continue
        if response.status_code in LEGACY_RETRY_STATUSES:
            last = MlflowHttpError(f"MLflow answered HTTP {response.status_code}")
            continue
        _check_response(response)
        return
    assert last is not None
    raise last


def check_postgres_blocking(url: str, time_limit: float, retry_sleeps: list[float]) -> CheckResult:
    """The deployed database check: synchronous connect and SELECT 1, retried after each
    sleep of `retry_sleeps`; the sleeps and the connections block the calling thread."""
    start = time.perf_counter()
    if not url:
        return CheckResult(False, 0.0, "DATABASE_URL is not configured", "ConfigurationError")
    error: BaseException | None = None
    for sleep in [None, *retry_sleeps]:
        if sleep:
            time.sleep(sleep)
        try:
            with psycopg.connect(
                url, connect_timeout=max(2, int(time_limit)), autocommit=True
            ) as conn:
                conn.execute("SELECT 1")
        except (psycopg.Error, OSError) as exc:
            error = exc
            continue
        return CheckResult(True, _elapsed_ms(start))
    assert error is not None
    return CheckResult(
        False, _elapsed_ms(start), describe_error(error, time_limit), type(error).__name__
    )
