"""One Prefect task per recovery action. All the recovery's I/O lives here.

Every task returns an ActionResult (success, recovery log entries, data) and never raises on
an expected failure (an HTTP error, an AWS error, a timeout): those are log entries. The
pure side (what to do, in which order, how the run ends) is service_health.planning and
service_health.recovery; `execute_step` maps a plan step to its task.

Retries, and why each one is safe:
- reset_breakers: POST /health/mlflow/reset is idempotent (the breaker ends CLOSED), so
  transient failures (connection, timeout, a proxy's 5xx) are retried with backoff; a
  401/403 is definitive and never retried.
- force_new_deployment: UpdateService is not idempotent (each call starts a deployment).
  The write goes through a client without botocore retries (botocore's standard and
  adaptive modes also retry read timeouts and 5xx answers, which may have been applied);
  this task retries only where the attempt provably did not apply: a throttled request
  (refused before processing), a connection that was never made, or an ambiguous failure
  after which ECS still shows the same primary deployment as before. A changed primary
  deployment id means it applied. The step's expected deployment id makes a Prefect-level
  retry (or a second recovery) a no-op once a new deployment exists.
- reads and waits: botocore's adaptive retries (tasks.aws.BOTO_CONFIG) ride out throttling.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar, cast

import httpx
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    WaiterError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError
from prefect import Task, task
from prefect.artifacts import acreate_progress_artifact, aupdate_progress_artifact
from prefect.cache_policies import NONE
from prefect.tasks import exponential_backoff
from pydantic import SecretStr

from service_health.assessment.common import THROTTLING_CODES
from service_health.aws_responses import read_target_health
from service_health.models import DiagnosticReport
from service_health.observations import HttpObservation
from service_health.parsing import parse_health, parse_mlflow_health
from service_health.recovery import (
    RESTART_TAG,
    ActionResult,
    EntryStatus,
    RecoveryHistory,
    RecoveryLogEntry,
    RecoveryStep,
    ServiceHistory,
    ServiceRollout,
    StepKind,
    parse_time,
    passive_result,
    read_rollouts,
    verification_result,
)
from service_health.settings import Target
from tasks import aws
from tasks.http import fetch, fetch_with_retries, tls_context

USER_AGENT = "hokusai-health/recover"
DEFAULT_STABILIZATION_TIMEOUT_S = 300.0
DEFAULT_MLFLOW_TIMEOUT_S = 120.0
DEFAULT_CONSECUTIVE = 2
POLL_INITIAL_S = 0.25
POLL_MAX_S = 5.0
# Growth of the stabilisation poll interval: gentle, so that a rollout finishing a few
# seconds in is seen within about a second rather than up to one doubled interval late.
POLL_BACKOFF = 1.5
HEALTH_INTERVAL_S = 0.5  # between the consecutive /health answers

# The mutating ECS call: no botocore retries at all (see the module docstring).
WRITE_CONFIG = Config(
    connect_timeout=3,
    read_timeout=10,
    retries={"mode": "standard", "total_max_attempts": 1},
)
# Failures raised before the request left the worker: it cannot have been applied.
_NOT_SENT = (EndpointConnectionError, ConnectTimeoutError, NoCredentialsError)
_TRANSIENT = (httpx.TransportError, BotoConnectionError, ConnectionError, TimeoutError)


def _transient_only(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect-level retry only for a transient exception that escaped (none should)."""
    try:
        state.result()
    except _TRANSIENT:
        return True
    except Exception:
        return False
    return False


P = ParamSpec("P")
R = TypeVar("R")


def recovery_task(
    name: str, retries: int = 2
) -> Callable[[Callable[P, Coroutine[Any, Any, R]]], Task[P, Coroutine[Any, Any, R]]]:
    """The options every recovery task shares: no caching, results not persisted (they may
    name internal addresses), retries only on escaped transient exceptions."""
    return task(
        name=name,
        cache_policy=NONE,
        retries=retries,
        retry_delay_seconds=exponential_backoff(backoff_factor=0.5),
        retry_jitter_factor=0.5,
        retry_condition_fn=_transient_only,
        persist_result=False,
    )


def _entry(
    action: str,
    status: EntryStatus,
    details: str,
    subject: str | None = None,
    **data: Any,
) -> RecoveryLogEntry:
    return RecoveryLogEntry(
        action=action, status=status, details=details, subject=subject, data=data
    )


def _http_client() -> httpx.AsyncClient:
    # No keep-alive: a server that drops its connection after an error answer must not
    # make the next request look broken.
    return httpx.AsyncClient(
        limits=httpx.Limits(max_keepalive_connections=0),
        headers={"User-Agent": USER_AGENT},
        verify=tls_context(),
    )


