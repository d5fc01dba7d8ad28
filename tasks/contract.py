"""The contract tests' I/O: one generic task that fetches what a test reads and hands it to
its judge (service_health.contract.catalogue says which), and the reset probe.

The read-only tests share one `Evidence` (tasks.evidence): each endpoint is requested at
most once per run, whichever tests read it; transient failures are retried with backoff,
except on the endpoints that call MLflow through the breaker, which are never retried.
The reset probes are the only requests that could change the service: each is sent
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
from collections.abc import Coroutine, Sequence
from typing import Any

import httpx
from prefect import task
from prefect.cache_policies import NONE

from service_health.contract import ContractTest, ContractTestResult, Judgment, ResetProbe
from service_health.contract import judge_reset_refused as judge_reset
from service_health.endpoints import RESET
from service_health.observations import HttpObservation
from tasks import http
from tasks.evidence import Evidence


def _result(name: str, judgment: Judgment, started: float) -> ContractTestResult:
    duration = round((time.perf_counter() - started) * 1000, 1)
    return ContractTestResult.from_judgment(name, judgment, duration)


def _unsent(observations: Sequence[HttpObservation]) -> str | None:
    """Why the test cannot be judged: what the request discipline did not send (it would
    have blocked the service or fed its breaker), or None when everything was sent."""
    unsent = [o for o in observations if not o.sent]
    return "; ".join(f"{o.label} not sent: {o.error}" for o in unsent) or None


@task(name="contract-test", cache_policy=NONE, retries=0, persist_result=False)
async def contract_test(test: ContractTest, ev: Evidence) -> ContractTestResult:
    """Fetch the endpoints `test` reads (shared with the other tests) and judge them;
    skipped, with the reason, when the request discipline did not send one of them."""
    started = time.perf_counter()
    first = await asyncio.gather(*(ev.endpoint(p) for p in test.paths))
    if (reason := _unsent(first)) is not None:
        return ContractTestResult.skipped(test.name, reason)
    judgment = test.judge(*first)
    if judgment.passed or not test.read_twice:
        return _result(test.name, judgment, started)
    second = await asyncio.gather(*(ev.reread(p) for p in test.paths))
    if _unsent(second) is not None:
        # The discipline stopped the second reading: the first one stands.
        return _result(test.name, judgment, started)
    confirmed = test.judge(*second)
    confirmed.evidence.append(
        "read twice; the first reading disagreed: " + "; ".join(judgment.diff)
    )
    return _result(test.name, confirmed, started)


def _task_name(test: str) -> str:
    return f"contract-{test.replace('_', '-')}"


def run_contract_test(test: ContractTest, ev: Evidence) -> Coroutine[Any, Any, ContractTestResult]:
    """`contract_test` as a task run named after the test (contract-basic-health, ...)."""
    return contract_test.with_options(name=_task_name(test.name))(test, ev)


def _reset_client(timeout_s: float, read_only: bool) -> httpx.AsyncClient:
    """The reset probe's client: allowed that one POST unless the run is read-only, where
    the probe is refused by its client (tasks/readonly.py) should it ever be sent."""
    if read_only:
        return http.client("contract", timeout_s)
    return http.write_client("contract", timeout_s, {("POST", RESET)})


async def post_reset(
    api_url: str, authorization: str | None, timeout_s: float, read_only: bool
) -> HttpObservation:
    """POST the breaker reset once (never retried: it is not idempotent in its effects);
    raises MutationRefused in a `read_only` run."""
    headers = {"Authorization": authorization} if authorization else {}
    async with _reset_client(timeout_s, read_only) as client:
        return await http.fetch(
            client, "POST", api_url.rstrip("/") + RESET, headers=headers, timeout_s=timeout_s
        )


@task(name="contract-reset-probe", cache_policy=NONE, retries=0, persist_result=False)
async def _reset_probe(
    probe: ResetProbe, api_url: str, timeout_s: float, read_only: bool
) -> ContractTestResult:
    """POST /health/mlflow/reset without a key, or with a fresh random key (it cannot be
    the real one, and is worthless if logged); the contract wants it refused."""
    started = time.perf_counter()
    wrong = f"Bearer contract-test-wrong-key-{secrets.token_urlsafe(24)}"
    obs = await post_reset(api_url, wrong if probe.wrong_key else None, timeout_s, read_only)
    return _result(probe.name, judge_reset(obs, probe.credentials), started)


def reset_probe(
    probe: ResetProbe, api_url: str, timeout_s: float, read_only: bool
) -> Coroutine[Any, Any, ContractTestResult]:
    """The reset probe as a task run named after it (contract-reset-without-key-refused)."""
    run = _reset_probe.with_options(name=_task_name(probe.name))
    return run(probe, api_url, timeout_s, read_only)
