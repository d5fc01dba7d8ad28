"""Fixtures of the contract-test flow's tests: the shared sandboxes, a Prefect server."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from sandbox.client import SandboxProcess
from sandbox.statefiles import env_lines
from service_health.contract import ContractReport
from tests.conftest import converged
from tests.helpers import wait_for


def verify(**params: Any) -> tuple[Any, ContractReport]:
    """Run the flow in this process (reporting to the session's Prefect server)."""
    from flows.verify_contract import verify_contract  # imports Prefect: only when needed

    async def go() -> Any:
        return await verify_contract(return_state=True, **params)

    state = asyncio.run(go())
    report = state.result(raise_on_failure=False)
    assert isinstance(report, ContractReport), state
    return state, report


def failed(report: ContractReport) -> set[str]:
    return set(report.failed_tests())


def diffs(report: ContractReport) -> str:
    """Every failure with its diff, for assertion messages."""
    return "\n".join(f"{name}: {' | '.join(r.diff)}" for name, r in report.tests.items() if r.diff)


@pytest.fixture
def env(prefect_server: str, sandbox_env: dict[str, str], healed: SandboxProcess) -> dict[str, str]:
    """The contract sandbox's environment; the sandbox is healed after the test."""
    return {**sandbox_env, "PREFECT_API_URL": prefect_server}


@pytest.fixture
def legacy(
    prefect_server: str, legacy_sandbox: SandboxProcess, monkeypatch: pytest.MonkeyPatch
) -> Iterator[SandboxProcess]:
    """The legacy sandbox with its environment set; healed after the test."""
    for key, value in env_lines(legacy_sandbox.info).items():
        monkeypatch.setenv(key, value)
    yield legacy_sandbox
    legacy_sandbox.client.heal()
    wait_for(lambda: converged(legacy_sandbox), 90, "legacy sandbox to converge after healing")