def _key(api_key: SecretStr | str | None) -> str | None:
    if isinstance(api_key, SecretStr):
        return api_key.get_secret_value() or None
    return api_key or None


# --- AWS clients ----------------------------------------------------------------------------


def make_read_client(target: Target, service: str) -> Any:
    """A client for reads: timeouts and botocore's adaptive retries (throttling)."""
    session = aws.make_session(target.aws_region, target.aws_credentials_block)
    return aws.make_client(session, service, target.aws_region, target.aws_endpoint_url)


def make_write_client(target: Target) -> Any:
    """The ECS client for UpdateService: timeouts, no botocore retry."""
    session = aws.make_session(target.aws_region, target.aws_credentials_block)
    return cast(Any, session).client(
        "ecs",
        region_name=target.aws_region,
        endpoint_url=target.aws_endpoint_url or None,
        config=WRITE_CONFIG,
    )


def _describe(
    read: Any, target: Target, services: Sequence[str]
) -> tuple[list[ServiceRollout] | None, str | None]:
    obs = aws.call_sync(
        read, "ecs", "describe_services", cluster=target.ecs_cluster, services=list(services)
    )
    if obs.response is None:
        return None, f"{obs.label} failed: {obs.error_code}: {obs.error_message or ''}".rstrip(": ")
    return read_rollouts(obs.response, services), None


# --- reset the breaker ------------------------------------------------------------------------


async def _reset_one(
    client: httpx.AsyncClient,
    base: str,
    replica: str | None,
    headers: dict[str, str],
    timeout_s: float,
    attempts: int,
) -> tuple[RecoveryLogEntry, bool]:
    subject = replica or "API URL"
    obs = await fetch_with_retries(
        client,
        "POST",
        base.rstrip("/") + "/health/mlflow/reset",
        retry=True,
        attempts=attempts,
        budget_s=timeout_s * attempts + 2,
        headers=headers,
        timeout_s=timeout_s,
        replica=replica,
    )
    code = obs.status_code
    if code is not None and 200 <= code < 300:
        body, _ = obs.json_body()
        before = body.get("previous_state") if isinstance(body, dict) else None
        after = body.get("state") if isinstance(body, dict) else None
        text = f"Breaker reset on {subject}" + (f": {before} -> {after}" if before or after else "")
        return _entry(
            "reset_breaker",
            EntryStatus.SUCCESS,
            text,
            subject,
            previous_state=before,
            state=after,
            http_status=code,
        ), True
    if code == 401:
        why = (
            "HTTP 401: the service requires the API key"
            + ("" if headers else " and none is configured (API_KEY or a Secret block)")
            + "; not retried"
        )
    elif code == 403:
        why = "HTTP 403: the API key was rejected (wrong key for this service); not retried"
    elif code is not None:
        body, _ = obs.json_body()
        detail = body.get("detail") if isinstance(body, dict) else None
        why = f"HTTP {code}" + (f": {str(detail)[:200]}" if detail else "")
    else:
        why = f"no answer ({obs.failure_text()})"
    return _entry(
        "reset_breaker",
        EntryStatus.FAILED,
        f"Breaker reset failed on {subject}: {why}",
        subject,
        http_status=code,
    ), False


async def _verify_one(
    client: httpx.AsyncClient,
    base: str,
    replica: str | None,
    headers: dict[str, str],
    timeout_s: float,
) -> tuple[RecoveryLogEntry, bool]:
    # Calls MLflow through the breaker: read once, never retried.
    obs = await fetch(
        client,
        "GET",
        base.rstrip("/") + "/health/mlflow",
        headers=headers,
        timeout_s=timeout_s,
        replica=replica,
    )
    subject = replica or "API URL"
    view = parse_mlflow_health(obs)
    state = str(view.breaker_state) if view.breaker_state is not None else None
    if state == "CLOSED":
        failing = " (but MLflow calls are failing)" if view.connected is False else ""
        return _entry(
            "verify_breaker",
            EntryStatus.SUCCESS,
            f"Breaker reads CLOSED on {subject}{failing}",
            subject,
            state=state,
            connected=view.connected,
        ), True
    what = state or (obs.failure_text() if not obs.answered else f"HTTP {obs.status_code}")
    return _entry(
        "verify_breaker",
        EntryStatus.FAILED,
        f"Breaker does not read CLOSED on {subject} after the reset: {what}",
        subject,
        state=state,
        connected=view.connected,
        http_status=obs.status_code,
    ), False


