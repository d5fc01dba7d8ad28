"""Run one registry replica: ``python -m sandbox.registry --host H --port P``.

Configuration comes from the environment (see sandbox.registry.config).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import uvicorn
from starlette.types import ASGIApp

from sandbox.registry.app import create_app
from sandbox.registry.config import RegistryConfig
from sandbox.registry.defects import FailingHealthChecks, ReleaseDefect, release_defect


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Hokusai registry stand-in")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    config = RegistryConfig.from_env(os.environ)
    defect = release_defect(os.environ)
    if defect is ReleaseDefect.CRASH:
        logging.critical("release defect: the registry cannot start; exiting with code 1")
        sys.exit(1)
    app: ASGIApp = create_app(config)
    if defect is ReleaseDefect.UNHEALTHY:
        app = FailingHealthChecks(app)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        workers=1,
        access_log=False,
        log_level="warning",
        # Hung requests never finish on their own; bound how long a stop waits for them.
        timeout_graceful_shutdown=3,
    )


if __name__ == "__main__":
    main()
