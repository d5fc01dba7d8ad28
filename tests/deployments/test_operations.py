"""Day-to-day operations end to end: deployed flows run by a real process worker, automatic
remediation through the deployed automation, approval through the API, the fleet fanning
out with run_deployment."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
import yaml

from flows.fleet import diagnose_fleet
from sandbox.client import SandboxProcess
from sandbox.ports import free_port
from sandbox.statefiles import env_lines
from tests.conftest import converged
from tests.deployments.servers import Worker
from tests.deployments.test_deploy import run
from tests.flows.test_recover_flow import breaker_states, deployments_started, ecs
from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parents[2]
DIAGNOSE = "diagnose-service-health/diagnose-sandbox"
RECOVER = "recover-service/recover-sandbox"
REGISTRY = "hokusai-registry"


def deploy(env: dict[str, str], *args: str) -> None:
    done = run(env, sys.executable, "-m", "prefect", "--no-prompt", "deploy", *args)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


@pytest.fixture(scope="module")
def worker(
    prefect_server: str, sandbox: SandboxProcess, tmp_path_factory: Any
) -> Iterator[dict[str, str]]:
    """The pool, the sandbox's diagnosis and recovery deployments (with the automation),
    and one process worker with the environment a worker next to the sandbox has."""
    env = {**env_lines(sandbox.info), "PREFECT_API_URL": prefect_server}
    assert run(env, sys.executable, "-m", "deployments", "setup").returncode == 0
    deploy(env, "--name", "diagnose-sandbox", "--name", "recover-sandbox")
    worker = Worker(env, tmp_path_factory.mktemp("worker") / "worker.log", limit=6)
    yield env
    worker.stop()


def client_call(call: Any) -> Any:
    from prefect import get_client

    async def go() -> Any:
        async with get_client() as client:
            return await call(client)

    return asyncio.run(go())


def start(deployment: str) -> UUID:
    """A run created through the API, as the UI (or a schedule) creates it."""

    async def go(client: Any) -> UUID:
        found = await client.read_deployment_by_name(deployment)
        return (await client.create_flow_run_from_deployment(found.id)).id

    result: UUID = client_call(go)
    return result


def flow_run(run_id: UUID) -> Any:
    return client_call(lambda client: client.read_flow_run(run_id))


def final_state(run_id: UUID, timeout: float = 180) -> Any:
    def done() -> Any:
        state = flow_run(run_id).state
        return state if state is not None and state.is_final() else None

    return wait_for(done, timeout, f"flow run {run_id} to finish")


def runs_of(deployment: str) -> list[Any]:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    async def go(client: Any) -> list[Any]:
        found = await client.read_deployment_by_name(deployment)
        return list(
            await client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[found.id]))
            )
        )

    result: list[Any] = client_call(go)
    return result


@pytest.fixture(autouse=True)
def automation_enabled(prefect_server: str, sandbox: SandboxProcess) -> None:
    """Automatic remediation as an operator leaves it after re-enabling it: earlier tests on
    the session's server and sandbox (in whatever order they ran) may have spent this
    target's budget, tripped its flap guard or restarted the registry within the
    automation's 10-minute cooldown (its plan would then hold no restart, and nothing to
    approve), which these tests are not about (tests/flows/test_standdown_flow.py and
    test_recover_flow.py are)."""
    from prefect.variables import Variable

    Variable.unset("hokusai-recovery-budget")
    Variable.set("hokusai-reenabled-sandbox", datetime.now(UTC).isoformat(), overwrite=True)
    forget_restarts(sandbox)


def states_of(runs: list[Any]) -> list[str]:
    """Each run's name, parameters, state and message (for a failure message)."""
    return [f"{r.name} {r.parameters}: {r.state.name if r.state else None} "
            f"{r.state.message if r.state else ''}" for r in runs]  # fmt: skip


