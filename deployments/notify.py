"""Declare the notification automations of every target that has a `notifications:` entry
in targets.yaml (part of `python -m deployments setup`; safe to run again).

Each automation is named `notify-<target>-<event>`: an existing one is updated in place, one
whose event was removed from the file is deleted, so the server always matches the file.
The blocks themselves (webhook URLs, routing keys: secrets) are created by the operator in
the UI or with code; the file names them only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]


def diagnosis_schedule(slug: str, prefect_file: Path = ROOT / "prefect.yaml") -> str | None:
    """The cron of the target's diagnosis deployment in prefect.yaml, if any."""
    try:
        spec = yaml.safe_load(prefect_file.read_text()) or {}
    except OSError:
        return None
    for deployment in spec.get("deployments") or []:
        if deployment.get("name") == f"diagnose-{slug}":
            for schedule in deployment.get("schedules") or []:
                if schedule.get("cron"):
                    return str(schedule["cron"])
    return None


async def declare(client: Any) -> list[str]:
    """Create, update or delete the automations; say what was done."""
    from prefect.events.schemas.automations import AutomationCore
    from prefect.settings import PREFECT_UI_URL

    from service_health.notifications import (
        automation_specs,
        load_notifications,
        schedule_interval_s,
    )
    from service_health.settings import ConfigError
    from tasks.config import read_targets, targets_file

    try:
        configs = load_notifications(targets_file().read_text())
    except FileNotFoundError:
        return []
    known = read_targets()
    # The UI address for the links in the messages: PREFECT_UI_URL here (by default derived
    # from PREFECT_API_URL), the address operators open.
    ui_base = PREFECT_UI_URL.value()
    done = []
    wanted: set[str] = set()
    slugs = set()
    for name, config in configs.items():
        if name not in known:
            raise ConfigError(f"targets file: notifications for unknown target {name!r}")
        slug = _slug(name)
        slugs.add(slug)
        blocks = []
        for ref in config.blocks:
            block_id = await _block_id(client, ref)
            if block_id is None:
                done.append(f"{name}: block {ref!r} not found (create it first): skipped")
            else:
                blocks.append(block_id)
        if not blocks:
            continue
        interval = schedule_interval_s(diagnosis_schedule(slug))
        for spec in automation_specs(name, slug, config, interval, ui_base):
            wanted.add(spec.name)
            core = AutomationCore.model_validate({
                "name": spec.name,
                "description": spec.description,
                "trigger": spec.trigger,
                "actions": [
                    {"type": "send-notification", "block_document_id": str(b),
                     "subject": spec.subject, "body": spec.body}
                    for b in blocks
                ],
            })  # fmt: skip
            existing = await client.read_automations_by_name(spec.name)
            if existing:
                await client.update_automation(existing[0].id, core)
                done.append(f"automation {spec.name!r} updated")
            else:
                await client.create_automation(core)
                done.append(f"automation {spec.name!r} created")
    # Events taken out of the file: their automations go too.
    for automation in await client.read_automations():
        prefix = next((s for s in slugs if automation.name.startswith(f"notify-{s}-")), None)
        if prefix is not None and automation.name not in wanted:
            await client.delete_automation(automation.id)
            done.append(f"automation {automation.name!r} deleted (no longer configured)")
    return done


def _slug(name: str) -> str:
    """The target's slug by Target's own rule (the deployments and events use it)."""
    from service_health.settings import Target

    return Target.model_construct(name=name, api_url="").slug


async def _block_id(client: Any, ref: str) -> Any:
    from prefect.exceptions import ObjectNotFound

    block_type, _, block_name = ref.partition("/")
    try:
        document = await client.read_block_document_by_name(
            block_name, block_type_slug=block_type, include_secrets=False
        )
    except ObjectNotFound:
        return None
    return document.id
