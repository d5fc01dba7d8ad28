"""The onset of an outage against the deployed version (the `legacy` flavour, issue 16).

Faults are injected and diagnosed at once, back to back, with no waiting for the breaker to
open: that window, where the deployed version's MLflow client retries inside its event loop
and every MLflow call counts toward opening the breaker, is where a careless diagnosis
calls the service Critical and stalls it for tens of seconds. Here every verdict must be
Degraded and within its deadline; an independent prober (its own client, on every replica)
measures how long `/live` stalls while each diagnosis runs, and the stand-in counts what
each diagnosis sent to each replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import httpx
import pytest

from flows.diagnose import diagnose_service_health
from sandbox.client import SandboxProcess
from sandbox.registry.config import LegacyRetryBudget
from sandbox.statefiles import env_lines
from service_health.details import BreakerFacts
from service_health.discipline import MLFLOW_TOUCHING
from service_health.models import DiagnosticReport
from tasks.trigger_report import read_trigger_event
from tests.conftest import LEGACY_TEST_ENV, converged
from tests.domain.helpers import facts
from tests.flows.test_diagnose_flow import diagnose
from tests.flows.test_plan_from_trigger import UNGUARDED
from tests.flows.test_recover_flow import recover
from tests.flows.test_standdown_flow import clean, run_id
from tests.helpers import wait_for
from tests.reliability.figures import record
from tests.reliability.test_fault_matrix import ONSET_PLAN, plan_steps

BUDGET = LegacyRetryBudget.from_env(LEGACY_TEST_ENV)
TIMEOUT = float(LEGACY_TEST_ENV["MLFLOW_TIMEOUT_SECONDS"])
# What one MLflow check of the stand-in costs while MLflow fails: the longest stall one
# request of ours may cause. Scheduling on a shared two-core machine adds to it.
CHECK = {
    "mlflow-down": BUDGET.mlflow_check_seconds(),
    "mlflow-errors": BUDGET.mlflow_check_seconds(),
    "mlflow-slow": BUDGET.mlflow_check_seconds(per_request=TIMEOUT),
}
SLACK_S = 1.0
DEADLINE_S = 30.0
# The breaker opens after 5 failures and our diagnosis feeds it one per replica per run:
# the onset lasts about five diagnoses; a few more prove the open state is read right.
MAX_RUNS = 9
REGISTRY = "hokusai-registry"


@pytest.fixture
def legacy(
    prefect_server: str, legacy_sandbox: SandboxProcess, monkeypatch: pytest.MonkeyPatch
) -> Iterator[SandboxProcess]:
    """The shared legacy sandbox, converged, its environment set; healed after."""
    wait_for(lambda: converged(legacy_sandbox), 90, "legacy sandbox to converge")
    for key, value in env_lines(legacy_sandbox.info).items():
        monkeypatch.setenv(key, value)
    yield legacy_sandbox
    legacy_sandbox.client.heal()  # also resets every breaker
    wait_for(lambda: converged(legacy_sandbox), 90, "legacy sandbox to converge after healing")


@dataclass
class Prober:
    """GET /live on every replica, one after another, with its own client: the longest any
    answer took while it ran is the longest stall the service showed its users."""

    addresses: list[str]
    worst_s: dict[str, float] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _run(self, address: str) -> None:
        with httpx.Client(base_url=f"http://{address}", timeout=60, trust_env=False) as c:
            while not self._stop.is_set():
                started = time.monotonic()
                with contextlib.suppress(httpx.HTTPError):  # a failed probe is timed too
                    c.get("/live")
                took = time.monotonic() - started
                self.worst_s[address] = max(self.worst_s.get(address, 0.0), took)
                self._stop.wait(0.05)

    def __enter__(self) -> Prober:
        self._threads = [
            threading.Thread(target=self._run, args=(a,), daemon=True) for a in self.addresses
        ]
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=90)


def diagnose_env(**params: Any) -> DiagnosticReport:
    """A diagnosis of the target the environment alone describes (target "env")."""
    return diagnose(target="env", **params)[1]


def replicas(sandbox: SandboxProcess) -> list[str]:
    return [r["address"] for r in sandbox.client.status()["services"][REGISTRY]["replicas"]]


def touching_counts(stats: Any) -> dict[str, int]:
    """MLflow-touching requests by path, from one replica's counts."""
    counts: dict[str, int] = stats["counts"]
    return {path: counts.get(f"GET {path}", 0) for path in MLFLOW_TOUCHING}


def assert_disciplined(sandbox: SandboxProcess, report: DiagnosticReport) -> None:
    """What one diagnosis sent, as the stand-in counted it."""
    for address, stats in sandbox.client.request_stats().items():
        assert stats["max_mlflow_in_flight"] <= 1, (address, stats)
        assert all(n <= 1 for n in touching_counts(stats).values()), (address, stats)
    discipline = report.checks["health_endpoints"].details["request_discipline"]
    assert discipline["mlflow_touching_sent"] <= discipline["mlflow_touching_budget"]


