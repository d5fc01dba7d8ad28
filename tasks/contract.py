"""One Prefect task per contract test: fetch what the test concerns, hand it to the judge.

The read-only tests share one `Evidence` (tasks.evidence): each endpoint is requested at
most once per run, whichever tests read it; transient failures are retried with backoff,
except on the endpoints that call MLflow through the breaker, which are never retried.
The two reset tests are the only requests that could change the service: each is sent
exactly once, never retried, with no credentials or with a random wrong key (never the
real one), and only where a reset would change nothing (every replica's breaker reads
CLOSED with MLflow connected): a deployed version that accepts keyless resets must not be
reset by its contract test.

No task-level retries: a test's I/O is retried where it happens (or deliberately not), and
the shared answers are memoised, so a retried task could only re-read the same answer.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec

import httpx
from prefect import Task, task
from prefect.cache_policies import NONE

from service_health import contract
from service_health.contract import ContractTestResult, Judgment
from service_health.endpoints import (
    HEALTH,
    HEALTH_DETAILED,
    HEALTH_MLFLOW,
    HEALTH_STATUS,
    LIVE,
    METRICS,
    READY,
)
from service_health.observations import HttpObservation
from tasks.evidence import Evidence
from tasks.http import fetch

P = ParamSpec("P")
TestFn = Callable[P, Coroutine[Any, Any, ContractTestResult]]


def contract_task(
    name: str,
) -> Callable[[TestFn[P]], Task[P, Coroutine[Any, Any, ContractTestResult]]]:
    """The options every contract test shares. No caching: each run reads the service anew."""
    return task(name=name, cache_policy=NONE, retries=0, persist_result=False)


def _result(name: str, judgment: Judgment, started: float) -> ContractTestResult:
    duration = round((time.perf_counter() - started) * 1000, 1)
    return ContractTestResult.from_judgment(name, judgment, duration)


def _judge(
    name: str, obs: HttpObservation, judge: Callable[[HttpObservation], Judgment], started: float
) -> ContractTestResult:
    """The judge's verdict on `obs`; skipped, with the reason, when the request discipline
    did not send it (it would have blocked the service or fed its breaker)."""
    if not obs.sent:
        return ContractTestResult.skipped(name, f"{obs.label} not sent: {obs.error}")
    return _result(name, judge(obs), started)


@contract_task(name="contract-basic-health")
async def basic_health(ev: Evidence) -> ContractTestResult:
    started = time.perf_counter()
    return _judge("basic_health", await ev.endpoint(HEALTH), contract.judge_basic_health, started)


@contract_task(name="contract-detailed-health")
async def detailed_health(ev: Evidence) -> ContractTestResult:
    started = time.perf_counter()
    obs = await ev.endpoint(HEALTH_DETAILED)
    return _judge("detailed_health", obs, contract.judge_detailed_health, started)


@contract_task(name="contract-readiness")
async def readiness(ev: Evidence) -> ContractTestResult:
    started = time.perf_counter()
    return _judge("readiness", await ev.endpoint(READY), contract.judge_readiness, started)


@contract_task(name="contract-liveness")
async def liveness(ev: Evidence) -> ContractTestResult:
    started = time.perf_counter()
    return _judge("liveness", await ev.endpoint(LIVE), contract.judge_liveness, started)


@contract_task(name="contract-mlflow-health")
async def mlflow_health(ev: Evidence) -> ContractTestResult:
    started = time.perf_counter()
    obs = await ev.endpoint(HEALTH_MLFLOW)
    return _judge("mlflow_health", obs, contract.judge_mlflow_health, started)


@contract_task(name="contract-circuit-breaker-details")
async def circuit_breaker_details(ev: Evidence) -> ContractTestResult:
    started = time.perf_counter()
    obs = await ev.endpoint(HEALTH_MLFLOW)
    return _judge("circuit_breaker_details", obs, contract.judge_circuit_breaker_details, started)


@contract_task(name="contract-service-status")
async def service_status(ev: Evidence) -> ContractTestResult:
    started = time.perf_counter()
    obs = await ev.endpoint(HEALTH_STATUS)
    return _judge("service_status", obs, contract.judge_service_status, started)


@contract_task(name="contract-metrics")
async def metrics(ev: Evidence) -> ContractTestResult:
    started = time.perf_counter()
    return _judge("metrics", await ev.endpoint(METRICS), contract.judge_metrics, started)


@contract_task(name="contract-graceful-degradation")
async def graceful_degradation(ev: Evidence) -> ContractTestResult:
    """The four answers are read at slightly different moments, so a dependency that flickers
    between them looks like a disagreement; one that persists in a second, simultaneous
    reading is the service's, and is reported."""
    started = time.perf_counter()
    paths = (HEALTH, READY, HEALTH_MLFLOW, METRICS)
    first = await asyncio.gather(*(ev.endpoint(p) for p in paths))
    unsent = [o for o in first if not o.sent]
    if unsent:
        reasons = "; ".join(f"{o.label} not sent: {o.error}" for o in unsent)
        return ContractTestResult.skipped("graceful_degradation", reasons)
    judgment = first_judgment = contract.judge_graceful_degradation(*first)
    if not first_judgment.passed:
        second = await asyncio.gather(*(ev.reread(p) for p in paths))
        if any(not o.sent for o in second):
            # The discipline stopped the second reading: the first one stands.
            return _result("graceful_degradation", first_judgment, started)
        judgment = contract.judge_graceful_degradation(*second)
        judgment.evidence.append(
            "read twice; the first reading disagreed: " + "; ".join(first_judgment.diff)
        )
    return _result("graceful_degradation", judgment, started)


# -- the only requests that are not read-only ----------------------------------------------


async def post_reset(api_url: str, authorization: str | None, timeout_s: float) -> HttpObservation:
    """POST the breaker reset once (never retried: it is not idempotent in its effects)."""
    headers = {"Authorization": authorization} if authorization else {}
    async with httpx.AsyncClient(
        limits=httpx.Limits(max_keepalive_connections=0),
        headers={"User-Agent": "hokusai-health/contract"},
    ) as client:
        return await fetch(
            client,
            "POST",
            api_url.rstrip("/") + contract.RESET,
            headers=headers,
            timeout_s=timeout_s,
        )


@contract_task(name="contract-reset-without-key")
async def reset_without_key(api_url: str, timeout_s: float) -> ContractTestResult:
    started = time.perf_counter()
    obs = await post_reset(api_url, None, timeout_s)
    judgment = contract.judge_reset_refused(obs, "without a key")
    return _result("reset_without_key_refused", judgment, started)


@contract_task(name="contract-reset-with-wrong-key")
async def reset_with_wrong_key(api_url: str, timeout_s: float) -> ContractTestResult:
    started = time.perf_counter()
    # A fresh random key: it cannot be the real one, and it is worthless if logged.
    wrong = f"contract-test-wrong-key-{secrets.token_urlsafe(24)}"
    obs = await post_reset(api_url, f"Bearer {wrong}", timeout_s)
    judgment = contract.judge_reset_refused(obs, "with a wrong key")
    return _result("reset_with_wrong_key_refused", judgment, started)
