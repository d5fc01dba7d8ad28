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
