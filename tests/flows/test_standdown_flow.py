"""Knowing when to stand down, end to end: the recover and diagnose flows on the session's
real Prefect server against the shared sandbox. Mutating calls are counted where they land:
the registry replicas' reset requests and the ECS deployments started."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import pytest

from flows.diagnose import diagnose_service_health
from sandbox.client import SandboxProcess
from service_health.models import DiagnosticReport
from service_health.recovery import RecoveryResult
from service_health.standdown import AUTOMATION_CHECK
from tests.flows.test_recover_flow import (
    MLFLOW,
    REGISTRY,
    breaker_states,
    deployments_started,
    recover,
    resets,
)
from tests.helpers import wait_for

VARIABLES = (
    "hokusai-freeze-sandbox",
    "hokusai-freeze",
    "hokusai-reenabled-sandbox",
    "hokusai-relapse-sandbox",
    "hokusai-recovery-budget",
)
BUDGET_LOCK = "hokusai-recovery-budget"


def call(go: Any) -> Any:
    from prefect import get_client

    async def run() -> Any:
        async with get_client() as client:
            return await go(client)

    return asyncio.run(run())


def set_variable(name: str, value: Any) -> None:
    from prefect.variables import Variable

    Variable.set(name, value, overwrite=True)


def get_variable(name: str) -> Any:
    from prefect.variables import Variable

    return Variable.get(name)


def clean(created_runs: list[UUID]) -> None:
    """Remove what these tests leave on the shared server: the Variables, the budget's
    lock, and the failed automatic recoveries (later automatic ones must not count them)."""
    from prefect.exceptions import ObjectNotFound
    from prefect.variables import Variable

    for name in VARIABLES:
        Variable.unset(name)

    async def go(client: Any) -> None:
        with contextlib.suppress(ObjectNotFound):
            await client.delete_global_concurrency_limit_by_name(BUDGET_LOCK)
        for run_id in created_runs:
            with contextlib.suppress(ObjectNotFound):
                await client.delete_flow_run(run_id)

    call(go)


@pytest.fixture
def created(
    prefect_server: str, sandbox_env: dict[str, str], healed: SandboxProcess
) -> Iterator[list[UUID]]:
    """The shared server as these tests need it, cleaned before and after; the test adds
    the runs it wants removed afterwards."""
    runs: list[UUID] = []
    clean(runs)
    yield runs
    clean(runs)


@pytest.fixture
def diagnosis_run(created: list[UUID]) -> str:
    """A real diagnosis run, the kind whose Critical end starts an automatic recovery: the
    automatic recoveries here name it in `triggered_by`, as the automation does."""

    async def go() -> Any:
        return await diagnose_service_health(target="sandbox", return_state=True)

    state = asyncio.run(go())
    return f"prefect.flow-run.{state.state_details.flow_run_id}"


# The outcomes of a recovery that applied its plan. On a loaded machine the final diagnosis
# may find MLflow slow (Partially recovered): these tests are about what was applied.
APPLIED = ("Recovered", "Partially recovered")


def automatic(created: list[UUID], trigger: str, **params: Any) -> tuple[Any, RecoveryResult]:
    """A recovery as the automation starts it (applying directly, no relapse check here:
    the relapse check has its own test, with a worker). The run is removed afterwards: an
    automatic recovery's end counts for the flap guard of later ones."""
    params = {"dry_run": False, "triggered_by": trigger, "relapse_check_delay_seconds": None,
              **params}  # fmt: skip
    state, result = recover(**params)
    created.append(run_id(state))
    return state, result


def stuck(sandbox: SandboxProcess) -> None:
    sandbox.client.fault("breaker-stuck-open")
    wait_for(lambda: set(breaker_states(sandbox).values()) == {"OPEN"}, 30, "breakers OPEN")
    sandbox.client.reset_request_counts()


