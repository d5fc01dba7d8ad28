"""Check the load balancer's target health: healthy/total per target group."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from pydantic import Field

from service_health.action_rules import GroupHealth
from service_health.recovery import (
    ActionData,
    ActionResult,
    EntryStatus,
    RecoveryLogEntry,
    RecoveryStep,
    StepKind,
    action_entry,
)
from service_health.settings import Target
from tasks import aws
from tasks.recovery.aws_reads import group_health, target_group_arns
from tasks.recovery.registry import ActionContext, action
from tasks.retries import io_task

ACTION = StepKind.CHECK_ALB_TARGETS


class TargetsData(ActionData):
    groups: dict[str, GroupHealth] = Field(default_factory=dict)  # group name -> its health
    errors: dict[str, str] = Field(default_factory=dict)  # group name -> why it is unreadable


def _result(
    success: bool, entries: list[RecoveryLogEntry], data: TargetsData, not_run: bool = False
) -> ActionResult[TargetsData]:
    return ActionResult(
        action=str(ACTION), success=success, entries=entries, data=data, not_run=not_run
    )


def _check_sync(target: Target, groups: Sequence[str]) -> ActionResult[TargetsData]:
    try:
        elb = aws.elbv2_client(target)
        arns, error = target_group_arns(elb, target, groups)
    except Exception as exc:
        arns, error = {}, f"AWS client unavailable ({type(exc).__name__})"
    if error is not None:
        entry = action_entry(ACTION, EntryStatus.FAILED, f"Target groups unreadable: {error}")
        return _result(False, [entry], TargetsData())
    if not arns:
        entry = action_entry(ACTION, EntryStatus.SKIPPED, "No target group configured or found")
        return _result(True, [entry], TargetsData(), not_run=True)
    entries = []
    data = TargetsData()
    for name, arn in arns.items():
        health, error = group_health(elb, arn)
        if health is None:
            entries.append(action_entry(ACTION, EntryStatus.FAILED, f"{name}: {error}", name))
            data.errors[name] = error or "unreadable"
            continue
        data.groups[name] = health
        text = f"{name}: {health.healthy}/{health.total} targets healthy"
        if health.unhealthy:
            text += f"; not healthy: {', '.join(health.unhealthy)}"
        status = EntryStatus.SUCCESS if health.all_healthy else EntryStatus.FAILED
        entries.append(action_entry(ACTION, status, text, name, **health.model_dump()))
    return _result(all(e.status == EntryStatus.SUCCESS for e in entries), entries, data)


@io_task(name="check-alb-targets", retries=2)
async def check_alb_targets(
    target: Target, groups: list[str] | None = None
) -> ActionResult[TargetsData]:
    """DescribeTargetHealth for each target group (default: the target's target_groups,
    else those attached to its ECS services). Succeeds when every group has targets and
    all of them are healthy."""
    return await asyncio.to_thread(_check_sync, target, list(groups or target.target_groups))


@action(StepKind.CHECK_ALB_TARGETS)
async def _check(step: RecoveryStep, context: ActionContext) -> ActionResult[TargetsData]:
    return await check_alb_targets(context.target)
