"""Flow-run names that say what the run is (the run list reads at a glance), e.g.
`diagnose-sandbox-20261201T2121`, `recover-sandbox-apply-20261201T2122`,
`diagnose-fleet-3-targets-...`."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any


def _parameters() -> dict[str, Any]:
    # Imported here: prefect.runtime is only meaningful inside a run, where Prefect calls
    # these functions to name it.
    from prefect.runtime import flow_run

    return dict(flow_run.parameters or {})


def _part(value: Any) -> str:
    return re.sub(r"[^a-z0-9]+", "-", str(value).lower()).strip("-") or "env"


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S")


def diagnose_run_name() -> str:
    return f"diagnose-{_part(_parameters().get('target', 'env'))}-{_stamp()}"


def recover_run_name() -> str:
    params = _parameters()
    mode = "dry-run" if params.get("dry_run", True) else "apply"
    return f"recover-{_part(params.get('target', 'env'))}-{mode}-{_stamp()}"


def fleet_run_name() -> str:
    targets = _parameters().get("targets") or []
    return f"diagnose-fleet-{len(targets)}-targets-{_stamp()}"
