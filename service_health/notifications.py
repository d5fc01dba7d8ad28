"""Who hears about what: per-target notification settings (the `notifications:` section of
targets.yaml) and the Prefect automations that deliver them, as plain data. Pure, no I/O.

Delivery is Prefect's own: an automation per target and event, whose trigger matches the
flow-run state events of the target's deployments (or the events the recover flow emits,
`hokusai.recovery.*`), with a `send-notification` action per notification block. The
messages are Jinja templates the Prefect server renders when the automation fires; they
name only the target, the run, its state and what the flows themselves wrote (state
messages and event payloads, already redacted): no secret can reach them.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service_health.settings import ConfigError

# Events the recover flow emits (tasks/events.py); the automations below match them.
APPROVAL_REQUESTED = "hokusai.recovery.approval-requested"
RECOVERY_FINISHED = "hokusai.recovery.finished"
DIAGNOSIS_STATES = ("Healthy", "Degraded", "Critical")
DEFAULT_SCHEDULE_S = 300.0


def target_resource(slug: str) -> str:
    """The resource id of a target in the events the flows emit."""
    return f"hokusai.target.{slug}"


class NotifyEvent(StrEnum):
    CRITICAL = "critical"  # a diagnosis ends Critical
    DEGRADED = "degraded"  # a diagnosis ends Degraded (off unless listed)
    APPROVAL = "approval"  # a recovery waits for approval
    RECOVERY = "recovery"  # a recovery ends (Recovered, Failed, Rejected, Skipped, ...)
    CRASHED = "crashed"  # a recovery run crashed or was cancelled
    SILENCE = "silence"  # no diagnosis of the target completed within the window


DEFAULT_EVENTS: list[NotifyEvent] = [e for e in NotifyEvent if e is not NotifyEvent.DEGRADED]


class TargetNotifications(BaseModel):
    """One target's entry under `notifications:`."""

    model_config = ConfigDict(extra="forbid")

    # Notification blocks by `<block-type-slug>/<block-name>`, e.g. `slack-webhook/oncall`,
    # `custom-webhook/hokusai-sandbox`, `pager-duty-webhook/hokusai`. The block holds the
    # URL or key; this file holds only its name.
    blocks: list[str] = Field(min_length=1)
    events: list[NotifyEvent] = Field(default_factory=lambda: list(DEFAULT_EVENTS))
    # No completed diagnosis for this long: the dead-man's switch fires. Default: three
    # intervals of the target's diagnosis schedule.
    silence_after_s: float | None = Field(default=None, ge=10)


def load_notifications(text: str) -> dict[str, TargetNotifications]:
    """The `notifications:` section of a targets file (absent: nobody is notified)."""
    document = yaml.safe_load(text) or {}
    section = document.get("notifications") if isinstance(document, dict) else None
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise ConfigError("targets file: `notifications:` must map target names to settings")
    found = {}
    for name, entry in section.items():
        try:
            found[str(name)] = TargetNotifications.model_validate(entry)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ConfigError(
                f"targets file: notifications of {name!r}: {where}: {first['msg']}"
            ) from None
    return found


def schedule_interval_s(cron: str | None) -> float:
    """The interval of a `*/N * * * *` cron (every N minutes); the default otherwise."""
    match = re.fullmatch(r"\*/(\d+) \* \* \* \*", (cron or "").strip())
    return float(match.group(1)) * 60 if match else DEFAULT_SCHEDULE_S


class AutomationSpec(BaseModel):
    """An automation to declare: its trigger and the message it sends to each block."""

    name: str
    description: str
    trigger: dict[str, Any]
    subject: str
    body: str


def _state_trigger(deployment: str, states: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "type": "event",
        "posture": "Reactive",
        "match": {"prefect.resource.id": "prefect.flow-run.*"},
        "match_related": {
            "prefect.resource.role": "deployment",
            "prefect.resource.name": deployment,
        },
        "expect": [f"prefect.flow-run.{s}" for s in states],
        "threshold": 1,
        "within": 0,
        **extra,
    }


def _own_trigger(event: str, slug: str, **labels: str) -> dict[str, Any]:
    return {
        "type": "event",
        "posture": "Reactive",
        "match": {"prefect.resource.id": target_resource(slug), **labels},
        "expect": [event],
        "threshold": 1,
        "within": 0,
    }


