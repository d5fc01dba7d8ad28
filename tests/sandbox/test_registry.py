"""The registry stand-in against real PostgreSQL, Redis and MLflow-stub servers.

Registry replicas and the MLflow stub run as real uvicorn servers in threads of this
process (each with its own event loop); outages are injected by really stopping servers.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from sandbox import mlflow_stub
from sandbox.ports import free_port, wait_for_port
from sandbox.registry import RegistryConfig, create_app
from sandbox.registry.config import LegacyRetryBudget
from sandbox.servers import PostgresServer, RedisServer
from tests.conftest import LEGACY_TEST_ENV

REPO = Path(__file__).resolve().parents[2]
API_KEY = "test-api-key"
ADMIN_TOKEN = "test-admin-token"
ADMIN = {"X-Sandbox-Token": ADMIN_TOKEN}


class ServerThread:
    """A uvicorn server in a daemon thread; stop() then start() keeps the port."""

    def __init__(self, app_factory: Callable[[], FastAPI], port: int | None = None) -> None:
        self.app_factory = app_factory
        self.port = port or free_port()
        self.server: uvicorn.Server | None = None
        self.thread: threading.Thread | None = None
        self.app: FastAPI | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.app = self.app_factory()
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=self.port,
            access_log=False,
            log_level="warning",
            timeout_graceful_shutdown=1,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"server on port {self.port} did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        if self.server is not None and self.thread is not None:
            self.server.should_exit = True
            self.thread.join(15)
        self.server = self.thread = None


def wait_until(predicate: Callable[[], bool], timeout: float = 10, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def parse_ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def assert_aware_utc(value: str) -> None:
    stamp = parse_ts(value)
    assert stamp.tzinfo is not None and stamp.utcoffset() == UTC.utcoffset(None)
    assert abs((datetime.now(UTC) - stamp).total_seconds()) < 60


def metric_values(text: str) -> dict[str, float]:
    """Unlabelled sample name -> value."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.labels:
                out[sample.name] = sample.value
    return out


class Registry:
    """A running replica plus a client for it."""

    def __init__(self, server: ServerThread) -> None:
        self.server = server
        self.client = httpx.Client(base_url=server.url, timeout=10, trust_env=False)

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.client.get(path, **kw)

    def post(self, path: str, **kw: Any) -> httpx.Response:
        return self.client.post(path, **kw)

    def state(self) -> dict[str, Any]:
        response = self.get("/__sandbox/state", headers=ADMIN)
        assert response.status_code == 200
        return response.json()

    def breaker(self) -> dict[str, Any]:
        return self.state()["breaker"]

    def fault(self, mode: str = "none", latency_ms: int = 0) -> None:
        body = {"mode": mode, "latency_ms": latency_ms}
        assert self.post("/__sandbox/fault", json=body, headers=ADMIN).status_code == 200


@pytest.fixture
def mlflow() -> Iterator[ServerThread]:
    server = ServerThread(mlflow_stub.create_app)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def make_registry(
    postgres_server: PostgresServer, redis_server: RedisServer, mlflow: ServerThread
) -> Iterator[Callable[..., Registry]]:
    started: list[Registry] = []

    def make(**overrides: str) -> Registry:
        env = {
            "DATABASE_URL": postgres_server.url,
            "REDIS_URL": redis_server.url,
            "MLFLOW_TRACKING_URI": mlflow.url,
            "API_KEY": API_KEY,
            "SANDBOX_ADMIN_TOKEN": ADMIN_TOKEN,
            "MLFLOW_CB_FAILURE_THRESHOLD": "3",
            "MLFLOW_CB_RECOVERY_TIMEOUT": "0.5",
            "MLFLOW_CB_SUCCESS_THRESHOLD": "2",
            "MLFLOW_CB_MAX_RECOVERY_ATTEMPTS": "2",
            "MLFLOW_TIMEOUT_SECONDS": "1",
            # The stopped databases these tests use refuse at once; a running one slowed by a
            # busy machine must not read as down.
            "DEPENDENCY_TIMEOUT_SECONDS": "10",
            "REPLICA_ID": "r1",
            **overrides,
        }
        env = {k: v for k, v in env.items() if v != "<unset>"}
        config = RegistryConfig.from_env(env)
        server = ServerThread(lambda: create_app(config))
        server.start()
        registry = Registry(server)
        started.append(registry)
        return registry

    yield make
    for registry in started:
        registry.client.close()
        registry.server.stop()


