"""What every command line does before it imports Prefect, and its one output path.

Everything a command line shows or writes (terminal lines, stderr, the `--output` JSON)
goes through `say` and `write_json`, which redact with every secret the process has met:
those it was given (flags, environment) and those its flow resolved. The scripts print
nothing themselves (tests/flows/test_publishing.py holds them to it).
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import sys
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from tasks.redacting import redactor, remember

EXIT_CONFIG = 64  # EX_USAGE: bad flags, unknown target, malformed configuration
T = TypeVar("T")
# Environment variables holding secrets (service_health/settings.py reads them).
SECRET_ENV = ("API_KEY", "DATABASE_URL", "POSTGRES_URI", "REDIS_URL")


def say(text: str = "", *, err: bool = False) -> None:
    """One line (or block) on stdout, or stderr, redacted."""
    print(redactor().text(text), file=sys.stderr if err else sys.stdout)


def write_json(path: Path, data: Any) -> None:
    """The JSON output, redacted, in full."""
    path.write_text(json.dumps(redactor().obj(data), indent=2) + "\n")


def prepare_environment(verbose: bool, api_key: str | None = None) -> None:
    """Quiet, local-only Prefect defaults; a flag's API key reaches the flow via the environment.

    Secrets are never flow parameters: parameters are stored in the run history.
    """
    if api_key:
        os.environ["API_KEY"] = api_key
    # Known before anything can print or log them (a URL's password alone too).
    remember(os.environ.get(name) for name in SECRET_ENV)
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
    say(f"configuration error: {problems[0]}{more}", err=True)
    return EXIT_CONFIG


@contextmanager
def imports_without_gc() -> Iterator[None]:
    """Import a run's modules (Prefect's among them) with the cyclic garbage collector
    paused, then exempt what they built from later collections: importing Prefect
    allocates hundreds of thousands of long-lived objects, which made the collector run
    hundreds of times and walk them all (0.1 to 0.3 s of CPU per command measured); they
    live as long as the process anyway. The run itself is collected as usual."""
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()


def exit_with(code: int) -> NoReturn:
    """Exit with `code` the usual way (exit handlers run: Prefect sends what it still holds,
    logging flushes) without the interpreter's last garbage collections: once Prefect is
    loaded they walk every object of the process for most of a second (0.7 to 1 s of a
    4 s diagnosis measured on a loaded 2-core machine; 0.05 to 0.15 s frozen), only to
    free memory the OS takes back anyway."""
    gc.freeze()
    sys.exit(code)


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
        say(f"configuration error: {exc}", err=True)
        return EXIT_CONFIG
    result = state.result(raise_on_failure=False)
    if isinstance(result, ConfigError):
        say(f"configuration error: {result}", err=True)
        return EXIT_CONFIG
    if not isinstance(result, expected):
        say(f"{what} did not complete: {state.message}", err=True)
        return incomplete
    return result
