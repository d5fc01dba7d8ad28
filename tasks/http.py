"""Bounded, careful HTTP: the one client builder, and exchanges that never raise (every
answer or failure becomes an HttpObservation).

Bodies are capped and time-boxed (a giant or endless body cannot hold a run), redirects
are never followed (credentials must not travel to another host), and transient failures
are retried with backoff and jitter (tasks/retries.py) only where the caller allows it.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import time
from collections.abc import Collection
from typing import Any, Literal

import httpx

from service_health.observations import ErrorKind, HttpObservation
from service_health.redaction import redact_url
from service_health.settings import DEADLINE_S, REQUEST_TIMEOUT_S
from tasks.readonly import MutationRefused, Write, http_guard
from tasks.retries import http_retrying

BODY_CAP_BYTES = 1_048_576  # far above any health answer; /metrics is tens of KiB


@functools.cache
def tls_context() -> ssl.SSLContext:
    """One TLS context per process, as httpx would build for each client (verification on,
    SSL_CERT_FILE/SSL_CERT_DIR honoured). Building one loads the CA bundle, about 20 ms of
    CPU: a fleet run creating a client per diagnosis spent seconds there."""
    return httpx.create_ssl_context()


@functools.cache
def _no_trust_context() -> ssl.SSLContext:
    """For a client that has no https URL to read: verification on and no CA trusted, so
    that an https URL it is given anyway fails closed. Costs nothing to build (the bundle
    is what costs), and a one-off command line diagnosing plain-HTTP URLs skips it."""
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, hostnames checked


# Who is asking, as the service's access logs show it.
Purpose = Literal["diagnose", "recover", "contract"]


def client(purpose: Purpose, timeout_s: float, *, tls: bool = True) -> httpx.AsyncClient:
    """The one way this project builds an HTTP client (diagnosis, recovery, contract): a
    read-only one, refusing any request but GET and HEAD (tasks/readonly.py).

    Explicit timeouts (`timeout_s` for every phase of an exchange; each `fetch` sets its
    own within its deadline), the shared TLS context, redirects not followed, and no
    keep-alive: a server that drops its connection after an error answer must not make
    the next request look broken. `tls=False` for a client given only http:// URLs: its
    https requests fail verification rather than go unverified.
    """
    return _build(purpose, timeout_s, (), tls)


def write_client(purpose: Purpose, timeout_s: float, allow: Collection[Write]) -> httpx.AsyncClient:
    """As `client`, also allowing the (method, path) pairs in `allow`. Only for the
    recovery's ActionContext (tasks/recovery/registry.py) and the contract's reset probes
    in a run that is not read-only (tests/recovery/test_read_only.py checks who calls it)."""
    return _build(purpose, timeout_s, allow, True)


def _build(
    purpose: Purpose, timeout_s: float, allow: Collection[Write], tls: bool
) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout_s),
        limits=httpx.Limits(max_keepalive_connections=0),
        headers={"User-Agent": f"hokusai-health/{purpose}"},
        verify=tls_context() if tls else _no_trust_context(),
        follow_redirects=False,
        event_hooks={"request": [http_guard(allow)]},
    )


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
    timeout_s: float = REQUEST_TIMEOUT_S,
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
    except MutationRefused:
        raise  # a bug in the caller, not an answer: it must not pass for a failed request
    except Exception as exc:  # never raising is this function's promise (but for the above)
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
    budget_s: float = DEADLINE_S,
    **kwargs: Any,
) -> HttpObservation:
    """`fetch`, retried on transient failures when `retry` (never for breaker-feeding calls).

    Retries stop after `attempts` or once `budget_s` has passed, whichever comes first.
    """
    if not retry:
        return await fetch(client, method, url, **kwargs)
    result: HttpObservation = await http_retrying(is_transient, attempts, budget_s)(
        fetch, client, method, url, **kwargs
    )
    return result
