"""diagnose-fleet: many targets diagnosed at once, one summary.

Where a `diagnose-<target>` deployment exists, each diagnosis is started with
`run_deployment` so the work spreads over every worker of the pool; otherwise it runs
here as a subflow. With `shards` > 1 (a run of a deployment), the targets are split: this
run diagnoses one share and starts a run of its own deployment for each other share, so
the shares run in separate processes on the pool's workers. Either way concurrency is
bounded and the final state names the worst verdict.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
)
from prefect.context import FlowRunContext
from prefect.deployments.flow_runs import arun_deployment
from prefect.exceptions import ObjectNotFound
from prefect.states import State

from flows import publishing
from flows.diagnose import diagnose_service_health
from flows.naming import fleet_run_name
from service_health.models import DiagnosticReport, Verdict

FLOW_NAME = "diagnose-service-health"
NO_VERDICT = "No verdict"
TABLE_KEY = "fleet-diagnosis"


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


def split(targets: list[str], shards: int) -> list[list[str]]:
    """Round-robin shares, none empty: each target in exactly one."""
    count = max(1, min(shards, len(targets)))
    return [targets[i::count] for i in range(count)]


async def _shard_rows(
    deployment_id: Any, share: list[str], parameters: dict[str, Any]
) -> list[dict[str, Any]]:
    """One share diagnosed by a run of this fleet's deployment (on any worker of the pool);
    its rows read back from the run's table. A share whose run left no table is a row per
    target without a verdict, so that no target goes missing from the summary."""
    run = await arun_deployment(
        name=deployment_id,
        parameters={**parameters, "targets": share, "shards": 1},
        timeout=None,
        as_subflow=True,
    )
    state = run.state.name if run.state else None
    async with get_client() as client:
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]),
                key=ArtifactFilterKey(any_=[TABLE_KEY]),
            )
        )
    table = artifacts[0].data if artifacts else None
    rows = json.loads(table) if isinstance(table, str) else table
    found = {r["target"]: r for r in rows or [] if isinstance(r, dict) and "target" in r}
    out = []
    for target in share:
        row = found.get(target)
        if row is None:
            out.append(
                {
                    "target": target,
                    "verdict": None,
                    "state": state,
                    "run": None,
                    "how": "shard",
                    "shard": str(run.id),
                    "issues": [f"shard run ended {state} without a verdict for it"],
                }
            )
            continue
        out.append(
            {
                "target": target,
                "verdict": _verdict_value(row.get("verdict")),
                "state": row.get("state"),
                "run": row.get("run") or None,
                "how": row.get("how", "subflow"),
                "shard": str(run.id),
                "issues": [row["first issue"]] if row.get("first issue") else [],
            }
        )
    return out


def _verdict_value(value: Any) -> Verdict | None:
    return next((v for v in Verdict if v.value == value), None)


@flow(name="diagnose-fleet", flow_run_name=fleet_run_name)
async def diagnose_fleet(
    targets: list[str],
    max_concurrency: int = 8,
    use_deployments: bool | None = None,
    deployment_prefix: str = "diagnose-",
    shards: int = 1,
) -> State[Any]:
    """Diagnose many targets at once and summarise their verdicts.

    Args:
        targets: Target names from targets.yaml.
        max_concurrency: Diagnoses running at the same time.
        use_deployments: Fan out through deployments (True), as subflows here (False), or
            through deployments where `<prefix><target>` exists (unset).
        deployment_prefix: Deployment name of a target's diagnosis, before the target name.
        shards: Processes to spread the targets over: this run keeps one share and starts
            a run of its own deployment (on the pool's workers) for each other share.
            Only for a run of a deployment; elsewhere every target is diagnosed here.
    """
    logger = get_run_logger()
    limit = asyncio.Semaphore(max(1, max_concurrency))
    context = FlowRunContext.get()
    deployment_id = context.flow_run.deployment_id if context and context.flow_run else None
    shares = split(list(targets), shards)
    if len(shares) > 1 and deployment_id is None:
        logger.warning("Not a run of a deployment: the %d shards run here", len(shares))
        shares = [list(targets)]
    local, remote = shares[0], shares[1:]
    parameters = {
        "max_concurrency": max_concurrency,
        "use_deployments": use_deployments,
        "deployment_prefix": deployment_prefix,
    }

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

    async def shard(share: list[str]) -> list[dict[str, Any]]:
        try:
            return await _shard_rows(deployment_id, share, parameters)
        except Exception as exc:  # a shard that could not run: its targets have no verdict
            logger.error("Shard of %d targets could not run: %s", len(share), exc)
            issue = f"shard could not run: {type(exc).__name__}: {exc}"[:200]
            return [
                {"target": t, "verdict": None, "state": "Crashed", "run": None,
                 "how": "shard", "issues": [issue]}
                for t in share
            ]  # fmt: skip

    gathered = await asyncio.gather(
        asyncio.gather(*(bounded(t) for t in local)), *(shard(share) for share in remote)
    )
    by_target = {r["target"]: r for part in gathered for r in part}
    rows = [by_target[t] for t in targets]
    known = [r["verdict"] for r in rows if r["verdict"] is not None]
    worst = max(known, key=lambda v: v.rank) if known else None
    table = [
        {
            "target": r["target"],
            "verdict": r["verdict"].value if r["verdict"] else NO_VERDICT,
            "state": r["state"],
            "how": r["how"],
            "run": r["run"] or "",
            "shard": r.get("shard") or "",
            "first issue": "; ".join(r.get("issues") or []),
        }
        for r in rows
    ]
    await publishing.table(TABLE_KEY, table, "Fleet verdicts")
    counts = {v.value: sum(r["verdict"] is v for r in rows) for v in Verdict}
    lines = [f"# Fleet: worst verdict {worst.value if worst else NO_VERDICT}", ""]
    lines += [f"- {k}: {n}" for k, n in counts.items()]
    lines += [f"- without a verdict: {sum(r['verdict'] is None for r in rows)}"]
    await publishing.markdown("fleet-diagnosis-summary", "\n".join(lines))
    message = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
    if worst is Verdict.CRITICAL:
        return publishing.failed(worst.state_name, message, table)
    if worst is None or any(r["verdict"] is None for r in rows):
        return publishing.failed("Incomplete", message or "no verdicts", table)
    return publishing.completed(worst.state_name, message, table)
