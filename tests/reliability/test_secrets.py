"""Secrets: canary values for the API key and the database password go through every flow
and every command line (`--verbose`), and appear nowhere they could be read afterwards.

The canaries are the real secrets of a sandbox of their own (the shared one has random
secrets and refuses any other key), so they travel the success paths: authenticated reads
of every replica, a breaker reset with the key, PostgreSQL connections with the password.
A second set of canaries that are wrong travels the failure paths: 403 answers, a refused
database login. A database outage adds the error paths of the connection itself.

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
TAIL = {name: secrets.token_hex(6) for name in ("key", "pw", "wrong-key", "wrong-pw")}
CANARY_KEY = f"canary-KEY-7f3a-{TAIL['key']}"
CANARY_PW = f"canary-PW-{TAIL['pw']}"
WRONG_KEY = f"canary-KEY-wrong-{TAIL['wrong-key']}"
WRONG_PW = f"canary-PW-wrong-{TAIL['wrong-pw']}"
# Whole values and their random parts alone (a truncated or partly masked copy).
NEEDLES = [CANARY_KEY, CANARY_PW, WRONG_KEY, WRONG_PW, *TAIL.values()]

# `python -m sandbox up`, with the canaries as the sandbox's own API key and DB password.
LAUNCHER = """
import functools, os, sys
from sandbox import cli, system
system.SandboxOptions = functools.partial(
    system.SandboxOptions,
    api_key=os.environ.pop("CANARY_API_KEY"),
    db_password=os.environ.pop("CANARY_DB_PASSWORD"),
)
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
            "MLFLOW_CB_RECOVERY_TIMEOUT": "2",
            "MLFLOW_CB_FAILURE_THRESHOLD": "3",
        },
    )
    proc.argv = [sys.executable, "-c", LAUNCHER, *proc.argv[3:]]  # same arguments as `up`
    with proc:
        assert proc.info["api_key"] == CANARY_KEY
        assert CANARY_PW in proc.info["database_url"]
        yield proc


class Haystacks:
    """Every place searched, by name, and the flow runs to read back from the server."""

    def __init__(self) -> None:
        self.texts: dict[str, str] = {}
        self.started = datetime.now(UTC)

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
        canary_sandbox.client.heal()
    assert [s.name for s in states][:2] == ["Critical", "Planned"]
    for state in states:
        result = state.result(raise_on_failure=False)
        haystacks.add("in-process flow results", json.dumps(_jsonable(result)))
    captured = capfd.readouterr()
    haystacks.add("in-process flows: stdout", captured.out)
    haystacks.add("in-process flows: stderr", captured.err)


def _jsonable(value: Any) -> Any:
    dump = getattr(value, "model_dump", None)
    return dump(mode="json") if dump is not None else str(value)


async def _read_back(since: datetime) -> dict[str, str]:
    """Logs, artifacts, parameters and state messages of every run since `since`."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterStartTime,
        LogFilter,
        LogFilterFlowRunId,
    )

    texts: dict[str, str] = {}
    async with get_client() as client:
        runs = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(after_=since)),
            limit=200,
        )
        ids = [run.id for run in runs]
        texts["flow runs: parameters"] = json.dumps([run.parameters for run in runs])
        texts["flow runs: names and state messages"] = json.dumps(
            [[run.name, run.state and run.state.name, run.state and run.state.message]
             for run in runs]
        )  # fmt: skip
        tasks = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids))
        )
        texts["task runs: names, inputs and state messages"] = json.dumps(
            [[t.name, str(t.task_inputs), t.state.message if t.state else None] for t in tasks]
        )
        lines: list[str] = []
        finished: set[Any] = set()  # flow runs whose last log line ("Finished in state") is in
        offset = 0
        while True:
            page = await client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=ids)),
                limit=200,
                offset=offset,
            )
            lines += [log.message for log in page]
            finished |= {
                log.flow_run_id
                for log in page
                if log.task_run_id is None and log.message.startswith("Finished in state")
            }
            offset += len(page)
            if len(page) < 200:
                break
        texts["Prefect logs"] = "\n".join(lines)
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=ids))
        )
        texts["artifacts"] = json.dumps(
            [[a.key, a.description, a.data] for a in artifacts], default=str
        )
    counts = {"flow runs": len(runs), "finished": len(finished), "task runs": len(tasks),
              "log lines": len(lines), "artifacts": len(artifacts)}  # fmt: skip
    texts["_counts"] = json.dumps(counts)
    return texts


def test_canaries_appear_nowhere(
    prefect_server: str, haystacks: Haystacks, canary_sandbox: SandboxProcess
) -> None:
    """Everything the two tests above produced, on the terminal, on disk and on the server."""

    # Logs reach the server in batches: wait until the runs' last lines are in.
    def settled() -> dict[str, str] | None:
        texts = asyncio.run(_read_back(haystacks.started))
        counts = json.loads(texts["_counts"])
        done = counts["flow runs"] >= 7 and counts["finished"] == counts["flow runs"]
        return texts if done else None

    if not any(where.endswith("JSON output") for where in haystacks.texts):
        pytest.skip("reads back what the tests above produced: run the whole module")
    server = wait_for(settled, 30, "every run's last log line on the server")
    assert server is not None
    counts = json.loads(server.pop("_counts"))
    for where, text in server.items():
        haystacks.add(where, text)
    # The canaries did travel: the sandbox holds them, and the runs used them.
    assert canary_sandbox.info["api_key"] == CANARY_KEY
    assert counts["log lines"] > 50 and counts["artifacts"] >= 8, counts
    found = haystacks.found()
    assert found == [], found
    # The search itself finds a canary where one is: the sandbox's own secrets file.
    env_file = Path(canary_sandbox.info["state_dir"]) / "sandbox.env"
    control = Haystacks()
    control.add("sandbox.env", env_file.read_text())
    assert len(control.found()) >= 2, "the search would not find a canary"
    record(
        "canary secrets found",
        len(found),
        section="Secrets",
        detail=f"API key and DB password canaries (right and wrong ones, whole and by their "
        f"random part) searched in {len(haystacks.texts)} places: stdout, stderr and JSON "
        f"output of 4 verbose command lines, 3 in-process flow runs, and from the Prefect "
        f"server {counts['flow runs']} flow runs' parameters and state messages, "
        f"{counts['task runs']} task runs, {counts['log lines']} log lines and "
        f"{counts['artifacts']} artifacts",
    )
