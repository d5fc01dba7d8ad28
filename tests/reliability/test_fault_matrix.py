"""The fault matrix: every sandbox fault, and the pairs that matter, through diagnosis, a
dry-run recovery and a real recovery, with every AWS call and HTTP request recorded.

Asserted per row: the verdict and the checks that carry findings; the plan; the outcome;
that diagnosis and the dry run make no mutating call at all (nothing but Describe/List/Get
and GET); and that the real recovery makes exactly the mutating calls its plan names.
Each passing row records what it observed (figures.observe); docs/fault-matrix.md is rendered
from those observations (`uv run python -m tests.reliability.documents`), not from MATRIX.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from sandbox.client import SandboxProcess
from sandbox.statefiles import env_lines
from service_health.deploy_evidence import revision_label
from service_health.details import EcsFacts
from service_health.models import DiagnosticReport
from service_health.recovery import RecoveryPlan, StepKind
from tests.flows.test_diagnose_flow import diagnose
from tests.flows.test_recover_flow import deployments_started, recover
from tests.helpers import wait_for
from tests.reliability.calls import Calls, disagreements, recording
from tests.reliability.figures import FAULT_MATRIX, observe, record
from tests.sandbox.test_bad_deploy import ROLLOUT_S, assert_rolled_back_to, primary, tasks

REGISTRY, MLFLOW = "hokusai-registry", "hokusai-mlflow"
TARGETS = Path(__file__).resolve().parents[2] / "targets.yaml"


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
    env: tuple[tuple[str, str], ...] = ()  # the target's settings for the row
    # Every diagnosis's deadline (the first one's, and the recoveries' through the target's
    # thresholds): rows whose registry never answers are bounded by it.
    deadline_s: float = 10.0

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
ROLL_BACK_REGISTRY = ("rollback:hokusai-registry", "wait_for_stabilization", "check_alb_targets",
                      "verify")  # fmt: skip
# The matrix applies without an operator: these rows' target allows automatic rollback.
AUTO_ROLLBACK = (("ALLOW_AUTOMATIC_ROLLBACK", "true"),)
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
    Row((F("bad-deploy", mode="crash"),), "degraded", ("aws_infrastructure",),
        ROLL_BACK_REGISTRY, "Recovered",
        "a release whose tasks exit at start: its rollout FAILED, the previous revision serves; "
        "rolled back to it once (the target allows automatic rollback), never redeployed",
        120.0, env=AUTO_ROLLBACK),
    Row((F("bad-deploy", mode="unhealthy"),), "degraded", ("aws_infrastructure",),
        ROLL_BACK_REGISTRY, "Recovered",
        "a release whose tasks fail the ALB health checks: rolled back to the previous "
        "revision once, never redeployed", 120.0, env=AUTO_ROLLBACK),
    # Throttled AWS reads back off by design: the production deadline (30 s), not the
    # 10 s the other rows use to keep the suite fast.
    Row((F("aws-throttling"),), "healthy", (), (), "Already healthy",
        "AWS throttling is ridden out by adaptive retries, not reported as an outage",
        deadline_s=30.0),
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
        if s.service
        and s.kind in (StepKind.FORCE_DEPLOYMENT, StepKind.ROLLBACK, StepKind.WAIT_FOR_ROLLOUT)
        else s.kind.value
        for s in plan.steps
    )


def planned_mutations(plan: RecoveryPlan, api_host: str) -> Counter[str]:
    """The mutating calls the plan names, where it names them: per forced deployment or
    rollback an UpdateService and a TagResource of that service, per reset one POST to each replica
    named (or one to the API URL's host `api_host`)."""
    out: Counter[str] = Counter()
    for step in plan.steps:
        if step.kind in (StepKind.FORCE_DEPLOYMENT, StepKind.ROLLBACK):
            out.update([f"ecs:UpdateService({step.service})", f"ecs:TagResource({step.service})"])
        elif step.kind == StepKind.RESET_BREAKER:
            for host in step.replicas if step.replicas is not None else [api_host]:
                out[f"POST {host}/health/mlflow/reset"] += 1
    return out


def mutations(calls: Calls) -> Counter[str]:
    """Mutations with where they went: `ecs:UpdateService(svc)`, `POST host:port/path`."""
    out = Counter(f"{s}:{op}" for s, op in calls.mutating_aws())
    out.update(f"{r.method} {r.host}{httpx.URL(r.url).path}" for r in calls.mutating_http())
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


def release_failed(sandbox: SandboxProcess) -> bool:
    """The bad release's rollout FAILED and only an earlier revision's tasks run."""
    running = {t["taskDefinitionArn"] for t in tasks(sandbox)}
    release = primary(sandbox)
    return (
        release["rolloutState"] == "FAILED"
        and bool(running)
        and release["taskDefinition"] not in running
    )


# What to await after injecting a fault, so that the diagnosis and the plans are decided.
SETTLED: dict[str, Callable[[SandboxProcess], bool]] = {
    "bad-deploy": release_failed,
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
            timeout = ROLLOUT_S if fault.name == "bad-deploy" else 60
            wait_for(partial(settled, sandbox), timeout, f"{fault} to show")


@pytest.fixture
def flavored(
    request: pytest.FixtureRequest,
    prefect_server: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> Iterator[SandboxProcess]:
    """The shared sandbox of the row's flavour, its environment set, the sandbox target's
    diagnosis deadline the row's; healed after."""
    row: Row = request.param
    name = "legacy_sandbox" if row.flavor == "legacy" else "sandbox"
    sandbox: SandboxProcess = request.getfixturevalue(name)
    wait_for(sandbox.client.converged, 90, "sandbox to converge")
    for key, value in (*env_lines(sandbox.info).items(), *row.env):
        monkeypatch.setenv(key, value)
    targets = yaml.safe_load(TARGETS.read_text())
    targets["targets"]["sandbox"].setdefault("thresholds", {})["deadline_s"] = row.deadline_s
    (tmp_path / "targets.yaml").write_text(yaml.safe_dump(targets))
    monkeypatch.setenv("HOKUSAI_TARGETS_FILE", str(tmp_path / "targets.yaml"))
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
    started = {s: deployments_started(healed, s) for s in (REGISTRY, MLFLOW)}
    api_url = httpx.URL(healed.info["api_url"])
    api_host = f"{api_url.host}:{api_url.port}"

    def recorded(run: Callable[[], Any]) -> tuple[Any, Calls]:
        """`run` recorded, then cross-checked with the replicas' own request counts."""
        healed.client.reset_request_counts()
        with recording(monkeypatch, ignored) as calls:
            out = run()
        assert not disagreements(calls, healed.client.request_counts(), api_host)
        return out, calls

    (_, report), diagnosis_calls = recorded(diagnose)
    (dry_state, dry), dry_calls = recorded(partial(recover, dry_run=True))
    (state, result), real_calls = recorded(
        partial(recover, dry_run=False, stabilization_timeout_seconds=row.settle_s)
    )

    assert report.overall_status.value == row.verdict, (report.critical_issues, report.warnings)
    for check in row.findings:
        assert report.checks[check].status.value != "healthy", report.checks[check]
        assert report.checks[check].findings, report.checks[check]
    # The recorder saw the reads of both (AWS and HTTP): a silent recorder proves nothing.
    assert all(diagnosis_calls.reads()) and all(dry_calls.reads())
    assert not mutations(diagnosis_calls)
    assert not mutations(dry_calls)
    assert dry_state.name == ("Already healthy" if row.verdict == "healthy" else "Planned")
    assert plan_steps(dry.plan) == row.plan
    assert plan_steps(result.plan) == row.plan
    assert state.name == row.outcome, result.message
    made, named = mutations(real_calls), planned_mutations(result.plan, api_host)
    assert not made - named, f"mutations the plan does not name: {made - named}"
    if row.outcome == "Recovered":
        assert made == named  # everything planned was carried out
    for step in result.plan.of_kind(StepKind.ROLLBACK):
        assert_rolled_back(healed, report, step.service or "", step.revision, started)
    total = sum(made.values())
    record(
        row.id,
        f"0 / 0 / {total}",
        detail=f"mutating calls in diagnosis / dry run / recovery ({row.outcome}); "
        f"{len(diagnosis_calls.aws)} AWS calls and {len(diagnosis_calls.http)} HTTP "
        "requests in the diagnosis, cross-checked with the replicas' own request counts",
        section="No accidental mutation",
    )
    observe(FAULT_MATRIX, row.id, {
        "order": MATRIX.index(row), "label": row.label, "why": row.why,
        "verdict": report.overall_status.value,
        "findings": [name for name, c in report.checks.items()
                     if c.status.value != "healthy" and c.findings],
        "plan": plan_steps(result.plan), "outcome": state.name,
        "mutations": [sum(mutations(c).values()) for c in (diagnosis_calls, dry_calls, real_calls)],
    })  # fmt: skip


def assert_rolled_back(
    sandbox: SandboxProcess,
    report: DiagnosticReport,
    service: str,
    revision: str | None,
    started: dict[str, int],
) -> None:
    """The diagnosis named the failing revision and why its tasks stopped; the rollback went
    to the last revision that completed a deployment; one new deployment (the rollback's),
    so the failing revision was never deployed again; the service converged on it."""
    ecs = report.checks["aws_infrastructure"].components["ecs"]
    assert isinstance(ecs.facts, EcsFacts)
    facts = ecs.facts.deploys[service]
    said = " ".join(report.warnings + report.critical_issues)
    assert f"revision {facts.failing_revision} " in said and "is failing" in said, said
    stopped = [c.reason for r in facts.stopped if r.revision == facts.failing_revision
               for c in r.causes]  # fmt: skip
    assert stopped and all(reason in said for reason in stopped[:1]), (stopped, said)
    assert revision == facts.last_completed_revision != facts.failing_revision
    assert deployments_started(sandbox, service) == started[service] + 1
    assert facts.last_completed_task_definition is not None
    assert revision_label(facts.last_completed_task_definition) == revision
    assert_rolled_back_to(sandbox, facts.last_completed_task_definition)
