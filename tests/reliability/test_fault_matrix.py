"""The fault matrix: every sandbox fault, and the pairs that matter, through diagnosis, a
dry-run recovery and a real recovery, with every AWS call and HTTP request recorded.

Asserted per row: the verdict and the checks that carry findings; the plan; the outcome;
that diagnosis and the dry run make no mutating call at all (nothing but Describe/List/Get
and GET); and that the real recovery makes exactly the mutating calls its plan names.
docs/fault-matrix.md is rendered from MATRIX and compared with the committed file, so the
documentation cannot drift from what is tested (HOKUSAI_WRITE_DOCS=1 rewrites it).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandbox.client import SandboxProcess
from sandbox.statefiles import env_lines
from service_health.recovery import RecoveryPlan, StepKind
from tests.flows.test_diagnose_flow import diagnose
from tests.flows.test_recover_flow import recover
from tests.helpers import wait_for
from tests.reliability.calls import Calls, recording
from tests.reliability.figures import record

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "fault-matrix.md"
REGISTRY, MLFLOW = "hokusai-registry", "hokusai-mlflow"


@dataclass(frozen=True)
class Fault:
    name: str
    options: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        opts = " ".join(f"--{k}" if v is True else f"--{k} {v}" for k, v in self.options.items())
        return f"{self.name} {opts}".strip()


@dataclass(frozen=True)
class Row:
    faults: tuple[Fault, ...]
    verdict: str
    findings: tuple[str, ...]  # checks that must not be healthy and must carry findings
    plan: tuple[str, ...]  # the plan's steps: kind, or kind:service for ECS steps
    outcome: str  # the real recovery's final state
    why: str  # what an operator should take from the row
    settle_s: float = 60.0  # stabilisation wait of the real recovery
    flavor: str = "contract"  # the registry stand-in: the contract, or the deployed version
    onset: bool = False  # diagnosed at once, before the fault has shown everywhere

    @property
    def id(self) -> str:
        faults = "+".join(str(f).replace(" --", "-").replace(" ", "-") for f in self.faults)
        return (
            faults
            + ("@onset" if self.onset else "")
            + (f"@{self.flavor}" if self.flavor != "contract" else "")
        )

    @property
    def label(self) -> str:
        faults = " + ".join(f"`{f}`" for f in self.faults)
        said = [w for w in ("at onset" if self.onset else "", self.flavor) if w != "contract"]
        return f"{faults} ({', '.join(w for w in said if w)})" if any(said) else faults


def F(name: str, **options: Any) -> Fault:
    return Fault(name, options)


RESTART_REGISTRY = (
    "force_deployment:hokusai-registry",
    "wait_for_stabilization",
    "check_alb_targets",
    "verify",
)
RESTART_MLFLOW_THEN_RESET = (
    "force_deployment:hokusai-mlflow",
    "wait_for_mlflow",
    "reset_breaker",
    "wait_for_stabilization",
    "check_alb_targets",
    "verify",
)
RESET = ("reset_breaker", "wait_for_stabilization", "verify")
ONSET_PLAN = ("force_deployment:hokusai-mlflow", "wait_for_mlflow", "wait_for_stabilization",
              "check_alb_targets", "verify")  # fmt: skip
# Not healthy, not recoverable by a restart: the fault is outside what a recovery touches.
STAYS = 10.0

MATRIX: list[Row] = [
    Row((F("mlflow-down"),), "degraded", ("circuit_breaker", "mlflow_service"),
        RESTART_MLFLOW_THEN_RESET, "Recovered",
        "MLflow's task is restarted first, then the OPEN breakers are reset"),
    Row((F("mlflow-slow"),), "degraded", ("circuit_breaker", "mlflow_service"),
        ("reset_breaker", "wait_for_stabilization", "verify"), "Partially recovered",
        "MLflow answers, too slowly: the breakers are reset, the slowness stays and is "
        "reported", STAYS),
    Row((F("mlflow-errors"),), "degraded", ("circuit_breaker", "mlflow_service"),
        RESTART_MLFLOW_THEN_RESET, "Partially recovered",
        "MLflow answers 5xx: its task is restarted; the errors persist, so the resets wait "
        "(blocked) and the run says so", STAYS),
    Row((F("breaker-stuck-open"),), "degraded", ("circuit_breaker",), RESET, "Recovered",
        "a breaker that no longer retries MLflow is reset on every OPEN replica"),
    Row((F("breaker-stuck-open", replica=0),), "degraded", ("circuit_breaker",), RESET,
        "Recovered", "only the OPEN replica is reset, addressed directly"),
    Row((F("registry-wedged"),), "critical", ("api_connectivity", "health_endpoints"),
        RESTART_REGISTRY, "Recovered", "registry tasks answering 500 are replaced"),
    Row((F("registry-hung"),), "critical", ("api_connectivity", "health_endpoints"),
        RESTART_REGISTRY, "Recovered",
        "registry tasks that never answer: the diagnosis keeps its deadline, the tasks are "
        "replaced"),
    Row((F("redis-down"),), "degraded", ("redis",), ("escalate", "verify"), "Failed",
        "no automatic action on a datastore: escalated to an operator", STAYS),
    Row((F("postgres-down"),), "critical", ("database",), ("escalate", "verify"), "Failed",
        "the database is down: escalated; no restart (new tasks would fail the same way)",
        STAYS),
    Row((F("ecs-tasks-crashed"),), "degraded", ("aws_infrastructure",), RESTART_REGISTRY,
        "Recovered", "one task of two crashed: running < desired, a new deployment"),
    Row((F("ecs-tasks-crashed", all=True),), "critical",
        ("api_connectivity", "aws_infrastructure"), RESTART_REGISTRY, "Recovered",
        "every registry task crashed: the ALB answers 503, a new deployment"),
    Row((F("alb-targets-unhealthy"),), "critical", ("api_connectivity", "aws_infrastructure"),
        RESTART_REGISTRY, "Recovered", "the ALB has no healthy target: a new deployment"),
    Row((F("ecs-rollout-stalled"),), "healthy", (), (), "Already healthy",
        "a latent bad deploy changes nothing while the current tasks serve"),
    Row((F("aws-throttling"),), "healthy", (), (), "Already healthy",
        "AWS throttling is ridden out by adaptive retries, not reported as an outage"),
    Row((F("latency", ms=300, component="registry"),), "healthy", (), (), "Already healthy",
        "300 ms more per registry answer is within the thresholds"),
    Row((F("mlflow-down"), F("redis-down")), "degraded", ("mlflow_service", "redis"),
        ("escalate", *RESTART_MLFLOW_THEN_RESET), "Partially recovered",
        "MLflow is brought back; Redis is escalated and stays down", STAYS),
    Row((F("postgres-down"), F("ecs-tasks-crashed")), "critical", ("database",),
        ("escalate", "skip", "check_alb_targets", "verify"), "Failed",
        "with the database down the crashed task is not replaced (skipped, with the "
        "reason): a restart cannot help", STAYS),
    # The onset: diagnosed at once, breakers still CLOSED and counting failures.
    Row((F("mlflow-down"),), "degraded", ("circuit_breaker", "mlflow_service"),
        RESTART_MLFLOW_THEN_RESET, "Recovered",
        "MLflow just went down, breakers still CLOSED and counting: degraded, never "
        "critical; MLflow is restarted, the counting breakers reset, no registry task",
        onset=True),
    Row((F("mlflow-down"),), "degraded",
        ("health_endpoints", "circuit_breaker", "mlflow_service"), ONSET_PLAN, "Recovered",
        "the deployed version stalls on every MLflow call: one /health/mlflow per replica "
        "is read, the stall is named, MLflow is restarted", onset=True, flavor="legacy"),
    Row((F("mlflow-down"),), "degraded", ("circuit_breaker", "mlflow_service"),
        RESTART_MLFLOW_THEN_RESET, "Recovered",
        "the deployed version's OPEN breaker is read OPEN (from /ready, not a HALF_OPEN "
        "misread of /metrics) and reset after MLflow's restart", flavor="legacy"),
    Row((F("postgres-down"),), "critical", ("database", "health_endpoints"),
        ("escalate", "verify"), "Failed",
        "the deployed version's /ready answers 503 after its database retries: the "
        "database is named, MLflow is not blamed", STAYS, flavor="legacy"),
]  # fmt: skip


def plan_steps(plan: RecoveryPlan) -> tuple[str, ...]:
    return tuple(
        f"{s.kind.value}:{s.service}"
        if s.service and s.kind in (StepKind.FORCE_DEPLOYMENT, StepKind.WAIT_FOR_ROLLOUT)
        else s.kind.value
        for s in plan.steps
    )


def planned_mutations(plan: RecoveryPlan) -> Counter[str]:
    """The mutating calls the plan names: per forced deployment an UpdateService (and the
    TagResource recording when), per reset one POST per replica (or one via the API URL)."""
    out: Counter[str] = Counter()
    for step in plan.steps:
        if step.kind == StepKind.FORCE_DEPLOYMENT:
            out.update([f"ecs:UpdateService({step.service})", "ecs:TagResource"])
        elif step.kind == StepKind.RESET_BREAKER:
            out["POST /health/mlflow/reset"] += len(step.replicas or [None])
    return out


def mutations(calls: Calls) -> Counter[str]:
    """Mutations without hosts: `ecs:UpdateService`, `POST /health/mlflow/reset`."""
    out = Counter(f"{s}:{op}" for s, op in calls.mutating_aws())
    out.update(f"{m} {httpx.URL(u).path}" for m, u in calls.mutating_http())
    return out


def _registry(sandbox: SandboxProcess) -> list[dict[str, Any]]:
    replicas: list[dict[str, Any]] = sandbox.client.status()["services"][REGISTRY]["replicas"]
    return replicas


def breakers_open(sandbox: SandboxProcess) -> bool:
    """Drive MLflow calls through every replica's breaker (/ready is the cheapest way), then
    whether every one is OPEN, read from the replicas' control routes (either flavour)."""
    for r in _registry(sandbox):
        httpx.get(f"http://{r['address']}/ready", timeout=60)
    return set(sandbox.client.breaker_states().values()) == {"OPEN"}


