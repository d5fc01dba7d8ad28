"""A check called inside another task (a recovery's own diagnosis) keeps the retries its
own task run would have had: a transient exception that escaped it is retried, anything
else is not."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from flows.diagnose import _in_this_task
from service_health.models import CheckResult
from tasks.checks import CHECK_RETRIES
from tasks.retries import in_task_retrying


def test_an_escaped_transient_exception_is_retried_like_a_task_run() -> None:
    calls: list[int] = []

    async def flaky() -> CheckResult:
        calls.append(1)
        if len(calls) <= CHECK_RETRIES:
            raise httpx.ConnectError("refused")
        return CheckResult.failed("redis", "definitive answer")

    result = asyncio.run(_in_this_task(flaky)())
    assert result.name == "redis" and len(calls) == CHECK_RETRIES + 1


def test_retries_end_and_the_last_exception_escapes() -> None:
    calls: list[int] = []

    async def down() -> CheckResult:
        calls.append(1)
        raise TimeoutError("still down")

    with pytest.raises(TimeoutError):
        asyncio.run(in_task_retrying(1)(down))
    assert len(calls) == 2


def test_anything_else_is_not_retried() -> None:
    calls: list[int] = []

    async def broken() -> CheckResult:
        calls.append(1)
        raise ValueError("a bug, not the network")

    with pytest.raises(ValueError):
        asyncio.run(_in_this_task(broken)())
    assert len(calls) == 1
