"""The report of the diagnosis run that started a recovery, read from Prefect's event feed
(the diagnose flow emits it as `hokusai.diagnosis.finished`, tasks/events.py).

The server writes events to its database in batches (every few seconds at most), so a
recovery started at once may find it not there yet: it is looked for, briefly, and then
the recovery diagnoses afresh. Started by the automation through a worker, a recovery
normally begins after the batch was written and finds it with one read.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import get_client
from prefect.events.filters import (
    EventFilter,
    EventNameFilter,
    EventOccurredFilter,
    EventResourceFilter,
)

from tasks.events import DIAGNOSIS_FINISHED
from tasks.polling import Poller

WAIT_S = 1.0  # a fresh diagnosis takes about as long: waiting longer would not pay


async def read_trigger_event(
    triggered_by: str, max_age_s: float, wait_s: float = WAIT_S
) -> dict[str, Any] | None:
    """The payload of the `hokusai.diagnosis.finished` event of the run `triggered_by`
    (prefect.flow-run.<id>) within the last `max_age_s`, or None once `wait_s` passed."""
    since = datetime.now(UTC) - timedelta(seconds=max_age_s + 60)  # a margin for clocks
    event_filter = EventFilter(
        occurred=EventOccurredFilter(since=since),
        event=EventNameFilter(name=[DIAGNOSIS_FINISHED]),
        resource=EventResourceFilter(id=[triggered_by]),
    )
    poller = Poller(wait_s)
    async with get_client() as client:
        while True:
            poller.poll()
            page = await client.read_events(filter=event_filter, limit=1)
            if page.events:
                payload: dict[str, Any] = dict(page.events[0].payload)
                return payload
            if poller.expired:
                return None
            await poller.pause()
