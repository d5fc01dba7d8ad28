"""The test session's Prefect server is the production shape: PostgreSQL-backed."""

from __future__ import annotations

import psycopg
from prefect import flow
from prefect.server.api.server import SubprocessASGIServer

from sandbox.servers import PostgresServer
from tests.helpers import wait_for


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
    assert row == ("session-server-probe",)


def test_the_database_takes_non_ascii_text(
    prefect_server: str, prefect_database: PostgresServer
) -> None:
    """A state message with a non-ASCII character reaches the run and its events (a
    SQL_ASCII cluster refused them in jsonb, and Prefect dropped those events)."""
    from prefect.states import Completed

    @flow(name="session-server-unicode-state")
    def ends_with_ellipsis() -> object:
        return Completed(message="truncated…")

    state = ends_with_ellipsis(return_state=True)
    with psycopg.connect(prefect_database.url) as conn:
        encoding = conn.execute("SHOW server_encoding").fetchone()
        row = conn.execute(
            "SELECT message FROM flow_run_state WHERE id = %s", (state.id,)
        ).fetchone()
    assert encoding == ("UTF8",)
    assert row == ("truncated…",)

    def completed_event() -> bool:
        with psycopg.connect(prefect_database.url) as conn:
            found = conn.execute(
                "SELECT count(*) FROM events WHERE event = 'prefect.flow-run.Completed' "
                "AND resource->>'prefect.resource.id' = %s",
                (f"prefect.flow-run.{state.state_details.flow_run_id}",),
            ).fetchone()
        return bool(found and found[0])

    wait_for(completed_event, 30, "the run's Completed event (its message is not ASCII)")


def test_the_session_server_is_prefects_default_server(prefect_server: str) -> None:
    # Code outside the settings context asks for the default server; it must get this one.
    assert SubprocessASGIServer().api_url == prefect_server
