"""Every HTTP client the product builds honours the target's request timeout, above
httpx's own 5 s default too: a real server answering after 5.5 s is heard when the target
allows 10 s (by the diagnosis's Evidence, by the clients themselves, by the recovery's
write client)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from service_health.endpoints import HEALTH, RESET
from service_health.settings import Thresholds
from tasks import http
from tasks.evidence import Evidence
from tasks.recovery import ActionContext
from tests.recovery.world import make_target

SLOW_S = 5.5  # above httpx's default timeout (5 s)


class Slow(BaseHTTPRequestHandler):
    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        time.sleep(SLOW_S)  # the server's behaviour under test, not a wait in the test
        body = b'{"status": "healthy"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def slow() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def test_the_builders_set_the_callers_timeout_on_every_phase() -> None:
    for purpose in ("diagnose", "recover", "contract"):
        built = http.client(purpose, 12.5)
        assert built.timeout == httpx.Timeout(12.5), purpose
    target = make_target(thresholds=Thresholds(request_timeout_s=12.5))
    assert ActionContext(target).writers.http({("POST", RESET)}).timeout == httpx.Timeout(12.5)


def test_a_timeout_above_httpx_default_is_honoured_everywhere(slow: str) -> None:
    target = make_target(api_url=slow, thresholds=Thresholds(request_timeout_s=10.0))

    async def diagnosis() -> int | None:
        async with Evidence(target, None, time.monotonic() + 30) as ev:
            return (await ev.endpoint(HEALTH)).status_code

    async def plain_client() -> int:
        # Not through `fetch` (which sets its own timeout): the client's own must be 10 s.
        async with http.client("diagnose", 10.0) as client:
            return (await client.get(slow + HEALTH)).status_code

    async def writer() -> int:
        async with ActionContext(target).writers.http({("POST", RESET)}) as client:
            return (await client.post(slow + RESET)).status_code

    async def go() -> list[Any]:
        return list(await asyncio.gather(diagnosis(), plain_client(), writer()))

    started = time.monotonic()
    assert asyncio.run(go()) == [200, 200, 200]
    assert time.monotonic() - started >= SLOW_S