def finished_event(run_id: UUID) -> dict[str, Any] | None:
    """The run's hokusai.recovery.finished event (what the notification automation reads)."""

    async def go(client: Any) -> list[dict[str, Any]]:
        response = await client.request("POST", "/events/filter", json={
            "filter": {"any_resource": {"id": [f"prefect.flow-run.{run_id}"]},
                       "event": {"name": ["hokusai.recovery.finished"]}},
            "limit": 5,
        })  # fmt: skip
        return list(response.json()["events"])

    events = call(go)
    return events[0] if events else None


def run_id(state: Any) -> UUID:
    found: UUID = state.state_details.flow_run_id
    return found


def test_budget_one_per_hour_skips_the_second_automatic_recovery(
    created: list[UUID], healed: SandboxProcess, diagnosis_run: str
) -> None:
    stuck(healed)
    # A dry run takes no slot.
    state, _ = automatic(created, diagnosis_run, dry_run=True, budget_per_target=1)
    assert state.name == "Planned"
    assert get_variable("hokusai-recovery-budget") is None

    state, result = automatic(created, diagnosis_run, budget_per_target=1)
    assert state.name in APPLIED, result.message
    assert sum(resets(healed).values()) > 0
    assert len(get_variable("hokusai-recovery-budget")["sandbox"]) == 1
    # The budget's one-slot limit (removed before the test) was created by that claim:
    # a missing limit is an error to the strict acquisition, never a limit ignored.

    async def limit(client: Any) -> Any:
        return await client.read_global_concurrency_limit_by_name(BUDGET_LOCK)

    assert call(limit).limit == 1

    stuck(healed)
    state, result = automatic(created, diagnosis_run, budget_per_target=1)
    assert state.name == "Skipped"
    assert state.message.startswith("budget exhausted: escalate"), state.message
    assert "1 automatic mutating recoveries of sandbox in the last hour" in state.message
    assert result.outcome.state_name == "Skipped" and not result.overall_success
    assert sum(resets(healed).values()) == 0  # no mutating call
    assert set(breaker_states(healed).values()) == {"OPEN"}
    assert [e.action for e in result.recovery_log] == ["stand_down"]
    assert result.plan.mutates  # the plan was made and published
    # The notification automations read this event: the outcome and the reason.
    event: Any = wait_for(lambda: finished_event(run_id(state)), 30, "the finished event")
    assert event["payload"]["outcome"] == "Skipped"
    assert "budget exhausted: escalate" in event["payload"]["message"]

    # The budget of all targets together is counted the same way.
    state, _ = automatic(created, diagnosis_run, budget_per_target=5, budget_all_targets=1)
    assert state.name == "Skipped" and "of all targets" in state.message
    assert sum(resets(healed).values()) == 0

    # A plan that needs approval is not put to an operator when the budget would refuse
    # it: the run stands down at once, it does not pause.
    state, _ = automatic(created, diagnosis_run, budget_per_target=1, require_approval=True,
                         approval_timeout_seconds=5)  # fmt: skip
    assert state.name == "Skipped" and "budget exhausted" in state.message, state.message
    assert sum(resets(healed).values()) == 0

    # A recovery started by hand is the operator's decision: not held, and takes no slot.
    state, _ = recover(dry_run=False, budget_per_target=1, relapse_check_delay_seconds=None)
    assert state.name in APPLIED
    assert sum(resets(healed).values()) > 0
    assert len(get_variable("hokusai-recovery-budget")["sandbox"]) == 1


