"""A small circuit breaker with the semantics of the registry's MLflow breaker
(docs/health-contract.md).

Why not a library: the maintained ones (pybreaker, aiobreaker, circuitbreaker, purgatory)
model CLOSED -> OPEN -> HALF_OPEN, but none has the pieces the health contract is about:
a count of failed recoveries that, at a maximum, leaves the breaker OPEN with no automatic
retry until a manual reset; a readable ``time_until_retry``; a cap on concurrent HALF_OPEN
trials equal to the successes needed to close; and a directly settable "stuck open" state
for fault injection. Bending one of them to that would be more code than this module.

States:

- CLOSED: calls pass; consecutive failures are counted and a success resets the count; at
  ``failure_threshold`` the breaker opens.
- OPEN: calls are refused; after ``recovery_timeout`` seconds the breaker moves to
  HALF_OPEN (lazily, on the next read).
- HALF_OPEN: at most ``success_threshold`` trial calls are in flight at once;
  ``success_threshold`` consecutive successes close it, any failure re-opens it and
  counts one failed recovery. At ``max_recovery_attempts`` failed recoveries it stays OPEN
  ("stuck", ``time_until_retry`` None) until ``reset()``.

Every state change starts a new generation; a permit (from ``acquire``) remembers its
generation, so the late result of a call admitted before a transition (or a reset) only
updates the last-success/last-failure times and never drives the new state.

All methods are synchronous and hold a lock, so one event loop (or a few threads) can share
a breaker safely.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")


class BreakerState(StrEnum):
    CLOSED = "CLOSED"
    OPEN = "OPEN"
    HALF_OPEN = "HALF_OPEN"


# Numeric encoding used by the mlflow_circuit_breaker_state gauge.
STATE_CODES: dict[BreakerState, int] = {
    BreakerState.CLOSED: 0,
    BreakerState.OPEN: 1,
    BreakerState.HALF_OPEN: 2,
}

ENV_FAILURE_THRESHOLD = "MLFLOW_CB_FAILURE_THRESHOLD"
ENV_RECOVERY_TIMEOUT = "MLFLOW_CB_RECOVERY_TIMEOUT"
ENV_SUCCESS_THRESHOLD = "MLFLOW_CB_SUCCESS_THRESHOLD"
ENV_MAX_RECOVERY_ATTEMPTS = "MLFLOW_CB_MAX_RECOVERY_ATTEMPTS"


@dataclass(frozen=True)
class BreakerConfig:
    failure_threshold: int = 3
    recovery_timeout: float = 30.0
    success_threshold: int = 2
    max_recovery_attempts: int = 3

    def __post_init__(self) -> None:
        for name in ("failure_threshold", "success_threshold", "max_recovery_attempts"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.recovery_timeout < 0:
            raise ValueError("recovery_timeout must not be negative")

    @classmethod
    def from_env(
        cls, env: Mapping[str, str], defaults: BreakerConfig | None = None
    ) -> BreakerConfig:
        """Read the MLFLOW_CB_* variables; unset or empty ones keep `defaults`."""
        base = defaults or cls()

        def number(var: str, current: float, kind: type[int] | type[float]) -> Any:
            return env_number(env, var, current, kind)

        return cls(
            failure_threshold=number(ENV_FAILURE_THRESHOLD, base.failure_threshold, int),
            recovery_timeout=number(ENV_RECOVERY_TIMEOUT, base.recovery_timeout, float),
            success_threshold=number(ENV_SUCCESS_THRESHOLD, base.success_threshold, int),
            max_recovery_attempts=number(
                ENV_MAX_RECOVERY_ATTEMPTS, base.max_recovery_attempts, int
            ),
        )


def env_number(
    env: Mapping[str, str], var: str, current: float, kind: type[int] | type[float]
) -> Any:
    """`var` from `env` as `kind`; unset or empty keeps `current`; a clear error otherwise."""
    raw = env.get(var, "").strip()
    if not raw:
        return current
    try:
        return kind(raw)
    except ValueError:
        raise ValueError(f"{var} must be a {kind.__name__}, got {raw!r}") from None


class CircuitOpenError(RuntimeError):
    """A call was refused without being attempted."""

    def __init__(self, state: BreakerState, time_until_retry: float | None) -> None:
        self.state = state
        self.time_until_retry = time_until_retry
        if state is BreakerState.HALF_OPEN:
            msg = "circuit breaker is HALF_OPEN and its trial calls are all in flight"
        elif time_until_retry is None:
            msg = "circuit breaker is OPEN after its last recovery attempt; manual reset required"
        else:
            msg = f"circuit breaker is OPEN; retry in {time_until_retry:.1f}s"
        super().__init__(msg)


class CircuitBreaker:
    def __init__(
        self,
        config: BreakerConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        name: str = "mlflow",
    ) -> None:
        self.config = config or BreakerConfig()
        self.name = name
        self._clock = clock
        self._wall_clock = wall_clock
        self._lock = threading.RLock()
        self._state = BreakerState.CLOSED
        self._generation = 0
        self._failure_count = 0
        self._success_count = 0
        self._recovery_attempts = 0
        self._trials_in_flight = 0
        self._opened_at = 0.0
        self._stuck = False
        self._last_failure_time: float | None = None
        self._last_success_time: float | None = None

    # -- reading -------------------------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        with self._lock:
            self._advance()
            return self._state

    @property
    def stuck(self) -> bool:
        """OPEN with its recovery attempts exhausted: only reset() closes it."""
        with self._lock:
            return self._state is BreakerState.OPEN and self._stuck

    @property
    def failure_count(self) -> int:
        return self._failure_count

    @property
    def recovery_attempts(self) -> int:
        return self._recovery_attempts

    def time_until_retry(self) -> float | None:
        """Seconds until the OPEN breaker lets a trial through; None when not OPEN or stuck."""
        with self._lock:
            self._advance()
            if self._state is not BreakerState.OPEN or self._stuck:
                return None
            elapsed = self._clock() - self._opened_at
            return max(0.0, self.config.recovery_timeout - elapsed)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            state = self.state
            return {
                "state": state.value,
                "failure_count": self._failure_count,
                "success_count": self._success_count,
                "recovery_attempts": self._recovery_attempts,
                "time_until_retry": self.time_until_retry(),
                "stuck_open": self.stuck,
                "last_failure_time": self._last_failure_time,
                "last_success_time": self._last_success_time,
                "failure_threshold": self.config.failure_threshold,
                "recovery_timeout": self.config.recovery_timeout,
                "success_threshold": self.config.success_threshold,
                "max_recovery_attempts": self.config.max_recovery_attempts,
            }

    # -- admitting calls -----------------------------------------------------------------

    def acquire(self) -> int | None:
        """A permit for one call, or None when the call must be refused."""
        with self._lock:
            self._advance()
            if self._state is BreakerState.CLOSED:
                return self._generation
            if (
                self._state is BreakerState.HALF_OPEN
                and self._trials_in_flight < self.config.success_threshold
            ):
                self._trials_in_flight += 1
                return self._generation
            return None

    def allow(self) -> bool:
        """Whether a call may go ahead now; a True answer in HALF_OPEN takes a trial slot."""
        return self.acquire() is not None

    def release(self, permit: int | None = None) -> None:
        """Give back a permit whose call ended without an outcome (for example cancelled)."""
        with self._lock:
            if self._current(permit) and self._state is BreakerState.HALF_OPEN:
                self._trials_in_flight = max(0, self._trials_in_flight - 1)

    # -- outcomes ------------------------------------------------------------------------

    def record_success(self, permit: int | None = None) -> None:
        with self._lock:
            self._last_success_time = self._wall_clock()
            if not self._current(permit):
                return
            if self._state is BreakerState.CLOSED:
                self._failure_count = 0
            elif self._state is BreakerState.HALF_OPEN:
                self._trials_in_flight = max(0, self._trials_in_flight - 1)
                self._success_count += 1
                if self._success_count >= self.config.success_threshold:
                    self._transition(BreakerState.CLOSED)

    def record_failure(self, permit: int | None = None) -> None:
        with self._lock:
            self._last_failure_time = self._wall_clock()
            if not self._current(permit):
                return
            if self._state is BreakerState.CLOSED:
                self._failure_count += 1
                if self._failure_count >= self.config.failure_threshold:
                    self._transition(BreakerState.OPEN)
            elif self._state is BreakerState.HALF_OPEN:
                self._failure_count += 1
                self._recovery_attempts += 1
                self._stuck = self._recovery_attempts >= self.config.max_recovery_attempts
                self._transition(BreakerState.OPEN)
            else:
                # A call admitted while CLOSED that fails after the breaker opened.
                self._failure_count += 1

    # -- operator actions ----------------------------------------------------------------

    def reset(self) -> BreakerState:
        """Close the breaker and forget all counts; returns the state before the reset."""
        with self._lock:
            previous = self.state
            self._transition(BreakerState.CLOSED)
            return previous

    def force_stuck_open(self) -> None:
        """Jump to the exhausted state (OPEN, no automatic retry): used by fault injection."""
        with self._lock:
            self._failure_count = max(self._failure_count, self.config.failure_threshold)
            self._recovery_attempts = max(
                self._recovery_attempts, self.config.max_recovery_attempts
            )
            self._stuck = True
            self._transition(BreakerState.OPEN)

    def force_state(self, state: BreakerState) -> None:
        """Jump to `state` as if reached normally (fault injection, tests): OPEN starts a
        fresh recovery timeout with automatic retries, HALF_OPEN admits trial calls."""
        with self._lock:
            if state is BreakerState.OPEN:
                self._failure_count = max(self._failure_count, self.config.failure_threshold)
            self._stuck = False
            self._transition(state)

    # -- helper for async callers ----------------------------------------------------------

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run `fn` through the breaker; raises CircuitOpenError when refused."""
        permit = self.acquire()
        if permit is None:
            raise CircuitOpenError(self.state, self.time_until_retry())
        try:
            result = await fn()
        except Exception:
            self.record_failure(permit)
            raise
        except BaseException:
            # Cancellation says nothing about MLflow's health; just free the trial slot.
            self.release(permit)
            raise
        self.record_success(permit)
        return result

    # -- internals -----------------------------------------------------------------------

    def _current(self, permit: int | None) -> bool:
        return permit is None or permit == self._generation

    def _advance(self) -> None:
        if (
            self._state is BreakerState.OPEN
            and not self._stuck
            and self._clock() - self._opened_at >= self.config.recovery_timeout
        ):
            self._transition(BreakerState.HALF_OPEN)

    def _transition(self, new: BreakerState) -> None:
        old = self._state
        self._state = new
        self._generation += 1
        self._trials_in_flight = 0
        self._success_count = 0
        if new is BreakerState.OPEN:
            self._opened_at = self._clock()
            if self._stuck:
                logger.warning(
                    "%s breaker OPEN after %d failed recoveries; manual reset required",
                    self.name,
                    self._recovery_attempts,
                )
            else:
                logger.warning(
                    "%s breaker %s -> OPEN (failures=%d, recovery attempts=%d)",
                    self.name,
                    old.value,
                    self._failure_count,
                    self._recovery_attempts,
                )
        elif new is BreakerState.CLOSED:
            self._failure_count = 0
            self._recovery_attempts = 0
            self._stuck = False
            if old is not BreakerState.CLOSED:
                logger.info("%s breaker %s -> CLOSED", self.name, old.value)
        else:
            logger.info("%s breaker OPEN -> HALF_OPEN", self.name)
