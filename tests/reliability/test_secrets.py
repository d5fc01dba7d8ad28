"""Secrets: canary values for the API key, the database password and the Redis password go
through every flow and every command line (`--verbose`), and appear nowhere they could be
read afterwards.

The canaries are the real secrets of a sandbox of their own, one for the module (the
shared one has random secrets and refuses any other key, and its replicas cannot be made
to echo), so they travel the success paths: authenticated reads of every replica, a
breaker reset with the key (a real recovery, through the command line and through the
flow), PostgreSQL and Redis connections with their passwords, the fleet flow. A second set
of canaries that are wrong travels the failure paths: 403 answers, a refused database
login. A database outage adds the error paths of the connection itself. And the service
echoes secrets back, as a careless server does: while the echo is on, its replicas answer
a reset with a 500 whose detail quotes the bearer header and the database URL, and /ready's
failing checks quote the key and the database and Redis URLs (the redactor must catch what
a server sends, not only what the product builds).

Searched afterwards: stdout and stderr of each command, its JSON output, and, read back
from the session's Prefect server, every log line, artifact, parameter set and state
message of every flow run (and task run) these produced. A canary is searched whole and by
its random part alone, so a truncated or re-encoded copy is caught too.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from sandbox.client import SandboxProcess
from sandbox.statefiles import env_lines
from tests.conftest import converged
from tests.helpers import wait_for
from tests.reliability.figures import record

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = {
    "diagnose": ROOT / "scripts" / "diagnose_service_health.py",
    "recover": ROOT / "scripts" / "recover_service.py",
    "contract": ROOT / "scripts" / "test_enhanced_health_checks.py",
}
TAIL = {name: secrets.token_hex(6) for name in ("key", "pw", "redis-pw", "wrong-key", "wrong-pw")}
CANARY_KEY = f"canary-KEY-7f3a-{TAIL['key']}"
CANARY_PW = f"canary-PW-{TAIL['pw']}"
CANARY_REDIS_PW = f"canary-REDIS-{TAIL['redis-pw']}"
WRONG_KEY = f"canary-KEY-wrong-{TAIL['wrong-key']}"
WRONG_PW = f"canary-PW-wrong-{TAIL['wrong-pw']}"
# Whole values and their random parts alone (a truncated or partly masked copy).
NEEDLES = [CANARY_KEY, CANARY_PW, CANARY_REDIS_PW, WRONG_KEY, WRONG_PW, *TAIL.values()]

# A registry replica that echoes secrets while STATE/echo exists (the test switches it): a
# reset answers 500 with a detail quoting the Authorization header and the database URL;
# /ready's failing checks get errors quoting the key and the database and Redis URLs.
ECHO_REPLICA = r"""
import json, os, sys
from pathlib import Path
import sandbox.registry.__main__ as replica

FLAG = Path(os.environ["CANARY_ECHO_FLAG"])
ENV = os.environ
HELD = f"key={ENV['API_KEY']} db={ENV['DATABASE_URL']} redis={ENV['REDIS_URL']}"

async def answer(send, status, headers, body):
    headers = [(k, v) for k, v in headers if k.lower() != b"content-length"]
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})

def echoing(app):
    async def echo(scope, receive, send):
        if scope["type"] != "http" or not FLAG.exists():
            return await app(scope, receive, send)
        if scope["method"] == "POST" and scope["path"] == "/health/mlflow/reset":
            sent = dict(scope["headers"]).get(b"authorization", b"").decode()
            detail = f"ECHO-RESET failed; you sent {sent}; db={os.environ['DATABASE_URL']}"
            body = json.dumps({"detail": detail}).encode()
            return await answer(send, 500, [(b"content-type", b"application/json")], body)
        if scope["method"] != "GET" or scope["path"] != "/ready":
            return await app(scope, receive, send)
        start, chunks = {}, []
        async def keep(message):
            if message["type"] == "http.response.start":
                start.update(message)
            else:
                chunks.append(message.get("body", b""))
        await app(scope, receive, keep)
        data = json.loads(b"".join(chunks))
        for check in data.get("checks", []):
            if not check.get("passed"):
                check["error"] = f"{check.get('error') or 'failed'} [ECHO-READY {HELD}]"
        await answer(send, start["status"], start.get("headers", []), json.dumps(data).encode())
    return echo

make = replica.create_app
replica.create_app = lambda config=None: echoing(make(config))
replica.main(sys.argv[1:])
"""

# `python -m sandbox up`, with the canaries as the sandbox's own API key and DB and Redis
# passwords, and its registry replicas started as the echoing replica above.
LAUNCHER = """
import functools, os, sys
from sandbox import cli, system
system.SandboxOptions = functools.partial(
    system.SandboxOptions,
    api_key=os.environ.pop("CANARY_API_KEY"),
    db_password=os.environ.pop("CANARY_DB_PASSWORD"),
    redis_password=os.environ.pop("CANARY_REDIS_PASSWORD"),
)
ECHO = os.environ.pop("CANARY_ECHO_REPLICA")
plain = system.Sandbox._launcher

