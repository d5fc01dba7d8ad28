"""A Prefect server and a process worker of the test's own, as an operator runs them: real
`prefect server start` and `prefect worker start` subprocesses, stoppable and restartable."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psutil

from sandbox.ports import free_port
from sandbox.processes import stop_group
from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")
# How long a stopped worker's flow-run processes may take to end their runs.
WORKER_GRACE_S = 10.0


class PrefectServer:
    """`prefect server start` on a free loopback port with its own home and SQLite file, so
    that a restart keeps every run, deployment and automation (as an upgrade would)."""

    def __init__(self, home: Path, env: dict[str, str] | None = None) -> None:
        self.home = home
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/api"
        self.env = {
            **os.environ,
            **(env or {}),
            "PREFECT_HOME": str(home),
            "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_ENABLED": "false",
        }
        self.env.pop("PREFECT_API_URL", None)
        self.proc: subprocess.Popen[Any] | None = None
        self.starts = 0

    def start(self, timeout: float = 180) -> None:
        self.starts += 1
        log = (self.home / f"server-{self.starts}.log").open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
             "--port", str(self.port), "--no-ui", "--analytics-off"],
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        wait_for(self.healthy, timeout, f"the Prefect server on port {self.port}")

    def healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"the Prefect server exited: see {self.home}")
        try:
            return httpx.get(f"{self.url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc, 30)
            self.proc = None

    def call(self, call: Callable[[Any], Awaitable[T]]) -> T:
        """`call(client)` with a Prefect client bound to this server."""
        from prefect import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        async def go() -> T:
            async with get_client() as client:
                return await call(client)

        with temporary_settings({PREFECT_API_URL: self.url}):
            return asyncio.run(go())


class Worker:
    """`prefect worker start` on a pool (by default the project's), its output in a file.
    `env` is added to this process's environment, or with `inherit=False` is the whole of
    it (a test that removes variables)."""

    def __init__(
        self,
        env: dict[str, str],
        log: Path,
        limit: int = 4,
        pool: str = "hokusai-process",
        name: str | None = None,
        inherit: bool = True,
    ) -> None:
        self.log = log
        argv = [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool,
                "--limit", str(limit), *(["--name", name] if name else [])]  # fmt: skip
        with log.open("w") as out:
            self.proc = subprocess.Popen(
                argv, cwd=ROOT, env={**os.environ, **env} if inherit else env,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip

    def stop(self) -> None:
        stop_workers([self])

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def stop_workers(workers: list[Worker], grace_s: float = WORKER_GRACE_S) -> None:
    """SIGTERM every worker's process group at once (a worker asks itself to stop, as on
    Ctrl-C; its flow-run processes end their runs Crashed), await for at most `grace_s`
    together until no flow-run process of theirs is left, then SIGKILL what is left of each
    group. The workers' own graceful exit is not waited for: in long sessions it hung for
    good after the SIGINT (never printing "stopped") and it leaves nothing a test reads."""
    for worker in workers:
        with suppress(ProcessLookupError):
            os.killpg(worker.proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while any(_runs_left(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    for worker in workers:
        with suppress(ProcessLookupError):
            os.killpg(worker.proc.pid, signal.SIGKILL)
        worker.proc.wait()


def _runs_left(worker: Worker) -> bool:
    """Whether the worker (if alive) still has a live process under it: a flow run."""
    try:
        children = psutil.Process(worker.proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return False
    return any(_alive(child) for child in children)


def _alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