@recovery_task(name="reset-circuit-breakers")
async def reset_breakers(
    api_key: SecretStr | str | None,
    replicas: list[str] | None,
    api_url: str,
    timeout_s: float = 5.0,
    attempts: int = 3,
) -> ActionResult:
    """POST /health/mlflow/reset with the bearer key on each replica ("host:port", addressed
    directly), or once through `api_url` when `replicas` is None; then read /health/mlflow
    on each replica that was reset and check that it is CLOSED.

    data: {"reset": {subject: bool}, "verified": {subject: state or None}}.
    """
    key = _key(api_key)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    targets = [(r, f"http://{r}") for r in replicas] if replicas is not None else [(None, api_url)]
    if not targets:
        entry = _entry("reset_breaker", EntryStatus.SKIPPED, "No replica to reset")
        return ActionResult(action="reset_breaker", success=True, entries=[entry])
    limit = asyncio.Semaphore(4)
    async with _http_client() as client:

        async def reset(replica: str | None, base: str) -> tuple[RecoveryLogEntry, bool]:
            async with limit:
                return await _reset_one(client, base, replica, headers, timeout_s, attempts)

        resets = await asyncio.gather(*(reset(r, b) for r, b in targets))
        done = [(r, b) for (r, b), (_, ok) in zip(targets, resets, strict=True) if ok]

        async def verify(replica: str | None, base: str) -> tuple[RecoveryLogEntry, bool]:
            async with limit:
                return await _verify_one(client, base, replica, headers, timeout_s)

        checks = await asyncio.gather(*(verify(r, b) for r, b in done))
    entries = [e for e, _ in resets] + [e for e, _ in checks]
    success = all(ok for _, ok in resets) and all(ok for _, ok in checks)
    return ActionResult(
        action="reset_breaker",
        success=success,
        entries=entries,
        data={
            "reset": {
                (r or "API URL"): ok for (r, _), (_, ok) in zip(targets, resets, strict=True)
            },
            "verified": {
                (r or "API URL"): e.data.get("state")
                for (r, _), (e, _) in zip(done, checks, strict=True)
            },
        },
    )


# --- force a new deployment -----------------------------------------------------------------


def _settled_primary(
    read: Any, target: Target, service: str, before: str, waits: Sequence[float] = (0.5, 1, 2)
) -> tuple[str | None, str | None]:
    """After an ambiguous failure: (primary deployment id, error). Re-reads a few times so
    that a request still being processed shows up before concluding it did not apply."""
    current: str | None = None
    error: str | None = None
    for delay in waits:
        time.sleep(delay)
        rollouts, error = _describe(read, target, [service])
        if rollouts is None:
            continue
        current = rollouts[0].primary_deployment_id
        if current != before:
            return current, None
    return current, error