def breaker_state(report: DiagnosticReport) -> str | None:
    """The breaker state the diagnosis read (None when the check read none)."""
    found = report.checks["circuit_breaker"].facts
    return found.state if isinstance(found, BreakerFacts) else None


def run_onset(sandbox: SandboxProcess, fault: str) -> list[tuple[DiagnosticReport, float]]:
    """Inject `fault` and diagnose back to back until every breaker reads OPEN."""
    addresses = replicas(sandbox)
    sandbox.client.fault(fault)
    runs: list[tuple[DiagnosticReport, float]] = []
    for _ in range(MAX_RUNS):
        sandbox.client.reset_request_counts()
        with Prober(addresses) as prober:
            started = time.monotonic()
            _, report = diagnose(deadline_seconds=DEADLINE_S)
            took = time.monotonic() - started
        assert_disciplined(sandbox, report)
        runs.append((report, max(prober.worst_s.values())))
        assert report.overall_status.value == "degraded", (
            fault,
            len(runs),
            report.critical_issues,
        )
        assert report.diagnostic_duration_seconds <= DEADLINE_S, took
        # Until a run with every breaker OPEN reads OPEN (an OPEN read as HALF_OPEN fails).
        all_open = set(sandbox.client.breaker_states().values()) == {"OPEN"}
        if all_open and breaker_state(report) == "OPEN":
            break
    return runs


@pytest.mark.parametrize("fault", ["mlflow-down", "mlflow-errors", "mlflow-slow"])
def test_every_diagnosis_through_the_onset_is_degraded_and_stalls_at_most_one_check(
    legacy: SandboxProcess, fault: str
) -> None:
    runs = run_onset(legacy, fault)
    states = [breaker_state(r) for r, _ in runs]
    assert states[-1] == "OPEN", states  # the run ends with the breakers read OPEN
    assert "HALF_OPEN" not in states, states  # OPEN is never read as HALF_OPEN
    assert len(runs) >= 3, states  # the onset was diagnosed, not only its end
    worst = max(stall for _, stall in runs)
    assert worst <= CHECK[fault] + SLACK_S, (worst, [s for _, s in runs])
    first = runs[0][0]
    text = " ".join(first.warnings)
    assert "blocks on MLflow calls" in text or "MLflow calls failing" in text, first.warnings
    record(
        f"onset {fault}",
        f"{worst:.2f} s",
        detail=f"longest /live stall our diagnoses caused ({len(runs)} diagnoses back to back "
        f"until the breakers opened, every one Degraded; one MLflow check of the stand-in "
        f"costs {CHECK[fault]:.2f} s)",
        section="Outage onset against the deployed version",
    )


def test_recovery_through_the_onset_restarts_no_registry_task(legacy: SandboxProcess) -> None:
    legacy.client.fault("mlflow-down")
    _, result = recover(dry_run=True)
    assert result.initial_verdict.value == "degraded", result.plan
    restarted = [s.service for s in result.plan.steps if s.kind.value == "force_deployment"]
    assert REGISTRY not in restarted, result.plan.steps
    assert restarted == ["hokusai-mlflow"], result.plan.steps


def test_a_recovery_the_onset_diagnosis_starts_plans_from_it_and_restarts_no_registry_task(
    legacy: SandboxProcess,
) -> None:
    """The automation's path at the onset: the diagnosis made while the breakers are still
    CLOSED and counting is the report the recovery plans from (no diagnosis of its own, so
    no more MLflow-touching requests to the stalling replicas), and that plan restarts MLflow,
    never a registry task; applied, it recovers the service."""
    legacy.client.fault("mlflow-down")

    async def go() -> tuple[Any, dict[str, Any] | None]:
        state = await diagnose_service_health(
            target="sandbox", deadline_seconds=DEADLINE_S, return_state=True
        )
        return state, await read_trigger_event(f"prefect.flow-run.{run_id(state)}", 600, 30)

    state, payload = asyncio.run(go())
    report = state.result(raise_on_failure=False)
    assert isinstance(report, DiagnosticReport) and payload is not None
    assert report.overall_status.value == "degraded", report.critical_issues
    assert "CLOSED" in set(legacy.client.breaker_states().values())  # still the onset
    trigger = f"prefect.flow-run.{run_id(state)}"

    legacy.client.reset_request_counts()
    _, dry = recover(dry_run=True, triggered_by=trigger, **UNGUARDED)
    assert dry.plan.diagnosis_timestamp == report.timestamp  # planned from the trigger
    assert plan_steps(dry.plan) == ONSET_PLAN, dry.plan.steps
    sent = [touching_counts(s) for s in legacy.client.request_stats().values()]
    assert not any(sum(c.values()) for c in sent), sent  # nothing asked of the replicas

    created: list[UUID] = []
    clean(created)
    try:
        state, result = recover(dry_run=False, triggered_by=trigger,
                                relapse_check_delay_seconds=None, **UNGUARDED)  # fmt: skip
        created.append(run_id(state))
        assert result.plan.diagnosis_timestamp == report.timestamp
        restarted = [s.service for s in result.plan.steps if s.kind.value == "force_deployment"]
        assert restarted == ["hokusai-mlflow"], result.plan.steps
        assert state.name == "Recovered", result.message
    finally:
        clean(created)


