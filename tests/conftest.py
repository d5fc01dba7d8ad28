"""Shared fixtures: real throwaway servers, started once per session where tests allow."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox.servers import PostgresServer, RedisServer, ServerBinaryMissing

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def _missing(exc: ServerBinaryMissing) -> None:
    # Locally a missing binary skips; in CI (.ci/run sets this) it must fail loudly.
    if os.environ.get("HOKUSAI_REQUIRE_SERVERS"):
        pytest.fail(f"required server binary missing: {exc}")
    pytest.skip(str(exc))


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    try:
        server = PostgresServer(tmp_path_factory.mktemp("pg") / "data", password="pg-test-pw")
    except ServerBinaryMissing as exc:
        _missing(exc)
    server.start()
    yield server
    server.remove()


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