def _force_sync(target: Target, service: str, expected: str | None, attempts: int) -> ActionResult:
    action = "force_deployment"

    def result(status: EntryStatus, text: str, success: bool, **data: Any) -> ActionResult:
        data = {"service": service, **data}
        entry = _entry(action, status, text, service, **data)
        return ActionResult(action=action, success=success, entries=[entry], data=data)

    if not target.ecs_cluster:
        return result(EntryStatus.FAILED, "No ECS cluster configured: nothing done", False)
    try:
        read = make_read_client(target, "ecs")
        write = make_write_client(target)
    except Exception as exc:  # a credentials block that cannot load, a bad region
        return result(
            EntryStatus.FAILED,
            f"AWS client unavailable ({type(exc).__name__}): nothing done",
            False,
            applied=False,
        )
    rollouts, error = _describe(read, target, [service])
    if rollouts is None or rollouts[0].primary_deployment_id is None:
        why = error or f"{service} is {rollouts[0].status if rollouts else 'unknown'}"
        return result(
            EntryStatus.FAILED,
            f"Could not read {service} before acting ({why}): nothing done",
            False,
            applied=False,
        )
    before = rollouts[0]
    if expected is not None and before.primary_deployment_id != expected:
        return result(
            EntryStatus.SUCCESS,
            f"{service} already has a newer deployment ({before.primary_deployment_id}, "
            f"started {before.primary_created_at}) than the one diagnosed ({expected}): "
            "not forcing another",
            True,
            applied=False,
            deployment_id=before.primary_deployment_id,
            deployment_id_before=expected,
        )
    history: list[str] = []
    for attempt in range(1, attempts + 1):
        ambiguous: str | None = None
        try:
            response = write.update_service(
                cluster=target.ecs_cluster, service=service, forceNewDeployment=True
            )
        except ClientError as exc:
            err = exc.response.get("Error", {})
            code = str(err.get("Code", "ClientError"))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in THROTTLING_CODES:
                history.append(f"attempt {attempt}: {code} (refused, not applied)")
                time.sleep(min(0.5 * 2 ** (attempt - 1), 4.0))
                continue
            if isinstance(status, int) and status >= 500:
                ambiguous = f"{code} (HTTP {status})"
            else:
                history.append(f"attempt {attempt}: {code}")
                return result(
                    EntryStatus.FAILED,
                    f"UpdateService refused for {service}: {code}: "
                    f"{str(err.get('Message', ''))[:200]} (definitive, not retried)",
                    False,
                    applied=False,
                    attempts=history,
                )
        except _NOT_SENT as exc:
            history.append(f"attempt {attempt}: {type(exc).__name__} (never sent)")
            time.sleep(min(0.5 * 2 ** (attempt - 1), 4.0))
            continue
        except BotoCoreError as exc:
            ambiguous = type(exc).__name__
        else:
            primary: dict[str, Any] = next(
                (
                    d
                    for d in response.get("service", {}).get("deployments", [])
                    if d.get("status") == "PRIMARY"
                ),
                {},
            )
            new_id = primary.get("id")
            history.append(f"attempt {attempt}: applied")
            return result(
                EntryStatus.SUCCESS,
                f"New deployment of {service} started ({new_id}; was "
                f"{before.primary_deployment_id})"
                + (f" after {attempt} attempts" if attempt > 1 else ""),
                True,
                applied=True,
                deployment_id=new_id,
                deployment_id_before=before.primary_deployment_id,
                attempts=history,
            )
        # Ambiguous: the request may have been applied. ECS decides.
        assert before.primary_deployment_id is not None
        current, read_error = _settled_primary(read, target, service, before.primary_deployment_id)
        if current is not None and current != before.primary_deployment_id:
            history.append(f"attempt {attempt}: {ambiguous}, but the deployment changed")
            return result(
                EntryStatus.SUCCESS,
                f"New deployment of {service} started ({current}) although UpdateService "
                f"reported {ambiguous}; not retried",
                True,
                applied=True,
                deployment_id=current,
                deployment_id_before=before.primary_deployment_id,
                attempts=history,
            )
        if current is None:
            history.append(f"attempt {attempt}: {ambiguous}; state unreadable ({read_error})")
            return result(
                EntryStatus.FAILED,
                f"UpdateService for {service} failed ambiguously ({ambiguous}) and the service "
                f"could not be re-read ({read_error}): not retried, to never restart twice",
                False,
                applied=None,
                attempts=history,
            )
        history.append(f"attempt {attempt}: {ambiguous}; deployment unchanged, not applied")
    return result(
        EntryStatus.FAILED,
        f"No new deployment of {service} after {attempts} attempts: {'; '.join(history)}",
        False,
        applied=False,
        attempts=history,
    )


@recovery_task(name="force-new-deployment", retries=1)
async def force_new_deployment(
    target: Target,
    service: str,
    expected_deployment_id: str | None = None,
    attempts: int = 4,
) -> ActionResult:
    """ECS UpdateService(forceNewDeployment=True) for `service`, applied at most once.

    With `expected_deployment_id` (the primary deployment seen when planning), nothing is
    forced if the service already moved on to another deployment. data: service, applied
    (True / False / None when unknown), deployment_id, deployment_id_before, attempts.
    """
    result = await asyncio.to_thread(_force_sync, target, service, expected_deployment_id, attempts)
    if result.data.get("applied"):
        # The cooldown's clock: a restart by a recovery, not an ordinary release.
        problem = await asyncio.to_thread(_mark_restart, target, service)
        if problem:
            result.data["restart_tag_error"] = problem
    return result


# --- ALB target health ----------------------------------------------------------------------


def _group_arns(
    read_elb: Any, target: Target, groups: Sequence[str]
) -> tuple[dict[str, str], str | None]:
    """Target group name -> ARN: the named groups, or those of the ECS services."""
    if groups:
        obs = aws.call_sync(read_elb, "elbv2", "describe_target_groups", Names=list(groups))
    elif target.ecs_cluster and target.ecs_services:
        ecs = make_read_client(target, "ecs")
        rollouts, error = _describe(ecs, target, target.ecs_services)
        if rollouts is None:
            return {}, error
        arns = [a for r in rollouts for a in r.target_group_arns]
        if not arns:
            return {}, None
        obs = aws.call_sync(read_elb, "elbv2", "describe_target_groups", TargetGroupArns=arns)
    else:
        return {}, None
    if obs.response is None:
        return {}, f"{obs.label} failed: {obs.error_code}"
    return {
        str(g["TargetGroupName"]): str(g["TargetGroupArn"])
        for g in obs.response.get("TargetGroups", [])
        if g.get("TargetGroupName") and g.get("TargetGroupArn")
    }, None


