"""Every retry policy of the project, and why each one is safe.

- Our own loops (HTTP reads, the ECS write) retry with tenacity: exponential backoff with
  jitter, bounded by attempts and, for HTTP, by the time left.
- AWS reads retry inside botocore (adaptive mode: throttling and transient errors, with
  client-side rate limiting); the ECS write is made without botocore retries, because
  botocore would also retry read timeouts and 5xx answers, which may have been applied.
- Prefect task retries only where a whole task can be run again: a check or a recovery
  task whose body let a transient exception escape (none should). A definitive answer is a
  result, never an exception, so it is never retried there.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import httpx
from prefect import Task, task
from prefect.cache_policies import NONE
from prefect.client.schemas.objects import TaskRun
from prefect.states import State
from prefect.tasks import exponential_backoff
from tenacity import (
    AsyncRetrying,
    Retrying,
    retry_if_exception_type,
    retry_if_result,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
)

from service_health.observations import HttpObservation

if TYPE_CHECKING:  # botocore costs half a second to import: only for runs that use AWS
    from botocore.config import Config

P = ParamSpec("P")
R = TypeVar("R")

# --- AWS (botocore) -------------------------------------------------------------------------


@functools.cache
def aws_read_config() -> Config:
    """Reads: explicit timeouts and botocore's adaptive retries, which ride out throttling."""
    from botocore.config import Config

    return Config(
        connect_timeout=3, read_timeout=5, retries={"mode": "adaptive", "max_attempts": 4}
    )


@functools.cache
def aws_write_config() -> Config:
    """The mutating ECS call: timeouts and no botocore retry at all (`write_retrying`
    decides whether another attempt is safe)."""
    from botocore.config import Config

    return Config(
        connect_timeout=3, read_timeout=10, retries={"mode": "standard", "total_max_attempts": 1}
    )


class NotApplied(Exception):
    """An attempt at a write that provably did not apply: it may be made again."""


def write_retrying(attempts: int) -> Retrying:
    """Tenacity for a non-idempotent write: another attempt only after `NotApplied`, with
    backoff and jitter (0.5 s, 1 s, 2 s... up to 4 s); the last `NotApplied` is re-raised."""
    return Retrying(
        stop=stop_after_attempt(attempts),
        wait=wait_exponential_jitter(initial=0.5, max=4.0, jitter=0.25),
        retry=retry_if_exception_type(NotApplied),
        reraise=True,
    )


# --- HTTP (tenacity) ------------------------------------------------------------------------


def http_retrying(
    is_transient: Callable[[HttpObservation], bool], attempts: int, budget_s: float
) -> AsyncRetrying:
    """Tenacity for an idempotent read: another try while the answer is transient, until
    `attempts` or `budget_s` is spent; then the last answer is returned as it is."""
    return AsyncRetrying(
        stop=stop_after_attempt(attempts) | stop_after_delay(budget_s),
        wait=wait_exponential_jitter(initial=0.2, max=2.0, jitter=0.2),
        retry=retry_if_result(is_transient),
        retry_error_callback=lambda state: state.outcome.result() if state.outcome else None,
        reraise=False,
    )


# --- Prefect task retries -------------------------------------------------------------------


def transient_exceptions() -> tuple[type[BaseException], ...]:
    """What counts as transient when it escapes a task's body: a refused or reset
    connection, a timeout."""
    # botocore is imported here, not at module level: a run without AWS never loads it.
    from botocore.exceptions import ConnectionError as BotoConnectionError

    return (httpx.TransportError, BotoConnectionError, ConnectionError, TimeoutError)


def transient_only(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Prefect retries a task only for a transient exception that escaped its body."""
    try:
        state.result()
    except transient_exceptions():
        return True
    except Exception:
        return False
    return False


def in_task_retrying(retries: int) -> AsyncRetrying:
    """The retries `io_task` gives a task run, for a task's body called inside another
    task instead (the checks of a recovery's own diagnosis): `retries` more attempts after
    a transient exception escaped, with backoff and jitter; anything else is raised."""
    return AsyncRetrying(
        stop=stop_after_attempt(retries + 1),
        wait=wait_exponential_jitter(initial=0.5, max=4.0, jitter=0.25),
        retry=retry_if_exception_type(transient_exceptions()),
        reraise=True,
    )


def io_task(
    name: str, retries: int
) -> Callable[[Callable[P, Coroutine[Any, Any, R]]], Task[P, Coroutine[Any, Any, R]]]:
    """The options of a task that does I/O: no caching (each run reads the service anew),
    results not persisted (they may name internal addresses), and `retries` Prefect
    retries on an escaped transient exception only."""
    return task(
        name=name,
        cache_policy=NONE,
        retries=retries,
        retry_delay_seconds=exponential_backoff(backoff_factor=0.5),
        retry_jitter_factor=0.5,
        retry_condition_fn=transient_only,
        persist_result=False,
    )
