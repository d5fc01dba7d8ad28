"""Talking to a running sandbox, and running one as a child process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import httpx

from sandbox import statefiles

if TYPE_CHECKING:
    from sandbox.registry.admin import RequestStats


class SandboxClient:
    """The control API, over HTTP."""

    def __init__(self, control_url: str, timeout: float = 30.0) -> None:
        self._http = httpx.Client(base_url=control_url, timeout=timeout)

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        resp = self._http.request(method, path, json=body)
        if resp.status_code == 400:
            raise ValueError(resp.json().get("detail", resp.text))
        resp.raise_for_status()
        return resp.json()

    def fault(
        self,
        name: str,
        replica: int | None = None,
        all: bool = False,
        ms: int | None = None,
        component: str | None = None,
        mode: str | None = None,
    ) -> dict[str, Any]:
        body = {"replica": replica, "all": all, "ms": ms, "component": component, "mode": mode}
        result: dict[str, Any] = self._call("POST", f"/faults/{name}", body)
        return result

    def heal(self, name: str | None = None) -> list[str]:
        healed: list[str] = self._call("POST", "/heal", {"name": name})["healed"]
        return healed

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/status")
        return result

    def converged(self) -> bool:
        """Every ECS service settled on one completed deployment with all replicas running
        and healthy, PostgreSQL and Redis up, as health checks begun after the last fault
        or heal found it: the sandbox's own view of healthy."""
        status = self.status()
        return (
            status["settled"]
            and all(
                len(s["deployments"]) == 1
                and s["deployments"][0]["rollout_state"] == "COMPLETED"
                and s["running"] == s["desired"]
                and all(r["health"] == "healthy" for r in s["replicas"])
                for s in status["services"].values()
            )
            and status["postgres"] == "up"
            and status["redis"] == "up"
        )

    def request_counts(self) -> dict[str, dict[str, int]]:
        """Per registry replica (address): requests received, by `METHOD /path[?query]`."""
        result: dict[str, dict[str, int]] = self._call("GET", "/requests")["replicas"]
        return result

    def request_stats(self) -> dict[str, RequestStats]:
        """Per registry replica (address): `counts` (as request_counts), `mlflow_in_flight`
        (MLflow-touching requests in flight now), `max_mlflow_in_flight` (the most at once
        since the last reset), `mlflow_checks` (MLflow calls the breaker admitted: each
        reached MLflow and counted toward opening it) and `mlflow_refused` (calls it
        refused without touching MLflow). The load balancer's health checks are excluded."""
        result: dict[str, RequestStats] = self._call("GET", "/requests")["stats"]
        return result

    def max_mlflow_in_flight(self) -> dict[str, int]:
        """Per replica: the most MLflow-touching requests in flight at once since the reset."""
        return {a: s["max_mlflow_in_flight"] for a, s in self.request_stats().items()}

    def mlflow_checks(self) -> dict[str, int]:
        """Per replica: MLflow calls its breaker admitted (and counted) since the reset."""
        return {a: s["mlflow_checks"] for a, s in self.request_stats().items()}

    def reset_request_counts(self) -> None:
        """Reset every counter of request_stats on every replica."""
        self._call("POST", "/requests/reset")

    def breaker_states(self) -> dict[str, str]:
        """Per replica: its breaker's state, read without touching MLflow or any counter."""
        result: dict[str, str] = self._call("GET", "/breakers")["replicas"]
        return result

    def force_breaker(self, state: str, replica: int | None = None) -> list[str]:
        """Put every replica's breaker (or replica N's) in `state`: CLOSED, OPEN (with
        automatic retries, unlike the breaker-stuck-open fault) or HALF_OPEN. Returns the
        replicas' addresses."""
        result: list[str] = self._call("POST", f"/breaker/{state}", {"replica": replica})[
            "replicas"
        ]
        return result

    def close(self) -> None:
        self._http.close()


class SandboxProcess:
    """`python -m sandbox up` as a child process; ready when sandbox.json appears."""

    def __init__(
        self,
        state_dir: Path,
        flavor: str = "contract",
        extra_args: list[str] | None = None,
        env: dict[str, str] | None = None,
        startup_timeout: float = 120.0,
    ) -> None:
        self.state_dir = Path(state_dir).resolve()
        self.argv = [sys.executable, "-m", "sandbox", "up", "--state-dir", str(self.state_dir)]
        self.argv += ["--registry-flavor", flavor, *(extra_args or [])]
        # The project root on the path, so the sandbox starts from any working directory.
        root = str(Path(__file__).resolve().parents[1])
        path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
        self.env = {**os.environ, "PYTHONPATH": path, **(env or {})}
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.info: dict[str, Any] = {}
        self.client: SandboxClient

    def start(self) -> SandboxProcess:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        statefiles.remove(self.state_dir)
        log = (self.state_dir / "sandbox.log").open("ab")
        self.proc = subprocess.Popen(
            self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env
        )
        log.close()
        deadline = time.monotonic() + self.startup_timeout
        ready = self.state_dir / statefiles.JSON_NAME
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = (self.state_dir / "sandbox.log").read_text()[-3000:]
                raise RuntimeError(f"sandbox did not start:\n{tail}")
            time.sleep(0.05)
        self.info = statefiles.read(self.state_dir)
        self.client = SandboxClient(self.info["control_url"])
        return self

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if hasattr(self, "client"):
            self.client.close()
        return self.proc.returncode

    def __enter__(self) -> SandboxProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