def run_url(ui_base: str | None) -> str:
    """The template of a link to the triggering run's page: under `ui_base` (the Prefect UI
    address operators open, PREFECT_UI_URL where `setup` runs), else the server's own
    PREFECT_UI_URL (`ui_url` renders nothing when the server has none)."""
    if ui_base:
        return f"{ui_base.rstrip('/')}/runs/flow-run/{{{{ flow_run.id }}}}"
    return "{{ flow_run|ui_url }}"


def automation_specs(
    target: str,
    slug: str,
    config: TargetNotifications,
    schedule_s: float,
    ui_base: str | None = None,
) -> list[AutomationSpec]:
    """The automations of one target, one per configured event."""
    link = run_url(ui_base)
    run_link = f"Run {{{{ flow_run.name }}}}: {link}"
    specs = []
    events = set(config.events)
    verdicts = [s for s, e in (("Critical", NotifyEvent.CRITICAL),
                               ("Degraded", NotifyEvent.DEGRADED)) if e in events]  # fmt: skip
    for verdict in verdicts:
        specs.append(AutomationSpec(
            name=f"notify-{slug}-{verdict.lower()}",
            description=f"Notify when a diagnosis of {target} ends {verdict}.",
            trigger=_state_trigger(f"diagnose-{slug}", [verdict]),
            subject=f"[hokusai] {target}: diagnosis {verdict}",
            body=(f"Diagnosis of {target}: {{{{ flow_run.state.name }}}}\n"
                  "{{ flow_run.state.message }}\n" + run_link),
        ))  # fmt: skip
    if NotifyEvent.APPROVAL in events:
        specs.append(AutomationSpec(
            name=f"notify-{slug}-approval",
            description=f"Notify when a recovery of {target} waits for approval.",
            trigger=_own_trigger(APPROVAL_REQUESTED, slug),
            subject=f"[hokusai] {target}: recovery plan waits for approval",
            body=(f"A recovery of {target} waits for approval until "
                  "{{ event.payload.deadline }} (then it rejects itself).\n"
                  "Approving applies:\n"
                  "{% for step in event.payload.steps %}- {{ step }}\n{% endfor %}"
                  f"Approve or reject with Resume on the run's page: {link}\n"
                  "Run {{ flow_run.name }}"),
        ))  # fmt: skip
    if NotifyEvent.RECOVERY in events:
        specs.append(AutomationSpec(
            name=f"notify-{slug}-recovery",
            description=f"Notify when a recovery of {target} (not a dry run) ends.",
            trigger=_own_trigger(RECOVERY_FINISHED, slug, **{"hokusai.dry-run": "false"}),
            subject=f"[hokusai] {target}: recovery {{{{ event.payload.outcome }}}}",
            body=(f"Recovery of {target}: {{{{ event.payload.outcome }}}}\n"
                  "{{ event.payload.message }}\n"
                  "{% for done in event.payload.actions %}- {{ done }}\n{% endfor %}"
                  + run_link),
        ))  # fmt: skip
    if NotifyEvent.CRASHED in events:
        specs.append(AutomationSpec(
            name=f"notify-{slug}-crashed",
            description=f"Notify when a recovery run of {target} crashes or is cancelled.",
            trigger=_state_trigger(f"recover-{slug}", ["Crashed", "Cancelled"]),
            subject=f"[hokusai] {target}: recovery run {{{{ flow_run.state.name }}}}",
            body=(f"A recovery run of {target} ended {{{{ flow_run.state.name }}}}: "
                  "{{ flow_run.state.message }}\nWhat it did before is in its recovery "
                  "log; check the service before starting another.\n" + run_link),
        ))  # fmt: skip
    if NotifyEvent.SILENCE in events:
        window = config.silence_after_s or 3 * schedule_s
        specs.append(
            AutomationSpec(
                name=f"notify-{slug}-silence",
                description=f"Dead-man's switch: no diagnosis of {target} done in {window:g}s.",
                trigger=_state_trigger(
                    f"diagnose-{slug}", list(DIAGNOSIS_STATES), posture="Proactive", within=window
                ),
                subject=f"[hokusai] {target}: no diagnosis for {window / 60:g} minutes",
                body=(
                    f"No diagnosis of {target} completed in the last {window:g}s. Is a worker "
                    f"of the pool running, and is the schedule of diagnose-{slug} active?"
                ),
            )
        )
    return specs
