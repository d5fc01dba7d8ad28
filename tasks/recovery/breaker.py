"""Reset the MLflow circuit breaker: POST /health/mlflow/reset, then read it CLOSED.

The reset is idempotent (the breaker ends CLOSED), so transient failures (connection,
timeout, a proxy's 5xx) are retried with backoff; a 401/403 is definitive and never
retried. The verification calls MLflow through the breaker: it is read once, never retried.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import httpx
from pydantic import Field, SecretStr

from service_health.action_rules import reset_refusal
from service_health.endpoints import HEALTH_MLFLOW, RESET
from service_health.parsing import parse_mlflow_health
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
from tasks import http
from tasks.recovery.registry import ActionContext, Writers, action
from tasks.retries import io_task

API_URL = "API URL"  # the subject of a reset sent through the load balancer
CONCURRENCY = 4  # replicas reset (and read) at once


class ResetData(ActionData):
    reset: dict[str, bool] = Field(default_factory=dict)  # subject -> the reset succeeded
    verified: dict[str, str | None] = Field(default_factory=dict)  # subject -> state read after


@dataclass
class _Outcome:
    entry: RecoveryLogEntry
    ok: bool
    state: str | None = None  # the breaker state read after a reset


def _key(api_key: SecretStr | str | None) -> str | None:
    if isinstance(api_key, SecretStr):
        return api_key.get_secret_value() or None
    return api_key or None


async def _reset_one(
    client: httpx.AsyncClient,
    base: str,
    replica: str | None,
    headers: dict[str, str],
    timeout_s: float,
    attempts: int,
) -> _Outcome:
    subject = replica or API_URL
    obs = await http.fetch_with_retries(
        client,
        "POST",
        base.rstrip("/") + RESET,
        retry=True,
        attempts=attempts,
        budget_s=timeout_s * attempts + 2,
        headers=headers,
        timeout_s=timeout_s,
        replica=replica,
    )
    code = obs.status_code
    body, _ = obs.json_body()
    fields = body if isinstance(body, dict) else {}
    if code is not None and 200 <= code < 300:
        before, after = fields.get("previous_state"), fields.get("state")
        text = f"Breaker reset on {subject}" + (f": {before} -> {after}" if before or after else "")
        done = action_entry(
            StepKind.RESET_BREAKER, EntryStatus.SUCCESS, text, subject,
            previous_state=before, state=after, http_status=code,
        )  # fmt: skip
        return _Outcome(entry=done, ok=True)
    why = reset_refusal(code, fields.get("detail"), bool(headers), obs.failure_text())
    failed = action_entry(
        StepKind.RESET_BREAKER, EntryStatus.FAILED, f"Breaker reset failed on {subject}: {why}",
        subject, http_status=code,
    )  # fmt: skip
    return _Outcome(entry=failed, ok=False)


async def _verify_one(
    client: httpx.AsyncClient,
    base: str,
    replica: str | None,
    headers: dict[str, str],
    timeout_s: float,
) -> _Outcome:
    obs = await http.fetch(
        client,
        "GET",
        base.rstrip("/") + HEALTH_MLFLOW,
        headers=headers,
        timeout_s=timeout_s,
        replica=replica,
    )
    subject = replica or API_URL
    view = parse_mlflow_health(obs)
    state = str(view.breaker_state) if view.breaker_state is not None else None
    if state == "CLOSED":
        failing = " (but MLflow calls are failing)" if view.connected is False else ""
        done = action_entry(
            "verify_breaker", EntryStatus.SUCCESS, f"Breaker reads CLOSED on {subject}{failing}",
            subject, state=state, connected=view.connected,
        )  # fmt: skip
        return _Outcome(entry=done, ok=True, state=state)
    what = state or (obs.failure_text() if not obs.answered else f"HTTP {obs.status_code}")
    failed = action_entry(
        "verify_breaker", EntryStatus.FAILED,
        f"Breaker does not read CLOSED on {subject} after the reset: {what}",
        subject, state=state, connected=view.connected, http_status=obs.status_code,
    )  # fmt: skip
    return _Outcome(entry=failed, ok=False, state=state)


@io_task(name="reset-circuit-breakers", retries=2)
async def reset_breakers(
    target: Target,
    replicas: list[str] | None,
    api_key: SecretStr | str | None,
    attempts: int = 3,
    *,
    writers: Writers,
) -> ActionResult[ResetData]:
    """POST /health/mlflow/reset with the bearer key on each replica ("host:port", addressed
    directly), or once through the target's API URL when `replicas` is None; then read
    /health/mlflow on each replica that was reset and check that it is CLOSED. Each request
    is bounded by the target's request timeout. The POSTs go through `writers` (the
    action context's: only the apply path has one), allowed that one path.
    """
    key = _key(api_key)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    timeout_s = target.thresholds.request_timeout_s
    bases = (
        [(r, f"http://{r}") for r in replicas] if replicas is not None else [(None, target.api_url)]
    )
    if not bases:
        skipped = action_entry(StepKind.RESET_BREAKER, EntryStatus.SKIPPED, "No replica to reset")
        return ActionResult(
            action=str(StepKind.RESET_BREAKER), success=True, entries=[skipped], data=ResetData()
        )
    limit = asyncio.Semaphore(CONCURRENCY)
    async with writers.http({("POST", RESET)}) as client:

        async def reset(replica: str | None, base: str) -> _Outcome:
            async with limit:
                return await _reset_one(client, base, replica, headers, timeout_s, attempts)

        async def verify(replica: str | None, base: str) -> _Outcome:
            async with limit:
                return await _verify_one(client, base, replica, headers, timeout_s)

        resets = await asyncio.gather(*(reset(r, b) for r, b in bases))
        done = [(r, b) for (r, b), outcome in zip(bases, resets, strict=True) if outcome.ok]
        checks = await asyncio.gather(*(verify(r, b) for r, b in done))
    return ActionResult(
        action=str(StepKind.RESET_BREAKER),
        success=all(o.ok for o in resets) and all(o.ok for o in checks),
        entries=[o.entry for o in resets] + [o.entry for o in checks],
        data=ResetData(
            reset={(r or API_URL): o.ok for (r, _), o in zip(bases, resets, strict=True)},
            verified={(r or API_URL): o.state for (r, _), o in zip(done, checks, strict=True)},
        ),
    )


@action(StepKind.RESET_BREAKER)
async def _reset(step: RecoveryStep, context: ActionContext) -> ActionResult[ResetData]:
    target = context.target
    return await reset_breakers(target, step.replicas, target.api_key, writers=context.writers)
