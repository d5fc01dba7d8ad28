"""The AWS reads the recovery actions share: ECS services, target groups, target health.

Blocking (boto3): call them off the event loop. None of them raises; a failed read comes
back as None with the reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from service_health.action_rules import GroupHealth
from service_health.aws_responses import (
    EcsServiceEntry,
    read_ecs_services,
    read_target_groups,
    read_target_health,
)
from service_health.observations import AwsObservation
from service_health.settings import Target
from tasks import aws

if TYPE_CHECKING:
    from mypy_boto3_ecs import ECSClient
    from mypy_boto3_elbv2 import ElasticLoadBalancingv2Client


def failure(obs: AwsObservation) -> str:
    return f"{obs.label} failed: {obs.error_code}: {obs.error_message or ''}".rstrip(": ")


def describe_services(
    ecs: ECSClient, target: Target, services: Sequence[str]
) -> tuple[list[EcsServiceEntry] | None, str | None]:
    """DescribeServices: one entry per name (MISSING where ECS has none), or the error."""
    obs = aws.call_sync(
        ecs, "ecs", "describe_services", cluster=target.ecs_cluster, services=list(services)
    )
    if obs.response is None:
        return None, failure(obs)
    return read_ecs_services(obs.response).for_names(services), None


def target_group_names(
    elb: ElasticLoadBalancingv2Client, arns: Sequence[str]
) -> tuple[dict[str, str], str | None]:
    """Target group ARN -> name, for the given ARNs."""
    if not arns:
        return {}, None
    obs = aws.call_sync(elb, "elbv2", "describe_target_groups", TargetGroupArns=list(arns))
    if obs.response is None:
        return {}, f"{obs.label} failed: {obs.error_code}"
    return {g.arn: g.name for g in read_target_groups(obs.response)}, None


def target_group_arns(
    elb: ElasticLoadBalancingv2Client, target: Target, groups: Sequence[str]
) -> tuple[dict[str, str], str | None]:
    """Target group name -> ARN: the named groups, or those of the target's ECS services."""
    if groups:
        obs = aws.call_sync(elb, "elbv2", "describe_target_groups", Names=list(groups))
        if obs.response is None:
            return {}, f"{obs.label} failed: {obs.error_code}"
        return {g.name: g.arn for g in read_target_groups(obs.response)}, None
    if not (target.ecs_cluster and target.ecs_services):
        return {}, None
    services, error = describe_services(aws.ecs_client(target), target, target.ecs_services)
    if services is None:
        return {}, error
    names, error = target_group_names(elb, [a for s in services for a in s.target_group_arns])
    return {name: arn for arn, name in names.items()}, error


def group_health(
    elb: ElasticLoadBalancingv2Client, arn: str
) -> tuple[GroupHealth | None, str | None]:
    """DescribeTargetHealth of one group, judged; or the error."""
    obs = aws.call_sync(elb, "elbv2", "describe_target_health", TargetGroupArn=arn)
    if obs.response is None:
        return None, f"{obs.label} failed: {obs.error_code}"
    return GroupHealth.of(read_target_health(obs.response).targets), None