def _group_health(read_elb: Any, arn: str) -> tuple[dict[str, Any] | None, str | None]:
    obs = aws.call_sync(read_elb, "elbv2", "describe_target_health", TargetGroupArn=arn)
    if obs.response is None:
        return None, f"{obs.label} failed: {obs.error_code}"
    view = read_target_health(obs.response)
    states: dict[str, int] = {}
    for t in view.targets:
        states[t.state or "unknown"] = states.get(t.state or "unknown", 0) + 1
    return {
        "healthy": states.get("healthy", 0),
        "total": len(view.targets),
        "states": states,
        "unhealthy": [
            f"{t.address or t.id} ({t.reason or t.state})"
            for t in view.targets
            if t.state not in ("healthy", "draining")
        ],
    }, None


def _check_alb_sync(target: Target, groups: Sequence[str]) -> ActionResult:
    action = "check_alb_targets"
    try:
        elb = make_read_client(target, "elbv2")
        arns, error = _group_arns(elb, target, groups)
    except Exception as exc:
        arns, error = {}, f"AWS client unavailable ({type(exc).__name__})"
    if error is not None:
        entry = _entry(action, EntryStatus.FAILED, f"Target groups unreadable: {error}")
        return ActionResult(action=action, success=False, entries=[entry])
    if not arns:
        entry = _entry(action, EntryStatus.SKIPPED, "No target group configured or found")
        return ActionResult(action=action, success=True, entries=[entry], not_run=True)
    entries = []
    summary: dict[str, Any] = {}
    for name, arn in arns.items():
        health, error = _group_health(elb, arn)
        if health is None:
            entries.append(_entry(action, EntryStatus.FAILED, f"{name}: {error}", name))
            summary[name] = {"error": error}
            continue
        summary[name] = health
        ok = health["total"] > 0 and not health["unhealthy"] and health["healthy"] > 0
        text = f"{name}: {health['healthy']}/{health['total']} targets healthy"
        if health["unhealthy"]:
            text += f"; not healthy: {', '.join(health['unhealthy'])}"
        entries.append(
            _entry(action, EntryStatus.SUCCESS if ok else EntryStatus.FAILED, text, name, **health)
        )
    success = all(e.status == EntryStatus.SUCCESS for e in entries)
    return ActionResult(action=action, success=success, entries=entries, data={"groups": summary})


@recovery_task(name="check-alb-targets")
async def check_alb_targets(target: Target, groups: list[str] | None = None) -> ActionResult:
    """DescribeTargetHealth for each target group (default: the target's target_groups,
    else those attached to its ECS services) -> healthy/total per group in data["groups"].
    Succeeds when every group has targets and all of them are healthy."""
    return await asyncio.to_thread(_check_alb_sync, target, list(groups or target.target_groups))


# --- waiting on real signals ----------------------------------------------------------------


class _Waiter:
    """Polls ECS rollout state, target health and the API's /health until stable."""

    def __init__(self, target: Target, services: Sequence[str]) -> None:
        self.target = target
        self.services = list(services)
        self.ecs: Any = None
        self.elb: Any = None
        self.last_ecs = "not read yet"
        self.last_targets = "not read yet"
        self.gone: str | None = None

    async def clients(self) -> str | None:
        if not self.services:
            return None
        if not self.target.ecs_cluster:
            return "no ECS cluster configured"
        try:
            self.ecs = await asyncio.to_thread(make_read_client, self.target, "ecs")
            self.elb = await asyncio.to_thread(make_read_client, self.target, "elbv2")
        except Exception as exc:
            return f"AWS client unavailable ({type(exc).__name__})"
        return None

    async def infrastructure_stable(self, check_targets: bool) -> bool:
        if not self.services:
            return True
        rollouts, error = await asyncio.to_thread(_describe, self.ecs, self.target, self.services)
        if rollouts is None:
            self.last_ecs = f"ECS unreadable ({error})"
            return False
        self.last_ecs = "; ".join(r.describe() for r in rollouts)
        gone = [r for r in rollouts if r.gone]
        if gone:
            self.gone = ", ".join(f"{r.name} is {r.status}" for r in gone)
            return False
        if not all(r.stable for r in rollouts):
            return False
        confirmed, why = await asyncio.to_thread(self._waiter_agrees)
        if not confirmed:
            self.last_ecs += f" (services_stable waiter: {why})"
            return False
        if not check_targets:
            return True
        parts = []
        stable = True
        for r in rollouts:
            for arn in r.target_group_arns:
                health, error = await asyncio.to_thread(_group_health, self.elb, arn)
                group = arn.rsplit("/", 2)[-2] if arn.count("/") >= 2 else arn
                if health is None:
                    parts.append(f"{group} unreadable ({error})")
                    stable = False
                    continue
                parts.append(f"{group} {health['healthy']}/{health['total']} healthy")
                if health["unhealthy"] or health["healthy"] == 0:
                    stable = False
        self.last_targets = ", ".join(parts) or "no target group attached"
        return stable

    def _waiter_agrees(self) -> tuple[bool, str]:
        """boto3's own services_stable waiter, one attempt, as the confirmation."""
        try:
            self.ecs.get_waiter("services_stable").wait(
                cluster=self.target.ecs_cluster,
                services=self.services,
                WaiterConfig={"Delay": 1, "MaxAttempts": 1},
            )
        except WaiterError as exc:
            return False, str(exc.kwargs.get("reason") or exc)[:200]
        except (BotoCoreError, ClientError) as exc:
            return False, type(exc).__name__
        return True, ""


