"""One recovery per target at a time: a Prefect global concurrency limit of one slot."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.asyncio import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

LEASE_S = 60.0


def lock_name(slug: str) -> str:
    return f"recover-{slug}"


async def ensure_lock(name: str) -> None:
    """Create the one-slot limit if it is missing (a missing limit would not limit)."""
    async with get_client() as client:
        try:
            await client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            # ObjectAlreadyExists: created meanwhile by a concurrent recovery.
            with contextlib.suppress(ObjectAlreadyExists):
                await client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=1)
                )


@asynccontextmanager
async def target_lock(slug: str, wait_s: float) -> AsyncIterator[None]:
    """Hold the target's recovery slot; TimeoutError if it stays taken for `wait_s`."""
    name = lock_name(slug)
    await ensure_lock(name)
    # The holder renews its lease while it runs; a holder killed outright (SIGKILL, a lost
    # machine) frees the slot when the lease lapses: one minute, the server's minimum.
    async with concurrency(
        name, occupy=1, timeout_seconds=wait_s, strict=True, lease_duration=LEASE_S
    ):
        yield