def test_database_outage_is_critical_and_blames_no_mlflow(legacy: SandboxProcess) -> None:
    legacy.client.fault("postgres-down")
    _, report = diagnose(deadline_seconds=DEADLINE_S)
    assert report.overall_status.value == "critical"
    assert any("database" in issue.lower() for issue in report.critical_issues)
    said = " ".join(report.critical_issues + report.warnings)
    assert "MLflow call" not in said and "blocks on MLflow" not in said, said
    ready = report.checks["health_endpoints"].details["endpoints"]["/ready"]
    assert ready["status_code"] == 503  # /ready's own answer is not lost to a timeout


def test_open_and_half_open_read_as_they_are(legacy: SandboxProcess) -> None:
    legacy.client.force_breaker("OPEN")
    _, report = diagnose(deadline_seconds=DEADLINE_S)
    breaker = report.checks["circuit_breaker"]
    assert facts(breaker, BreakerFacts).state == "OPEN", breaker.summary
    assert "HALF_OPEN" not in " ".join(f.message for f in breaker.findings)
    _, plan = recover(dry_run=True)
    assert "reset_breaker" in [s.kind.value for s in plan.plan.steps], plan.plan.steps

    legacy.client.heal()
    wait_for(lambda: set(legacy.client.breaker_states().values()) == {"CLOSED"}, 30, "reset")
    legacy.client.force_breaker("HALF_OPEN")
    _, report = diagnose(deadline_seconds=DEADLINE_S)
    assert facts(report.checks["circuit_breaker"], BreakerFacts).state == "HALF_OPEN"


def test_mlflow_down_from_the_environment_alone_is_degraded(
    legacy: SandboxProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The seed's way: `source STATE/sandbox.env`, then a diagnosis without a target. The
    environment names MLflow's target group among TARGET_GROUPS but not as MLflow's: that
    is derived from ECS (the MLflow service's loadBalancers)."""
    assert "MLFLOW_TARGET_GROUPS" not in env_lines(legacy.info)
    legacy.client.fault("mlflow-down")
    wait_for(
        lambda: (
            any(
                r["health"] == "unhealthy"
                for r in legacy.client.status()["services"]["hokusai-mlflow"]["replicas"]
            )
            or not legacy.client.status()["services"]["hokusai-mlflow"]["replicas"]
        ),
        30,
        "MLflow's target to be unhealthy",
    )
    report = diagnose_env(deadline_seconds=DEADLINE_S)
    assert report.overall_status.value == "degraded", report.critical_issues
    assert not report.critical_issues
    # MLflow's group without a healthy target is said, as a warning.
    assert any("hokusai-mlflow-tg" in w for w in report.warnings), report.warnings


def sampled(sandbox: SandboxProcess) -> tuple[DiagnosticReport, int, str]:
    """A diagnosis of the environment's target: the report, the /health/mlflow requests
    all replicas received, and what the sample count rested on."""
    sandbox.client.reset_request_counts()
    report = diagnose_env(deadline_seconds=DEADLINE_S)
    stats = sandbox.client.request_stats().values()
    sent = sum(s["counts"].get("GET /health/mlflow", 0) for s in stats)
    basis = report.checks["health_endpoints"].details["request_discipline"]["sample_basis"]
    return report, sent, str(basis)


def test_one_sample_without_evidence_of_more_replicas(
    legacy: SandboxProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sampling through the load balancer: one /health/mlflow unless something says there
    is more than one replica; with ECS configured, as many as its desired count."""
    for name in ("ECS_CLUSTER", "ECS_SERVICES", "MLFLOW_ECS_SERVICE", "TARGET_GROUPS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("REPLICA_DISCOVERY", "sample")
    report, sent, basis = sampled(legacy)
    assert sent == 1, legacy.client.request_counts()
    assert "no evidence of more than one replica" in basis
    assert report.checks["circuit_breaker"].partial

    monkeypatch.setenv("ECS_CLUSTER", legacy.info["ecs_cluster"])
    monkeypatch.setenv("ECS_SERVICES", ",".join(legacy.info["ecs_services"]))
    monkeypatch.setenv("MLFLOW_ECS_SERVICE", legacy.info["mlflow_ecs_service"])
    _, sent, basis = sampled(legacy)
    assert sent == 2, legacy.client.request_counts()
    assert basis.endswith(": 2; 2 samples"), basis