def launcher(self, service, env):
    make, extra = plain(self, service, env)
    if service != system.REGISTRY:
        return make, extra
    # The same arguments as `python -m sandbox.registry ...`, to the echoing replica.
    echoing = lambda h, p: [sys.executable, "-c", ECHO, *make(h, p)[3:]]
    return echoing, {**extra, "CANARY_ECHO_FLAG": str(self.state_dir / "echo")}

system.Sandbox._launcher = launcher
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def canary_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxProcess]:
    state_dir = tmp_path_factory.mktemp("canary-sandbox")
    proc = SandboxProcess(
        state_dir,
        env={
            "CANARY_API_KEY": CANARY_KEY,
            "CANARY_DB_PASSWORD": CANARY_PW,
            "CANARY_REDIS_PASSWORD": CANARY_REDIS_PW,
            "CANARY_ECHO_REPLICA": ECHO_REPLICA,
            "MLFLOW_CB_RECOVERY_TIMEOUT": "2",
            "MLFLOW_CB_FAILURE_THRESHOLD": "3",
        },
    )
    proc.argv = [sys.executable, "-c", LAUNCHER, *proc.argv[3:]]  # same arguments as `up`
    with proc:
        assert proc.info["api_key"] == CANARY_KEY
        assert CANARY_PW in proc.info["database_url"]
        assert CANARY_REDIS_PW in proc.info["redis_url"]
        yield proc


class Haystacks:
    """Every place searched, by name, and the flow runs to read back from the server."""

    def __init__(self) -> None:
        self.texts: dict[str, str] = {}
        self.started = datetime.now(UTC)
        self.runs = 0  # flow runs the tests made (each command line makes one)
        self._lock = threading.Lock()

    def made(self, runs: int) -> None:
        with self._lock:  # the command lines run in threads
            self.runs += runs

    def add(self, where: str, text: str) -> None:
        self.texts[where] = self.texts.get(where, "") + text

    def found(self) -> list[str]:
        return [
            f"{where}: {needle[:12]}..."
            for where, text in self.texts.items()
            for needle in NEEDLES
            if needle in text
        ]


@pytest.fixture(scope="module")
def haystacks() -> Haystacks:
    return Haystacks()


def sandbox_env(sandbox: SandboxProcess, prefect_api: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return {**env, **env_lines(sandbox.info), "PREFECT_API_URL": prefect_api}


def command(name: str, args: list[str], env: dict[str, str], out: Path, stacks: Haystacks) -> int:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT[name]), "--target", "sandbox", "--verbose",
         "--output", str(out), *args],
        capture_output=True, text=True, timeout=300, env=env, cwd=ROOT,
    )  # fmt: skip
    stacks.made(1)
    label = f"{name} {' '.join(a for a in args if not a.startswith('canary'))}".strip()
    stacks.add(f"{label}: stdout", proc.stdout)
    stacks.add(f"{label}: stderr", proc.stderr)
    assert out.exists(), f"{label} wrote no output (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    stacks.add(f"{label}: JSON output", out.read_text())
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-3000:]
    return proc.returncode


def test_command_lines_with_canaries(
    prefect_server: str, canary_sandbox: SandboxProcess, haystacks: Haystacks, tmp_path: Path
) -> None:
    """The three command lines, verbose: with the canaries while the breaker is stuck OPEN
    (diagnosis, contract tests with --api-key, the recovery that resets with the key), and a
    diagnosis with the wrong canaries (403 answers, a refused database login)."""
    env = sandbox_env(canary_sandbox, prefect_server)
    wrong = {
        **env,
        "API_KEY": WRONG_KEY,
        "DATABASE_URL": env["DATABASE_URL"].replace(CANARY_PW, WRONG_PW),
    }
    flag_only = {k: v for k, v in env.items() if k != "API_KEY"}
    canary_sandbox.client.fault("breaker-stuck-open")
    with ThreadPoolExecutor(max_workers=3) as pool:
        diagnosis = pool.submit(command, "diagnose", [], env, tmp_path / "d.json", haystacks)
        contract = pool.submit(
            command, "contract", ["--api-key", CANARY_KEY], flag_only, tmp_path / "c.json",
            haystacks,
        )  # fmt: skip
        refused = pool.submit(command, "diagnose", [], wrong, tmp_path / "w.json", haystacks)
        assert diagnosis.result() == 1  # degraded: the breaker is OPEN
        assert contract.result() in (0, 1)
        assert refused.result() == 2  # the database refuses the wrong password: critical
    recovered = command(
        "recover", ["--stabilization-timeout", "60"], env, tmp_path / "r.json", haystacks
    )
    assert recovered == 0, (tmp_path / "r.json").read_text()[-3000:]
    wait_for(lambda: converged(canary_sandbox), 60, "the canary sandbox to settle")


