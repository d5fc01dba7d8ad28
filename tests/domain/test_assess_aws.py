"""ALB, ECS, RDS and CloudWatch, and the aws_infrastructure group."""

from __future__ import annotations

import pytest

from service_health.assessment import (
    assess_alb,
    assess_aws_infrastructure,
    assess_cloudwatch,
    assess_ecs,
    assess_rds,
)
from service_health.aws_responses import read_ecs_services
from service_health.details import AlbFacts, TargetGroupState
from service_health.models import CheckResult, CheckStatus
from tests.domain import bodies as b
from tests.domain.helpers import facts, messages, severities
from tests.recovery.world import service

REG, MLF = "hokusai-registry", "hokusai-mlflow"
EXPECTED = [REG, MLF]
THROTTLED = ("ThrottlingException", "Rate exceeded")
NO_CREDS = ("NoCredentials", "Unable to locate credentials")


def ecs_of(*services: dict[str, object]) -> CheckResult:
    return assess_ecs(b.ecs(*services), EXPECTED, non_critical=[MLF])


CASES: list[tuple[str, CheckResult, str, list[str], str]] = [
    # ALB
    (
        "alb-healthy",
        assess_alb(b.load_balancers(), {"reg-tg": b.target_health("healthy", "healthy")}),
        "healthy",
        [],
        "",
    ),
    (
        "alb-zero-healthy",
        assess_alb(
            b.load_balancers(),
            {
                "reg-tg": b.target_health(
                    "unhealthy", "unhealthy", reason="Target.FailedHealthChecks"
                )
            },
        ),
        "unhealthy",
        ["critical"],
        "has no healthy target (2 unhealthy; Target.FailedHealthChecks)",
    ),
    (
        "alb-no-targets",
        assess_alb(None, {"reg-tg": b.target_health()}),
        "unhealthy",
        ["critical"],
        "no registered target",
    ),
    (
        "alb-one-unhealthy",
        assess_alb(None, {"reg-tg": b.target_health("healthy", "unhealthy")}),
        "degraded",
        ["warning"],
        "1 of 2 targets unhealthy in reg-tg: 10.0.1.6:8000",
    ),
    (
        "alb-registering",
        assess_alb(None, {"reg-tg": b.target_health("healthy", "initial")}),
        "recovering",
        ["warning"],
        "1 initial",
    ),
    (
        "alb-mlflow-group-empty",
        assess_alb(None, {"mlf-tg": b.target_health("unhealthy")}, non_critical_groups=["mlf-tg"]),
        "unhealthy",
        ["warning"],
        "registry degrades",
    ),
    (
        "alb-lb-failed",
        assess_alb(b.load_balancers("failed"), {}),
        "unhealthy",
        ["critical"],
        "state failed",
    ),
    (
        "alb-throttled",
        assess_alb(
            b.aws("elbv2", "DescribeLoadBalancers", None, *THROTTLED),
            {"reg-tg": b.target_health("healthy")},
        ),
        "error",
        ["warning"],
        "AWS throttled elbv2:DescribeLoadBalancers",
    ),
    ("alb-unconfigured", assess_alb(None, {}), "skipped", [], ""),
    # ECS
    ("ecs-healthy", ecs_of(b.ecs_service(REG, 2), b.ecs_service(MLF, 1, 1)), "healthy", [], ""),
    (
        "ecs-0-of-2",
        ecs_of(b.ecs_service(REG, 0), b.ecs_service(MLF, 1, 1)),
        "unhealthy",
        ["critical"],
        "no running task (0/2)",
    ),
    (
        "ecs-1-of-2",
        ecs_of(b.ecs_service(REG, 1), b.ecs_service(MLF, 1, 1)),
        "degraded",
        ["warning"],
        "runs 1 of 2 desired tasks",
    ),
    (
        "ecs-rolling",
        ecs_of(b.ecs_service(REG, 1, rollout="IN_PROGRESS"), b.ecs_service(MLF, 1, 1)),
        "recovering",
        ["warning"],
        "rolling out a deployment (1/2",
    ),
    (
        "ecs-rolling-full",
        ecs_of(b.ecs_service(REG, 2, rollout="IN_PROGRESS"), b.ecs_service(MLF, 1, 1)),
        "recovering",
        ["warning"],
        "rolling out",
    ),
    (
        "ecs-rollout-failed",
        ecs_of(b.ecs_service(REG, 2, rollout="FAILED"), b.ecs_service(MLF, 1, 1)),
        "degraded",
        ["warning"],
        "last deployment",
    ),
    (
        "ecs-draining",
        ecs_of(b.ecs_service(REG, 2, status="DRAINING"), b.ecs_service(MLF, 1, 1)),
        "unhealthy",
        ["critical"],
        "is DRAINING",
    ),
    (
        "ecs-missing",
        assess_ecs(
            b.ecs(
                b.ecs_service(MLF, 1, 1),
                failures=[{"arn": f"arn:aws:ecs:us-east-1:1:service/c/{REG}", "reason": "MISSING"}],
            ),
            EXPECTED,
        ),
        "unhealthy",
        ["critical"],
        "not found in the cluster (MISSING)",
    ),
    (
        "ecs-scaled-to-zero",
        ecs_of(b.ecs_service(REG, 0, 0), b.ecs_service(MLF, 1, 1)),
        "unhealthy",
        ["critical"],
        "scaled to zero",
    ),
    (
        "ecs-mlflow-down",
        ecs_of(b.ecs_service(REG, 2), b.ecs_service(MLF, 0, 1)),
        "unhealthy",
        ["warning"],
        "registry degrades without it",
    ),
    (
        "ecs-no-credentials",
        assess_ecs(b.aws("ecs", "DescribeServices", None, *NO_CREDS), EXPECTED),
        "error",
        ["warning"],
        "No AWS credentials or permission for ecs:DescribeServices",
    ),
    ("ecs-unconfigured", assess_ecs(None, []), "skipped", [], ""),
    # RDS
    ("rds-available", assess_rds(b.rds("available")), "healthy", [], ""),
    (
        "rds-stopped",
        assess_rds(b.rds("stopped")),
        "unhealthy",
        ["critical"],
        "not available (state stopped)",
    ),
    ("rds-backing-up", assess_rds(b.rds("backing-up")), "degraded", ["warning"], "still serving"),
    (
        "rds-missing",
        assess_rds(b.rds("available"), ["db-0", "db-9"]),
        "error",
        ["warning"],
        "db-9 not found",
    ),
    (
        "rds-access-denied",
        assess_rds(b.aws("rds", "DescribeDBInstances", None, "AccessDenied")),
        "error",
        ["warning"],
        "No AWS credentials or permission",
    ),
    ("rds-unconfigured", assess_rds(None), "skipped", [], ""),
    # CloudWatch
    (
        "alarms-ok",
        assess_cloudwatch(b.alarms(("cpu", "OK"), ("mem", "INSUFFICIENT_DATA"))),
        "healthy",
        [],
        "",
    ),
    (
        "alarms-firing",
        assess_cloudwatch(b.alarms(("cpu", "ALARM"), ("5xx", "ALARM"), ("mem", "OK"))),
        "degraded",
        ["warning", "warning"],
        "CloudWatch alarm 5xx is in ALARM",
    ),
    (
        "alarms-endpoint-down",
        assess_cloudwatch(b.aws("cloudwatch", "DescribeAlarms", None, "EndpointConnectionError")),
        "error",
        ["warning"],
        "AWS API unreachable",
    ),
    ("alarms-unconfigured", assess_cloudwatch(None), "skipped", [], ""),
]


