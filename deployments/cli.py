"""`python -m deployments`: prepare a Prefect server for this project's deployments.

setup     create the process work pool the deployments run on, and the notification
          automations targets.yaml asks for (idempotent)
secrets   create or update the Secret blocks a target names, from the environment
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

WORK_POOL = "hokusai-process"
# Which environment variable feeds which secret of a target.
SECRET_SOURCES = {
    "api_key": ("API_KEY",),
    "database_url": ("DATABASE_URL", "POSTGRES_URI"),
    "redis_url": ("REDIS_URL",),
}


async def setup(pool: str) -> list[str]:
    """Create what the server needs; say what was done. Safe to run again."""
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    from deployments.notify import declare

    done = []
    async with get_client() as client:
        try:
            await client.read_work_pool(pool)
            done.append(f"work pool {pool!r} already exists")
        except ObjectNotFound:
            await client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
            done.append(f"created process work pool {pool!r}")
        done += await declare(client)
    return done


async def secrets(target_name: str) -> list[str]:
    """Secret blocks named in the target's `secret_blocks`, filled from the environment."""
    from prefect.blocks.system import Secret

    from tasks.config import read_targets

    targets = read_targets()
    if target_name not in targets:
        raise SystemExit(f"unknown target {target_name!r} (known: {', '.join(sorted(targets))})")
    done = []
    for field, block in targets[target_name].secret_blocks.model_dump().items():
        if not block:
            continue
        value = next((os.environ[v] for v in SECRET_SOURCES[field] if os.environ.get(v)), None)
        if value is None:
            done.append(f"{block}: skipped, {' or '.join(SECRET_SOURCES[field])} not set")
            continue
        await Secret(value=value).save(block, overwrite=True)
        done.append(f"{block}: saved from {field} (value not shown)")
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deployments",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_setup = sub.add_parser("setup", help="create the work pool (idempotent)")
    p_setup.add_argument("--pool", default=WORK_POOL)
    p_secrets = sub.add_parser(
        "secrets", help="create a target's Secret blocks from the environment"
    )
    p_secrets.add_argument("--target", required=True)
    args = parser.parse_args(argv)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    try:
        lines = asyncio.run(setup(args.pool) if args.command == "setup" else secrets(args.target))
    except SystemExit:
        raise
    except Exception as exc:  # a server that cannot be reached, a bad setting
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    for line in lines:
        print(line)
    return 0
