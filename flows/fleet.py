"""diagnose-fleet: many targets diagnosed at once, one summary.

Where a `diagnose-<target>` deployment exists, each diagnosis is started with
`run_deployment` so the work spreads over every worker of the pool; otherwise it runs
here as a subflow. Either way concurrency is bounded and the final state names the
worst verdict.
"""

from __future__ import annotations

import asyncio
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_markdown_artifact, acreate_table_artifact
from prefect.client.orchestration import get_client
from prefect.deployments.flow_runs import arun_deployment
from prefect.exceptions import ObjectNotFound
from prefect.states import Completed, Failed, State

from flows.diagnose import diagnose_service_health
from flows.naming import fleet_run_name
from service_health.models import DiagnosticReport, Verdict

FLOW_NAME = "diagnose-service-health"
SEVERITY = {Verdict.HEALTHY: 0, Verdict.DEGRADED: 1, Verdict.CRITICAL: 2}
NO_VERDICT = "No verdict"


async def _deployment_exists(name: str) -> bool:
    async with get_client() as client:
        try:
            await client.read_deployment_by_name(f"{FLOW_NAME}/{name}")
        except ObjectNotFound:
            return False
    return True


def _verdict(state_name: str | None) -> Verdict | None:
    for verdict in Verdict:
        if verdict.state_name == state_name:
            return verdict
    return None


async def _one(target: str, prefix: str, use_deployments: bool | None) -> dict[str, Any]:
    deployment = f"{prefix}{target}"
    remote = (
        use_deployments if use_deployments is not None else await _deployment_exists(deployment)
    )
    if remote:
        run = await arun_deployment(name=f"{FLOW_NAME}/{deployment}", timeout=None, as_subflow=True)
        name = run.state.name if run.state else None
        return {
            "target": target,
            "verdict": _verdict(name),
            "state": name,
            "run": str(run.id),
            "how": "deployment",
        }
    state = await diagnose_service_health(target=target, return_state=True)
    report = await state.aresult(raise_on_failure=False)
    row: dict[str, Any] = {
        "target": target,
        "verdict": _verdict(state.name),
        "state": state.name,
        "run": None,
        "how": "subflow",
    }
    if isinstance(report, DiagnosticReport):
        row["issues"] = report.critical_issues[:1] or report.warnings[:1]
    return row


@flow(name="diagnose-fleet", flow_run_name=fleet_run_name)
async def diagnose_fleet(
    targets: list[str],
    max_concurrency: int = 8,
    use_deployments: bool | None = None,
    deployment_prefix: str = "diagnose-",
) -> State[Any]:
    """Diagnose many targets at once and summarise their verdicts.

    Args:
        targets: Target names from targets.yaml.
        max_concurrency: Diagnoses running at the same time.
        use_deployments: Fan out through deployments (True), as subflows here (False), or
            through deployments where `<prefix><target>` exists (unset).
        deployment_prefix: Deployment name of a target's diagnosis, before the target name.
    """
    logger = get_run_logger()
    limit = asyncio.Semaphore(max(1, max_concurrency))

    async def bounded(target: str) -> dict[str, Any]:
        async with limit:
            try:
                return await _one(target, deployment_prefix, use_deployments)
            except Exception as exc:  # one target's failure must not sink the fleet run
                logger.error("Diagnosis of %s could not run: %s", target, exc)
                return {
                    "target": target,
                    "verdict": None,
                    "state": "Crashed",
                    "run": None,
                    "how": "error",
                    "issues": [f"{type(exc).__name__}: {exc}"[:200]],
                }

    rows = await asyncio.gather(*(bounded(t) for t in targets))
    known = [r["verdict"] for r in rows if r["verdict"] is not None]
    worst = max(known, key=SEVERITY.__getitem__) if known else None
    table = [
        {
            "target": r["target"],
            "verdict": r["verdict"].value if r["verdict"] else NO_VERDICT,
            "state": r["state"],
            "how": r["how"],
            "run": r["run"] or "",
            "first issue": "; ".join(r.get("issues") or []),
        }
        for r in rows
    ]
    await acreate_table_artifact(key="fleet-diagnosis", table=table, description="Fleet verdicts")
    counts = {v.value: sum(r["verdict"] is v for r in rows) for v in Verdict}
    lines = [f"# Fleet: worst verdict {worst.value if worst else NO_VERDICT}", ""]
    lines += [f"- {k}: {n}" for k, n in counts.items()]
    lines += [f"- without a verdict: {sum(r['verdict'] is None for r in rows)}"]
    await acreate_markdown_artifact(key="fleet-diagnosis-summary", markdown="\n".join(lines))
    message = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
    if worst is Verdict.CRITICAL:
        return Failed(name=worst.state_name, message=message, data=table)
    if worst is None or any(r["verdict"] is None for r in rows):
        return Failed(name="Incomplete", message=message or "no verdicts", data=table)
    return Completed(name=worst.state_name, message=message, data=table)
