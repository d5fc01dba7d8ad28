"""The stabilisation wait counts a /health answer as the verification would: a real HTTP
server answering 200 with `status: degraded` never makes the service stable. And the final
diagnosis it may start within its streak counts only when the streak completes."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from service_health.models import DiagnosticReport, Verdict
from service_health.recovery import ActionResult
from service_health.settings import CONSECUTIVE_HEALTHY
from tasks.recovery.early import EarlyVerification
from tasks.recovery.waits import HEALTH_INTERVAL_S, WaitData, wait_for_stabilization
from tests.recovery.world import make_target


class Service:
    """What GET /health says, changed by the test while the server runs."""

    def __init__(self) -> None:
        self.status = "degraded"
        self.script: list[str] = []  # the next answers' statuses, then `status`
        self.asked = 0
        self.asked_at: list[float] = []  # time.monotonic() of each GET

    def body(self) -> bytes:
        if self.script:
            self.status = self.script.pop(0)
        dependency = "healthy" if self.status == "healthy" else "unhealthy"
        return json.dumps(
            {
                "status": self.status,
                "version": "1.0.0",
                "timestamp": "2026-01-01T00:00:00Z",
                "services": {"database": "healthy", "redis": "healthy", "mlflow": dependency},
            }
        ).encode()


@pytest.fixture
def service(prefect_server: str) -> Iterator[tuple[str, Service]]:
    """The service on loopback; the session's Prefect server takes the wait's artifacts."""
    state = Service()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.asked += 1
            state.asked_at.append(time.monotonic())
            body = state.body()
            self.send_response(200)  # 200 either way, as the contract says for degraded
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", state
    finally:
        server.shutdown()
        server.server_close()


def wait(base: str, timeout_s: float) -> ActionResult[WaitData]:
    target = make_target(api_url=base, ecs_cluster=None, ecs_services=[])
    result: ActionResult[WaitData] = asyncio.run(
        wait_for_stabilization.fn(target, [], timeout_s=timeout_s)
    )
    return result


def test_a_degraded_200_is_not_stable(service: tuple[str, Service]) -> None:
    base, state = service
    result = wait(base, timeout_s=4)
    assert not result.success
    assert state.asked >= 3  # it kept asking, and no answer counted
    assert "0 of" in result.entries[0].details and "degraded" in result.entries[0].details


def test_stable_once_it_reports_healthy(service: tuple[str, Service]) -> None:
    base, state = service
    state.status = "healthy"
    result = wait(base, timeout_s=10)
    assert result.success, result.entries[0].details
    assert "consecutive healthy /health answers (HTTP 200 healthy" in result.entries[0].details


# -- the final diagnosis taken within the streak (tasks/recovery/early.py) ------------------


class Diagnoses:
    """A stand-in for the final diagnosis (the wait only starts it; what it checks is the
    diagnose flow's, tested there): notes how many /health answers the service had given
    when each began, and returns the verdict asked for."""

    def __init__(
        self, service: Service, verdict: Verdict = Verdict.HEALTHY, seconds: float = 0.0
    ) -> None:
        self.service, self.verdict, self.seconds = service, verdict, seconds
        self.started_after: list[int] = []
        self.ended_at: list[float] = []

    async def __call__(self) -> DiagnosticReport:
        self.started_after.append(self.service.asked)
        await asyncio.sleep(self.seconds)
        self.ended_at.append(time.monotonic())
        return DiagnosticReport(
            target="t", timestamp=f"2026-01-01T00:00:0{len(self.started_after)}+00:00",
            diagnostic_duration_seconds=0.0, overall_status=self.verdict,
        )  # fmt: skip


def wait_early(
    base: str, diagnoses: Diagnoses, timeout_s: float = 10
) -> tuple[ActionResult[WaitData], DiagnosticReport | None]:
    target = make_target(api_url=base, ecs_cluster=None, ecs_services=[])

    async def go() -> tuple[ActionResult[WaitData], DiagnosticReport | None]:
        early = EarlyVerification(diagnoses)
        result = await wait_for_stabilization.fn(target, [], timeout_s=timeout_s, early=early)
        taken = await early.take()
        await early.close()
        return result, taken

    return asyncio.run(go())


def test_the_final_diagnosis_lies_between_the_streaks_healthy_answers(
    service: tuple[str, Service],
) -> None:
    base, state = service
    state.status = "healthy"
    diagnoses = Diagnoses(state)
    result, taken = wait_early(base, diagnoses)
    assert result.success, result.entries[0].details
    # Begun after the first healthy answer, and the streak's last answer came after it.
    assert diagnoses.started_after == [1] and state.asked == CONSECUTIVE_HEALTHY == 2
    assert taken is not None and taken.overall_status is Verdict.HEALTHY


def test_the_last_answer_is_asked_once_the_diagnosis_has_ended(
    service: tuple[str, Service],
) -> None:
    """Not a fixed quarter of a second after the one before: as soon as the diagnosis begun
    there has ended (so it lies wholly between the two answers), and no later than the
    interval when it takes longer."""
    base, state = service
    state.status = "healthy"
    quick = Diagnoses(state, seconds=0.05)
    result, taken = wait_early(base, quick)
    assert result.success and taken is not None
    first, last = state.asked_at
    assert quick.ended_at[0] <= last < first + HEALTH_INTERVAL_S, (first, quick.ended_at, last)

    state.asked, state.asked_at = 0, []
    slow = Diagnoses(state, seconds=1.0)
    result, taken = wait_early(base, slow)
    assert result.success and taken is not None
    first, last = state.asked_at
    assert first + HEALTH_INTERVAL_S <= last < slow.ended_at[0], (first, last, slow.ended_at)


def test_a_broken_streak_discards_the_diagnosis_begun_within_it(
    service: tuple[str, Service],
) -> None:
    base, state = service
    state.script = ["healthy", "degraded", "healthy", "healthy"]
    diagnoses = Diagnoses(state)
    result, taken = wait_early(base, diagnoses)
    assert result.success, result.entries[0].details
    # One begun after the first healthy answer (the streak then broke), one after the third.
    assert diagnoses.started_after == [1, 3]
    assert taken is not None and taken.timestamp.startswith("2026-01-01T00:00:02")


def test_a_diagnosis_not_healthy_or_a_wait_that_fails_leaves_the_verification_to_a_fresh_one(
    service: tuple[str, Service],
) -> None:
    base, state = service
    state.status = "healthy"
    result, taken = wait_early(base, Diagnoses(state, Verdict.DEGRADED))
    assert result.success and taken is None

    state.script, state.asked = ["healthy"] + ["degraded"] * 100, 0
    diagnoses = Diagnoses(state)
    result, taken = wait_early(base, diagnoses, timeout_s=2)
    assert not result.success and diagnoses.started_after == [1] and taken is None