# ===================================================================== contract flavour


def test_contract_every_endpoint_when_all_is_healthy(
    make_registry: Callable[..., Registry],
) -> None:
    reg = make_registry()

    health = reg.get("/health")
    assert health.status_code == 200
    body = health.json()
    assert body["status"] == "healthy"
    assert body["version"] == "1.0.0"
    assert body["services"] == {"mlflow": "healthy", "redis": "healthy", "postgres": "healthy"}
    assert_aware_utc(body["timestamp"])

    detailed = reg.get("/health", params={"detailed": "true"}).json()
    assert detailed["status"] == "healthy"
    assert {"cpu_percent", "memory_percent"} <= detailed["system_info"].keys()
    assert detailed["details"]["postgres"]["status"] == "healthy"
    assert detailed["details"]["redis"]["status"] == "healthy"
    assert detailed["details"]["mlflow"]["connected"] is True
    assert detailed["details"]["mlflow"]["circuit_breaker"]["state"] == "CLOSED"

    ready = reg.get("/ready")
    assert ready.status_code == 200
    rb = ready.json()
    assert (rb["ready"], rb["can_serve_traffic"], rb["degraded_mode"]) == (True, True, False)
    checks = {c["name"]: c for c in rb["checks"]}
    assert checks["database"] == {"name": "database", "passed": True, "critical": True}
    assert checks["redis"]["critical"] is False and checks["redis"]["passed"] is True
    assert checks["mlflow"]["critical"] is False and checks["mlflow"]["passed"] is True
    assert "error" not in checks["mlflow"]

    live = reg.get("/live")
    assert live.status_code == 200
    assert live.json()["alive"] is True
    assert_aware_utc(live.json()["timestamp"])

    ml = reg.get("/health/mlflow")
    assert ml.status_code == 200
    mb = ml.json()
    assert mb["connected"] is True
    assert mb["circuit_breaker_state"] == "CLOSED"
    details = mb["circuit_breaker_details"]
    assert details["state"] == "CLOSED"
    assert details["failure_count"] == 0
    assert details["time_until_retry"] is None
    assert details["recovery_attempts"] == 0
    assert "error" not in mb
    assert_aware_utc(mb["timestamp"])

    status = reg.get("/health/status")
    assert status.status_code == 200
    sb = status.json()
    assert sb["service_name"] == "hokusai-registry"
    assert sb["overall_health"] == "healthy"
    assert sb["mlflow"]["status"]["connected"] is True
    assert sb["mlflow"]["circuit_breaker"]["state"] == "CLOSED"
    assert {"cpu_percent", "memory_percent"} <= sb["system_info"].keys()
    assert_aware_utc(sb["timestamp"])

    reset = reg.post("/health/mlflow/reset", headers={"Authorization": f"Bearer {API_KEY}"})
    assert reset.status_code == 200
    rs = reset.json()
    assert rs["previous_state"] == "CLOSED" and rs["state"] == "CLOSED" and rs["message"]
    assert_aware_utc(rs["timestamp"])

    metrics = reg.get("/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    values = metric_values(metrics.text)
    assert values["mlflow_circuit_breaker_state"] == 0
    assert values["mlflow_circuit_breaker_failures"] == 0
    assert values["mlflow_circuit_breaker_recovery_attempts"] == 0
    requests = {
        (s.labels["method"], s.labels["path"], s.labels["status"]): s.value
        for f in text_string_to_metric_families(metrics.text)
        if f.name == "http_requests"
        for s in f.samples
        if s.name == "http_requests_total"
    }
    assert requests[("GET", "/health", "200")] == 2
    assert requests[("POST", "/health/mlflow/reset", "200")] == 1
    assert not any(path.startswith("/__sandbox") for _, path, _ in requests)


def test_contract_auth_on_mlflow_endpoints(make_registry: Callable[..., Registry]) -> None:
    reg = make_registry()
    good = {"Authorization": f"Bearer {API_KEY}"}
    wrong = {"Authorization": "Bearer not-the-key"}

    assert reg.post("/health/mlflow/reset").status_code == 401
    assert reg.post("/health/mlflow/reset").headers["www-authenticate"] == "Bearer"
    assert (
        reg.post("/health/mlflow/reset", headers={"Authorization": "Basic eDp5"}).status_code == 401
    )
    assert reg.post("/health/mlflow/reset", headers=wrong).status_code == 403
    assert reg.post("/health/mlflow/reset", headers=good).status_code == 200

    for path in ("/health/mlflow", "/health/status"):
        assert reg.get(path).status_code == 200  # bearer optional
        assert reg.get(path, headers=good).status_code == 200
        assert reg.get(path, headers=wrong).status_code == 403


def test_contract_breaker_opens_recovers_and_closes(
    make_registry: Callable[..., Registry], mlflow: ServerThread
) -> None:
    # Recovery 2 s: the OPEN-phase checks below must finish before the breaker half-opens.
    reg = make_registry(MLFLOW_CB_RECOVERY_TIMEOUT="2")
    mlflow.stop()

    first = reg.get("/health/mlflow")
    assert first.status_code == 503
    assert first.json()["connected"] is False
    assert first.json()["circuit_breaker_state"] == "CLOSED"
    assert first.json()["error"]
    # CLOSED with a failing call: MLflow unhealthy, service degraded.
    health = reg.get("/health")
    assert health.status_code == 200
    assert health.json()["status"] == "degraded"
    assert health.json()["services"]["mlflow"] == "unhealthy"

    opened = reg.get("/health/mlflow")  # third failure: threshold reached
    assert opened.status_code == 503
    ob = opened.json()
    assert ob["circuit_breaker_state"] == "OPEN"
    assert ob["circuit_breaker_details"]["failure_count"] == 3
    assert 0 < ob["circuit_breaker_details"]["time_until_retry"] <= 2

    # While OPEN, calls are refused without touching MLflow: even a healthy MLflow is not
    # reached until the recovery timeout has passed.
    mlflow.start()
    health = reg.get("/health")
    assert health.status_code == 200
    assert health.json()["status"] == "degraded"
    assert health.json()["services"]["mlflow"] == "degraded"
    ready = reg.get("/ready")
    assert ready.status_code == 200
    rb = ready.json()
    assert rb["ready"] is True and rb["can_serve_traffic"] is True and rb["degraded_mode"] is True
    [mlflow_check] = [c for c in rb["checks"] if c["name"] == "mlflow"]
    assert mlflow_check["passed"] is False and mlflow_check["degraded_mode"] is True
    assert "OPEN" in mlflow_check["error"]
    assert reg.breaker()["state"] in ("OPEN", "HALF_OPEN")
    metrics = metric_values(reg.get("/metrics").text)
    assert metrics["mlflow_circuit_breaker_state"] in (1, 2)

    wait_until(lambda: reg.breaker()["state"] == "HALF_OPEN", what="HALF_OPEN")
    assert metric_values(reg.get("/metrics").text)["mlflow_circuit_breaker_state"] == 2
    trial = reg.get("/health")  # first trial call succeeds: still recovering
    assert trial.json()["services"]["mlflow"] == "recovering"
    assert trial.json()["status"] == "degraded"
    closed = reg.get("/health/mlflow")  # second consecutive success closes it
    assert closed.status_code == 200
    assert closed.json()["circuit_breaker_state"] == "CLOSED"
    assert closed.json()["circuit_breaker_details"]["time_until_retry"] is None
    assert reg.get("/health").json()["status"] == "healthy"


def test_contract_repeated_failures_leave_breaker_stuck_until_reset(
    make_registry: Callable[..., Registry], mlflow: ServerThread
) -> None:
    reg = make_registry()  # max recovery attempts 2, recovery 0.5 s
    mlflow.stop()
    for _ in range(3):
        reg.get("/health/mlflow")
    assert reg.breaker()["state"] == "OPEN"

    for attempt in (1, 2):
        wait_until(lambda: reg.breaker()["state"] == "HALF_OPEN", what="HALF_OPEN")
        failed = reg.get("/health/mlflow")
        assert failed.status_code == 503
        assert failed.json()["circuit_breaker_state"] == "OPEN"
        assert failed.json()["circuit_breaker_details"]["recovery_attempts"] == attempt

    stuck = reg.get("/health/mlflow").json()
    assert stuck["circuit_breaker_state"] == "OPEN"
    assert stuck["circuit_breaker_details"]["time_until_retry"] is None
    assert "manual reset" in stuck["error"]
    # No automatic retry any more, however long we wait (here: three recovery timeouts).
    mlflow.start()
    time.sleep(1.5)
    assert reg.breaker()["state"] == "OPEN"
    assert reg.get("/health/mlflow").status_code == 503
    values = metric_values(reg.get("/metrics").text)
    assert values["mlflow_circuit_breaker_state"] == 1
    assert values["mlflow_circuit_breaker_recovery_attempts"] == 2

    assert reg.post("/health/mlflow/reset").status_code == 401
    assert (
        reg.post("/health/mlflow/reset", headers={"Authorization": "Bearer x"}).status_code == 403
    )
    assert reg.breaker()["state"] == "OPEN"
    reset = reg.post("/health/mlflow/reset", headers={"Authorization": f"Bearer {API_KEY}"})
    assert reset.status_code == 200
    assert reset.json()["previous_state"] == "OPEN"
    assert reset.json()["state"] == "CLOSED"
    after = reg.get("/health/mlflow")
    assert after.status_code == 200
    assert after.json()["connected"] is True
    assert after.json()["circuit_breaker_details"]["recovery_attempts"] == 0


def test_contract_postgres_down_is_unhealthy_and_not_ready(
    make_registry: Callable[..., Registry], postgres_server: PostgresServer
) -> None:
    reg = make_registry()
    postgres_server.stop()
    try:
        health = reg.get("/health")
        assert health.status_code == 503
        assert health.json()["status"] == "unhealthy"
        assert health.json()["services"]["postgres"] == "unhealthy"
        ready = reg.get("/ready")
        assert ready.status_code == 503
        rb = ready.json()
        assert rb["ready"] is False and rb["can_serve_traffic"] is False
        [db] = [c for c in rb["checks"] if c["name"] == "database"]
        assert db["passed"] is False and db["critical"] is True and db["error"]
        assert reg.get("/live").status_code == 200
        assert reg.get("/health/status").json()["overall_health"] == "unhealthy"
    finally:
        postgres_server.start()
    assert reg.get("/health").status_code == 200


def test_contract_redis_down_is_degraded_but_serving(
    make_registry: Callable[..., Registry], redis_server: RedisServer
) -> None:
    reg = make_registry()
    redis_server.stop()
    try:
        health = reg.get("/health")
        assert health.status_code == 200
        assert health.json()["status"] == "degraded"
        assert health.json()["services"]["redis"] == "unhealthy"
        assert health.json()["services"]["postgres"] == "healthy"
        ready = reg.get("/ready")
        assert ready.status_code == 200
        rb = ready.json()
        assert rb["can_serve_traffic"] is True and rb["degraded_mode"] is True
        [redis_check] = [c for c in rb["checks"] if c["name"] == "redis"]
        assert redis_check["passed"] is False and redis_check["critical"] is False
    finally:
        redis_server.start()
    assert reg.get("/health").json()["status"] == "healthy"


# ======================================================================= sandbox admin


def test_admin_routes_need_the_token(make_registry: Callable[..., Registry]) -> None:
    reg = make_registry()
    assert reg.get("/__sandbox/state").status_code == 404
    assert reg.get("/__sandbox/state", headers={"X-Sandbox-Token": "nope"}).status_code == 404
    assert reg.post("/__sandbox/fault", json={"mode": "wedged"}).status_code == 404
    state = reg.state()
    assert state["replica_id"] == "r1"
    assert state["flavor"] == "contract"
    assert state["breaker"]["state"] == "CLOSED"
    assert state["fault"] == {"mode": "none", "latency_ms": 0}
    bad = reg.post("/__sandbox/fault", json={"mode": "sideways"}, headers=ADMIN)
    assert bad.status_code == 422


def test_admin_wedged_hung_and_latency_faults(make_registry: Callable[..., Registry]) -> None:
    reg = make_registry()

    reg.fault("wedged")
    for path in ("/health", "/live", "/ready", "/metrics"):
        assert reg.get(path).status_code == 500
    assert reg.post("/health/mlflow/reset").status_code == 500
    assert reg.state()["fault"]["mode"] == "wedged"  # admin routes are exempt

    reg.fault("hung")
    impatient = httpx.Client(base_url=reg.server.url, timeout=0.5, trust_env=False)
    with impatient, pytest.raises(httpx.ReadTimeout):
        impatient.get("/live")
    assert reg.state()["fault"]["mode"] == "hung"

    reg.fault("none", latency_ms=300)
    start = time.monotonic()
    assert reg.get("/live").status_code == 200
    assert time.monotonic() - start >= 0.3

    # Fields left out keep their value: wedging keeps the latency, healing keeps it too.
    for mode in ("wedged", "none"):
        set_mode = reg.post("/__sandbox/fault", json={"mode": mode}, headers=ADMIN)
        assert set_mode.json()["fault"] == {"mode": mode, "latency_ms": 300}
    reg.fault("none", latency_ms=0)
    assert reg.get("/health").json()["status"] == "healthy"


def test_admin_stuck_open(make_registry: Callable[..., Registry]) -> None:
    reg = make_registry()
    response = reg.post("/__sandbox/breaker/stuck-open", headers=ADMIN)
    assert response.status_code == 200
    assert response.json()["breaker"]["state"] == "OPEN"
    ml = reg.get("/health/mlflow")
    assert ml.status_code == 503  # MLflow is healthy; the breaker refuses anyway
    details = ml.json()["circuit_breaker_details"]
    assert details["time_until_retry"] is None
    assert details["recovery_attempts"] == 2
    assert reg.get("/health").json()["services"]["mlflow"] == "degraded"
    reset = reg.post("/health/mlflow/reset", headers={"Authorization": f"Bearer {API_KEY}"})
    assert reset.json()["previous_state"] == "OPEN"
    assert reg.get("/health/mlflow").status_code == 200


def test_admin_request_counting(make_registry: Callable[..., Registry]) -> None:
    reg = make_registry()
    reg.get("/live")
    assert reg.post("/__sandbox/requests/reset", headers=ADMIN).json()["counts"] == {}
    reg.get("/health")
    reg.get("/health")
    reg.get("/health", params={"detailed": "true"})
    reg.post("/health/mlflow/reset")  # counted even though it is refused (401)
    reg.get("/no-such-path")
    reg.state()  # admin: not counted
    counts = reg.get("/__sandbox/requests", headers=ADMIN).json()["counts"]
    assert counts == {
        "GET /health": 2,
        "GET /health?detailed=true": 1,
        "POST /health/mlflow/reset": 1,
        "GET /no-such-path": 1,
    }
    stats = reg.get("/__sandbox/requests", headers=ADMIN).json()
    # Each /health calls MLflow through the breaker once, one after the other.
    assert stats["mlflow_checks"] == 3 and stats["mlflow_refused"] == 0
    assert (stats["max_mlflow_in_flight"], stats["mlflow_in_flight"]) == (1, 0)
    reg.fault("wedged")
    reg.get("/ready")  # faulted requests were still received, so they count
    reg.fault()
    assert reg.get("/__sandbox/requests", headers=ADMIN).json()["counts"]["GET /ready"] == 1


def test_registry_command_line_starts_a_replica(
    postgres_server: PostgresServer, redis_server: RedisServer, mlflow: ServerThread
) -> None:
    port = free_port()
    env = {
        "PATH": "/usr/bin:/bin",
        "DATABASE_URL": postgres_server.url,
        "REDIS_URL": redis_server.url,
        "MLFLOW_TRACKING_URI": mlflow.url,
        "API_KEY": API_KEY,
        "SANDBOX_ADMIN_TOKEN": ADMIN_TOKEN,
        "REPLICA_ID": "cli",
        "REGISTRY_FLAVOR": "legacy",
    }
    argv = [sys.executable, "-m", "sandbox.registry", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stderr=subprocess.PIPE)
    try:
        assert wait_for_port("127.0.0.1", port, 20, alive=lambda: proc.poll() is None)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False) as client:
            assert client.get("/live").json()["alive"] is True
            state = client.get("/__sandbox/state", headers=ADMIN).json()
            assert (state["replica_id"], state["flavor"]) == ("cli", "legacy")
            assert state["breaker"]["failure_threshold"] == 5
            assert state["breaker"]["recovery_timeout"] == 60
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=15)
    assert API_KEY.encode() not in err