class _Progress:
    """A Prefect progress artifact for a wait (the run's Artifacts tab shows how far it
    is). A courtesy: a server that cannot take it must never fail the wait."""

    def __init__(self, description: str) -> None:
        self.description = description
        self.id: Any = None
        self.shown = 0.0

    async def start(self, slug: str, action: str) -> None:
        with contextlib.suppress(Exception):
            self.id = await acreate_progress_artifact(
                progress=0.0,
                key=f"recovery-{action.replace('_', '-')}-{slug}",
                description=self.description,
            )

    async def advance(self, percent: float) -> None:
        percent = min(100.0, percent)
        if self.id is None or percent - self.shown < 5:
            return  # a few updates, not one per poll
        self.shown = percent
        with contextlib.suppress(Exception):
            await aupdate_progress_artifact(self.id, percent)

    async def finish(self) -> None:
        if self.id is not None:  # done is 100 %, however early
            with contextlib.suppress(Exception):
                await aupdate_progress_artifact(self.id, 100.0)


async def _wait(
    target: Target,
    services: Sequence[str],
    timeout_s: float,
    consecutive: int,
    action: str,
    check_targets: bool = True,
) -> ActionResult:
    started = time.monotonic()
    deadline = started + timeout_s
    waiter = _Waiter(target, services)
    subject = ", ".join(services) or "API /health"

    async def done(status: EntryStatus, text: str, **data: Any) -> ActionResult:
        await progress.finish()
        elapsed = round(time.monotonic() - started, 2)
        entry = _entry(action, status, text, subject, elapsed_s=elapsed, **data)
        return ActionResult(
            action=action,
            success=status == EntryStatus.SUCCESS,
            entries=[entry],
            data={"elapsed_s": elapsed, **data},
        )

    progress = _Progress(f"{action} of {target.name}: {subject} (at most {timeout_s:g} s)")
    problem = await waiter.clients()
    if problem is not None:
        return await done(EntryStatus.FAILED, f"Cannot wait for {subject}: {problem}")
    await progress.start(target.slug, action)
    delay = POLL_INITIAL_S
    streak = 0
    polls = 0
    last_health = "not asked yet"
    statuses: list[str] = []
    async with _http_client() as client:
        while True:
            polls += 1
            await progress.advance(100 * (time.monotonic() - started) / timeout_s)
            ready = await waiter.infrastructure_stable(check_targets)
            if waiter.gone:
                return await done(
                    EntryStatus.FAILED,
                    f"Not stable: {waiter.gone}; it will not stabilise by waiting",
                    polls=polls,
                )
            pause = delay
            if ready and consecutive > 0:
                remaining = max(0.2, deadline - time.monotonic())
                obs = await fetch(
                    client,
                    "GET",
                    target.api_url.rstrip("/") + "/health",
                    timeout_s=min(target.thresholds.request_timeout_s, remaining),
                )
                last_health = _health_text(obs)
                if obs.status_code == 200:
                    streak += 1
                    statuses.append(last_health)
                    pause = HEALTH_INTERVAL_S
                else:
                    streak = 0
                    statuses.clear()
            elif not ready:
                streak = 0
            if ready and streak >= consecutive:
                elapsed = time.monotonic() - started
                parts = []
                if services:
                    parts.append(waiter.last_ecs)
                    if check_targets:
                        parts.append(f"targets: {waiter.last_targets}")
                if consecutive > 0:
                    parts.append(
                        f"{consecutive} consecutive healthy /health answers ({', '.join(statuses)})"
                    )
                return await done(
                    EntryStatus.SUCCESS,
                    f"Stable after {elapsed:.1f} s: {'; '.join(parts)}",
                    polls=polls,
                )
            if time.monotonic() >= deadline:
                parts = []
                if services:
                    parts.append(f"ECS: {waiter.last_ecs}")
                    if check_targets:
                        parts.append(f"targets: {waiter.last_targets}")
                if consecutive > 0:
                    parts.append(
                        f"/health: {streak} of {consecutive} consecutive healthy answers "
                        f"(last: {last_health})"
                    )
                return await done(
                    EntryStatus.FAILED,
                    f"Not stable after {timeout_s:g} s: {'; '.join(parts)}",
                    polls=polls,
                )
            await asyncio.sleep(max(0.0, min(pause, deadline - time.monotonic())))
            if not ready or streak == 0:
                delay = min(delay * POLL_BACKOFF, POLL_MAX_S)


