"""Events the flows write to Prefect's event feed: the audit trail of every mutating
action, the approval asked for, the recovery's end (the recover flow), and the report of
each diagnosis (the diagnose flow). Automations match them
(service_health/notifications.py); the run emitting them is attached by Prefect as a
related resource (flow run, flow, deployment), so `{{ flow_run|ui_url }}` links to it.

Everything sent here has been through the target's Redactor by the caller."""

from __future__ import annotations

import json
from typing import Any

from prefect.context import FlowRunContext
from prefect.events import emit_event

from service_health.models import DiagnosticReport
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


DIAGNOSIS_FINISHED = "hokusai.diagnosis.finished"
REPORT_MAX_BYTES = 256_000  # far below the server's event size limit (1.5 MB by default)


def diagnosis_finished(slug: str, report: DiagnosticReport) -> None:
    """The diagnosis' report (redacted by the caller), on the run that made it: a recovery
    the automation starts from this run may plan from it rather than diagnose again
    (tasks/trigger_report.py). A report too large to carry is left out, the verdict kept."""
    body: dict[str, Any] | None = report.model_dump(mode="json")
    if len(json.dumps(body)) > REPORT_MAX_BYTES:
        body = None
    emit_event(
        DIAGNOSIS_FINISHED,
        resource=_run_resource(slug, report.overall_status.state_name),
        payload={"target": report.target, "report": body},
    )


def _run_resource(slug: str, verdict: str) -> dict[str, str]:
    """This flow run as the event's resource (Prefect relates the run's flow and deployment)."""
    context = FlowRunContext.get()
    run = context.flow_run.id if context is not None and context.flow_run else "none"
    return {"prefect.resource.id": f"prefect.flow-run.{run}", "hokusai.target": slug,
            "hokusai.verdict": verdict}  # fmt: skip