# What to await after injecting a fault, so that the diagnosis and the plans are decided.
SETTLED: dict[str, Callable[[SandboxProcess], bool]] = {
    "ecs-tasks-crashed": lambda sb: any(r["health"] == "unhealthy" for r in _registry(sb)),
    "alb-targets-unhealthy": lambda sb: all(r["health"] == "unhealthy" for r in _registry(sb)),
    "mlflow-down": breakers_open,
    "mlflow-slow": breakers_open,
    "mlflow-errors": breakers_open,
}


def inject(sandbox: SandboxProcess, row: Row) -> None:
    for fault in row.faults:
        sandbox.client.fault(fault.name, **fault.options)
    if row.onset:
        return  # diagnosed at once: that moment is the row's point
    for fault in row.faults:
        settled = SETTLED.get(fault.name)
        if settled is not None:
            wait_for(partial(settled, sandbox), 60, f"{fault} to show")


def render(matrix: list[Row]) -> str:
    lines = [
        "# Fault matrix",
        "",
        "Generated from `MATRIX` in `tests/reliability/test_fault_matrix.py`, which runs every",
        "row against the sandbox: the fault(s) are injected, then a diagnosis, a dry-run",
        "recovery and a real recovery run, with every AWS call and HTTP request recorded.",
        "For every row the diagnosis and the dry run made no mutating call (only",
        "Describe/List/Get and GET, and MLflow's read-only search POST), and the real recovery",
        "made only the mutating calls its plan names (an `UpdateService` and a `TagResource`",
        "per forced deployment, one reset `POST` per replica). Regenerate with",
        "`HOKUSAI_WRITE_DOCS=1 uv run pytest tests/reliability/test_fault_matrix.py -k document`.",
        "",
        "| fault(s) | verdict | checks with findings | plan | recovery outcome | why |",
        "|---|---|---|---|---|---|",
    ]
    for row in matrix:
        faults = row.label
        findings = ", ".join(row.findings) or "none"
        plan = " → ".join(row.plan) or "nothing to do"
        lines.append(
            f"| {faults} | {row.verdict} | {findings} | {plan} | {row.outcome} | {row.why} |"
        )
    return "\n".join(lines) + "\n"


