"""The careful HTTP reader against answers a real service rarely gives on demand.

respx produces the malformed answers; a real loopback socket produces the silent server.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import httpx
import pytest
import respx

from service_health.assessment import assess_api_connectivity, assess_circuit_breaker
from service_health.observations import ErrorKind, HttpObservation
from tasks.http import BODY_CAP_BYTES, fetch, fetch_with_retries

URL = "http://registry.test/health/mlflow"


def get(url: str = URL, **kw: Any) -> HttpObservation:
    async def go() -> HttpObservation:
        async with httpx.AsyncClient() as client:
            return await fetch(client, "GET", url, **kw)

    return asyncio.run(go())


@respx.mock
def test_html_error_page_is_a_finding_not_a_crash() -> None:
    respx.get(URL).respond(502, html="<html><body><h1>502 Bad Gateway</h1></body></html>")
    obs = get()
    assert obs.status_code == 502 and obs.json_body()[0] is None
    result = assess_circuit_breaker({"10.0.0.1:8000": obs}, None, None, False)
    assert result.status.value in ("error", "degraded", "unhealthy")
    assert result.findings


@respx.mock
def test_invalid_json_and_wrong_types_and_unknown_state() -> None:
    for body in (b"{not json", b'{"circuit_breaker_state": 42, "connected": "yes"}',
                 b'{"circuit_breaker_state": "WEIRD", "connected": true}'):  # fmt: skip
        respx.get(URL).respond(200, content=body, headers={"content-type": "application/json"})
        obs = get()
        result = assess_circuit_breaker({"r": obs}, None, None, False)
        assert result.status.value != "healthy", body
        assert result.findings, body


@respx.mock
def test_a_50_mb_body_is_capped() -> None:
    respx.get(URL).respond(200, content=b"x" * 50_000_000)
    obs = get()
    assert obs.body_truncated and obs.error_kind is ErrorKind.TOO_LARGE
    assert obs.body_text is not None and len(obs.body_text) <= BODY_CAP_BYTES


def test_a_server_that_never_answers_is_a_timeout() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()  # accepts connections, never answers
        url = f"http://127.0.0.1:{server.getsockname()[1]}/health"
        started = time.monotonic()
        obs = get(url, timeout_s=0.5)
        assert time.monotonic() - started < 2
        assert obs.error_kind is ErrorKind.TIMEOUT
        result = assess_api_connectivity(obs, 5.0)
        assert any(f.severity == "critical" for f in result.findings)


@respx.mock
def test_transient_failures_are_retried_definitive_answers_are_not() -> None:
    route = respx.get(URL)
    route.side_effect = [httpx.ConnectError("refused"), httpx.Response(200, json={"ok": True})]

    async def go(retry: bool) -> HttpObservation:
        async with httpx.AsyncClient() as client:
            return await fetch_with_retries(client, "GET", URL, retry=retry, budget_s=5)

    assert asyncio.run(go(True)).status_code == 200
    assert route.call_count == 2
    route.reset()
    route.side_effect = None
    route.respond(503, json={"status": "unhealthy"})  # the service's own answer
    assert asyncio.run(go(True)).status_code == 503
    assert route.call_count == 1


@respx.mock
def test_breaker_feeding_calls_are_never_retried() -> None:
    route = respx.get(URL)
    route.side_effect = [httpx.ConnectError("refused"), httpx.Response(200)]

    async def go() -> HttpObservation:
        async with httpx.AsyncClient() as client:
            return await fetch_with_retries(client, "GET", URL, retry=False)

    assert asyncio.run(go()).error_kind is ErrorKind.CONNECT
    assert route.call_count == 1


@respx.mock
def test_redirects_are_not_followed() -> None:
    respx.get(URL).respond(302, headers={"location": "http://elsewhere.test/steal"})
    other = respx.get("http://elsewhere.test/steal").respond(200)
    obs = get(headers={"Authorization": "Bearer secret"})
    assert obs.status_code == 302
    assert not other.called


@pytest.mark.parametrize("chunk_delay", [0.2])
def test_a_trickling_body_is_cut_at_the_timeout(chunk_delay: float) -> None:
    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")  # fmt: skip
        try:
            while True:
                writer.write(b"1\r\n \r\n")
                await writer.drain()
                await asyncio.sleep(chunk_delay)
        except (ConnectionError, OSError):
            pass

    async def go() -> HttpObservation:
        server = await asyncio.start_server(trickle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server, httpx.AsyncClient() as client:
            return await fetch(client, "GET", f"http://127.0.0.1:{port}/", timeout_s=1.0)

    started = time.monotonic()
    obs = asyncio.run(go())
    assert time.monotonic() - started < 3
    assert obs.error_kind is ErrorKind.TIMEOUT


def test_a_timeout_longer_than_httpx_default_is_honoured() -> None:
    """An answer after 5.5 s arrives when the caller allows 10 s: httpx's own 5 s default
    read timeout must not cut it short (an MLflow-touching request of the deployed version
    takes about 10 s, and cut short it would go on holding the replica)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Slow(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            time.sleep(5.5)  # the server's behaviour under test, not a wait in the test
            body = b'{"ok": true}'
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        obs = get(f"http://127.0.0.1:{server.server_port}/ready", timeout_s=10.0)
    finally:
        server.shutdown()
    assert obs.status_code == 200, obs.failure_text()
    assert obs.elapsed_ms is not None and obs.elapsed_ms >= 5500