# ====================================================================== legacy flavour


@pytest.fixture
def legacy(make_registry: Callable[..., Registry]) -> Registry:
    # The deployed thresholds (5 failures, 60 s) unless a test needs faster ones; the
    # deployed retry shape with the suite's shorter sleeps.
    return make_registry(
        REGISTRY_FLAVOR="legacy",
        MLFLOW_CB_FAILURE_THRESHOLD="<unset>",
        MLFLOW_CB_RECOVERY_TIMEOUT="<unset>",
        **LEGACY_TEST_ENV,
    )


def raw_get(port: int, path: str) -> tuple[bytes, socket.socket]:
    """Send one keep-alive GET on a raw socket, read until the server closes or the
    response is complete; return the bytes and the still-open client socket."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: keep-alive\r\n\r\n".encode())
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = [ln for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length:")]
        if length and len(body) >= int(length[0].split(b":")[1]):
            break
    return data, sock


def connection_is_dropped(sock: socket.socket) -> bool:
    """Reuse the connection: True when the server has closed it (EOF or reset)."""
    try:
        sock.sendall(b"GET /live HTTP/1.1\r\nHost: t\r\n\r\n")
        return sock.recv(65536) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    finally:
        sock.close()


def test_legacy_health_is_lightweight_and_always_healthy(
    legacy: Registry, mlflow: ServerThread, redis_server: RedisServer
) -> None:
    mlflow.stop()
    redis_server.stop()
    try:
        health = legacy.get("/health")
        assert health.status_code == 200
        body = health.json()
        assert body["status"] == "healthy"
        assert body["services"] == {"api": "healthy", "dependency_checks": "skipped"}
        assert datetime.fromisoformat(body["timestamp"]).tzinfo is None
    finally:
        redis_server.start()


@pytest.mark.parametrize("path", ["/health?detailed=true", "/health/status"])
def test_legacy_validation_500_drops_the_keep_alive_connection(legacy: Registry, path: str) -> None:
    data, sock = raw_get(legacy.server.port, path)
    head = data.split(b"\r\n\r\n")[0].lower()
    assert data.startswith(b"HTTP/1.1 500")
    assert b"connection: close" in head
    if path == "/health/status":
        assert b"validation error" in data  # the deployed endpoint returned the text
    assert connection_is_dropped(sock)
    # An ordinary endpoint keeps the connection open, by contrast.
    data, sock = raw_get(legacy.server.port, "/live")
    assert data.startswith(b"HTTP/1.1 200")
    sock.sendall(b"GET /live HTTP/1.1\r\nHost: t\r\n\r\n")
    assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    sock.close()


def test_legacy_ready_checks_and_degradation(
    legacy: Registry, mlflow: ServerThread, postgres_server: PostgresServer
) -> None:
    ready = legacy.get("/ready")
    assert ready.status_code == 200
    rb = ready.json()
    assert [c["name"] for c in rb["checks"]] == ["database", "mlflow", "model_warmup"]
    checks = {c["name"]: c for c in rb["checks"]}
    assert checks["database"]["critical"] is True and checks["database"]["passed"] is True
    assert checks["mlflow"]["critical"] is False and checks["mlflow"]["passed"] is True
    assert checks["model_warmup"]["passed"] is False
    assert checks["model_warmup"]["critical"] is False
    assert datetime.fromisoformat(rb["timestamp"]).tzinfo is None

    mlflow.stop()
    down = legacy.get("/ready")
    assert down.status_code == 200
    db = down.json()
    assert (db["ready"], db["can_serve_traffic"], db["degraded_mode"]) == (False, True, True)
    # Two MLflow calls per /ready, each counted by the breaker.
    assert legacy.breaker()["failure_count"] == 2
    legacy.get("/ready")
    assert legacy.breaker()["failure_count"] == 4
    opened = legacy.get("/ready").json()  # the 5th failure opened it; the 6th call is refused
    assert legacy.breaker()["state"] == "OPEN"
    [ml] = [c for c in opened["checks"] if c["name"] == "mlflow"]
    assert ml["error"] == "Circuit breaker open - MLflow temporarily unavailable"
    assert ml["degraded_mode"] is True

    postgres_server.stop()
    try:
        no_db = legacy.get("/ready")
        assert no_db.status_code == 503
        assert no_db.json()["can_serve_traffic"] is False
    finally:
        postgres_server.start()


def test_legacy_health_mlflow_reports_stale_state_then_500_when_open(
    legacy: Registry, mlflow: ServerThread
) -> None:
    up = legacy.get("/health/mlflow")
    assert up.status_code == 200
    ub = up.json()
    assert ub["connected"] is True and ub["circuit_breaker_state"] == "CLOSED"
    details = ub["circuit_breaker_details"]
    assert details["time_until_retry"] == 0
    assert (details["failure_threshold"], details["recovery_timeout"]) == (5, 60)
    assert {"consecutive_successes", "last_failure_time", "last_success_time"} <= details.keys()
    assert "time_since_last_failure" in details
    assert datetime.fromisoformat(ub["timestamp"]).tzinfo is None

    mlflow.stop()
    for expected_count in range(5):
        response = legacy.get("/health/mlflow")
        assert response.status_code == 200
        body = response.json()
        assert body["connected"] is False
        assert body["circuit_breaker_state"] == "CLOSED"  # read before this failure
        assert body["circuit_breaker_details"]["failure_count"] == expected_count
        assert body["circuit_breaker_details"]["time_until_retry"] == 0
    assert legacy.breaker()["state"] == "OPEN"
    last_failure = body["circuit_breaker_details"]["last_failure_time"]
    assert isinstance(last_failure, float) and abs(time.time() - last_failure) < 60

    broken = legacy.get("/health/mlflow")
    assert broken.status_code == 500
    assert broken.json()["circuit_breaker_state"] == "UNKNOWN"
    assert broken.json()["connected"] is False

    values = metric_values(legacy.get("/metrics").text)
    assert values["mlflow_circuit_breaker_state"] == 2  # its own mapping: 2=OPEN
    assert values["mlflow_circuit_breaker_failures_total"] == 5

    reset = legacy.post("/health/mlflow/reset")  # no credentials needed
    assert reset.status_code == 200
    assert reset.json()["previous_state"] == "OPEN"
    assert datetime.fromisoformat(reset.json()["timestamp"]).tzinfo is None


def test_legacy_blocking_mlflow_call_stalls_the_whole_api(
    make_registry: Callable[..., Registry],
) -> None:
    # A black hole: the kernel accepts connections, nobody ever answers.
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(16)
        reg = make_registry(
            REGISTRY_FLAVOR="legacy",
            MLFLOW_TRACKING_URI=f"http://127.0.0.1:{hole.getsockname()[1]}",
            **LEGACY_TEST_ENV,
        )
        # Every try waits for its timeout: 8 tries plus the backoff sleeps.
        budget = LegacyRetryBudget.from_env(LEGACY_TEST_ENV)
        expected = budget.mlflow_check_seconds(float(LEGACY_TEST_ENV["MLFLOW_TIMEOUT_SECONDS"]))
        slow: dict[str, float] = {}

        def call_mlflow() -> None:
            start = time.monotonic()
            reg.get("/health/mlflow")
            slow["mlflow"] = time.monotonic() - start

        worker = threading.Thread(target=call_mlflow)
        worker.start()
        # The event loop is about to block, so nothing can be polled; give the request
        # a moment to reach the handler.
        time.sleep(0.3)
        start = time.monotonic()
        assert reg.get("/live").status_code == 200
        live_latency = time.monotonic() - start
        worker.join(30)
    assert slow["mlflow"] >= expected * 0.95
    assert live_latency >= expected * 0.5  # /live waited for the blocked loop


def test_legacy_probe_without_breaker(legacy: Registry, mlflow: ServerThread) -> None:
    ok = legacy.get("/api/health/mlflow")
    assert ok.status_code == 200
    assert ok.json()["status"] == "ok"
    mlflow.stop()
    for _ in range(6):  # more than the threshold: the breaker is not involved
        down = legacy.get("/api/health/mlflow")
        assert down.status_code == 503
        assert down.json()["status"] == "error"
        assert down.json()["error_type"] == "ConnectError"
    assert legacy.breaker()["state"] == "CLOSED"
    assert legacy.breaker()["failure_count"] == 0


def test_legacy_metrics_names_and_order(legacy: Registry, mlflow: ServerThread) -> None:
    mlflow.stop()
    legacy.get("/health/mlflow")
    text = legacy.get("/metrics").text
    names = [f.name for f in text_string_to_metric_families(text)]
    legacy_names = [
        "mlflow_circuit_breaker_state",
        "mlflow_circuit_breaker_failures",
        "mlflow_connection_status",
        "mlflow_connection_attempts",
        "mlflow_connection_failures",
        "mlflow_response_time_seconds",
        "mlflow_info_info",  # an Info metric, exposed as a gauge family
    ]
    for name in legacy_names:
        assert name in names
    assert names.index("process_resident_memory_bytes") < names.index(
        "mlflow_circuit_breaker_state"
    )
    for series in (
        "mlflow_circuit_breaker_failures_total",
        "mlflow_connection_attempts_total",
        "mlflow_connection_failures_total",
    ):
        assert f"\n{series} " in text
    [info] = [
        s
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "mlflow_info_info"
    ]
    assert "Connection refused" in info.labels["error"]
    assert "http_requests_total" not in text


def test_legacy_live_and_auth_free_endpoints(legacy: Registry) -> None:
    live = legacy.get("/live").json()
    assert live["alive"] is True
    assert live["uptime"] >= 0
    assert live["memory_usage_mb"] > 0
    assert "timestamp" not in live
    # No credentials checked anywhere, even a wrong key passes.
    assert (
        legacy.get("/health/mlflow", headers={"Authorization": "Bearer wrong"}).status_code == 200
    )
    assert (
        legacy.post("/health/mlflow/reset", headers={"Authorization": "Bearer wrong"}).status_code
        == 200
    )


def test_legacy_admin_faults_apply_too(legacy: Registry) -> None:
    assert legacy.state()["flavor"] == "legacy"
    legacy.fault("wedged")
    assert legacy.get("/live").status_code == 500
    legacy.post("/__sandbox/breaker/stuck-open", headers=ADMIN)
    legacy.fault()
    assert legacy.get("/health/mlflow").status_code == 500  # OPEN cannot be read there
    [ml] = [c for c in legacy.get("/ready").json()["checks"] if c["name"] == "mlflow"]
    assert ml["error"] == "Circuit breaker open - MLflow temporarily unavailable"