@pytest.mark.parametrize(
    ("result", "status", "sev", "text"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_aws(result: CheckResult, status: str, sev: list[str], text: str) -> None:
    assert result.status == status, messages(result)
    assert severities(result) == sev, messages(result)
    assert text in messages(result)


def test_aws_errors_are_never_critical() -> None:
    for code in (
        "ThrottlingException",
        "NoCredentials",
        "AccessDeniedException",
        "EndpointConnectionError",
        "SomethingNew",
        None,
    ):
        obs = b.aws("ecs", "DescribeServices", None, code)
        result = assess_ecs(obs, EXPECTED)
        assert result.status == CheckStatus.ERROR
        assert severities(result) == ["warning"]


@pytest.mark.parametrize(
    "response",
    [
        {"services": "nope"},
        {"services": [1, None, {"serviceName": 3}]},
        {
            "services": [
                {"serviceName": REG, "status": "ACTIVE", "desiredCount": "2", "runningCount": None}
            ]
        },
        {},
        {"TargetHealthDescriptions": [{"Target": []}]},
    ],
)
def test_aws_wrong_shapes_do_not_crash(response: dict[str, object]) -> None:
    assess_ecs(b.aws("ecs", "DescribeServices", response), EXPECTED).seed_json()
    assess_alb(None, {"tg": b.aws("elbv2", "DescribeTargetHealth", response)}).seed_json()
    assess_rds(b.aws("rds", "DescribeDBInstances", response)).seed_json()
    assess_cloudwatch(b.aws("cloudwatch", "DescribeAlarms", response)).seed_json()


def test_alb_details_list_replica_addresses() -> None:
    result = assess_alb(None, {"reg-tg": b.target_health("healthy", "unhealthy")})
    group = facts(result, AlbFacts).target_groups["reg-tg"]
    assert isinstance(group, TargetGroupState)
    assert (group.healthy, group.total) == (1, 2)
    assert [t.address for t in group.targets] == ["10.0.1.5:8000", "10.0.1.6:8000"]


def test_aws_infrastructure_groups_components() -> None:
    components = {
        "alb": assess_alb(None, {"reg-tg": b.target_health("unhealthy")}),
        "ecs": ecs_of(b.ecs_service(REG, 1), b.ecs_service(MLF, 1, 1)),
        "rds": assess_rds(None),
        "cloudwatch": assess_cloudwatch(b.alarms(("cpu", "ALARM"))),
    }
    group = assess_aws_infrastructure(components)
    assert group.name == "aws_infrastructure"
    assert group.status == CheckStatus.UNHEALTHY
    assert set(group.components) == {"alb", "ecs", "rds", "cloudwatch"}
    assert severities(group) == ["critical", "warning", "warning"]
    assert "elbv2:DescribeTargetHealth" in group.evidence
    seed = group.seed_json()
    assert seed["ecs"]["status"] == "degraded" and seed["rds"]["status"] == "skipped"


def test_aws_infrastructure_all_skipped() -> None:
    group = assess_aws_infrastructure({"alb": assess_alb(None, {}), "ecs": assess_ecs(None, [])})
    assert group.status == CheckStatus.SKIPPED


def test_rds_one_answer_per_instance() -> None:
    answers = [
        b.rds("available"),
        b.aws(
            "rds",
            "DescribeDBInstances",
            {
                "DBInstances": [
                    {"DBInstanceIdentifier": "db-replica", "DBInstanceStatus": "stopped"}
                ]
            },
        ),
        b.aws("rds", "DescribeDBInstances", None, "DBInstanceNotFound", "db-gone not found"),
    ]
    result = assess_rds(answers, ["db-0", "db-replica", "db-gone"])
    assert result.status == CheckStatus.UNHEALTHY
    assert severities(result) == ["critical", "warning"]
    assert "db-replica is not available" in messages(result)
    assert "DBInstanceNotFound" in messages(result)
    assert set(result.details["instances"]) == {"db-0", "db-replica"}


def test_rds_all_calls_failed() -> None:
    result = assess_rds([b.aws("rds", "DescribeDBInstances", None, "ThrottlingException")])
    assert result.status == CheckStatus.ERROR
    assert assess_rds([]).status == CheckStatus.SKIPPED


def test_ecs_services_follow_the_services_stable_waiter() -> None:
    stable = service("reg", 2)
    stable["deployments"][0]["id"] = "ecs-svc/1"
    stable["deployments"][0]["createdAt"] = "2024-01-01T11:00:00+00:00"
    stable["loadBalancers"] = [{"targetGroupArn": "arn:tg/reg-tg/1"}]
    rolling = service("mlf", 1, 1, rollout="IN_PROGRESS")
    two = service("two", 2, deployments=2)
    r = read_ecs_services({"services": [stable, rolling, two]}).for_names(
        ["reg", "mlf", "two", "gone"]
    )
    assert [x.stable for x in r] == [True, False, False, False]
    assert r[0].primary_deployment_id == "ecs-svc/1"
    assert r[0].target_group_arns == ["arn:tg/reg-tg/1"]
    assert r[3].gone and r[3].status == "MISSING"
    assert "2 deployments" in r[2].describe()
