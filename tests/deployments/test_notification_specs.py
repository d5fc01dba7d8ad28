"""The notification settings and the automations they become, without a server: every spec
is an automation Prefect accepts, and the file's mistakes are one-line configuration errors."""

from __future__ import annotations

from uuid import uuid4

import pytest

from service_health.notifications import (
    NotifyEvent,
    TargetNotifications,
    automation_specs,
    load_notifications,
    schedule_interval_s,
)
from service_health.settings import ConfigError


def test_every_spec_is_an_automation_prefect_accepts() -> None:
    from prefect.events.schemas.automations import AutomationCore, Posture

    config = TargetNotifications(blocks=["custom-webhook/x"], events=list(NotifyEvent))
    specs = automation_specs("sandbox", "sandbox", config, schedule_interval_s("*/5 * * * *"))
    assert {s.name for s in specs} == {f"notify-sandbox-{e}" for e in NotifyEvent}
    for spec in specs:
        core = AutomationCore.model_validate({
            "name": spec.name, "trigger": spec.trigger,
            "actions": [{"type": "send-notification", "block_document_id": str(uuid4()),
                         "subject": spec.subject, "body": spec.body}],
        })  # fmt: skip
        assert core.actions[0].type == "send-notification"
    (silence,) = [s for s in specs if s.name.endswith("-silence")]
    core = AutomationCore.model_validate({"name": "x", "trigger": silence.trigger, "actions": []})
    assert core.trigger.posture == Posture.Proactive  # type: ignore[union-attr]
    assert core.trigger.within.total_seconds() == 900  # type: ignore[union-attr]  # 3 x 5 min


def test_defaults_and_mistakes() -> None:
    assert load_notifications("targets: {}\n") == {}
    found = load_notifications("notifications:\n  sandbox:\n    blocks: [slack-webhook/a]\n")
    assert NotifyEvent.DEGRADED not in found["sandbox"].events  # degraded is opt-in
    with pytest.raises(ConfigError, match="blocks"):
        load_notifications("notifications:\n  sandbox:\n    events: [critical]\n")
    with pytest.raises(ConfigError, match="events"):
        load_notifications("notifications:\n  sandbox:\n    blocks: [a/b]\n    events: [x]\n")
    assert schedule_interval_s("0 6 * * *") == 300.0  # not every-N-minutes: the default
