"""Recovery tasks against the real sandbox: real replicas, real ECS simulation, real AWS
API (moto), real faults."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import boto3
import httpx
import pytest

from flows.recover import _apply_steps, diagnose
from flows.recover import apply as apply_plan
from sandbox.client import SandboxProcess
from service_health.models import DiagnosticReport, Verdict
from service_health.planning import plan_recovery
from service_health.recovery import (
    ActionResult,
    AnyActionResult,
    EntryStatus,
    RecoveryOutcome,
    RecoveryPlan,
    RecoveryStep,
    StepKind,
    build_result,
    parse_time,
)
from service_health.redaction import Redactor
from service_health.settings import Target
from tasks import aws
from tasks.recovery import ActionContext, execute_step, read_recovery_history
from tasks.recovery.breaker import ResetData, reset_breakers
from tasks.recovery.deployments import DeploymentData, force_new_deployment
from tasks.recovery.registry import Writers
from tasks.recovery.targets import TargetsData, check_alb_targets
from tasks.recovery.waits import WaitData, wait_for_mlflow, wait_for_stabilization
from tests.helpers import breaker_open_everywhere, wait_for

REGISTRY, MLFLOW = "hokusai-registry", "hokusai-mlflow"
RESET_KEY = "POST /health/mlflow/reset"
READ_KEY = "GET /health/mlflow"


def sandbox_target(sandbox: SandboxProcess, **overrides: Any) -> Target:
    info = sandbox.info
    fields = {
        "name": "sandbox",
        "api_url": info["api_url"],
        "api_key": info["api_key"],
        "mlflow_url": info["mlflow_url"],
        "database_url": info["database_url"],
        "redis_url": info["redis_url"],
        "aws_region": info["aws_region"],
        "aws_endpoint_url": info["aws_endpoint_url"],
        "ecs_cluster": info["ecs_cluster"],
        "ecs_services": info["ecs_services"],
        "mlflow_ecs_service": info["mlflow_ecs_service"],
        "alb_names": info["alb_names"],
        "target_groups": info["target_groups"],
        "mlflow_target_groups": ["hokusai-mlflow-tg"],
        "rds_instances": info["rds_instances"],
        "replica_discovery": "direct",
        **overrides,
    }
    return Target.model_validate(fields)


@pytest.fixture
def target(healed: SandboxProcess, sandbox_env: dict[str, str]) -> Target:
    return sandbox_target(healed)


def ecs(sandbox: SandboxProcess) -> Any:
    return boto3.client(
        "ecs",
        region_name=sandbox.info["aws_region"],
        endpoint_url=sandbox.info["aws_endpoint_url"],
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def described(sandbox: SandboxProcess, name: str) -> dict[str, Any]:
    svc: dict[str, Any] = ecs(sandbox).describe_services(
        cluster=sandbox.info["ecs_cluster"], services=[name]
    )["services"][0]
    return svc


def replicas(sandbox: SandboxProcess, service: str = REGISTRY) -> list[str]:
    return [
        r["address"] for r in sandbox.client.status()["services"][service]["replicas"] if r["alive"]
    ]


def breaker_state(address: str) -> str:
    body = httpx.get(f"http://{address}/health/mlflow", timeout=10).json()
    return str(body["circuit_breaker_state"])


def noticed(sandbox: SandboxProcess, service: str, deployment_id: str | None) -> None:
    """The sandbox's ECS simulation picked the forced deployment up.

    Known sandbox race: an UpdateService landing while the simulation probes its replicas is
    overwritten when it publishes its state (MotoBridge.set_service_state), and the
    deployment silently vanishes. Fail clearly here rather than as a 90 s "not stable".
    """

    def seen() -> bool:
        deployments = sandbox.client.status()["services"][service]["deployments"]
        return any(d["id"] == deployment_id for d in deployments)

    try:
        wait_for(seen, 10, f"the sandbox to notice deployment {deployment_id}")
    except AssertionError:
        pytest.fail(
            f"sandbox lost forced deployment {deployment_id} of {service} (race in the "
            "sandbox's ECS simulation: set_service_state overwrote it)"
        )


def writers(target: Target) -> Writers:
    """The write clients an action gets from its context (only the apply path has one)."""
    return ActionContext(target).writers


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# --- breaker resets -------------------------------------------------------------------------


def test_reset_only_the_stuck_replica(healed: SandboxProcess, target: Target) -> None:
    sandbox = healed
    (stuck,) = sandbox.client.fault("breaker-stuck-open", replica=1)["replicas"]
    (other,) = [r for r in replicas(sandbox) if r != stuck]
    assert breaker_state(stuck) == "OPEN" and breaker_state(other) == "CLOSED"
    sandbox.client.reset_request_counts()

    result: ActionResult[ResetData] = run(
        reset_breakers.fn(target, [stuck], target.api_key, writers=writers(target))
    )

    assert result.success, [e.details for e in result.entries]
    assert [(e.action, e.status, e.subject) for e in result.entries] == [
        ("reset_breaker", EntryStatus.SUCCESS, stuck),
        ("verify_breaker", EntryStatus.SUCCESS, stuck),
    ]
    assert "OPEN -> CLOSED" in result.entries[0].details
    counts = sandbox.client.request_counts()
    assert counts[stuck].get(RESET_KEY) == 1 and counts[stuck].get(READ_KEY) == 1
    assert RESET_KEY not in counts[other] and READ_KEY not in counts[other]
    assert result.data.verified == {stuck: "CLOSED"}


def test_wrong_key_is_a_clear_failure_and_not_retried(
    healed: SandboxProcess, target: Target
) -> None:
    sandbox = healed
    (stuck,) = sandbox.client.fault("breaker-stuck-open", replica=0)["replicas"]
    sandbox.client.reset_request_counts()

    result: ActionResult[ResetData] = run(
        reset_breakers.fn(target, [stuck], "not-the-key", writers=writers(target))
    )

    assert not result.success
    (entry,) = result.entries  # no verification after a failed reset
    assert entry.status == EntryStatus.FAILED and entry.subject == stuck
    assert "HTTP 403" in entry.details and "not retried" in entry.details
    assert "not-the-key" not in entry.model_dump_json()
    assert sandbox.client.request_counts()[stuck] == {RESET_KEY: 1}
    assert breaker_state(stuck) == "OPEN"

    no_key: ActionResult[ResetData] = run(
        reset_breakers.fn(target, [stuck], None, writers=writers(target))
    )
    assert not no_key.success and "HTTP 401" in no_key.entries[0].details
    assert "none is configured" in no_key.entries[0].details


# --- ECS: forced deployment, stabilisation ----------------------------------------------------


def test_forced_deployment_replaces_crashed_replicas_and_stabilises(
    healed: SandboxProcess, target: Target
) -> None:
    sandbox = healed
    sandbox.client.fault("ecs-tasks-crashed")
    wait_for(lambda: described(sandbox, REGISTRY)["runningCount"] == 1, 15, "crash")
    before = set(replicas(sandbox))
    history = run(read_recovery_history.fn(target))
    expected = history.deployment_id(REGISTRY)
    mlflow_before = history.deployment_id(MLFLOW)
    assert expected and history.services[REGISTRY].target_groups == ["hokusai-registry-tg"]

    forced: ActionResult[DeploymentData] = run(
        force_new_deployment.fn(target, REGISTRY, expected, writers=writers(target))
    )
    assert forced.success and forced.data.applied is True, forced.entries[0].details
    assert forced.data.deployment_id != expected
    noticed(sandbox, REGISTRY, forced.data.deployment_id)

    started = time.monotonic()
    stable: ActionResult[WaitData] = run(
        wait_for_stabilization.fn(target, [REGISTRY], timeout_s=90, consecutive=2)
    )
    assert stable.success, stable.entries[0].details
    assert time.monotonic() - started < 45
    assert "2 consecutive healthy /health answers" in stable.entries[0].details
    after = set(replicas(sandbox))
    assert len(after) == 2 and before.isdisjoint(after)
    # The real services_stable waiter agrees, at its first attempt.
    ecs(sandbox).get_waiter("services_stable").wait(
        cluster=sandbox.info["ecs_cluster"],
        services=[REGISTRY],
        WaiterConfig={"Delay": 1, "MaxAttempts": 1},
    )
    alb: ActionResult[TargetsData] = run(check_alb_targets.fn(target))
    assert alb.success and alb.data.groups["hokusai-registry-tg"].healthy == 2
    # Only the affected service was redeployed.
    assert run(read_recovery_history.fn(target)).deployment_id(MLFLOW) == mlflow_before

    # A second attempt with the same diagnosis never restarts twice.
    again: ActionResult[DeploymentData] = run(
        force_new_deployment.fn(target, REGISTRY, expected, writers=writers(target))
    )
    assert again.success and again.data.applied is False
    assert "not forcing another" in again.entries[0].details
    assert len(described(sandbox, REGISTRY)["deployments"]) == 1


def test_throttled_forced_deployment_applies_exactly_once(
    healed: SandboxProcess, target: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    sandbox = healed
    attempts: list[int] = []
    original = aws.ecs_write_client

    def counting_client(t: Target, *, idempotent: bool = False) -> Any:
        client = original(t, idempotent=idempotent)

        def after(http_response: Any, **_: Any) -> None:
            attempts.append(http_response.status_code)

        client.meta.events.register("after-call.ecs.UpdateService", after)
        return client

    monkeypatch.setattr(aws, "ecs_write_client", counting_client)

    def started_events() -> int:
        events = described(sandbox, REGISTRY)["events"]
        return sum("has started a new deployment" in e["message"] for e in events)

    events_before = started_events()
    before = described(sandbox, REGISTRY)["deployments"][0]["id"]
    sandbox.client.fault("aws-throttling")

    forced: ActionResult[DeploymentData] = run(
        force_new_deployment.fn(target, REGISTRY, before, writers=writers(target))
    )
    assert forced.success and forced.data.applied is True, forced.entries[0].details
    assert attempts == [400, 200]  # throttled (refused), then applied: exactly one write
    assert any("ThrottlingException" in a for a in forced.data.attempts)
    noticed(sandbox, REGISTRY, forced.data.deployment_id)

    stable: ActionResult[WaitData] = run(
        wait_for_stabilization.fn(target, [REGISTRY], timeout_s=90)
    )
    assert stable.success, stable.entries[0].details
    sandbox.client.heal("aws-throttling")
    assert started_events() - events_before == 1
    assert described(sandbox, REGISTRY)["deployments"][0]["id"] == forced.data.deployment_id


def test_stabilisation_times_out_cleanly_when_postgres_is_down(
    healed: SandboxProcess, target: Target
) -> None:
    healed.client.fault("postgres-down")
    started = time.monotonic()
    result: ActionResult[WaitData] = run(
        wait_for_stabilization.fn(target, [REGISTRY], timeout_s=3, consecutive=2)
    )
    elapsed = time.monotonic() - started
    assert not result.success
    (entry,) = result.entries
    assert entry.status == EntryStatus.FAILED
    assert entry.details.startswith("Not stable after 3 s")
    assert "0 of 2 consecutive healthy answers" in entry.details and "HTTP 503" in entry.details
    assert 2.5 <= elapsed < 15


def test_wait_for_mlflow(healed: SandboxProcess, target: Target) -> None:
    ok: ActionResult[WaitData] = run(wait_for_mlflow.fn(target, timeout_s=10))
    assert ok.success and ok.data.elapsed_s < 5
    healed.client.fault("mlflow-down")
    down: ActionResult[WaitData] = run(wait_for_mlflow.fn(target, timeout_s=1.5))
    assert not down.success and "within 1.5 s" in down.entries[0].details


# --- the whole story, composed as a flow would ------------------------------------------------


async def apply(
    target: Target, cooldown_s: float = 0
) -> tuple[Any, list[AnyActionResult], DiagnosticReport]:
    """What flows/recover.py does between approval and the artifacts, with its own parts."""
    report = await diagnose(target)
    history = await read_recovery_history(target)
    plan = plan_recovery(report, target, history, cooldown_s=cooldown_s, max_restarts=2)
    return plan, await apply_plan(plan, target, stabilization_timeout_s=90), report


# Warnings about the host (the test machine's load), not about the service under repair.
HOST_LOAD = ("High cpu use", "High memory use", "slowly", "took")


def assert_recovered(result: Any) -> None:
    """Recovered; on a loaded test machine the final diagnosis may still warn about the
    host's CPU (the replicas report system-wide usage): that is accepted, nothing else."""
    if result.outcome == RecoveryOutcome.PARTIALLY_RECOVERED:
        remaining = result.final_critical_issues + result.final_warnings
        assert remaining and all(any(h in w for h in HOST_LOAD) for w in remaining), remaining
        return
    assert result.outcome == RecoveryOutcome.RECOVERED, result.recovery_log


