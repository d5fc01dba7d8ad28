"""The test session's Prefect server is the production shape: PostgreSQL-backed."""

from __future__ import annotations

import psycopg
from prefect import flow
from prefect.server.api.server import SubprocessASGIServer

from sandbox.servers import PostgresServer


@flow(name="session-server-probe")
def probe() -> str:
    from prefect.runtime import flow_run

    return str(flow_run.id)


def test_flow_runs_are_stored_in_the_postgres_cluster(
    prefect_server: str, prefect_database: PostgresServer
) -> None:
    run_id = probe()
    with psycopg.connect(prefect_database.url) as conn:
        row = conn.execute(
            "SELECT f.name FROM flow_run r JOIN flow f ON f.id = r.flow_id WHERE r.id = %s",
            (run_id,),
        ).fetchone()
    assert row is not None
    # The throwaway cluster is SQL_ASCII (initdb under LC_ALL=C): psycopg hands back bytes.
    name = row[0].decode() if isinstance(row[0], bytes) else row[0]
    assert name == "session-server-probe"


def test_the_session_server_is_prefects_default_server(prefect_server: str) -> None:
    # Code outside the settings context asks for the default server; it must get this one.
    assert SubprocessASGIServer().api_url == prefect_server
