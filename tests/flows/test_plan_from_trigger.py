"""A recovery the automation starts plans from the report of the diagnosis that started it
(its `hokusai.diagnosis.finished` event) when that report is recent, and diagnoses afresh
otherwise: the session's real Prefect server and the shared sandbox. Diagnoses are counted
where they land: each asks a registry replica for GET /health/status once."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

import pytest

from flows.diagnose import diagnose_service_health
from sandbox.client import SandboxProcess
from service_health.models import DiagnosticReport
from service_health.recovery import parse_time
from tasks.trigger_report import read_trigger_event
from tests.flows.test_standdown_flow import APPLIED, automatic, clean, run_id, stuck

# Automatic runs here are not stood down by the budget or the flap guard of other tests.
UNGUARDED: dict[str, Any] = {"budget_per_target": 1000, "budget_all_targets": 1000,
                             "flap_threshold": 0}  # fmt: skip


@pytest.fixture
def created(
    prefect_server: str, sandbox_env: dict[str, str], healed: SandboxProcess
) -> Iterator[list[UUID]]:
    """As in test_standdown_flow: the automatic runs are removed afterwards (their ends
    count for the flap guard of later ones), the stand-down state cleaned."""
    runs: list[UUID] = []
    clean(runs)
    yield runs
    clean(runs)


def diagnoses(sandbox: SandboxProcess) -> int:
    return sum(c.get("GET /health/status", 0) for c in sandbox.client.request_counts().values())


def trigger(sandbox: SandboxProcess) -> tuple[str, DiagnosticReport, dict[str, Any]]:
    """A diagnosis run of the fault, once its report is in the event feed (the server writes
    events in batches); the counts start after it."""

    async def go() -> tuple[Any, dict[str, Any] | None]:
        state = await diagnose_service_health(target="sandbox", return_state=True)
        return state, await read_trigger_event(f"prefect.flow-run.{run_id(state)}", 600, 30)

    state, payload = asyncio.run(go())
    resource = f"prefect.flow-run.{run_id(state)}"
    assert payload is not None, f"no hokusai.diagnosis.finished event of {resource}"
    report = state.result(raise_on_failure=False)
    assert isinstance(report, DiagnosticReport), report
    sandbox.client.reset_request_counts()
    return resource, report, payload


def fresh(plan_timestamp: str, started: datetime) -> bool:
    diagnosed = parse_time(plan_timestamp)
    return diagnosed is not None and diagnosed >= started


def test_a_recent_trigger_report_is_planned_from_without_diagnosing_again(
    created: list[UUID], healed: SandboxProcess
) -> None:
    stuck(healed)
    resource, report, payload = trigger(healed)
    assert report.overall_status.value in ("degraded", "critical")
    assert healed.info["api_key"] not in json.dumps(payload)  # redacted, as every event
    state, result = automatic(created, resource, **UNGUARDED)
    assert state.name in APPLIED, result.message
    assert result.plan.diagnosis_timestamp == report.timestamp
    assert next(e.action for e in result.recovery_log if not e.dry_run) == "reset_breaker"
    assert diagnoses(healed) == 1  # the final one only: no diagnosis to plan from


def test_a_stale_or_missing_trigger_report_is_not(
    created: list[UUID], healed: SandboxProcess
) -> None:
    stuck(healed)
    resource, _, _ = trigger(healed)
    started = datetime.now(UTC)
    # Older than the limit: diagnosed afresh, and planned from that.
    state, result = automatic(created, resource, plan_from_trigger_max_age_seconds=0.001,
                              **UNGUARDED)  # fmt: skip
    assert state.name in APPLIED, result.message
    assert fresh(result.plan.diagnosis_timestamp, started), result.plan.diagnosis_timestamp
    assert diagnoses(healed) == 2  # to plan from, and the final one

    # A run whose report is nowhere in the event feed: diagnosed afresh.
    stuck(healed)
    started = datetime.now(UTC)
    missing = f"prefect.flow-run.{uuid4()}"
    state, result = automatic(created, missing, **UNGUARDED)
    assert state.name in APPLIED, result.message
    assert fresh(result.plan.diagnosis_timestamp, started), result.plan.diagnosis_timestamp
    assert diagnoses(healed) == 2
