"""The legacy flavour against the deployed version's measured behaviour (issue 16).

Against a real legacy sandbox (real processes, the real MLflow load balancer, real
PostgreSQL), with the retry budgets shortened by the fixture (tests/conftest.py
LEGACY_TEST_ENV) and the shape kept: a failing MLflow check costs two attempts with
urllib3-style retries and blocks the replica's whole event loop. Faults are driven
without waiting for the breaker to open; every bound is derived from the configured budget.
Requests go to one replica directly, so that timings are the replica's own.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sandbox.client import SandboxProcess
from sandbox.registry.config import LegacyRetryBudget
from sandbox.registry.legacy import STATE_HELP
from tests.conftest import LEGACY_TEST_ENV, converged
from tests.helpers import wait_for

BUDGET = LegacyRetryBudget.from_env(LEGACY_TEST_ENV)
TIMEOUT = float(LEGACY_TEST_ENV["MLFLOW_TIMEOUT_SECONDS"])
CHECK = BUDGET.mlflow_check_seconds()  # a refused or 5xx check: the sleeps alone
SLOW_CHECK = BUDGET.mlflow_check_seconds(per_request=TIMEOUT)  # every try times out
DB_CHECK = BUDGET.db_check_seconds()
# Scheduling on a shared two-core machine adds time, never removes it.
SLACK = 1.5
INSTANT = 0.5


@pytest.fixture
def legacy(legacy_sandbox: SandboxProcess) -> Iterator[SandboxProcess]:
    """The shared legacy sandbox, healthy, counters reset; healed and converged after."""
    wait_for(lambda: converged(legacy_sandbox), 90, "legacy sandbox to converge")
    legacy_sandbox.client.reset_request_counts()
    yield legacy_sandbox
    legacy_sandbox.client.heal()  # also resets every breaker
    wait_for(lambda: converged(legacy_sandbox), 90, "legacy sandbox to converge after healing")


def replica(sandbox: SandboxProcess) -> str:
    replicas = sandbox.client.status()["services"]["hokusai-registry"]["replicas"]
    address: str = replicas[0]["address"]
    return address


def get(address: str, path: str, timeout: float = 60) -> tuple[httpx.Response, float]:
    """One request on its own connection; returns the response and how long it took."""
    start = time.monotonic()
    with httpx.Client(base_url=f"http://{address}", timeout=timeout, trust_env=False) as c:
        response = c.get(path)
    return response, time.monotonic() - start


def mlflow_lb_requests(sandbox: SandboxProcess) -> int:
    requests: int = sandbox.client.status()["load_balancers"]["mlflow"]["requests"]
    return requests


def stats(sandbox: SandboxProcess, address: str) -> dict[str, Any]:
    result: dict[str, Any] = dict(sandbox.client.request_stats()[address])
    return result


class InThread:
    """Run a request in a thread (its own client); remember the answer and when it ended."""

    def __init__(self, address: str, path: str) -> None:
        self.response: httpx.Response | None = None
        self.duration = 0.0
        self.ended = 0.0
        self._thread = threading.Thread(target=self._run, args=(address, path), daemon=True)

    def _run(self, address: str, path: str) -> None:
        self.response, self.duration = get(address, path)
        self.ended = time.monotonic()

    def start(self) -> InThread:
        self._thread.start()
        return self

    def join(self) -> InThread:
        self._thread.join(120)
        assert self.response is not None, "the request did not finish"
        return self


def metric(text: str, name: str) -> Any:
    [family] = [f for f in text_string_to_metric_families(text) if f.name == name]
    return family


def breaker_gauge(address: str) -> tuple[str, float]:
    family = metric(get(address, "/metrics")[0].text, "mlflow_circuit_breaker_state")
    return family.documentation, family.samples[0].value


def info_error(address: str) -> str:
    family = metric(get(address, "/metrics")[0].text, "mlflow_info_info")
    error: str = family.samples[0].labels["error"]
    return error


# ---------------------------------------------------------------------------- the budget


def test_the_default_budget_is_the_deployed_one() -> None:
    deployed = LegacyRetryBudget()
    # 2 attempts x (0 + 1.7 + 3.4 s) of urllib3 backoff: about 10 s per refused check
    # (11 s measured for /health/mlflow, 20 s for /ready's two).
    assert deployed.mlflow_retry_sleeps() == pytest.approx([0.0, 1.7, 3.4])
    assert 9.5 <= deployed.mlflow_check_seconds() <= 11
    assert deployed.db_retry_sleeps() == [1.0, 2.0]  # three tries, 1 s and 2 s between
    assert deployed.db_check_seconds() == 3.0
    # The fixture keeps the shape, only the sleeps are shorter.
    assert (BUDGET.mlflow_attempts, BUDGET.mlflow_http_retries, BUDGET.db_attempts) == (2, 3, 3)
    assert 1.5 <= CHECK <= 2.0
    with pytest.raises(ValueError, match="LEGACY_MLFLOW_ATTEMPTS"):
        LegacyRetryBudget.from_env({"LEGACY_MLFLOW_ATTEMPTS": "two"})
    with pytest.raises(ValueError, match="at least 1"):
        LegacyRetryBudget.from_env({"LEGACY_DB_ATTEMPTS": "0"})


# ----------------------------------------------------------- MLflow down, breaker CLOSED


def test_one_check_blocks_the_whole_api_while_it_runs(legacy: SandboxProcess) -> None:
    address = replica(legacy)
    legacy.client.fault("mlflow-down")
    before = mlflow_lb_requests(legacy)
    check = InThread(address, "/health/mlflow").start()
    # The check has started once its first try reached MLflow's load balancer.
    wait_for(lambda: mlflow_lb_requests(legacy) > before, 10, "the first MLflow try")
    sent = time.monotonic()
    live = InThread(address, "/live").start().join()
    check.join()
    assert check.response is not None and live.response is not None
    assert check.response.status_code == 200
    assert check.response.json()["connected"] is False
    assert check.response.json()["circuit_breaker_state"] == "CLOSED"
    assert CHECK * 0.95 <= check.duration <= CHECK + SLACK, check.duration
    # /live was not answered until the check was over.
    assert live.response.status_code == 200
    assert live.ended >= check.ended - 0.2, (live.ended, check.ended)
    assert live.duration >= check.ended - sent - 0.2, live.duration
    # Retries are HTTP requests: four tries per attempt, two attempts.
    tries = (BUDGET.mlflow_http_retries + 1) * BUDGET.mlflow_attempts
    assert mlflow_lb_requests(legacy) - before == tries
    replica_stats = stats(legacy, address)
    assert replica_stats["mlflow_checks"] == 1
    assert replica_stats["max_mlflow_in_flight"] == 1  # /live is not MLflow-touching
    assert replica_stats["counts"] == {"GET /health/mlflow": 1, "GET /live": 1}


def test_ready_runs_the_check_twice(legacy: SandboxProcess) -> None:
    address = replica(legacy)
    legacy.client.fault("mlflow-down")
    ready, duration = get(address, "/ready")
    assert ready.status_code == 200
    body = ready.json()
    assert (body["ready"], body["can_serve_traffic"], body["degraded_mode"]) == (
        False,
        True,
        True,
    )
    assert 2 * CHECK * 0.95 <= duration <= 2 * CHECK + SLACK, duration
    assert stats(legacy, address)["mlflow_checks"] == 2


@pytest.mark.parametrize(
    ("fault", "per_try"),
    # Timeouts last: the load balancer finishes the tries abandoned by the replica a few
    # seconds later, which would show in the next case's count of MLflow requests.
    [("mlflow-down", 0.0), ("mlflow-errors", 0.0), ("mlflow-slow", TIMEOUT)],
    ids=["refused", "5xx", "timeout"],
)
def test_every_kind_of_failure_costs_the_retries(
    legacy: SandboxProcess, fault: str, per_try: float
) -> None:
    address = replica(legacy)
    legacy.client.fault(fault)
    before = mlflow_lb_requests(legacy)
    response, duration = get(address, "/health/mlflow")
    assert response.json()["connected"] is False
    expected = BUDGET.mlflow_check_seconds(per_request=per_try)
    assert expected * 0.95 <= duration <= expected + SLACK, (fault, duration, expected)
    if not per_try:
        # Every try is a request answered by MLflow's load balancer (a timed-out one is
        # abandoned there, uncounted: the duration is its evidence).
        tries = (BUDGET.mlflow_http_retries + 1) * BUDGET.mlflow_attempts
        assert mlflow_lb_requests(legacy) - before == tries
    assert stats(legacy, address)["mlflow_checks"] == 1


def test_after_five_failures_the_breaker_is_open_and_calls_are_instant(
    legacy: SandboxProcess,
) -> None:
    address = replica(legacy)
    legacy.client.fault("mlflow-down")
    # /ready twice (two checks each), then /health/mlflow: five failures, none refused.
    for _ in range(2):
        _, duration = get(address, "/ready")
        assert duration >= 2 * CHECK * 0.95
    assert stats(legacy, address)["mlflow_refused"] == 0
    last, duration = get(address, "/health/mlflow")
    assert last.json()["circuit_breaker_details"]["failure_count"] == 4  # read before
    assert duration >= CHECK * 0.95
    # OPEN now: nothing touches MLflow any more, so nothing blocks.
    for path in ("/health/mlflow", "/ready", "/metrics", "/health/status"):
        response, duration = get(address, path)
        assert duration < INSTANT, (path, duration)
        if path == "/health/mlflow":
            assert response.status_code == 500
            assert response.json()["circuit_breaker_state"] == "UNKNOWN"
        if path == "/ready":
            [ml] = [c for c in response.json()["checks"] if c["name"] == "mlflow"]
            assert ml["error"] == "Circuit breaker open - MLflow temporarily unavailable"
    replica_stats = stats(legacy, address)
    assert replica_stats["mlflow_checks"] == 5
    # /health/mlflow 1, /ready 2, /metrics 1, /health/status 2: all refused.
    assert replica_stats["mlflow_refused"] == 6
    assert breaker_gauge(address) == (STATE_HELP, 2.0)


def test_postgres_down_ready_answers_503_after_the_database_retries(
    legacy: SandboxProcess,
) -> None:
    address = replica(legacy)
    legacy.client.fault("postgres-down")
    # The database check blocks the loop too; MLflow is healthy, so its checks are quick.
    ready = InThread(address, "/ready").start().join()
    assert ready.response is not None
    assert ready.response.status_code == 503
    body = ready.response.json()
    assert body["can_serve_traffic"] is False
    [db] = [c for c in body["checks"] if c["name"] == "database"]
    assert (db["passed"], db["critical"]) == (False, True)
    assert DB_CHECK * 0.95 <= ready.duration <= DB_CHECK + SLACK, ready.duration


# ------------------------------------------------------------------------------ /metrics


def test_metrics_state_follows_its_own_help_text(legacy: SandboxProcess) -> None:
    address = replica(legacy)
    assert breaker_gauge(address) == (STATE_HELP, 0.0)  # CLOSED
    assert "0=CLOSED, 1=HALF_OPEN, 2=OPEN" in STATE_HELP
    legacy.client.force_breaker("HALF_OPEN")
    # The scrape's own trial call succeeds; one success does not close it (threshold 2).
    assert breaker_gauge(address) == (STATE_HELP, 1.0)
    legacy.client.force_breaker("OPEN")
    assert breaker_gauge(address) == (STATE_HELP, 2.0)


def test_info_label_changes_every_second_while_open(legacy: SandboxProcess) -> None:
    address = replica(legacy)
    legacy.client.force_breaker("OPEN")
    first = info_error(address)
    assert "retry in" in first, first
    # The countdown is in the text: another scrape a second later reads another label.
    later = wait_for(
        lambda: (e := info_error(address)) != first and e, 3, "the info label to change"
    )
    assert isinstance(later, str) and "retry in" in later, later
    assert stats(legacy, address)["mlflow_checks"] == 0  # every scrape was refused


# -------------------------------------------------------------------------------- reset


def test_reset_needs_no_credentials_and_really_resets(legacy: SandboxProcess) -> None:
    address = replica(legacy)
    legacy.client.force_breaker("OPEN")
    assert get(address, "/health/mlflow")[0].status_code == 500  # OPEN
    with httpx.Client(base_url=f"http://{address}", timeout=10, trust_env=False) as c:
        reset = c.post("/health/mlflow/reset")  # no Authorization header at all
    assert reset.status_code == 200
    assert (reset.json()["previous_state"], reset.json()["state"]) == ("OPEN", "CLOSED")
    after = get(address, "/health/mlflow")[0]
    assert after.status_code == 200
    assert after.json()["circuit_breaker_state"] == "CLOSED"
    assert after.json()["connected"] is True


# ---------------------------------------------------------------------- request accounting


def test_in_flight_counter_serial_then_concurrent(legacy: SandboxProcess) -> None:
    address = replica(legacy)
    with httpx.Client(base_url=f"http://{address}", timeout=30, trust_env=False) as c:
        for _ in range(3):
            assert c.get("/health/mlflow").status_code == 200
        assert c.get("/metrics").status_code == 200
    serial = stats(legacy, address)
    assert serial["max_mlflow_in_flight"] == 1
    assert serial["mlflow_checks"] == 4
    assert serial["mlflow_in_flight"] == 0

    legacy.client.reset_request_counts()
    legacy.client.fault("mlflow-down")
    barrier = threading.Barrier(2)

    def at_once() -> tuple[httpx.Response, float]:
        barrier.wait()
        return get(address, "/health/mlflow")

    results: list[tuple[httpx.Response, float]] = []
    threads = [threading.Thread(target=lambda: results.append(at_once())) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 2
    concurrent = stats(legacy, address)
    assert concurrent["max_mlflow_in_flight"] == 2
    assert concurrent["mlflow_checks"] == 2
    # The second waited for the first: they queue on the blocked loop.
    durations = sorted(d for _, d in results)
    assert durations[0] >= CHECK * 0.95
    assert durations[1] >= 2 * CHECK * 0.95, durations
    # The per-replica helpers read the same figures.
    assert legacy.client.max_mlflow_in_flight()[address] == 2
    assert legacy.client.mlflow_checks()[address] == 2
    legacy.client.reset_request_counts()
    reset = stats(legacy, address)
    assert (reset["max_mlflow_in_flight"], reset["mlflow_checks"], reset["counts"]) == (0, 0, {})
