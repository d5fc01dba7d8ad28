"""The sandbox with a real `mlflow server` (`up --mlflow real`), and what a real MLflow refuses.

One real-MLflow sandbox for the whole module (a real server costs tens of seconds to start),
healed after each test. Next to it, one more real server, started at the same time, built to
refuse: MLflow's basic-auth app, with allowed hosts that name only 127.0.0.1:PORT. Reached as
127.0.0.1:PORT it passes host validation and asks for credentials (401); reached as
localhost:PORT it rejects the Host header (403). Its answers are captured here and compared
with the texts the domain's unit tests use (tests/domain/test_mlflow_refusals.py).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import version
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandbox.client import SandboxProcess
from sandbox.ports import free_port, wait_for_port
from sandbox.processes import die_with_parent, stop_group
from sandbox.statefiles import env_lines
from service_health.details import BreakerFacts
from service_health.models import DiagnosticReport, Finding
from service_health.recovery import RecoveryResult
from tests.conftest import _require_binaries
from tests.domain.helpers import facts
from tests.domain.test_mlflow_refusals import AUTH_MSG, HOST_MSG
from tests.flows.test_diagnose_flow import diagnose
from tests.helpers import breaker_open_everywhere, wait_for

MLFLOW_MISSING = [m for m in ("mlflow", "flask_wtf") if find_spec(m) is None]
if MLFLOW_MISSING:
    if os.environ.get("HOKUSAI_REQUIRE_SERVERS"):  # CI installs the extra: never skip there
        raise RuntimeError(f"the mlflow extra is not installed ({', '.join(MLFLOW_MISSING)})")
    pytest.skip("needs the mlflow extra: uv sync --extra mlflow", allow_module_level=True)

SEARCH = "/api/2.0/mlflow/experiments/search"
REGISTRY, MLFLOW = "hokusai-registry", "hokusai-mlflow"
ALLOWED_HOSTS_ADVICE = "add the load balancer's host name to mlflow's allowed hosts"
START_TIMEOUT = 240.0  # two real MLflow servers starting at once on a small shared machine


@dataclass
class RefusingMlflow:
    """A real basic-auth MLflow whose allowed hosts name only 127.0.0.1:port."""

    port: int
    proc: subprocess.Popen[bytes]

    @property
    def allowed_url(self) -> str:  # passes host validation, then asks for credentials
        return f"http://127.0.0.1:{self.port}"

    @property
    def rejected_url(self) -> str:  # the same server by a name it does not allow
        return f"http://localhost:{self.port}"


def start_refusing_mlflow(root: Path) -> RefusingMlflow:
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    auth_ini = root / "auth.ini"
    auth_ini.write_text(
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = sqlite:///{root / 'auth.db'}\n"
        "admin_username = admin\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    env = {
        **os.environ,
        "MLFLOW_AUTH_CONFIG_PATH": str(auth_ini),
        "MLFLOW_AUTH_ADMIN_PASSWORD": secrets.token_urlsafe(18),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "MLFLOW_SERVER_ALLOWED_HOSTS": f"127.0.0.1:{port}",
    }
    argv = [
        sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth",
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--default-artifact-root", str(root / "artifacts"),
    ]  # fmt: skip
    log = (root / "mlflow.log").open("ab")
    proc = subprocess.Popen(
        argv,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        # Its own group, so that the uvicorn child `mlflow server` spawns is stopped with it.
        start_new_session=True,
        preexec_fn=die_with_parent,
    )
    log.close()
    return RefusingMlflow(port, proc)


def serving(server: RefusingMlflow) -> bool:
    if server.proc.poll() is not None:
        raise AssertionError(f"the refusing MLflow exited with {server.proc.returncode}")
    try:
        return httpx.get(server.allowed_url + "/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[SandboxProcess, RefusingMlflow]]:
    """The real-MLflow sandbox and the refusing server, started concurrently."""
    _require_binaries()
    refusing = start_refusing_mlflow(tmp_path_factory.mktemp("refusing-mlflow"))
    try:
        sandbox = SandboxProcess(
            tmp_path_factory.mktemp("real-mlflow-sandbox"),
            extra_args=["--mlflow", "real"],
            env={"MLFLOW_CB_RECOVERY_TIMEOUT": "2", "MLFLOW_CB_FAILURE_THRESHOLD": "3"},
            startup_timeout=START_TIMEOUT,
        )
        with sandbox:
            wait_for(lambda: serving(refusing), START_TIMEOUT, "the refusing MLflow to start")
            yield sandbox, refusing
    finally:
        stop_group(refusing.proc)


@pytest.fixture
def real(
    world: tuple[SandboxProcess, RefusingMlflow],
    prefect_server: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[SandboxProcess]:
    """The shared real-MLflow sandbox, its settings in the environment; healed afterwards."""
    sandbox, _ = world
    for key, value in env_lines(sandbox.info).items():
        monkeypatch.setenv(key, value)
    yield sandbox
    sandbox.client.heal()
    wait_for(sandbox.client.converged, 120, "the real-MLflow sandbox to converge after healing")


@pytest.fixture
def refusing(world: tuple[SandboxProcess, RefusingMlflow]) -> RefusingMlflow:
    return world[1]


def recover(**params: Any) -> tuple[Any, RecoveryResult]:
    from flows.recover import recover_service

    async def go() -> Any:
        return await recover_service(
            target="sandbox",
            cooldown_seconds=0,
            stabilization_timeout_seconds=180,
            return_state=True,
            **params,
        )

    state = asyncio.run(go())
    result = state.result(raise_on_failure=False)
    assert isinstance(result, RecoveryResult), state
    return state, result


def search(url: str) -> httpx.Response:
    return httpx.post(url.rstrip("/") + SEARCH, json={"max_results": 1}, timeout=10)


def breaker_states(sandbox: SandboxProcess) -> set[str]:
    replicas = sandbox.client.status()["services"][REGISTRY]["replicas"]
    return {
        httpx.get(f"http://{r['address']}/health/mlflow", timeout=10).json()[
            "circuit_breaker_state"
        ]
        for r in replicas
    }


def findings(report: DiagnosticReport, check: str) -> list[Finding]:
    return [f for f in report.checks[check].findings if f.severity != "info"]


def test_real_server_behind_its_load_balancer_is_healthy(real: SandboxProcess) -> None:
    url = real.info["mlflow_url"]
    # A real server, not the stub: it reports the installed MLflow's version.
    assert httpx.get(url + "/version", timeout=10).text == version("mlflow")
    # Through the load balancer, with the allowed hosts set: no host-validation 403.
    resp = search(url)
    assert resp.status_code == 200, resp.text
    assert resp.json()["experiments"][0]["name"] == "Default"

    state, report = diagnose()
    assert state.name == "Healthy", report.warnings
    assert report.checks["mlflow_service"].status.value == "healthy"
    assert facts(report.checks["circuit_breaker"], BreakerFacts).state == "CLOSED"


def test_load_balancer_faults_apply_to_the_real_server(real: SandboxProcess) -> None:
    url = real.info["mlflow_url"]
    real.client.fault("mlflow-errors")
    resp = search(url)
    assert resp.status_code == 500 and resp.json()["error_code"] == "INTERNAL_ERROR"
    real.client.heal("mlflow-errors")
    assert search(url).status_code == 200

    real.client.fault("mlflow-slow")
    resp = search(url)
    assert resp.status_code == 200 and resp.elapsed.total_seconds() >= 3.0
    real.client.heal("mlflow-slow")


def test_host_validation_refusal_is_named(real: SandboxProcess, refusing: RefusingMlflow) -> None:
    # What MLflow answers to a Host header it does not allow, captured from the real server:
    # the domain recognises exactly this.
    resp = search(refusing.rejected_url)
    assert resp.status_code == 403
    assert resp.text == HOST_MSG
    assert resp.headers["content-type"] == "text/plain"
    # ...while its /health stays green: MLflow exempts it from host validation.
    assert httpx.get(refusing.rejected_url + "/health", timeout=10).status_code == 200

    state, report = diagnose(mlflow_url=refusing.rejected_url)
    assert state.name == "Degraded"
    check = report.checks["mlflow_service"]
    assert check.details["mlflow_refusal"] == "host_validation"
    [finding] = findings(report, "mlflow_service")
    assert "MLflow rejects the Host header it is reached by" in finding.message
    assert HOST_MSG in finding.message
    assert finding.recommendation is not None
    assert ALLOWED_HOSTS_ADVICE in finding.recommendation.lower()
    # Distinct from down or erroring: neither "unreachable" nor "partly failing".
    assert check.status.value == "degraded"
    assert not any("unreachable" in w or "partly failing" in w for w in report.warnings)


def test_authentication_refusal_is_named(real: SandboxProcess, refusing: RefusingMlflow) -> None:
    resp = search(refusing.allowed_url)
    assert resp.status_code == 401
    assert resp.text == AUTH_MSG
    assert resp.headers["www-authenticate"] == 'Basic realm="mlflow"'

    state, report = diagnose(mlflow_url=refusing.allowed_url)
    assert state.name == "Degraded"
    assert report.checks["mlflow_service"].details["mlflow_refusal"] == "authentication"
    [finding] = findings(report, "mlflow_service")
    assert finding.message.startswith("MLflow requires authentication (HTTP 401")
    assert finding.recommendation is not None
    assert "MLFLOW_TRACKING_USERNAME" in finding.recommendation
    assert ALLOWED_HOSTS_ADVICE not in finding.recommendation.lower()


@pytest.fixture
def registry_behind_refusal(
    real: SandboxProcess, refusing: RefusingMlflow, tmp_path: Path
) -> Iterator[str]:
    """One more registry process (the sandbox's own code) whose MLflow is the refusing server
    by a rejected name; its breaker never opens, so its answers keep carrying the cause."""
    info = real.info
    port = free_port()
    env = {
        **os.environ,
        "REGISTRY_FLAVOR": "contract",
        "DATABASE_URL": info["database_url"],
        "REDIS_URL": info["redis_url"],
        "MLFLOW_TRACKING_URI": refusing.rejected_url,
        "API_KEY": info["api_key"],
        "SANDBOX_ADMIN_TOKEN": secrets.token_urlsafe(12),
        "MLFLOW_CB_FAILURE_THRESHOLD": "1000",
    }
    with (tmp_path / "registry.log").open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sandbox.registry", "--host", "127.0.0.1", "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
    try:
        assert wait_for_port("127.0.0.1", port, 60, alive=lambda: proc.poll() is None)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_group(proc)


def test_registry_view_quotes_the_refusal(
    real: SandboxProcess,
    refusing: RefusingMlflow,
    registry_behind_refusal: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ready = httpx.get(registry_behind_refusal + "/ready", timeout=10).json()
    [mlflow_check] = [c for c in ready["checks"] if c["name"] == "mlflow"]
    assert HOST_MSG in mlflow_check["error"]

    # That registry is not among the sandbox's ECS targets: its view is read through its URL
    # (as for a service whose tasks the worker cannot reach), /health/mlflow included.
    monkeypatch.setenv("REPLICA_DISCOVERY", "sample")
    state, report = diagnose(api_url=registry_behind_refusal, mlflow_url=refusing.rejected_url)
    assert state.name == "Degraded"
    refused = [
        f
        for f in findings(report, "circuit_breaker")
        if f.message.startswith("The registry's MLflow calls are refused")
    ]
    assert len(refused) == 1, report.warnings
    [finding] = refused
    assert "MLflow rejects the Host header it is reached by (HTTP 403 on GET /" in finding.message
    assert HOST_MSG in finding.message
    assert "GET /health/mlflow" in finding.evidence
    assert finding.recommendation is not None
    assert ALLOWED_HOSTS_ADVICE in finding.recommendation.lower()


def test_killed_mlflow_degrades_then_recovery_restarts_it_and_closes_breakers(
    real: SandboxProcess,
) -> None:
    real.client.fault("mlflow-down")
    wait_for(lambda: breaker_open_everywhere(real), 60, "breakers to open")

    state, report = diagnose()
    assert state.name == "Degraded", report.critical_issues
    assert not report.critical_issues
    assert report.checks["circuit_breaker"].status.value == "degraded"
    assert facts(report.checks["circuit_breaker"], BreakerFacts).state == "OPEN"
    assert report.checks["mlflow_service"].status.value == "unhealthy"
    assert "mlflow_refusal" not in report.checks["mlflow_service"].details  # down, not refusing

    # The recovery restarts the MLflow ECS service (a new real server, rolled), waits for it,
    # resets the breakers and verifies with a final diagnosis.
    state, result = recover(dry_run=False)
    assert state.name == "Recovered", result.message
    assert result.overall_success
    assert breaker_states(real) == {"CLOSED"}
    assert search(real.info["mlflow_url"]).status_code == 200

    state, report = diagnose()
    assert state.name == "Healthy", report.warnings
