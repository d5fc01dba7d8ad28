"""Bounded, careful HTTP reads: every answer (or failure) becomes an HttpObservation.

Bodies are capped and time-boxed (a giant or endless body cannot hold a run), redirects
are never followed (credentials must not travel to another host), and transient failures
are retried with backoff and jitter only where the caller allows it.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import time
from typing import Any

import httpx
from tenacity import (
    AsyncRetrying,
    retry_if_result,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
)

from service_health.observations import ErrorKind, HttpObservation
from service_health.redaction import redact_url

BODY_CAP_BYTES = 1_048_576  # far above any health answer; /metrics is tens of KiB


@functools.cache
def tls_context() -> ssl.SSLContext:
    """One TLS context per process, as httpx would build for each client (verification on,
    SSL_CERT_FILE/SSL_CERT_DIR honoured). Building one loads the CA bundle, about 20 ms of
    CPU: a fleet run creating a client per diagnosis spent seconds there."""
    return httpx.create_ssl_context()


def _classify(exc: BaseException) -> tuple[ErrorKind, str]:
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return ErrorKind.TIMEOUT, "timed out"
    if isinstance(exc, httpx.ConnectError):
        return ErrorKind.CONNECT, "connection refused or unreachable"
    if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError | httpx.WriteError):
        return ErrorKind.RESET, "connection dropped by the server"
    if isinstance(exc, httpx.HTTPError):
        return ErrorKind.PROTOCOL, f"HTTP error ({type(exc).__name__})"
    if isinstance(exc, httpx.InvalidURL):
        return ErrorKind.OTHER, f"invalid URL ({str(exc)[:80]})"
    return ErrorKind.OTHER, f"request failed ({type(exc).__name__})"


def is_transient(obs: HttpObservation) -> bool:
    """Worth another try: the network failed, or a proxy (not the service) answered 5xx."""
    if obs.error_kind in (ErrorKind.TIMEOUT, ErrorKind.CONNECT, ErrorKind.RESET):
        return True
    if obs.status_code is not None and obs.status_code >= 500:
        _, problem = obs.json_body()
        return problem is not None  # a JSON answer from the service itself is definitive
    return False


async def fetch(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    json_body: Any = None,
    timeout_s: float = 5.0,
    replica: str | None = None,
) -> HttpObservation:
    """One exchange, never raising: transport failures are recorded on the observation."""
    shown = redact_url(url)
    started = time.perf_counter()

    def elapsed() -> float:
        return round((time.perf_counter() - started) * 1000, 1)

    try:
        async with asyncio.timeout(timeout_s):
            # The client's own timeouts (httpx's default: 5 s) must not cut a longer budget.
            async with client.stream(
                method,
                url,
                headers=headers,
                json=json_body,
                follow_redirects=False,
                timeout=httpx.Timeout(timeout_s),
            ) as resp:
                body = bytearray()
                truncated = False
                async for chunk in resp.aiter_bytes():
                    body += chunk
                    if len(body) > BODY_CAP_BYTES:
                        truncated = True
                        del body[BODY_CAP_BYTES:]
                        break
                try:
                    text, invalid = body.decode("utf-8"), False
                except UnicodeDecodeError:
                    text, invalid = body.decode("utf-8", errors="replace"), True
                return HttpObservation(
                    url=shown,
                    method=method,
                    status_code=resp.status_code,
                    elapsed_ms=elapsed(),
                    content_type=resp.headers.get("content-type"),
                    body_text=text,
                    body_truncated=truncated,
                    body_invalid_utf8=invalid,
                    error=f"body larger than {BODY_CAP_BYTES} bytes" if truncated else None,
                    error_kind=ErrorKind.TOO_LARGE if truncated else None,
                    replica=replica,
                )
    except Exception as exc:  # never raising is this function's promise
        # Beyond transport errors: an address no client can use (a port over 65535 from a
        # target registration, say) fails inside the client with other exception types.
        kind, message = _classify(exc)
        if kind is ErrorKind.TIMEOUT:
            message = f"timed out after {round(timeout_s, 2):g}s"
        return HttpObservation(
            url=shown,
            method=method,
            elapsed_ms=elapsed(),
            error=message,
            error_kind=kind,
            replica=replica,
        )


async def fetch_with_retries(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    retry: bool,
    attempts: int = 3,
    budget_s: float = 30.0,
    **kwargs: Any,
) -> HttpObservation:
    """`fetch`, retried on transient failures when `retry` (never for breaker-feeding calls).

    Retries stop after `attempts` or once `budget_s` has passed, whichever comes first.
    """
    if not retry:
        return await fetch(client, method, url, **kwargs)
    retrying = AsyncRetrying(
        stop=stop_after_attempt(attempts) | stop_after_delay(budget_s),
        wait=wait_exponential_jitter(initial=0.2, max=2.0, jitter=0.2),
        retry=retry_if_result(is_transient),
        retry_error_callback=lambda state: state.outcome.result() if state.outcome else None,
        reraise=False,
    )
    result: HttpObservation = await retrying(fetch, client, method, url, **kwargs)
    return result
