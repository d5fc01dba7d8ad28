"""One Prefect task per diagnostic check.

Each task reads what it needs from the shared `Evidence` (so nothing is fetched twice)
and hands it to the pure assessment rules. Transient failures are retried where the I/O
happens (tenacity for HTTP, botocore's adaptive mode for AWS); a task-level retry covers
only a transient exception that escapes, never a definitive answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any, ParamSpec

from prefect import Task

from service_health import assessment
from service_health.aws_responses import read_target_groups
from service_health.endpoints import (
    ENDPOINTS,
    HEALTH,
    HEALTH_MLFLOW,
    METRICS,
    MLFLOW_HEALTH,
    MLFLOW_SEARCH,
    READY,
)
from service_health.models import CheckResult
from service_health.observations import AwsObservation
from tasks.datastores import probe_redis
from tasks.deploys import read_deploys
from tasks.evidence import Evidence
from tasks.retries import io_task

P = ParamSpec("P")
CheckFn = Callable[P, Coroutine[Any, Any, CheckResult]]


# Retries of a transient exception that escaped a check (tasks/retries.py).
CHECK_RETRIES = 2


def check_task(name: str) -> Callable[[CheckFn[P]], Task[P, Coroutine[Any, Any, CheckResult]]]:
    """The task options every check shares (tasks/retries.py): no caching, each run reads
    the service anew; two retries of an escaped transient exception."""
    return io_task(name=name, retries=CHECK_RETRIES)


@check_task(name="check-api-connectivity")
async def check_api_connectivity(ev: Evidence) -> CheckResult:
    return assessment.assess_api_connectivity(
        await ev.endpoint(HEALTH), ev.target.thresholds.slow_response_s
    )


@check_task(name="check-health-endpoints")
async def check_health_endpoints(ev: Evidence) -> CheckResult:
    # Every endpoint; Evidence sends them under the request discipline (light ones first,
    # MLflow-touching ones one at a time per replica). A replica's own /health/mlflow answer
    # stands in for the load balancer's, so that no replica is asked twice.
    others = [path for path in ENDPOINTS if path != HEALTH_MLFLOW]
    gathered: list[Any] = await asyncio.gather(
        ev.breaker_views(), *(ev.endpoint(path) for path in others)
    )
    views, _ = gathered[0]
    fetched: dict[str, Any] = dict(zip(others, gathered[1:], strict=True))
    direct = next((v for k, v in views.items() if not k.startswith("sample-")), None)
    fetched[HEALTH_MLFLOW] = direct if direct is not None else await ev.endpoint(HEALTH_MLFLOW)
    observations = {path: fetched[path] for path in ENDPOINTS}
    t = ev.target.thresholds
    result = assessment.assess_health_endpoints(
        observations, t.slow_response_s, await ev.request_log(), t.blocking_s
    )
    details = {**result.details, "request_discipline": ev.discipline()}
    return result.model_copy(update={"details": details})


@check_task(name="check-circuit-breaker")
async def check_circuit_breaker(ev: Evidence) -> CheckResult:
    (views, partial), ready, metrics = await asyncio.gather(
        ev.breaker_views(), ev.endpoint(READY), ev.endpoint(METRICS)
    )
    return assessment.assess_circuit_breaker(views, ready, metrics, partial)


@check_task(name="check-mlflow")
async def check_mlflow(ev: Evidence) -> CheckResult:
    if not ev.target.mlflow_url:
        return assessment.assess_mlflow(None, None)
    health, search = await asyncio.gather(ev.mlflow(MLFLOW_HEALTH), ev.mlflow(MLFLOW_SEARCH))
    return assessment.assess_mlflow(health, search, ev.target.thresholds.mlflow_slow_s)


@check_task(name="check-database")
async def check_database(ev: Evidence) -> CheckResult:
    t = ev.target
    if t.database_url is None:
        health, ready = await asyncio.gather(ev.endpoint(HEALTH), ev.endpoint(READY))
        return assessment.assess_database_from_service(health, ready)
    obs = await ev.postgres()
    assert obs is not None  # a database URL is configured
    return assessment.assess_database(obs, t.thresholds.db_slow_s)


@check_task(name="check-redis")
async def check_redis(ev: Evidence) -> CheckResult:
    t = ev.target
    if t.redis_url is None:
        health, ready = await asyncio.gather(ev.endpoint(HEALTH), ev.endpoint(READY))
        return assessment.assess_redis_from_service(health, ready)
    obs = await probe_redis(
        t.redis_url.get_secret_value(),
        t.thresholds.request_timeout_s,
        ev.redactor,
        ev.probe_deadline(),
    )
    return assessment.assess_redis(obs, t.thresholds.redis_slow_ms)


@check_task(name="check-alb")
async def check_alb(ev: Evidence) -> CheckResult:
    t = ev.target
    if not (t.alb_names or t.target_groups):
        return assessment.assess_alb(None, {})

    async def load_balancers() -> AwsObservation | None:
        if not t.alb_names:
            return None
        return await ev.aws_call("elbv2", "describe_load_balancers", Names=t.alb_names)

    async def target_health() -> tuple[dict[str, AwsObservation], dict[str, str]]:
        """Target group name -> its targets' health (all asked at once), and ARN -> name."""
        if not t.target_groups:
            return {}, {}
        groups = await ev.target_groups()
        if groups.response is None:
            return {"describe_target_groups": groups}, {}
        listed = read_target_groups(groups.response)
        healths = await asyncio.gather(*(ev.target_health(g.arn) for g in listed))
        health = {g.name: obs for g, obs in zip(listed, healths, strict=True)}
        return health, {g.arn: g.name for g in listed}

    # The load balancers and the target groups are independent reads: asked together.
    lbs, (health, arn_names) = await asyncio.gather(load_balancers(), target_health())
    return assessment.assess_alb(
        lbs, health, non_critical_groups=await _mlflow_groups(ev, arn_names)
    )


