"""What every command line does before it imports Prefect."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

EXIT_CONFIG = 64  # EX_USAGE: bad flags, unknown target, malformed configuration
T = TypeVar("T")


def prepare_environment(verbose: bool, api_key: str | None = None) -> None:
    """Quiet, local-only Prefect defaults; a flag's API key reaches the flow via the environment.

    Secrets are never flow parameters: parameters are stored in the run history.
    """
    if api_key:
        os.environ["API_KEY"] = api_key
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO" if verbose else "WARNING")
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING)
    if not verbose:
        # The run's own log lines stay with the run (Prefect UI, --verbose); the terminal
        # gets the command's output only, e.g. one line for a configuration error.
        for handler in logging.getLogger().handlers:
            handler.addFilter(_not_run_logs)


def _not_run_logs(record: logging.LogRecord) -> bool:
    # EventsWorker: Prefect flushing its event queue at exit ("still processing items").
    return not record.name.startswith(("prefect.flow_runs", "prefect.task_runs", "EventsWorker"))


def configuration_exit(problems: list[str]) -> int | None:
    """EXIT_CONFIG, with one line on stderr, when the run met configuration mistakes (no AWS
    credentials, a refused permission, an unknown region): the verdict would otherwise blame
    the service for the worker's configuration. None when there were none."""
    if not problems:
        return None
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    print(f"configuration error: {problems[0]}{more}", file=sys.stderr)
    return EXIT_CONFIG


def run_flow(
    call: Callable[[], Coroutine[Any, Any, Any]], expected: type[T], what: str, incomplete: int
) -> T | int:
    """Run a flow to its final state: the result it carries, or the exit code to stop with.

    A configuration error is one line on stderr and EXIT_CONFIG; a run that ended without
    its result (crashed, cancelled) is one line and `incomplete`.
    """
    from service_health.settings import ConfigError

    try:
        state = asyncio.run(call())
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    result = state.result(raise_on_failure=False)
    if isinstance(result, ConfigError):
        print(f"configuration error: {result}", file=sys.stderr)
        return EXIT_CONFIG
    if not isinstance(result, expected):
        print(f"{what} did not complete: {state.message}", file=sys.stderr)
        return incomplete
    return result
