"""Events the recover flow writes to Prefect's event feed: the audit trail of every
mutating action, the approval asked for, the recovery's end. Automations match them
(service_health/notifications.py); the run emitting them is attached by Prefect as a
related resource (flow run, flow, deployment), so `{{ flow_run|ui_url }}` links to it.

Everything sent here has been through the target's Redactor by the caller."""

from __future__ import annotations

from typing import Any

from prefect.events import emit_event

from service_health.notifications import (
    APPROVAL_REQUESTED,
    RECOVERY_FINISHED,
    target_resource,
)
from service_health.recovery import RecoveryLogEntry, RecoveryResult


def _target(slug: str, name: str, **labels: str) -> dict[str, str]:
    return {"prefect.resource.id": target_resource(slug), "prefect.resource.name": name,
            **labels}  # fmt: skip


def _short(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def approval_requested(slug: str, name: str, steps: list[str], deadline: str) -> None:
    emit_event(
        APPROVAL_REQUESTED,
        resource=_target(slug, name),
        payload={"steps": steps, "deadline": deadline},
    )


def recovery_finished(slug: str, name: str, result: RecoveryResult | None, outcome: str,
                      message: str, dry_run: bool) -> None:  # fmt: skip
    actions = [
        f"{e.action}{f' ({e.subject})' if e.subject else ''}: {e.status} - {_short(e.details)}"
        for e in (result.recovery_log if result else [])
        if not e.dry_run
    ]
    emit_event(
        RECOVERY_FINISHED,
        resource=_target(slug, name, **{"hokusai.dry-run": str(dry_run).lower()}),
        payload={"outcome": outcome, "message": message, "actions": actions},
    )


def mutation(slug: str, name: str, entry: RecoveryLogEntry, service: str | None) -> None:
    """One mutating call and its outcome: `hokusai.recovery.<action>.<status>`, with the
    ECS service or the replica as a related resource."""
    related: list[dict[str, Any]] = []
    if service:
        related.append({"prefect.resource.id": f"hokusai.ecs-service.{service}",
                        "prefect.resource.role": "ecs-service",
                        "prefect.resource.name": service})  # fmt: skip
    elif entry.subject:
        related.append({"prefect.resource.id": f"hokusai.replica.{entry.subject}",
                        "prefect.resource.role": "replica",
                        "prefect.resource.name": entry.subject})  # fmt: skip
    emit_event(
        f"hokusai.recovery.{entry.action}.{entry.status}",
        resource=_target(slug, name),
        related=related,
        payload={
            "action": entry.action,
            "status": str(entry.status),
            "subject": entry.subject,
            "details": entry.details,
        },
    )
