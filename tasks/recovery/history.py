"""What ECS itself says about each service's past, for the cooldown and the plan: its
primary deployment, when a recovery last restarted it, its target groups. No local state:
any worker sees the same history."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import TYPE_CHECKING

from service_health.recovery import RESTART_TAG, RecoveryHistory, ServiceHistory, parse_time
from service_health.settings import Target
from tasks import aws
from tasks.recovery.aws_reads import describe_services, target_group_names
from tasks.retries import io_task

if TYPE_CHECKING:
    from mypy_boto3_ecs import ECSClient


def _last_restart(ecs: ECSClient, arn: str | None) -> tuple[datetime | None, str | None]:
    """The service's RESTART_TAG, written when a recovery forced a deployment."""
    if arn is None:
        return None, None
    obs = aws.call_sync(ecs, "ecs", "list_tags_for_resource", resourceArn=arn)
    if obs.response is None:
        return None, f"tags unreadable ({obs.error_code})"
    tags = obs.response.get("tags")
    for tag in tags if isinstance(tags, list) else []:
        if isinstance(tag, dict) and tag.get("key") == RESTART_TAG:
            return parse_time(tag.get("value")), None
    return None, None


def _history_sync(target: Target) -> RecoveryHistory:
    if not (target.ecs_cluster and target.ecs_services):
        return RecoveryHistory(error="no ECS cluster or service configured")
    try:
        ecs, elb = aws.ecs_client(target), aws.elbv2_client(target)
    except Exception as exc:
        return RecoveryHistory(error=f"AWS client unavailable ({type(exc).__name__})")
    services, error = describe_services(ecs, target, target.ecs_services)
    if services is None:
        return RecoveryHistory(error=error)
    arns = sorted({a for s in services for a in s.target_group_arns})
    names, error = target_group_names(elb, arns)
    problems = [error] if error else []
    history = {}
    for s in services:
        if s.status == "MISSING" or s.name is None:
            problems.append(f"{s.name} not found")
            continue
        restarted, problem = _last_restart(ecs, s.arn)
        if problem:
            problems.append(f"{s.name}: {problem}")
        history[s.name] = ServiceHistory(
            name=s.name,
            primary_deployment_id=s.primary_deployment_id,
            last_deployment_at=restarted,
            target_groups=[names[a] for a in s.target_group_arns if a in names],
        )
    return RecoveryHistory(services=history, error="; ".join(problems) or None)


@io_task(name="read-recovery-history", retries=2)
async def read_recovery_history(target: Target) -> RecoveryHistory:
    """What ECS itself says about each service: its primary deployment, when a recovery
    last restarted it (its RESTART_TAG, for the cooldown) and its target groups."""
    return await asyncio.to_thread(_history_sync, target)
