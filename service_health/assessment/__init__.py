"""The judgment: observations in, check results and a verdict out. Pure, no I/O.

Modules: api (connectivity, health endpoints), breaker (circuit breaker per replica),
dependencies (MLflow, PostgreSQL, Redis), aws (ALB, ECS, RDS, CloudWatch), metrics
(/metrics), verdict (assess, build_diagnostic_report).
"""

from service_health.assessment.api import assess_api_connectivity, assess_health_endpoints
from service_health.assessment.aws import (
    assess_alb,
    assess_aws_infrastructure,
    assess_cloudwatch,
    assess_ecs,
    assess_rds,
)
from service_health.assessment.breaker import assess_circuit_breaker
from service_health.assessment.dependencies import (
    assess_database,
    assess_database_from_service,
    assess_mlflow,
    assess_redis,
    assess_redis_from_service,
)
from service_health.assessment.metrics import assess_metrics
from service_health.assessment.verdict import assess, build_diagnostic_report, group_aws_components

__all__ = [
    "assess",
    "assess_alb",
    "assess_api_connectivity",
    "assess_aws_infrastructure",
    "assess_circuit_breaker",
    "assess_cloudwatch",
    "assess_database",
    "assess_database_from_service",
    "assess_ecs",
    "assess_health_endpoints",
    "assess_metrics",
    "assess_mlflow",
    "assess_rds",
    "assess_redis",
    "assess_redis_from_service",
    "build_diagnostic_report",
    "group_aws_components",
]