def test_critical_diagnosis_starts_one_recovery_that_waits_for_approval(
    worker: dict[str, str], healed: SandboxProcess
) -> None:
    from prefect.flow_runs import resume_flow_run

    earlier = {r.id for r in runs_of(RECOVER)}

    def new_recoveries() -> list[Any]:
        return [r for r in runs_of(RECOVER) if r.id not in earlier]

    healed.client.fault("ecs-tasks-crashed", all=True)
    wait_for(lambda: healed.client.status()["services"][REGISTRY]["running"] == 0, 15, "crash")
    restarts = deployments_started(healed, REGISTRY)

    assert final_state(start(DIAGNOSE)).name == "Critical"
    try:
        paused = wait_for(
            lambda: [r for r in new_recoveries() if r.state and r.state.is_paused()],
            180,
            "the automation's recovery run to wait for approval",
        )
    except AssertionError as exc:  # say what the recoveries did instead
        raise AssertionError(f"{exc}: {states_of(new_recoveries())}") from None
    (pending,) = paused
    assert pending.parameters["require_approval"] is True
    assert pending.parameters["dry_run"] is False

    # Another critical diagnosis while the plan waits: no second recovery takes charge.
    assert final_state(start(DIAGNOSE)).name == "Critical"
    others = wait_for(
        lambda: [r for r in new_recoveries() if r.id != pending.id],
        120,
        "the automation to react to the second critical diagnosis",
    )
    (other,) = others
    assert final_state(other.id, 120).name == "Skipped"
    assert flow_run(pending.id).state.is_paused()
    assert deployments_started(healed, REGISTRY) == restarts  # nothing applied yet

    resume_flow_run(pending.id, run_input={"approve": True, "note": "approved by the test"})
    assert final_state(pending.id, 240).name == "Recovered"
    assert deployments_started(healed, REGISTRY) == restarts + 1
    wait_for(lambda: converged(healed), 60, "the sandbox to be healthy")
    assert [r.id for r in new_recoveries()] and len(new_recoveries()) == 2


def test_remediation_verdicts_and_approval_are_configurable(
    worker: dict[str, str], healed: SandboxProcess, tmp_path: Path
) -> None:
    """React to Degraded too and apply directly: an edit of prefect.yaml and a redeploy."""
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    (recover,) = [d for d in spec["deployments"] if d["name"] == "recover-sandbox"]
    (trigger,) = recover["triggers"]
    trigger["expect"] = ["prefect.flow-run.Critical", "prefect.flow-run.Degraded"]
    trigger["parameters"]["require_approval"] = False
    variant = tmp_path / "prefect.yaml"
    variant.write_text(yaml.safe_dump(spec))
    deploy(worker, "--prefect-file", str(variant), "--name", "recover-sandbox")
    try:
        earlier = {r.id for r in runs_of(RECOVER)}
        healed.client.fault("breaker-stuck-open")
        assert final_state(start(DIAGNOSE)).name == "Degraded"
        (started,) = wait_for(
            lambda: [r for r in runs_of(RECOVER) if r.id not in earlier],
            120,
            "the automation to react to a degraded diagnosis",
        )
        assert started.parameters["require_approval"] is False
        assert final_state(started.id, 180).name == "Recovered"  # applied without a pause
        assert set(breaker_states(healed).values()) == {"CLOSED"}
    finally:
        deploy(worker, "--name", "recover-sandbox")  # back to prefect.yaml as committed


