"""`python -m deployments check` against the test session's server (PostgreSQL, one replica,
no Redis): what it confirms, what it says is missing, and when it may not be fooled."""

from __future__ import annotations

import psycopg
import pytest

from deployments.cli import main
from sandbox.servers import PostgresServer


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["check", *args])
    out = capsys.readouterr()
    return code, out.out + out.err


def test_the_session_server_is_postgres_backed_single_replica(
    prefect_server: str, prefect_database: PostgresServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run(capsys, "--database-url", prefect_database.url)
    assert code == 0, out
    assert "[ok] database: PostgreSQL" in out and "holding this server's state" in out
    # Redis is reported, not required, for a single server.
    assert "[not set] PREFECT_MESSAGING_BROKER: is 'prefect.server.utilities.messaging" in out
    assert "needed for more than one server replica" in out
    assert prefect_database.password not in out


def test_replicated_requires_every_redis_setting(
    prefect_server: str, prefect_database: PostgresServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run(capsys, "--database-url", prefect_database.url, "--replicated")
    assert code == 1, out
    for wanted in (
        "PREFECT_MESSAGING_BROKER=prefect_redis.messaging",
        "PREFECT_MESSAGING_CACHE=prefect_redis.messaging",
        "PREFECT_SERVER_EVENTS_CAUSAL_ORDERING=prefect_redis.ordering",
        "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE=prefect_redis.lease_storage",
        "PREFECT_SERVER_DOCKET_URL=redis://",
    ):
        assert f"set {wanted}" in out, out
    assert out.count("[MISSING]") == 5, out
    assert "not production-shaped" in out


def test_another_database_is_not_taken_for_the_servers(
    prefect_server: str, prefect_database: PostgresServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """A PostgreSQL database that is not where the server stores: empty, then one holding
    a block_type table of its own; neither passes."""
    with psycopg.connect(prefect_database.url, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS not_prefect")
        conn.execute("CREATE DATABASE not_prefect")
    other = prefect_database.url.rsplit("/", 1)[0] + "/not_prefect"
    code, out = run(capsys, "--database-url", other)
    assert code == 1 and "without Prefect's tables" in out, out
    with psycopg.connect(other, autocommit=True) as conn:
        conn.execute("CREATE TABLE block_type (id uuid PRIMARY KEY)")
    code, out = run(capsys, "--database-url", other)
    assert code == 1 and "not the database this server stores in" in out, out


def test_sqlite_or_no_url_is_not_production_shaped(
    prefect_server: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out = run(capsys, "--database-url", "sqlite+aiosqlite:///prefect.db")
    assert code == 1 and "[MISSING] database: sqlite+aiosqlite, not PostgreSQL" in out, out
    monkeypatch.delenv("PREFECT_API_DATABASE_CONNECTION_URL", raising=False)
    code, out = run(capsys)
    assert code == 1 and "the API masks the connection URL" in out, out
