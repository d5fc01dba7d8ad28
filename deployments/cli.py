"""`python -m deployments`: prepare a Prefect server for this project's deployments.

setup     create the process work pool the deployments run on, and the notification
          automations targets.yaml asks for (idempotent)
secrets   create or update the Secret blocks a target names, from the environment
check     check the server is set up the way production runs it (PostgreSQL; Redis for
          more than one replica) and say what is missing; exit 1 when something required is
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import os
import sys
from pathlib import Path
from typing import Any

WORK_POOL = "hokusai-process"
# Every flow run of the pool, whichever way its deployment was made (prefect.yaml, code,
# the UI, the API), runs through the project's engine from the checkout, unless the
# deployment says otherwise: a run ending in a verdict of its own exits 0 (engine.py).
CHECKOUT = Path(__file__).resolve().parents[1]
POOL_DEFAULTS = {"command": "python -m deployments.engine", "working_dir": str(CHECKOUT)}
# Which environment variable feeds which secret of a target.
SECRET_SOURCES = {
    "api_key": ("API_KEY",),
    "database_url": ("DATABASE_URL", "POSTGRES_URI"),
    "redis_url": ("REDIS_URL",),
}


async def setup(pool: str) -> list[str]:
    """Create what the server needs; say what was done. Safe to run again."""
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    from deployments.notify import declare

    done = []
    async with get_client() as client:
        try:
            existing = await client.read_work_pool(pool)
        except ObjectNotFound:
            template = with_defaults(ProcessWorker.get_default_base_job_template())
            await client.create_work_pool(
                WorkPoolCreate(name=pool, type="process", base_job_template=template)
            )
            done.append(f"created process work pool {pool!r}")
        else:
            done.append(f"work pool {pool!r} already exists")
            template = with_defaults(existing.base_job_template)
            if template != existing.base_job_template:
                await client.update_work_pool(pool, WorkPoolUpdate(base_job_template=template))
                done.append(f"work pool {pool!r}: flow runs start with the project's engine")
        done += await declare(client)
    return done


def with_defaults(template: dict[str, Any]) -> dict[str, Any]:
    """The pool's job template with the project's command and working directory as the
    defaults of its variables (a deployment's own job variables still win)."""
    template = copy.deepcopy(template)
    properties = template.get("variables", {}).get("properties", {})
    for name, value in POOL_DEFAULTS.items():
        if name in properties:
            properties[name]["default"] = value
    return template


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
    p_check = sub.add_parser(
        "check", help="check the server is production-shaped; say what is missing"
    )
    p_check.add_argument(
        "--database-url",
        default=os.environ.get("PREFECT_API_DATABASE_CONNECTION_URL"),
        help="the server's database (default: PREFECT_API_DATABASE_CONNECTION_URL); the "
        "API masks it",
    )
    p_check.add_argument(
        "--replicated",
        action="store_true",
        help="more than one server replica: the Redis settings are required too",
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if args.command == "check":
        return _check(args.database_url, args.replicated)
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


def _check(database_url: str | None, replicated: bool) -> int:
    from deployments.check import check

    try:
        items, ok = asyncio.run(check(database_url, replicated))
    except Exception as exc:  # a server that cannot be reached
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    for item in items:
        print(item.line())
    print("production-shaped" if ok else "not production-shaped: see MISSING above")
    return 0 if ok else 1