def test_fleet_fans_out_to_deployments_where_they_exist(
    worker: dict[str, str],
    healed: SandboxProcess,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Target `sandbox` has a deployment (run by the worker); `nowhere` has none (a subflow)."""
    targets = yaml.safe_load((ROOT / "targets.yaml").read_text())
    targets["targets"]["sandbox"]["api_url"] = healed.info["api_url"]
    targets["targets"]["nowhere"] = {"api_url": f"http://127.0.0.1:{free_port()}"}
    path = tmp_path / "targets.yaml"
    path.write_text(yaml.safe_dump(targets))
    monkeypatch.setenv("HOKUSAI_TARGETS_FILE", str(path))
    for name in ("API_URL", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)

    async def go() -> Any:
        return await diagnose_fleet(targets=["sandbox", "nowhere"], return_state=True)

    state = asyncio.run(go())
    assert state.name == "Critical"
    rows = {r["target"]: r for r in state.result(raise_on_failure=False)}
    assert rows["sandbox"]["how"] == "deployment" and rows["sandbox"]["state"] == "Healthy"
    assert rows["nowhere"]["how"] == "subflow" and rows["nowhere"]["verdict"] == "critical"
    assert flow_run(UUID(rows["sandbox"]["run"])).deployment_id is not None


def test_operators_are_notified_through_prefect_automations(
    worker: dict[str, str], healed: SandboxProcess, tmp_path: Path
) -> None:
    """targets.yaml names a CustomWebhookNotificationBlock; `setup` declares the automations;
    the session's Prefect server sends each message to a real receiver on loopback."""
    from urllib.parse import urlsplit

    from prefect.blocks.notifications import CustomWebhookNotificationBlock, MattermostWebhook
    from prefect.flow_runs import resume_flow_run

    from tests.deployments.receiver import Receiver

    receiver, slack_receiver = Receiver(), Receiver()
    try:
        CustomWebhookNotificationBlock(
            name="hokusai", url=f"{receiver.url}/hook",
            json_data={"subject": "{{subject}}", "body": "{{body}}"},
        ).save("hokusai-test-hook", overwrite=True)  # fmt: skip
        # A Slack-compatible incoming webhook (Mattermost's: POST /hooks/<token>, {"text"}):
        # SlackWebhook itself accepts only hooks.slack.com addresses.
        slack_port = int(slack_receiver.url.rsplit(":", 1)[1])
        MattermostWebhook(
            hostname="127.0.0.1", port=slack_port, token="slack-compatible-test", secure=False
        ).save("hokusai-test-slack", overwrite=True)
        targets = yaml.safe_load((ROOT / "targets.yaml").read_text())
        targets["notifications"] = {"sandbox": {
            "blocks": [
                "custom-webhook/hokusai-test-hook", "mattermost-webhook/hokusai-test-slack"
            ],
            "events": ["critical", "approval", "recovery", "crashed"],
        }}  # fmt: skip
        path = tmp_path / "targets.yaml"
        path.write_text(yaml.safe_dump(targets))
        env = {**worker, "HOKUSAI_TARGETS_FILE": str(path)}
        setup = run(env, sys.executable, "-m", "deployments", "setup")
        assert "automation 'notify-sandbox-critical' created" in setup.stdout, setup
        again = run(env, sys.executable, "-m", "deployments", "setup")  # idempotent
        assert "automation 'notify-sandbox-critical' updated" in again.stdout, again

        earlier = {r.id for r in runs_of(RECOVER)}
        healed.client.fault("ecs-tasks-crashed", all=True)
        wait_for(lambda: healed.client.status()["services"][REGISTRY]["running"] == 0, 15, "crash")
        diagnosis = start(DIAGNOSE)
        assert final_state(diagnosis).name == "Critical"
        (critical,) = wait_for(lambda: receiver.messages("diagnosis Critical"), 60, "Critical")
        # From the run's end, as the server recorded it, to the message's arrival.
        ended = flow_run(diagnosis).end_time.timestamp()
        figures = {"critical_notification_s": round(critical["at"] - ended, 2)}
        assert critical["body"]["subject"] == "[hokusai] sandbox: diagnosis Critical"
        assert "sandbox: critical - " in critical["body"]["body"]
        # The top findings, not only the first: every registry task crashed shows twice.
        assert critical["body"]["body"].count("; ") >= 1, critical["body"]["body"]
        assert f"/runs/flow-run/{diagnosis}" in critical["body"]["body"]
        slack = wait_for(lambda: slack_receiver.messages("sandbox: critical"), 60, "Slack")
        assert "sandbox: critical - " in slack[0]["body"]["text"], slack[0]

        (pending,) = wait_for(
            lambda: [r for r in runs_of(RECOVER)
                     if r.id not in earlier and r.state and r.state.is_paused()],
            120, "the automation's recovery to wait for approval",
        )  # fmt: skip
        assert pending.parameters["triggered_by"] == f"prefect.flow-run.{diagnosis}"
        (approval,) = wait_for(lambda: receiver.messages("waits for approval"), 60, "approval")
        text = approval["body"]["body"]
        assert f"- Force a new deployment ({REGISTRY}): " in text, text
        assert f"/runs/flow-run/{pending.id}" in text and "UTC" in text

        clicked = time.time()
        resume_flow_run(pending.id, run_input={"approve": True, "note": "notified"})
        (first,) = wait_for(lambda: [t for t, m in run_logs(pending.id) if "Step 1 starts" in m],
                            60, "the apply to start")  # fmt: skip
        figures["approval_to_apply_s"] = round(first - clicked, 2)
        assert final_state(pending.id, 240).name == "Recovered"
        (recovered,) = wait_for(lambda: receiver.messages("recovery Recovered"), 60, "Recovered")
        assert f"force_deployment ({REGISTRY}): success" in recovered["body"]["body"]
        wait_for(lambda: converged(healed), 90, "the sandbox to be healthy")

        # A rejected plan is told too.
        healed.client.fault("breaker-stuck-open")
        rejected_run = client_call(lambda c: _start_recovery(c, require_approval=True))
        wait_for(lambda: flow_run(rejected_run).state.is_paused(), 120, "the second approval")
        resume_flow_run(rejected_run, run_input={"approve": False, "note": "not now"})
        assert final_state(rejected_run, 120).name == "Rejected"
        (rejected,) = wait_for(lambda: receiver.messages("recovery Rejected"), 60, "Rejected")
        assert "rejected by the operator (not now)" in rejected["body"]["body"]

        secrets = [healed.info["api_key"], urlsplit(healed.info["database_url"]).password]
        for message in receiver.received:
            assert not any(s and s in message["raw"] for s in secrets), message
        print(f"\nnotification figures: {figures}")
    finally:
        receiver.close()
        slack_receiver.close()

        async def cleanup(client: Any) -> None:
            for automation in await client.read_automations():
                if automation.name.startswith("notify-sandbox-"):
                    await client.delete_automation(automation.id)

        client_call(cleanup)


def forget_restarts(sandbox: SandboxProcess) -> None:
    """Remove the tag that starts the registry's cooldown (an automation-started recovery
    keeps the default cooldown of 10 minutes, longer than this module's tests)."""
    from service_health.recovery import RESTART_TAG

    client = ecs(sandbox)
    (service,) = client.describe_services(cluster="hokusai-sandbox", services=[REGISTRY])[
        "services"
    ]
    client.untag_resource(resourceArn=service["serviceArn"], tagKeys=[RESTART_TAG])


async def _start_recovery(client: Any, **parameters: Any) -> UUID:
    found = await client.read_deployment_by_name(RECOVER)
    params = {"target": "sandbox", "dry_run": False, "approval_poll_seconds": 1, **parameters}
    run_id: UUID = (await client.create_flow_run_from_deployment(found.id, parameters=params)).id
    return run_id


def lock_slots_taken() -> int:
    """Slots in use of the sandbox's recovery lock (a one-slot global concurrency limit)."""
    from tasks.locking import lock_name

    async def go(client: Any) -> int:
        limit = await client.read_global_concurrency_limit_by_name(lock_name("sandbox"))
        return int(limit.active_slots)

    result: int = client_call(go)
    return result


def run_logs(run_id: UUID) -> list[tuple[float, str]]:
    """(epoch seconds, message) of each log line of the run, read back from the server."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    async def go(client: Any) -> list[tuple[float, str]]:
        logs = await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
        return [(log.timestamp.timestamp(), log.message) for log in logs]

    result: list[tuple[float, str]] = client_call(go)
    return result


def test_a_killed_recovery_and_a_silent_target_are_notified(
    worker: dict[str, str], healed: SandboxProcess, tmp_path: Path
) -> None:
    """SIGKILL a recovery waiting for approval: Crashed. Pause the diagnosis schedule: the
    dead-man's switch fires once its window has passed without a completed diagnosis."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    from tests.deployments.receiver import Receiver

    receiver = Receiver()
    diagnose = client_call(lambda c: c.read_deployment_by_name(DIAGNOSE))

    async def pause_schedules(client: Any, active: bool) -> None:
        for schedule in diagnose.schedules:
            await client.update_deployment_schedule(diagnose.id, schedule.id, active=active)

    try:
        CustomWebhookNotificationBlock(
            name="hokusai", url=f"{receiver.url}/hook",
            json_data={"subject": "{{subject}}", "body": "{{body}}"},
        ).save("hokusai-test-hook", overwrite=True)  # fmt: skip
        targets = yaml.safe_load((ROOT / "targets.yaml").read_text())
        targets["notifications"] = {"sandbox": {
            "blocks": ["custom-webhook/hokusai-test-hook"], "events": ["crashed", "silence"],
            "silence_after_s": 15,
        }}  # fmt: skip
        path = tmp_path / "targets.yaml"
        path.write_text(yaml.safe_dump(targets))
        setup = run({**worker, "HOKUSAI_TARGETS_FILE": str(path)}, sys.executable, "-m",
                    "deployments", "setup")  # fmt: skip
        assert "automation 'notify-sandbox-silence' created" in setup.stdout, setup

        healed.client.fault("breaker-stuck-open")
        pending = client_call(lambda c: _start_recovery(c, require_approval=True))
        paused = wait_for(lambda: (r := flow_run(pending)).state.is_paused() and r, 120, "pause")
        # Killed once it has given up its lease, as a run waiting for an operator has: the
        # server lets a lease lapse only when its repossessor runs, and a lock held past
        # this test would hold the next test's recovery.
        wait_for(lambda: lock_slots_taken() == 0, 30, "the paused run to give up its lease")
        pid = int(str(paused.infrastructure_pid).rsplit(":", 1)[-1])
        os.kill(pid, signal.SIGKILL)
        assert final_state(pending, 120).name == "Crashed"
        (crashed,) = wait_for(lambda: receiver.messages("recovery run Crashed"), 60, "Crashed")
        assert f"/runs/flow-run/{pending}" in crashed["body"]["body"]

        client_call(lambda c: pause_schedules(c, False))
        silent = wait_for(lambda: receiver.messages("no diagnosis"), 90, "the dead-man's switch")
        assert "No diagnosis of sandbox completed in the last 15s" in silent[0]["body"]["body"]
    finally:
        receiver.close()
        client_call(lambda c: pause_schedules(c, True))

        async def cleanup(client: Any) -> None:
            for automation in await client.read_automations():
                if automation.name.startswith("notify-sandbox-"):
                    await client.delete_automation(automation.id)

        client_call(cleanup)