def test_document_matches_the_matrix() -> None:
    text = render(MATRIX)
    if os.environ.get("HOKUSAI_WRITE_DOCS"):
        DOC.parent.mkdir(exist_ok=True)
        DOC.write_text(text)
    assert DOC.read_text() == text, "docs/fault-matrix.md is stale: regenerate it (see the doc)"


@pytest.fixture
def flavored(
    request: pytest.FixtureRequest, prefect_server: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[SandboxProcess]:
    """The shared sandbox of the row's flavour, its environment set; healed after."""
    row: Row = request.param
    name = "legacy_sandbox" if row.flavor == "legacy" else "sandbox"
    sandbox: SandboxProcess = request.getfixturevalue(name)
    wait_for(sandbox.client.converged, 90, "sandbox to converge")
    for key, value in env_lines(sandbox.info).items():
        monkeypatch.setenv(key, value)
    yield sandbox
    sandbox.client.heal()
    wait_for(sandbox.client.converged, 90, "sandbox to converge after healing")


@pytest.mark.parametrize("flavored", MATRIX, ids=[r.id for r in MATRIX], indirect=True)
def test_fault_through_diagnosis_and_recovery(
    flavored: SandboxProcess,
    request: pytest.FixtureRequest,
    prefect_server: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    row: Row = request.node.callspec.params["flavored"]
    healed = flavored
    # The harness's own requests: the Prefect API and the sandbox's control port.
    ignored = (prefect_server.removesuffix("/api"), healed.info["control_url"])
    inject(healed, row)
    with recording(monkeypatch, ignored) as diagnosis_calls:
        _, report = diagnose(deadline_seconds=10)
    with recording(monkeypatch, ignored) as dry_calls:
        dry_state, dry = recover(dry_run=True)
    with recording(monkeypatch, ignored) as real_calls:
        state, result = recover(dry_run=False, stabilization_timeout_seconds=row.settle_s)

    assert report.overall_status.value == row.verdict, (report.critical_issues, report.warnings)
    for check in row.findings:
        assert report.checks[check].status.value != "healthy", report.checks[check]
        assert report.checks[check].findings, report.checks[check]
    assert diagnosis_calls.aws and diagnosis_calls.http  # the recorder saw the diagnosis
    assert not mutations(diagnosis_calls)
    assert not mutations(dry_calls)
    assert dry_state.name == ("Already healthy" if row.verdict == "healthy" else "Planned")
    assert plan_steps(dry.plan) == row.plan
    assert plan_steps(result.plan) == row.plan
    assert state.name == row.outcome, result.message
    made, named = mutations(real_calls), planned_mutations(result.plan)
    assert not made - named, f"mutations the plan does not name: {made - named}"
    if row.outcome == "Recovered":
        assert made == named  # everything planned was carried out
    total = sum(made.values())
    record(
        row.id,
        f"0 / 0 / {total}",
        detail=f"mutating calls in diagnosis / dry run / recovery ({row.outcome}); "
        f"{len(diagnosis_calls.aws)} AWS calls and {len(diagnosis_calls.http)} HTTP "
        "requests in the diagnosis",
        section="No accidental mutation",
    )
