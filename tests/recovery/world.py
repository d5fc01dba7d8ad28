"""A synthetic production system to diagnose: observations in, DiagnosticReport out."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from service_health.assessment import (
    assess_alb,
    assess_api_connectivity,
    assess_aws_infrastructure,
    assess_circuit_breaker,
    assess_cloudwatch,
    assess_database,
    assess_ecs,
    assess_health_endpoints,
    assess_metrics,
    assess_mlflow,
    assess_rds,
    assess_redis,
    build_diagnostic_report,
)
from service_health.deploy_evidence import DeployObservations
from service_health.models import DiagnosticReport
from service_health.observations import (
    AwsObservation,
    HttpObservation,
    PostgresObservation,
    RedisObservation,
)
from service_health.settings import Target
from tests.domain import bodies as b

R1, R2 = "10.0.1.5:8000", "10.0.1.6:8000"
NOW = datetime(2024, 1, 1, 12, 0, 0, tzinfo=UTC)


def make_target(**overrides: Any) -> Target:
    fields: dict[str, Any] = {
        "name": "prod",
        "api_url": "https://api.example.test",
        "mlflow_url": "https://mlflow.example.test",
        "ecs_cluster": "c",
        "ecs_services": ["reg", "mlf"],
        "mlflow_ecs_service": "mlf",
        "target_groups": ["reg-tg", "mlf-tg"],
        "mlflow_target_groups": ["mlf-tg"],
        "rds_instances": ["db-0"],
    }
    fields.update(overrides)
    return Target.model_validate(fields)


def service(
    name: str,
    running: int,
    desired: int = 2,
    status: str = "ACTIVE",
    rollout: str = "COMPLETED",
    deployments: int = 1,
) -> dict[str, Any]:
    svc = b.ecs_service(name, running, desired, status, rollout)
    if deployments > 1:
        svc["deployments"] += [
            {"status": "ACTIVE", "rolloutState": "COMPLETED", "runningCount": 0}
        ] * (deployments - 1)
    return svc


class World:
    """Everything one diagnosis observes, healthy by default; scenarios change a few parts."""

    def __init__(self) -> None:
        self.endpoints: dict[str, HttpObservation] = {
            "/health": b.health(),
            "/ready": b.ready(),
            "/live": b.live(),
            "/health/mlflow": b.mlflow_health(),
            "/health/status": b.health_status(),
            "/metrics": b.metrics(),
        }
        self.replicas: dict[str, HttpObservation] = {
            R1: b.mlflow_health(replica=R1),
            R2: b.mlflow_health(replica=R2),
        }
        self.partial = False
        self.mlflow: tuple[HttpObservation | None, HttpObservation | None] = (
            b.http("/health", 200, text="OK"),
            b.http("/api/2.0/mlflow/experiments/search", 200, {"experiments": []}, method="POST"),
        )
        self.postgres: PostgresObservation | None = PostgresObservation(connect_ms=5, query_ms=1)
        self.redis: RedisObservation | None = RedisObservation(ping_ms=1)
        self.groups: dict[str, AwsObservation] = {
            "reg-tg": b.target_health("healthy", "healthy"),
            "mlf-tg": b.target_health("healthy"),
        }
        self.services = [service("reg", 2), service("mlf", 1, 1)]
        self.ecs: AwsObservation | None = None  # overrides self.services (e.g. an error)
        self.rds: AwsObservation | None = b.rds("available")
        # The stopped tasks read per service (why tasks die); None: not read.
        self.deploys: dict[str, DeployObservations] | None = None

    # -- scenarios --

    def breaker_open(self, *replicas: str, stuck: bool = False) -> World:
        for r in replicas or tuple(self.replicas):
            self.replicas[r] = (
                b.mlflow_health("OPEN", recovery_attempts=3, replica=r)
                if stuck
                else b.mlflow_health("OPEN", time_until_retry=20, replica=r)
            )
        self.endpoints["/ready"] = b.ready(breaker_open=True)
        self.endpoints["/health"] = b.health("degraded", mlflow="degraded")
        return self

    def sampled(self) -> World:
        self.replicas = {
            "sample-1": b.mlflow_health("OPEN", recovery_attempts=3),
            "sample-2": b.mlflow_health(),
        }
        self.partial = True
        self.endpoints["/ready"] = b.ready(breaker_open=True)
        return self

    def mlflow_down(self) -> World:
        self.mlflow = (b.no_answer("/health"), b.no_answer("/api/2.0/mlflow/experiments/search"))
        self.services[1] = service("mlf", 0, 1)
        self.groups["mlf-tg"] = b.target_health("unhealthy", reason="Target.FailedHealthChecks")
        return self

    def postgres_down(self) -> World:
        self.postgres = PostgresObservation(error="connection refused")
        self.endpoints["/health"] = b.health("unhealthy", postgres="unhealthy")
        self.endpoints["/ready"] = b.ready(database=False)
        return self

    def registry_down(self) -> World:
        self.services[0] = service("reg", 0)
        self.groups["reg-tg"] = b.aws(
            "elbv2", "DescribeTargetHealth", {"TargetHealthDescriptions": []}
        )
        self.endpoints = {k: b.no_answer(k) for k in self.endpoints}
        self.replicas = {}
        return self

    # -- the diagnosis --

    def report(self) -> DiagnosticReport:
        e = self.endpoints
        ecs = self.ecs or b.ecs(*self.services)
        checks = {
            "api_connectivity": assess_api_connectivity(e["/health"], 5.0),
            "health_endpoints": assess_health_endpoints(e),
            "circuit_breaker": assess_circuit_breaker(
                self.replicas, e["/ready"], e["/metrics"], partial=self.partial
            ),
            "mlflow_service": assess_mlflow(*self.mlflow),
            "database": assess_database(self.postgres),
            "redis": assess_redis(self.redis),
            "aws_infrastructure": assess_aws_infrastructure(
                {
                    "alb": assess_alb(b.load_balancers(), self.groups, ["mlf-tg"]),
                    "ecs": assess_ecs(ecs, ["reg", "mlf"], ["mlf"], self.deploys, NOW),
                    "rds": assess_rds(self.rds),
                    "cloudwatch": assess_cloudwatch(None),
                }
            ),
            "service_metrics": assess_metrics(e["/metrics"]),
        }
        return build_diagnostic_report("prod", checks, NOW, 1.0)
