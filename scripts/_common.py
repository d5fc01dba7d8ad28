"""What every command line does before it imports Prefect."""

from __future__ import annotations

import logging
import os

EXIT_CONFIG = 64  # EX_USAGE: bad flags, unknown target, malformed configuration


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
