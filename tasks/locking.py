"""One recovery per target at a time, across a restart of the Prefect server.

Two mechanisms, each covering the phase it can cover by construction:

- While a recovery *runs* (plans, applies, waits for stabilisation) it holds a one-slot
  Prefect global concurrency limit `recover-<target>`. The lease is renewed while the run
  lives; a holder killed outright frees the slot when the lease lapses (one minute) and
  the server's repossessor service takes it back (Prefect's ephemeral server runs none).
- While a recovery *waits for an operator* it holds no lease at all: leases live in the
  server's lease storage (in memory by default), so a server restart during an hour-long
  approval wait would lose it and Prefect would terminate the waiting run. The waiting run
  is instead recognised by what the server keeps in its database: a run tagged
  `recovery-target:<target>` in state Paused whose pause has not expired. A recovery that
  takes the slot looks for such a run first and stands aside when it finds one.

The waiting run releases its lease only once the server reads it Paused, so there is no
moment where neither the lease nor the Paused state protects the target.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import ConcurrencyLeaseHolder, FlowRun, StateType

# Private in Prefect 3.7, but the only way to hold a lease beyond one `async with` block
# (the public `concurrency()` context manager cannot be released from the pause watcher).
from prefect.concurrency._asyncio import (
    aacquire_concurrency_slots_with_lease,
    arelease_concurrency_slots_with_lease,
)
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.logging.loggers import get_logger

LEASE_S = 60.0  # the server's minimum: a dead holder frees the slot within a minute
RENEW_EVERY_S = LEASE_S / 4  # several renewals per lease survive a short server outage

logger = get_logger("hokusai.locking")


def lock_name(slug: str) -> str:
    return f"recover-{slug}"


def target_tag(slug: str) -> str:
    """The tag a recovery that may mutate the target carries (set by `TargetLock.claim`)."""
    return f"recovery-target:{slug}"


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


class TargetLock:
    """The recovery slot of one target, held by one flow run."""

    def __init__(self, slug: str, flow_run_id: UUID | None) -> None:
        self.slug = slug
        self.name = lock_name(slug)
        self.flow_run_id = flow_run_id
        self._lease: UUID | None = None
        self._renewal: asyncio.Task[None] | None = None

    @property
    def held(self) -> bool:
        return self._lease is not None

    async def acquire(self, wait_s: float) -> None:
        """Take the slot; TimeoutError if it stays taken for `wait_s`."""
        if self.held:
            return
        await ensure_lock(self.name)
        holder = (
            ConcurrencyLeaseHolder(type="flow_run", id=self.flow_run_id)
            if self.flow_run_id
            else None
        )
        response = await aacquire_concurrency_slots_with_lease(
            [self.name], 1, timeout_seconds=wait_s, lease_duration=LEASE_S, strict=True,
            holder=holder,
        )  # fmt: skip
        self._lease = response.lease_id
        self._renewal = asyncio.create_task(self._renew(response.lease_id))

    async def release(self) -> None:
        lease, self._lease = self._lease, None
        if self._renewal is not None:
            self._renewal.cancel()
            self._renewal = None
        if lease is not None:
            try:
                await arelease_concurrency_slots_with_lease(lease)
            except Exception as exc:  # already lapsed, or the server is unreachable
                logger.warning("Could not release %s (%s); it lapses by itself", self.name, exc)

    async def _renew(self, lease: UUID) -> None:
        """Keep the lease while the run lives. A failed renewal (the server restarting) is
        retried at the next turn rather than terminating the run: what this lock protects
        against, a second restart or reset, is also refused by the steps themselves (a
        forced deployment only while the planned deployment is still the primary one)."""
        async with get_client() as client:
            while True:
                await asyncio.sleep(RENEW_EVERY_S)
                try:
                    await client.renew_concurrency_lease(lease_id=lease, lease_duration=LEASE_S)
                except Exception as exc:
                    logger.warning("Renewal of %s failed: %s", self.name, exc)

    async def claim(self) -> None:
        """Tag this run as the target's recovery, so that it is found while it waits."""
        if self.flow_run_id is None:
            return
        async with get_client() as client:
            run = await client.read_flow_run(self.flow_run_id)
            tags = sorted({*run.tags, target_tag(self.slug)})
            await client.update_flow_run(self.flow_run_id, tags=tags)

    async def waiting_holder(self) -> FlowRun | None:
        """Another recovery of this target waiting for approval (Paused, pause not expired)."""
        async with get_client() as client:
            runs = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    tags=FlowRunFilterTags(all_=[target_tag(self.slug)]),
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED])),
                )
            )
        now = datetime.now(UTC)
        for run in runs:
            expires = run.state.state_details.pause_timeout if run.state else None
            if run.id != self.flow_run_id and (expires is None or expires > now):
                return run
        return None

    async def release_once_paused(self, poll_s: float = 0.2) -> None:
        """Release the lease as soon as the server reads this run Paused (run as a task
        beside the pause, cancelled when the pause returns)."""
        if self.flow_run_id is None:
            return
        async with get_client() as client:
            while self.held:
                run = await client.read_flow_run(self.flow_run_id)
                if run.state is not None and run.state.is_paused():
                    await self.release()
                    return
                await asyncio.sleep(poll_s)

    async def __aenter__(self) -> TargetLock:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.release()