def test_flap_guard_stands_automation_down_until_re_enabled(
    created: list[UUID], healed: SandboxProcess, diagnosis_run: str
) -> None:
    # Other tests on the shared server leave automatic recoveries of this target that
    # ended Failed: an operator's re-enable now makes this test count only its own.
    set_variable("hokusai-reenabled-sandbox", datetime.now(UTC).isoformat())
    # Two automatic recoveries that no recovery can make good: the database is down (an
    # escalation; the final diagnosis stays critical).
    healed.client.fault("postgres-down")
    for _ in range(2):
        state, result = automatic(created, diagnosis_run, flap_threshold=2,
                                  stabilization_timeout_seconds=5)  # fmt: skip
        assert state.name in ("Failed", "Partially recovered"), result.message
    healed.client.heal("postgres-down")
    wait_for(lambda: healed.client.converged(), 90, "the sandbox to converge")

    stuck(healed)
    state, result = automatic(created, diagnosis_run, flap_threshold=2)
    assert state.name == "Stood down", state.message
    assert "2 automatic recoveries ended Failed or Partially recovered" in state.message
    assert "hokusai-reenabled-sandbox" in state.message  # how to re-enable, said
    assert sum(resets(healed).values()) == 0
    assert set(breaker_states(healed).values()) == {"OPEN"}
    assert result.plan.mutates

    # An operator re-enables automatic remediation: the failures before that no longer count.
    set_variable("hokusai-reenabled-sandbox", datetime.now(UTC).isoformat())
    state, result = automatic(created, diagnosis_run, flap_threshold=2)
    assert state.name in APPLIED, result.message
    assert sum(resets(healed).values()) > 0


def test_a_frozen_target_is_not_changed_and_the_diagnosis_says_so(
    created: list[UUID], healed: SandboxProcess, diagnosis_run: str
) -> None:
    until = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=0)
    set_variable("hokusai-freeze-sandbox", {"until": until.isoformat(), "reason": "release 42"})
    stuck(healed)
    healed.client.fault("ecs-tasks-crashed")
    wait_for(lambda: healed.client.status()["services"][REGISTRY]["running"] == 1, 15, "crash")
    before = {s: deployments_started(healed, s) for s in (REGISTRY, MLFLOW)}

    # By hand and by the automation alike.
    for params in ({}, {"triggered_by": diagnosis_run}):
        state, result = recover(dry_run=False, relapse_check_delay_seconds=None, **params)
        assert state.name == "Frozen", state.message
        assert f"frozen until {until:%Y-%m-%d %H:%M:%S} UTC" in state.message
        assert "release 42" in state.message
        assert "prefect variable unset hokusai-freeze-sandbox" in state.message
        assert result.plan.mutates and result.plan.restarts == [REGISTRY]
    assert sum(resets(healed).values()) == 0
    assert {s: deployments_started(healed, s) for s in (REGISTRY, MLFLOW)} == before

    # The diagnosis keeps running, and reports the freeze without changing its verdict.
    async def diagnose() -> Any:
        return await diagnose_service_health(target="sandbox", return_state=True)

    state = asyncio.run(diagnose())
    report = state.result(raise_on_failure=False)
    assert isinstance(report, DiagnosticReport)
    check = report.checks[AUTOMATION_CHECK]
    assert not any("frozen" in issue for issue in report.critical_issues + report.warnings)
    assert {f.severity for f in check.findings} == {"info"}
    assert f"frozen until {until:%Y-%m-%d %H:%M:%S} UTC" in check.findings[0].message

    # The freeze of every target holds as well.
    from prefect.variables import Variable

    Variable.unset("hokusai-freeze-sandbox")
    set_variable("hokusai-freeze", until.isoformat())
    state, _ = recover(dry_run=False, relapse_check_delay_seconds=None)
    assert state.name == "Frozen" and "hokusai-freeze)" in state.message
    assert sum(resets(healed).values()) == 0
    assert {s: deployments_started(healed, s) for s in (REGISTRY, MLFLOW)} == before

    # Cleared, the next recovery applies its plan.
    Variable.unset("hokusai-freeze")
    state, result = recover(dry_run=False, relapse_check_delay_seconds=None)
    assert state.name in APPLIED, result.message
    # (the replicas that counted the resets have been replaced by the new deployment)
    assert deployments_started(healed, REGISTRY) == before[REGISTRY] + 1