def _health_text(obs: HttpObservation) -> str:
    if not obs.answered:
        return obs.failure_text()
    status = parse_health(obs).status
    return f"HTTP {obs.status_code}" + (f" {status}" if status else "")


@recovery_task(name="wait-for-stabilization")
async def wait_for_stabilization(
    target: Target,
    services: list[str],
    timeout_s: float = DEFAULT_STABILIZATION_TIMEOUT_S,
    consecutive: int = DEFAULT_CONSECUTIVE,
) -> ActionResult:
    """Wait on real signals, polling fast first (0.25 s, growing by half up to 5 s):
    1. ECS: every service in `services` stable as boto3's services_stable waiter defines it
       (one deployment, running == desired) with its primary rollout not IN_PROGRESS;
       a MISSING/DRAINING/INACTIVE service fails at once;
    2. every target of the target groups attached to those services healthy;
    3. then `consecutive` HTTP 200 answers in a row from the API's GET /health.
    `services=[]` waits for /health only. At `timeout_s` it stops with a failed
    "not stable" entry saying what was missing.
    """
    return await _wait(target, services, timeout_s, consecutive, "wait_for_stabilization")


@recovery_task(name="wait-for-rollout")
async def wait_for_rollout(
    target: Target, service: str, timeout_s: float = DEFAULT_STABILIZATION_TIMEOUT_S
) -> ActionResult:
    """Wait for a deployment already in progress: ECS rollout state and target health only."""
    return await _wait(target, [service], timeout_s, 0, "wait_for_rollout")


@recovery_task(name="wait-for-mlflow")
async def wait_for_mlflow(
    target: Target, timeout_s: float = DEFAULT_MLFLOW_TIMEOUT_S
) -> ActionResult:
    """Poll MLflow's GET /health (fast first, backing off) until it answers 200."""
    action = "wait_for_mlflow"
    started = time.monotonic()
    if not target.mlflow_url:
        entry = _entry(action, EntryStatus.FAILED, "No MLflow URL configured: cannot wait")
        return ActionResult(action=action, success=False, entries=[entry])
    url = target.mlflow_url.rstrip("/") + "/health"
    deadline = started + timeout_s
    delay = POLL_INITIAL_S
    polls = 0
    async with _http_client() as client:
        while True:
            polls += 1
            remaining = max(0.2, deadline - time.monotonic())
            obs = await fetch(
                client,
                "GET",
                url,
                timeout_s=min(target.thresholds.request_timeout_s, remaining),
            )
            elapsed = round(time.monotonic() - started, 2)
            if obs.status_code == 200:
                entry = _entry(
                    action,
                    EntryStatus.SUCCESS,
                    f"MLflow answers GET /health 200 (after {elapsed:.1f} s, {polls} polls)",
                    "MLflow",
                    elapsed_s=elapsed,
                    polls=polls,
                )
                return ActionResult(
                    action=action, success=True, entries=[entry], data={"elapsed_s": elapsed}
                )
            if time.monotonic() >= deadline:
                last = obs.failure_text()
                entry = _entry(
                    action,
                    EntryStatus.FAILED,
                    f"MLflow did not answer GET /health 200 within {timeout_s:g} s (last: {last})",
                    "MLflow",
                    elapsed_s=elapsed,
                    polls=polls,
                )
                return ActionResult(
                    action=action, success=False, entries=[entry], data={"elapsed_s": elapsed}
                )
            await asyncio.sleep(max(0.0, min(delay, deadline - time.monotonic())))
            delay = min(delay * 2, POLL_MAX_S)


# --- history for the cooldown ---------------------------------------------------------------


def _history_sync(target: Target) -> RecoveryHistory:
    if not (target.ecs_cluster and target.ecs_services):
        return RecoveryHistory(error="no ECS cluster or service configured")
    try:
        ecs = make_read_client(target, "ecs")
        elb = make_read_client(target, "elbv2")
    except Exception as exc:
        return RecoveryHistory(error=f"AWS client unavailable ({type(exc).__name__})")
    rollouts, error = _describe(ecs, target, target.ecs_services)
    if rollouts is None:
        return RecoveryHistory(error=error)
    arns = sorted({a for r in rollouts for a in r.target_group_arns})
    names: dict[str, str] = {}
    problems = []
    if arns:
        obs = aws.call_sync(elb, "elbv2", "describe_target_groups", TargetGroupArns=arns)
        if obs.response is None:
            problems.append(f"{obs.label} failed: {obs.error_code}")
        for g in (obs.response or {}).get("TargetGroups", []):
            if g.get("TargetGroupArn") and g.get("TargetGroupName"):
                names[str(g["TargetGroupArn"])] = str(g["TargetGroupName"])
    services = {}
    for r in rollouts:
        if r.status == "MISSING":
            problems.append(f"{r.name} not found")
            continue
        restarted, problem = _last_restart(ecs, r.arn)
        if problem:
            problems.append(f"{r.name}: {problem}")
        services[r.name] = ServiceHistory(
            name=r.name,
            primary_deployment_id=r.primary_deployment_id,
            last_deployment_at=restarted,
            target_groups=[names[a] for a in r.target_group_arns if a in names],
        )
    return RecoveryHistory(services=services, error="; ".join(problems) or None)