def test_stuck_replica_end_to_end(
    prefect_server: str, healed: SandboxProcess, target: Target
) -> None:
    (stuck,) = healed.client.fault("breaker-stuck-open", replica=1)["replicas"]
    plan, results, before = run(apply(target))
    assert before.overall_status == Verdict.DEGRADED
    (reset,) = plan.of_kind(StepKind.RESET_BREAKER)
    assert reset.replicas == [stuck] and not plan.restarts
    result = build_result(plan, results, started_at=datetime.now(UTC), duration_s=1, dry_run=False)
    assert_recovered(result)
    assert all(breaker_state(a) == "CLOSED" for a in replicas(healed))


def test_mlflow_down_restarts_mlflow_first_then_resets(
    prefect_server: str, healed: SandboxProcess, target: Target
) -> None:
    sandbox = healed
    sandbox.client.fault("mlflow-down")
    wait_for(lambda: breaker_open_everywhere(sandbox), 30, "breakers open")
    plan, results, _ = run(apply(target))
    kinds = [s.kind for s in plan.steps]
    assert kinds[:3] == [
        StepKind.FORCE_DEPLOYMENT,
        StepKind.WAIT_FOR_MLFLOW,
        StepKind.RESET_BREAKER,
    ], [s.reason for s in plan.steps]
    assert plan.restarts == [MLFLOW]
    result = build_result(plan, results, started_at=datetime.now(UTC), duration_s=1, dry_run=False)
    log = [(e.action, str(e.status)) for e in result.recovery_log]
    assert log.index(("force_deployment", "success")) < log.index(("reset_breaker", "success"))
    assert_recovered(result)
    assert all(breaker_state(a) == "CLOSED" for a in replicas(sandbox))


