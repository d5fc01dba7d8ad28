"""Shared fixtures: real throwaway servers, started once per session where tests allow."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox.client import SandboxProcess
from sandbox.servers import (
    PostgresServer,
    RedisServer,
    ServerBinaryMissing,
    find_pg_bin,
    find_redis_server,
)
from tests.helpers import wait_for

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def _missing(exc: ServerBinaryMissing) -> None:
    # Locally a missing binary skips; in CI (.ci/run sets this) it must fail loudly.
    if os.environ.get("HOKUSAI_REQUIRE_SERVERS"):
        pytest.fail(f"required server binary missing: {exc}")
    pytest.skip(str(exc))


def _cluster(factory: pytest.TempPathFactory, name: str, password: str) -> Iterator[PostgresServer]:
    try:
        server = PostgresServer(factory.mktemp(name) / "data", password=password)
    except ServerBinaryMissing as exc:
        _missing(exc)
    server.start()
    yield server
    server.remove()


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    yield from _cluster(tmp_path_factory, "pg", "pg-test-pw")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    try:
        server = RedisServer(tmp_path_factory.mktemp("redis"))
    except ServerBinaryMissing as exc:
        _missing(exc)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxProcess]:
    """One sandbox for the session; tests heal what they break."""
    _require_binaries()
    proc = SandboxProcess(
        tmp_path_factory.mktemp("sandbox"),
        env={"MLFLOW_CB_RECOVERY_TIMEOUT": "2", "MLFLOW_CB_FAILURE_THRESHOLD": "3"},
    )
    with proc:
        yield proc


# The legacy flavour with the deployed breaker (threshold 5, recovery timeout 60 s,
# 5 recovery attempts) and the deployed retry shape (2 attempts x 3 HTTP retries, urllib3
# backoff; 3 database tries), its sleeps scaled down so that the suite stays fast: a
# refused MLflow check costs 2 x (0.3 + 0.6) = 1.8 s instead of about 10 s, a timed-out one
# adds 8 x 0.25 s, a failing database check 0.3 + 0.6 = 0.9 s instead of 3 s.
LEGACY_TEST_ENV = {
    "LEGACY_MLFLOW_ATTEMPTS": "2",
    "LEGACY_MLFLOW_HTTP_RETRIES": "3",
    "LEGACY_MLFLOW_BACKOFF_FACTOR": "0.15",
    "MLFLOW_TIMEOUT_SECONDS": "0.25",
    "LEGACY_DB_ATTEMPTS": "3",
    "LEGACY_DB_RETRY_DELAY_SECONDS": "0.3",
    # AWS's default health-check timeout: one MLflow check's stall (1.8 s here) must not
    # flip a target, as it would not behind a real ALB (see sandbox/ecs.py).
    "SANDBOX_HEALTH_CHECK_TIMEOUT_SECONDS": "5",
}


@pytest.fixture(scope="session")
def legacy_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxProcess]:
    _require_binaries()
    proc = SandboxProcess(
        tmp_path_factory.mktemp("legacy-sandbox"), flavor="legacy", env=LEGACY_TEST_ENV
    )
    with proc:
        yield proc


def _require_binaries() -> None:
    try:
        find_pg_bin()
        find_redis_server()
    except ServerBinaryMissing as exc:
        _missing(exc)


@pytest.fixture
def healed(sandbox: SandboxProcess) -> Iterator[SandboxProcess]:
    """The shared sandbox, healed and converged again after the test."""
    yield sandbox
    sandbox.client.heal()
    wait_for(lambda: converged(sandbox), 90, "sandbox to converge after healing")


def converged(sandbox: SandboxProcess) -> bool:
    return sandbox.client.converged()


@pytest.fixture(scope="session")
def prefect_database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """The Prefect server's own PostgreSQL cluster (tests may stop the other one)."""
    yield from _cluster(tmp_path_factory, "prefect-pg", "prefect-test-pw")


@pytest.fixture(scope="session")
def prefect_server(prefect_database: PostgresServer) -> Iterator[str]:
    """One Prefect API server for the whole session, backed by PostgreSQL; yields its URL.

    Flows called in this process report to it; pass PREFECT_API_URL=<url> to subprocesses.
    """
    from tests.prefect_harness import postgres_prefect_server

    with postgres_prefect_server(prefect_database.url) as url:
        yield url


@pytest.fixture
def sandbox_env(sandbox: SandboxProcess, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The process environment a worker would have next to the shared sandbox."""
    from sandbox.statefiles import env_lines

    env = env_lines(sandbox.info)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env