def _last_restart(ecs: Any, arn: str | None) -> tuple[datetime | None, str | None]:
    """The service's RESTART_TAG, written when a recovery forced a deployment."""
    if arn is None:
        return None, None
    obs = aws.call_sync(ecs, "ecs", "list_tags_for_resource", resourceArn=arn)
    if obs.response is None:
        return None, f"tags unreadable ({obs.error_code})"
    for tag in obs.response.get("tags", []):
        if tag.get("key") == RESTART_TAG:
            return parse_time(tag.get("value")), None
    return None, None


def _mark_restart(target: Target, service: str) -> str | None:
    """Tag the service with the time of this restart; the error code if that failed."""
    ecs = make_read_client(target, "ecs")  # tagging is idempotent: retries are safe
    rollouts, error = _describe(ecs, target, [service])
    arn = rollouts[0].arn if rollouts else None
    if arn is None:
        return error or "service ARN unknown"
    obs = aws.call_sync(
        ecs, "ecs", "tag_resource", resourceArn=arn,
        tags=[{"key": RESTART_TAG, "value": datetime.now(UTC).isoformat()}],
    )  # fmt: skip
    return obs.error_code


@recovery_task(name="read-recovery-history")
async def read_recovery_history(target: Target) -> RecoveryHistory:
    """What ECS itself says about each service: its primary deployment, when a recovery
    last restarted it (its RESTART_TAG, for the cooldown) and its target groups. No local
    state: any worker sees the same history."""
    return await asyncio.to_thread(_history_sync, target)


# --- one plan step --------------------------------------------------------------------------

Verify = Callable[[], Awaitable[DiagnosticReport | None]]


async def execute_step(
    step: RecoveryStep,
    target: Target,
    api_key: SecretStr | str | None,
    *,
    stabilization_timeout_s: float = DEFAULT_STABILIZATION_TIMEOUT_S,
    mlflow_timeout_s: float = DEFAULT_MLFLOW_TIMEOUT_S,
    consecutive: int = DEFAULT_CONSECUTIVE,
    verify: Verify | None = None,
    as_tasks: bool = True,
) -> ActionResult:
    """Carry out one plan step through its task; the result is attributed to the step.

    ESCALATE and SKIP only log (no I/O). VERIFY calls `verify` (the flow's final diagnosis).
    With `as_tasks=False` the task functions run directly (no Prefect task run), e.g. in tests.
    Pass the step returned by `prepare_step`, never a blocked one.
    """

    def run(t: Any) -> Any:
        return t if as_tasks else t.fn

    result: ActionResult
    if step.kind in (StepKind.ESCALATE, StepKind.SKIP):
        return passive_result(step)
    if step.kind == StepKind.VERIFY:
        if verify is None:
            raise ValueError("the verify step needs a `verify` callable (the final diagnosis)")
        return verification_result(step, await verify())
    if step.kind == StepKind.RESET_BREAKER:
        result = await run(reset_breakers)(api_key, step.replicas, target.api_url)
    elif step.kind == StepKind.FORCE_DEPLOYMENT:
        assert step.service is not None
        result = await run(force_new_deployment)(target, step.service, step.expected_deployment_id)
    elif step.kind == StepKind.WAIT_FOR_ROLLOUT:
        assert step.service is not None
        result = await run(wait_for_rollout)(target, step.service, stabilization_timeout_s)
    elif step.kind == StepKind.WAIT_FOR_MLFLOW:
        result = await run(wait_for_mlflow)(target, mlflow_timeout_s)
    elif step.kind == StepKind.CHECK_ALB_TARGETS:
        result = await run(check_alb_targets)(target)
    elif step.kind == StepKind.WAIT_FOR_STABILIZATION:
        result = await run(wait_for_stabilization)(
            target, list(step.services), stabilization_timeout_s, consecutive
        )
    else:  # pragma: no cover - every kind is handled above
        raise ValueError(f"unknown step kind {step.kind}")
    return result.numbered(step.number)