def test_flows_in_process_with_canaries(
    prefect_server: str,
    canary_sandbox: SandboxProcess,
    haystacks: Haystacks,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """The three flows in this process while PostgreSQL is down (connection errors carry
    the most text; the command lines above used the secrets successfully)."""
    from flows.diagnose import diagnose_service_health
    from flows.recover import recover_service
    from flows.verify_contract import verify_contract

    for key, value in sandbox_env(canary_sandbox, prefect_server).items():
        if key != "PREFECT_API_URL":
            monkeypatch.setenv(key, value)

    async def every_flow() -> list[Any]:
        return [
            await diagnose_service_health(target="sandbox", return_state=True),
            await recover_service(target="sandbox", dry_run=True, return_state=True),
            await verify_contract(target="sandbox", return_state=True),
        ]

    canary_sandbox.client.fault("postgres-down")
    try:
        states = asyncio.run(every_flow())
    finally:
        haystacks.made(3)
        canary_sandbox.client.heal()
    assert [s.name for s in states][:2] == ["Critical", "Planned"]
    keep_in_process(haystacks, states, capfd)


def test_real_recovery_and_fleet_while_the_service_echoes_secrets(
    prefect_server: str,
    canary_sandbox: SandboxProcess,
    haystacks: Haystacks,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """The fleet flow and a real recovery (not a dry run) in this process, the breaker stuck
    OPEN, while the replicas echo secrets: /ready's failing MLflow check quotes the key and
    the database and Redis URLs, and every reset answers 500 quoting the bearer header and
    the database URL. The echoes reach the outputs, redacted."""
    from flows.fleet import diagnose_fleet
    from flows.recover import recover_service
    from service_health.recovery import RecoveryResult

    for key, value in sandbox_env(canary_sandbox, prefect_server).items():
        if key != "PREFECT_API_URL":
            monkeypatch.setenv(key, value)
    echo = Path(canary_sandbox.info["state_dir"]) / "echo"

    async def fleet_then_recovery() -> list[Any]:
        fleet = await diagnose_fleet(targets=["sandbox"], use_deployments=False, return_state=True)
        recovery = await recover_service(
            target="sandbox", dry_run=False, stabilization_timeout_seconds=30,
            relapse_check_delay_seconds=None, return_state=True,
        )  # fmt: skip
        return [fleet, recovery]

    canary_sandbox.client.fault("breaker-stuck-open")
    echo.touch()
    try:
        states = asyncio.run(fleet_then_recovery())
    finally:
        haystacks.made(3)  # the fleet run, its diagnosis (a subflow), the recovery
        echo.unlink(missing_ok=True)
        canary_sandbox.client.heal()
    keep_in_process(haystacks, states, capfd)
    fleet, recovery = states
    assert fleet.name in ("Degraded", "Critical"), fleet
    result = recovery.result(raise_on_failure=False)
    assert isinstance(result, RecoveryResult) and not result.dry_run, result
    log = result.model_dump_json()
    # The resets were sent with the key, and what the replicas echoed came back redacted.
    assert "ECHO-RESET failed; you sent Bearer ***; db=***" in log, log[-3000:]
    wait_for(lambda: converged(canary_sandbox), 60, "the canary sandbox to settle")


def keep_in_process(haystacks: Haystacks, states: list[Any], capfd: Any) -> None:
    """What in-process runs left in this process: their results (what a command line would
    print and write), the terminal; and their queued log lines, sent to the server now."""
    from prefect.logging.handlers import APILogWorker

    for state in states:
        result = state.result(raise_on_failure=False)
        haystacks.add("in-process flow results", json.dumps(_jsonable(result)))
        haystacks.add("in-process state messages", str(state.message))
    captured = capfd.readouterr()
    haystacks.add("in-process flows: stdout", captured.out)
    haystacks.add("in-process flows: stderr", captured.err)
    APILogWorker.drain_all()  # this process's part: every line it logged is on the server


def _jsonable(value: Any) -> Any:
    dump = getattr(value, "model_dump", None)
    if dump is not None:
        return dump(mode="json")
    return [_jsonable(v) for v in value] if isinstance(value, list) else str(value)


async def _read_back(since: datetime) -> dict[str, Any]:
    """Flow runs this module made (started since `since`, not of a deployment: a scheduled
    diagnosis of the session's deployments is not ours), with their logs, artifacts,
    parameters, state messages and task runs."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterDeploymentId,
        FlowRunFilterId,
        FlowRunFilterStartTime,
        LogFilter,
        LogFilterFlowRunId,
    )

    texts: dict[str, Any] = {}
    async with get_client() as client:
        runs = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                start_time=FlowRunFilterStartTime(after_=since),
                deployment_id=FlowRunFilterDeploymentId(is_null_=True),
            ),
            limit=200,
        )
        ids = [run.id for run in runs]
        texts["flow runs: parameters"] = json.dumps([run.parameters for run in runs])
        texts["flow runs: names and state messages"] = json.dumps(
            [[run.name, run.state and run.state.name, run.state and run.state.message]
             for run in runs]
        )  # fmt: skip
        tasks: list[Any] = []
        while page := await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)),
            limit=200,
            offset=len(tasks),
        ):
            tasks += page
        texts["task runs: names, inputs and state messages"] = json.dumps(
            [[t.name, str(t.task_inputs), t.state.message if t.state else None] for t in tasks]
        )
        logs: list[Any] = []
        while more := await client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=ids)),
            limit=200,
            offset=len(logs),
        ):
            logs += more
        texts["Prefect logs"] = "\n".join(log.message for log in logs)
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=ids)),
            limit=200,
        )
        texts["artifacts"] = json.dumps(
            [[a.key, a.description, a.data] for a in artifacts], default=str
        )
    with_lines = {log.flow_run_id for log in logs}
    last_line = {
        log.flow_run_id
        for log in logs
        if log.task_run_id is None and log.message.startswith("Finished in state")
    }
    texts["_counts"] = {
        "flow runs": len(runs), "final": sum(bool(r.state and r.state.is_final()) for r in runs),
        "with log lines": len(with_lines), "with their last line": len(last_line),
        "task runs": len(tasks), "log lines": len(logs), "artifacts": len(artifacts),
    }  # fmt: skip
    return texts


def test_canaries_appear_nowhere(
    prefect_server: str, haystacks: Haystacks, canary_sandbox: SandboxProcess
) -> None:
    """Everything the tests above produced, on the terminal, on disk and on the server."""
    if not any(where.endswith("JSON output") for where in haystacks.texts):
        pytest.skip("reads back what the tests above produced: run the whole module")

    # Every producer is done by now: the command lines have exited (sending their queued log
    # lines as they exit), and this process sent its own (keep_in_process). What remains is
    # the server showing every run the tests made in a final state; then nothing more comes.
    # (Waiting instead for each run's last log line could wait for ever: a line a process
    # could not send as it exited never arrives, and a count of all the runs since the start
    # counted scheduled runs of the session's deployments too.)
    def settled() -> dict[str, Any] | None:
        texts = asyncio.run(_read_back(haystacks.started))
        counts = texts["_counts"]
        assert counts["flow runs"] <= haystacks.runs, (counts, haystacks.runs)
        done = counts["flow runs"] == haystacks.runs == counts["final"]
        return texts if done else None

    server = wait_for(settled, 60, "every run the tests made, final on the server")
    assert server is not None
    counts = server.pop("_counts")
    for where, text in server.items():
        haystacks.add(where, text)
    # The canaries did travel: the sandbox holds them, and the runs used them.
    assert canary_sandbox.info["api_key"] == CANARY_KEY
    assert counts["with log lines"] == counts["flow runs"], counts
    assert counts["log lines"] > 50 and counts["artifacts"] >= 12, counts
    found = haystacks.found()
    assert found == [], found
    # What the server echoed reached the outputs (so the search above covered it), masked.
    everything = "\n".join(haystacks.texts.values())
    assert "you sent Bearer ***" in everything
    assert "[ECHO-READY key=*** db=*** redis=***]" in everything, "no /ready echo reached"
    # The search itself finds a canary where one is: the sandbox's own secrets file.
    env_file = Path(canary_sandbox.info["state_dir"]) / "sandbox.env"
    control = Haystacks()
    control.add("sandbox.env", env_file.read_text())
    assert len(control.found()) >= 3, "the search would not find a canary"
    record(
        "canary secrets found",
        len(found),
        section="Secrets",
        detail=f"API key, DB and Redis password canaries (right and wrong ones, whole and by "
        f"their random part), with the service echoing them back, searched in "
        f"{len(haystacks.texts)} places: stdout, stderr and JSON output of 4 verbose command "
        f"lines (a real recovery among them), 6 in-process flow runs (a real recovery and the "
        f"fleet among them), and from the Prefect server {counts['flow runs']} flow runs' "
        f"parameters and state messages, {counts['task runs']} task runs, "
        f"{counts['log lines']} log lines ({counts['with their last line']} of "
        f"{counts['flow runs']} runs with their last line) and {counts['artifacts']} artifacts",
    )
