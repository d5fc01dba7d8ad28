"""The test session's Prefect server, run the way production runs it: on PostgreSQL.

Like `prefect.testing.utilities.prefect_test_harness`, but the server's database is a
throwaway PostgreSQL cluster instead of SQLite: SQLite's single write lock made concurrent
flow runs queue (the endurance test and the fleet spent most of their time waiting on it).
The server is also registered as Prefect's default ephemeral server, so code that runs
outside the settings context (threads, `SubprocessASGIServer()` calls inside Prefect)
finds this one instead of starting a second.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from prefect.events.worker import EventsWorker
from prefect.logging.handlers import APILogWorker
from prefect.server.api.server import SubprocessASGIServer
from prefect.server.database.dependencies import temporary_database_interface
from prefect.settings import (
    PREFECT_API_DATABASE_CONNECTION_URL,
    PREFECT_API_URL,
    temporary_settings,
)
from prefect.utilities.asyncutils import run_coro_as_sync

from sandbox.ports import free_port


def async_database_url(url: str) -> str:
    """The cluster's libpq URL in the form Prefect's server wants (SQLAlchemy + asyncpg)."""
    scheme, rest = url.split("://", 1)
    if scheme not in ("postgres", "postgresql"):
        raise ValueError("a PostgreSQL URL is needed")
    return f"postgresql+asyncpg://{rest}"


@contextmanager
def postgres_prefect_server(database_url: str, startup_timeout: int = 120) -> Iterator[str]:
    """Run a Prefect API server on `database_url` for the duration; yields its API URL."""
    with ExitStack() as stack:
        stack.enter_context(temporary_database_interface())
        stack.enter_context(
            temporary_settings(
                updates={PREFECT_API_DATABASE_CONNECTION_URL: async_database_url(database_url)}
            )
        )
        server = SubprocessASGIServer(port=free_port())
        previous_default = SubprocessASGIServer._instances.get(None)
        SubprocessASGIServer._instances[None] = server
        try:
            server.start(timeout=startup_timeout)
            stack.enter_context(temporary_settings(updates={PREFECT_API_URL: server.api_url}))
            yield server.api_url
            _drain_workers()
        finally:
            server.stop()
            if previous_default is not None:
                SubprocessASGIServer._instances[None] = previous_default
            else:
                SubprocessASGIServer._instances.pop(None, None)


def _drain_workers() -> None:
    """Send the logs and events still queued before the server goes away (as the harness
    does), so the session does not end with connection errors."""

    async def drain() -> None:
        try:
            logs = APILogWorker.instance().drain()
            if inspect.isawaitable(logs):
                await logs
        except RuntimeError:
            pass  # the log worker never started
        events = EventsWorker.drain_all()
        if inspect.isawaitable(events):
            await events

    run_coro_as_sync(drain())
