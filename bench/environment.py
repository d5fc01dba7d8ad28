"""What the benchmarks run against: the sandbox, a Prefect server, and their cleanup.

`BenchEnv` starts the sandbox (`python -m sandbox up`) and a Prefect server as child
processes (the server on its default SQLite database, or on a throwaway PostgreSQL), or
uses running ones (`--sandbox-state DIR`, `PREFECT_API_URL`), and exports
what the flows read (the sandbox's settings, `PREFECT_API_URL`) into this process's
environment. Every process it starts, workers included, is stopped on exit, also after a
failure, Ctrl-C or SIGTERM (`stop_signals` turns those into KeyboardInterrupt).
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, TypeVar

import httpx
import psutil

from bench.cpu import tree
from bench.harness import say
from sandbox import statefiles
from sandbox.client import SandboxClient, SandboxProcess
from sandbox.ports import free_port
from sandbox.processes import die_with_parent, stop_group
from sandbox.servers import PostgresServer
from sandbox.statefiles import env_lines

ROOT = Path(__file__).resolve().parents[1]
PREFECT_STARTUP_TIMEOUT_S = 180.0
CONVERGE_TIMEOUT_S = 120.0
REGISTRY = "hokusai-registry"

T = TypeVar("T")


def wait_until(condition: Callable[[], T], timeout: float, what: str) -> T:
    """Poll `condition` (fast first, backing off to 0.2 s) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.2)


