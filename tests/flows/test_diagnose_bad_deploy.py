"""The diagnosis of a bad release, end to end: the sandbox's bad-deploy fault, the diagnose
flow on the session's Prefect server, and heal's rollback to the previous revision."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sandbox.client import SandboxProcess
from sandbox.registry.defects import ENV_RELEASE_DEFECT
from service_health.deploy_evidence import DeployFacts, revision_label
from service_health.details import EcsFacts
from service_health.models import DiagnosticReport, Finding
from tests.flows.test_diagnose_flow import diagnose
from tests.helpers import wait_for
from tests.sandbox.test_bad_deploy import ROLLOUT_S, release_settled, settled_on
from tests.sandbox.test_sandbox_system import aws

REGISTRY = "hokusai-registry"


@pytest.fixture
def env(prefect_server: str, sandbox_env: dict[str, str], healed: SandboxProcess) -> dict[str, str]:
    return {**sandbox_env, "PREFECT_API_URL": prefect_server}


def ecs_check(report: DiagnosticReport) -> Any:
    return report.checks["aws_infrastructure"].components["ecs"]


def deploy_facts(report: DiagnosticReport) -> DeployFacts:
    facts = ecs_check(report).facts
    assert isinstance(facts, EcsFacts)
    return facts.deploys[REGISTRY]


def failing_finding(report: DiagnosticReport) -> Finding:
    found = [f for f in ecs_check(report).findings if "is failing" in f.message]
    assert len(found) == 1, ecs_check(report).findings
    return found[0]


def environment(sandbox: SandboxProcess, task_definition: str) -> dict[str, str]:
    spec = aws(sandbox, "ecs").describe_task_definition(taskDefinition=task_definition)
    env = spec["taskDefinition"]["containerDefinitions"][0]["environment"]
    return {e["name"]: e["value"] for e in env}


@pytest.mark.parametrize(
    ("mode", "stopped_reason"),
    [
        ("crash", "Essential container in task exited (exit code 1)"),
        (
            "unhealthy",
            "Task failed ELB health checks in (target-group arn:aws:elasticloadbalancing",
        ),
    ],
)
def test_a_bad_release_is_named_with_its_evidence_and_heal_rolls_back(
    env: dict[str, str], healed: SandboxProcess, mode: str, stopped_reason: str
) -> None:
    injected = healed.client.fault("bad-deploy", mode=mode)
    bad, previous = revision_label(injected["revision"]), revision_label(injected["previous"])
    assert bad is not None and previous is not None
    wait_for(
        lambda: release_settled(healed, injected["previous"]), ROLLOUT_S, "the release to fail"
    )

    state, report = diagnose()
    assert state.name == "Degraded", report.critical_issues
    assert not report.critical_issues  # the previous revision serves
    finding = failing_finding(report)
    assert finding.severity == "warning"
    assert f"revision {bad}" in finding.message
    assert stopped_reason in finding.message
    assert "FAILED (ECS deployment circuit breaker: tasks failed to start" in finding.message
    assert f"revision {previous} runs 2/2" in finding.message
    assert finding.recommendation is not None
    assert f"Roll back {REGISTRY} to revision {previous}" in finding.recommendation
    assert finding.message in report.warnings
    facts = deploy_facts(report)
    assert facts.primary is not None and facts.primary.rollout_state == "FAILED"
    assert (facts.failing_revision, facts.failing_task_definition) == (bad, injected["revision"])
    assert facts.last_completed_revision == previous
    assert facts.last_completed_task_definition == injected["previous"]
    assert facts.images[bad] == [f"hokusai/{REGISTRY}:release-{mode}"]
    # the revision's environment (a release token among it) never reaches the report
    dumped = json.dumps(report.to_seed_json()) + report.model_dump_json()
    env = environment(healed, injected["revision"])
    assert env.pop(ENV_RELEASE_DEFECT) == mode  # the mode is also the image's tag, and named
    assert env["RELEASE_TOKEN"] and not [v for v in env.values() if v in dumped]

    assert healed.client.heal("bad-deploy") == ["bad-deploy"]
    wait_for(lambda: settled_on(healed, injected["previous"]), ROLLOUT_S, "the rollback")
    _, report = diagnose()
    # (the ECS view: on a loaded machine MLflow's own answers may be slow meanwhile)
    assert ecs_check(report).status.value == "healthy", ecs_check(report).findings
    assert not [w for w in report.warnings if REGISTRY in w], report.warnings
    facts = deploy_facts(report)
    assert facts.failing_revision is None
    assert facts.primary is not None and facts.primary.revision == previous
    # the failed revision's stopped tasks are history now: told, not judged
    told = [f for f in ecs_check(report).findings if f"revision {bad} stopped" in f.message]
    assert told and all(f.severity == "info" for f in told)