async def _mlflow_groups(ev: Evidence, arn_names: dict[str, str]) -> list[str]:
    """The target groups serving MLflow (no healthy target there only degrades): as
    configured, else the ones ECS says the MLflow service is registered in."""
    t = ev.target
    if t.mlflow_target_groups:
        return list(t.mlflow_target_groups)
    if not t.mlflow_ecs_service:
        return []
    by_service = await ev.service_target_group_arns()
    return [arn_names[arn] for arn in by_service.get(t.mlflow_ecs_service, []) if arn in arn_names]


@check_task(name="check-ecs")
async def check_ecs(ev: Evidence) -> CheckResult:
    t = ev.target
    if not (t.ecs_cluster and t.ecs_services):
        return assessment.assess_ecs(None, [])
    non_critical = [t.mlflow_ecs_service] if t.mlflow_ecs_service else []
    services = await ev.ecs_services()
    deploys = await read_deploys(ev, services)  # why tasks die, within the deadline
    return assessment.assess_ecs(services, t.ecs_services, non_critical, deploys, datetime.now(UTC))


@check_task(name="check-rds")
async def check_rds(ev: Evidence) -> CheckResult:
    t = ev.target
    if not t.rds_instances:
        return assessment.assess_rds(None)
    observations = await asyncio.gather(
        *(
            ev.aws_call("rds", "describe_db_instances", DBInstanceIdentifier=i)
            for i in t.rds_instances
        )
    )
    return assessment.assess_rds(list(observations), t.rds_instances)


@check_task(name="check-cloudwatch")
async def check_cloudwatch(ev: Evidence) -> CheckResult:
    t = ev.target
    if not t.alarm_prefix:
        return assessment.assess_cloudwatch(None)
    return assessment.assess_cloudwatch(
        await ev.aws_call(
            "cloudwatch", "describe_alarms", AlarmNamePrefix=t.alarm_prefix, StateValue="ALARM"
        )
    )


@check_task(name="check-service-metrics")
async def check_service_metrics(ev: Evidence) -> CheckResult:
    return assessment.assess_metrics(await ev.endpoint(METRICS))