@contextmanager
def stop_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP raise KeyboardInterrupt like Ctrl-C, once, so cleanup runs."""
    fired: list[int] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        if not fired:
            fired.append(signum)
            raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


class BenchEnv:
    def __init__(
        self,
        work: Path,
        sandbox_state: Path | None = None,
        prefect_url: str | None = None,
        prefect_db: str = "sqlite",
    ) -> None:
        self.work = work
        self._sandbox_state = sandbox_state
        self.prefect_url = prefect_url
        self.prefect_db = prefect_db if prefect_url is None else "existing server"
        self.sandbox: SandboxProcess | None = None
        self.prefect: subprocess.Popen[bytes] | None = None
        self._prefect_postgres: PostgresServer | None = None
        self.children: list[subprocess.Popen[bytes]] = []
        self.info: dict[str, Any] = {}
        self.client: SandboxClient

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> BenchEnv:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        if self.prefect_url is None:
            self._start_prefect()  # it boots while the sandbox does
        if self._sandbox_state is not None:
            say(f"using the running sandbox of {self._sandbox_state}")
            self.info = statefiles.read(self._sandbox_state)
            self.client = SandboxClient(self.info["control_url"])
        else:
            say("starting the sandbox")
            self.sandbox = SandboxProcess(self.work / "sandbox")
            self.sandbox.start()
            self.info = self.sandbox.info
            self.client = self.sandbox.client
        if self.prefect is not None:
            self._wait_prefect()
        assert self.prefect_url is not None
        os.environ.update(self.flow_env())
        self.heal()

    def stop(self) -> None:
        for proc in reversed(self.children):
            stop_group(proc)
        self.children.clear()
        if self.sandbox is not None:
            say("stopping the sandbox")
            self.sandbox.stop()
            self.sandbox = None
        elif hasattr(self, "client"):
            self.client.close()
        if self.prefect is not None:
            say("stopping the Prefect server")
            stop_group(self.prefect)
            self.prefect = None
        if self._prefect_postgres is not None:
            self._prefect_postgres.remove()
            self._prefect_postgres = None

    def flow_env(self) -> dict[str, str]:
        """What a worker next to the sandbox has in its environment."""
        assert self.prefect_url is not None
        return {
            **env_lines(self.info),
            "PREFECT_API_URL": self.prefect_url,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            # Flow and task logs still go to the server; the terminal keeps the table.
            "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "WARNING",
        }

    # -- child processes -------------------------------------------------------------------

    def spawn(
        self,
        argv: list[str],
        log_name: str,
        env: dict[str, str] | None = None,
        inherit: bool = True,
    ) -> subprocess.Popen[bytes]:
        """A child in its own process group (stopped as a whole on exit), dying with us.

        Its environment is ours updated with `env`, or `env` over ours without the
        sandbox's settings (`inherit=False`), so that nothing unwanted leaks in."""
        base = dict(os.environ)
        if not inherit:
            for key in env_lines(self.info):
                base.pop(key, None)
        log = (self.work / log_name).open("ab")
        try:
            proc = subprocess.Popen(
                argv,
                cwd=ROOT,
                env={**base, **(env or {})},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        finally:
            log.close()
        self.children.append(proc)
        return proc

    def release(self, proc: subprocess.Popen[bytes]) -> None:
        """Stop a child started with `spawn` now."""
        stop_group(proc)
        if proc in self.children:
            self.children.remove(proc)

    def _start_prefect(self) -> None:
        say(f"starting a Prefect server ({self.prefect_db} database)")
        home = self.work / "prefect-home"
        home.mkdir(parents=True, exist_ok=True)
        port = free_port()
        self.prefect_url = f"http://127.0.0.1:{port}/api"
        env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
        env |= {
            "PREFECT_HOME": str(home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
            "PREFECT_UI_ENABLED": "false",
        }
        if self.prefect_db == "postgres":
            # A throwaway PostgreSQL cluster (the sandbox's own kind) as the server's database.
            self._prefect_postgres = PostgresServer(
                self.work / "prefect-postgres" / "data", password=secrets.token_urlsafe(16)
            )
            self._prefect_postgres.start()
            url = self._prefect_postgres.url.replace("postgresql://", "postgresql+asyncpg://", 1)
            env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = url
        argv = [sys.executable, "-m", "prefect", "server", "start"]
        argv += ["--host", "127.0.0.1", "--port", str(port)]
        log = (self.work / "prefect-server.log").open("ab")
        try:
            self.prefect = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        finally:
            log.close()

    def _wait_prefect(self) -> None:
        assert self.prefect is not None and self.prefect_url is not None
        deadline = time.monotonic() + PREFECT_STARTUP_TIMEOUT_S
        with httpx.Client(timeout=2.0) as http:
            while time.monotonic() < deadline:
                if self.prefect.poll() is not None:
                    break
                with suppress(httpx.HTTPError):
                    if http.get(f"{self.prefect_url}/health").status_code == 200:
                        return
                time.sleep(0.1)
        tail = (self.work / "prefect-server.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"the Prefect server did not become healthy:\n{tail}")

    def server_processes(self) -> list[psutil.Process]:
        """The Prefect server's process tree, when this harness started it."""
        return tree(self.prefect.pid if self.prefect is not None else None)

    def sandbox_processes(self) -> list[psutil.Process]:
        """The sandbox's process tree (replicas, moto, PostgreSQL, Redis), when started here."""
        proc = self.sandbox.proc if self.sandbox is not None else None
        return tree(proc.pid if proc is not None else None)

    # -- the sandbox -------------------------------------------------------------------------

    def converged(self) -> bool:
        return self.client.converged()

    def heal(self) -> None:
        """Heal every fault and wait until the sandbox says it is healthy again."""
        self.client.heal()
        wait_until(self.converged, CONVERGE_TIMEOUT_S, "the sandbox to converge")

    def registry_replicas(self) -> list[str]:
        """host:port of each live registry replica."""
        replicas = self.client.status()["services"][REGISTRY]["replicas"]
        return [r["address"] for r in replicas if r["alive"]]


@dataclass
class RunOptions:
    """How hard to measure: repetitions, sizes; chosen by --quick and --repeat."""

    quick: bool = False
    repeat: int | None = None  # overrides each benchmark's own repetition count
    profile_dir: Path | None = None  # --profile: where profiles are written

    def reps(self, full: int, quick: int = 1) -> int:
        if self.repeat is not None:
            return max(1, self.repeat)
        return quick if self.quick else full