def test_execute_step_runs_steps_through_prefect_tasks(prefect_server: str, target: Target) -> None:
    step = RecoveryStep(number=7, kind=StepKind.CHECK_ALB_TARGETS, reason="look")
    result = run(execute_step(step, ActionContext(target)))
    assert result.success and result.step == 7 and all(e.step == 7 for e in result.entries)
    with pytest.raises(ValueError):
        verify = RecoveryStep(number=1, kind=StepKind.VERIFY, reason="v")
        run(execute_step(verify, ActionContext(target)))


def test_the_target_check_and_the_final_diagnosis_run_at_once(
    prefect_server: str, target: Target
) -> None:
    """The plan's tail (check_alb_targets, verify: reads that depend on nothing of each
    other) runs together: the final diagnosis begins before the target check has read the
    load balancer, and both results are logged in the plan's order."""
    began: list[datetime] = []

    async def verify() -> DiagnosticReport:
        began.append(datetime.now(UTC))
        return await diagnose(target)

    plan = RecoveryPlan(
        target=target.name, created_at=datetime.now(UTC).isoformat(),
        diagnosis_timestamp=datetime.now(UTC).isoformat(), verdict=Verdict.CRITICAL,
        steps=[RecoveryStep(number=1, kind=StepKind.CHECK_ALB_TARGETS, reason="record"),
               RecoveryStep(number=2, kind=StepKind.VERIFY, reason="verify")],
        cooldown_s=0, max_restarts=1,
    )  # fmt: skip
    context = ActionContext(target, 30, verify=verify)
    checked, verified = run(_apply_steps(plan, context, Redactor([])))
    assert (checked.step, verified.step) == (1, 2)
    assert checked.success and verified.success, (checked.entries, verified.entries)
    read_at = parse_time(checked.entries[0].timestamp)
    assert read_at is not None and began and began[0] < read_at
