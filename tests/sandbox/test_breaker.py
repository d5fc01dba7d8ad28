"""Unit tests of sandbox.breaker with a fake clock: every transition, and its invariants."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from sandbox.breaker import (
    STATE_CODES,
    BreakerConfig,
    BreakerState,
    CircuitBreaker,
    CircuitOpenError,
)

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make(
    failure_threshold: int = 3,
    recovery_timeout: float = 30.0,
    success_threshold: int = 2,
    max_recovery_attempts: int = 3,
) -> tuple[CircuitBreaker, FakeClock, FakeClock]:
    clock, wall = FakeClock(), FakeClock(1_700_000_000.0)
    config = BreakerConfig(
        failure_threshold, recovery_timeout, success_threshold, max_recovery_attempts
    )
    return CircuitBreaker(config, clock=clock, wall_clock=wall), clock, wall


def fail(breaker: CircuitBreaker, times: int = 1) -> None:
    for _ in range(times):
        assert breaker.allow()
        breaker.record_failure()


def open_breaker(breaker: CircuitBreaker) -> None:
    fail(breaker, breaker.config.failure_threshold)
    assert breaker.state is OPEN


# -- configuration ---------------------------------------------------------------------


def test_defaults_are_the_seeds() -> None:
    config = BreakerConfig()
    assert (config.failure_threshold, config.recovery_timeout) == (3, 30.0)
    assert (config.success_threshold, config.max_recovery_attempts) == (2, 3)


def test_from_env_reads_variables_and_keeps_defaults_for_unset_ones() -> None:
    env = {"MLFLOW_CB_FAILURE_THRESHOLD": "5", "MLFLOW_CB_RECOVERY_TIMEOUT": "0.5"}
    config = BreakerConfig.from_env(env)
    assert config == BreakerConfig(5, 0.5, 2, 3)
    base = BreakerConfig(failure_threshold=7, recovery_timeout=60)
    assert BreakerConfig.from_env({"MLFLOW_CB_SUCCESS_THRESHOLD": "4"}, base) == BreakerConfig(
        7, 60, 4, 3
    )
    assert BreakerConfig.from_env({"MLFLOW_CB_MAX_RECOVERY_ATTEMPTS": " "}, base) == base


@pytest.mark.parametrize(
    "env",
    [
        {"MLFLOW_CB_FAILURE_THRESHOLD": "three"},
        {"MLFLOW_CB_FAILURE_THRESHOLD": "0"},
        {"MLFLOW_CB_RECOVERY_TIMEOUT": "-1"},
        {"MLFLOW_CB_MAX_RECOVERY_ATTEMPTS": "1.5"},
    ],
)
def test_from_env_rejects_bad_values(env: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        BreakerConfig.from_env(env)


# -- CLOSED ----------------------------------------------------------------------------


def test_starts_closed_and_allows_calls() -> None:
    breaker, _, _ = make()
    assert breaker.state is CLOSED
    assert breaker.allow()
    snap = breaker.snapshot()
    assert snap["state"] == "CLOSED"
    assert snap["failure_count"] == 0
    assert snap["time_until_retry"] is None
    assert snap["last_failure_time"] is None and snap["last_success_time"] is None


def test_opens_at_the_failure_threshold() -> None:
    breaker, _, wall = make(failure_threshold=3)
    fail(breaker, 2)
    assert breaker.state is CLOSED
    assert breaker.snapshot()["failure_count"] == 2
    fail(breaker)
    assert breaker.state is OPEN
    snap = breaker.snapshot()
    assert snap["failure_count"] == 3
    assert snap["time_until_retry"] == 30.0
    assert snap["last_failure_time"] == wall.now


def test_a_success_resets_the_failure_count() -> None:
    breaker, _, wall = make(failure_threshold=3)
    fail(breaker, 2)
    assert breaker.allow()
    breaker.record_success()
    assert breaker.snapshot()["failure_count"] == 0
    assert breaker.snapshot()["last_success_time"] == wall.now
    fail(breaker, 2)  # non-consecutive failures never open it
    assert breaker.state is CLOSED


# -- OPEN ------------------------------------------------------------------------------


def test_open_refuses_and_counts_down() -> None:
    breaker, clock, _ = make(recovery_timeout=30)
    open_breaker(breaker)
    assert not breaker.allow()
    clock.advance(12.5)
    assert breaker.time_until_retry() == pytest.approx(17.5)
    assert not breaker.allow()
    assert breaker.state is OPEN


def test_open_moves_to_half_open_after_the_recovery_timeout() -> None:
    breaker, clock, _ = make(recovery_timeout=30)
    open_breaker(breaker)
    clock.advance(29.999)
    assert breaker.state is OPEN
    clock.advance(0.001)
    assert breaker.state is HALF_OPEN
    assert breaker.time_until_retry() is None
    assert breaker.snapshot()["time_until_retry"] is None


def test_late_failure_while_open_is_counted_without_changing_state() -> None:
    breaker, clock, _ = make(failure_threshold=2)
    permits = [breaker.acquire(), breaker.acquire(), breaker.acquire()]
    for permit in permits[:2]:
        breaker.record_failure(permit)
    assert breaker.state is OPEN
    clock.advance(10)
    breaker.record_failure(permits[2])  # stale: admitted before the breaker opened
    assert breaker.state is OPEN
    assert breaker.time_until_retry() == pytest.approx(20)


# -- HALF_OPEN -------------------------------------------------------------------------


def to_half_open(breaker: CircuitBreaker, clock: FakeClock) -> None:
    if breaker.state is not OPEN:
        open_breaker(breaker)
    clock.advance(breaker.config.recovery_timeout)
    assert breaker.state is HALF_OPEN


def test_half_open_closes_after_consecutive_successes() -> None:
    breaker, clock, _ = make(success_threshold=2)
    to_half_open(breaker, clock)
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state is HALF_OPEN
    assert breaker.snapshot()["success_count"] == 1
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state is CLOSED
    snap = breaker.snapshot()
    assert snap["failure_count"] == 0
    assert snap["success_count"] == 0
    assert snap["recovery_attempts"] == 0


def test_half_open_limits_concurrent_trials_to_the_success_threshold() -> None:
    breaker, clock, _ = make(success_threshold=2)
    to_half_open(breaker, clock)
    first, second = breaker.acquire(), breaker.acquire()
    assert first is not None and second is not None
    assert breaker.acquire() is None
    assert not breaker.allow()
    breaker.record_success(first)  # frees a slot
    third = breaker.acquire()
    assert third is not None
    breaker.record_success(second)
    assert breaker.state is CLOSED
    breaker.record_success(third)  # stale: from the HALF_OPEN generation
    assert breaker.state is CLOSED


def test_released_trial_slot_can_be_reused() -> None:
    breaker, clock, _ = make(success_threshold=1)
    to_half_open(breaker, clock)
    permit = breaker.acquire()
    assert breaker.acquire() is None
    breaker.release(permit)
    assert breaker.acquire() is not None


def test_half_open_failure_reopens_and_counts_a_recovery_attempt() -> None:
    breaker, clock, _ = make(recovery_timeout=30, max_recovery_attempts=3)
    to_half_open(breaker, clock)
    assert breaker.allow()
    breaker.record_success()
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state is OPEN
    snap = breaker.snapshot()
    assert snap["recovery_attempts"] == 1
    assert snap["success_count"] == 0
    assert snap["time_until_retry"] == 30  # a fresh countdown
    assert snap["failure_count"] == 4


# -- stuck OPEN and reset -------------------------------------------------------------


def exhaust(breaker: CircuitBreaker, clock: FakeClock) -> None:
    for attempt in range(1, breaker.config.max_recovery_attempts + 1):
        to_half_open(breaker, clock)
        assert breaker.allow()
        breaker.record_failure()
        assert breaker.state is OPEN
        assert breaker.recovery_attempts == attempt


def test_max_recovery_attempts_leave_it_stuck_open() -> None:
    breaker, clock, _ = make(max_recovery_attempts=3)
    exhaust(breaker, clock)
    assert breaker.stuck
    snap = breaker.snapshot()
    assert snap["state"] == "OPEN"
    assert snap["time_until_retry"] is None
    assert snap["stuck_open"] is True
    assert snap["recovery_attempts"] == 3
    clock.advance(10 * breaker.config.recovery_timeout)
    assert breaker.state is OPEN
    assert not breaker.allow()


def test_reset_closes_a_stuck_breaker_and_reports_the_previous_state() -> None:
    breaker, clock, _ = make()
    exhaust(breaker, clock)
    assert breaker.reset() is OPEN
    assert breaker.state is CLOSED
    assert not breaker.stuck
    snap = breaker.snapshot()
    assert (snap["failure_count"], snap["recovery_attempts"], snap["time_until_retry"]) == (
        0,
        0,
        None,
    )
    assert breaker.allow()
    assert breaker.reset() is CLOSED


def test_reset_from_half_open_reports_half_open() -> None:
    breaker, clock, _ = make()
    to_half_open(breaker, clock)
    assert breaker.reset() is HALF_OPEN


def test_result_of_a_call_admitted_before_reset_does_not_drive_the_new_state() -> None:
    breaker, clock, _ = make(failure_threshold=1)
    to_half_open(breaker, clock)
    permit = breaker.acquire()
    breaker.reset()
    breaker.record_failure(permit)
    assert breaker.state is CLOSED
    assert breaker.snapshot()["failure_count"] == 0


def test_force_stuck_open_sets_the_exhausted_state_directly() -> None:
    breaker, clock, _ = make(max_recovery_attempts=3)
    breaker.force_stuck_open()
    snap = breaker.snapshot()
    assert snap["state"] == "OPEN"
    assert snap["time_until_retry"] is None
    assert snap["recovery_attempts"] == 3
    assert snap["failure_count"] >= breaker.config.failure_threshold
    clock.advance(3600)
    assert not breaker.allow()
    assert breaker.reset() is OPEN
    assert breaker.state is CLOSED


def test_force_state_reaches_each_state_as_if_normally() -> None:
    breaker, clock, _ = make(recovery_timeout=30, success_threshold=2)
    breaker.force_stuck_open()
    breaker.force_state(OPEN)  # OPEN with automatic retries, unlike stuck open
    assert not breaker.stuck
    assert breaker.time_until_retry() == 30
    assert not breaker.allow()
    clock.advance(30)
    assert breaker.state is HALF_OPEN
    breaker.force_state(HALF_OPEN)
    assert breaker.allow() and breaker.allow() and not breaker.allow()  # two trials
    breaker.force_state(CLOSED)
    assert breaker.snapshot()["failure_count"] == 0
    assert breaker.allow()


def test_state_codes_match_the_gauge_encoding() -> None:
    assert STATE_CODES == {CLOSED: 0, OPEN: 1, HALF_OPEN: 2}


# -- the async call helper ------------------------------------------------------------


def test_call_records_outcomes_and_refuses_when_open() -> None:
    breaker, clock, _ = make(failure_threshold=2, recovery_timeout=5)
    calls = 0

    async def ok() -> str:
        nonlocal calls
        calls += 1
        return "fine"

    async def boom() -> str:
        nonlocal calls
        calls += 1
        raise ConnectionError("refused")

    async def scenario() -> None:
        assert await breaker.call(ok) == "fine"
        for _ in range(2):
            with pytest.raises(ConnectionError):
                await breaker.call(boom)
        assert breaker.state is OPEN
        with pytest.raises(CircuitOpenError) as refused:
            await breaker.call(ok)
        assert refused.value.time_until_retry == 5
        assert "retry in" in str(refused.value)
        assert calls == 3  # the refused call never ran
        clock.advance(5)
        assert await breaker.call(ok) == "fine"
        assert await breaker.call(ok) == "fine"
        assert breaker.state is CLOSED

    asyncio.run(scenario())


def test_call_frees_the_trial_slot_when_cancelled() -> None:
    breaker, clock, _ = make(success_threshold=1)
    to_half_open(breaker, clock)

    async def scenario() -> None:
        task = asyncio.create_task(breaker.call(asyncio.Event().wait))
        await asyncio.sleep(0)
        assert breaker.acquire() is None  # the slot is taken
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert breaker.state is HALF_OPEN
        assert breaker.allow()

    asyncio.run(scenario())


def test_call_refused_when_stuck_says_manual_reset() -> None:
    breaker, _, _ = make()
    breaker.force_stuck_open()

    async def never() -> None:
        raise AssertionError("must not be called")

    with pytest.raises(CircuitOpenError) as refused:
        asyncio.run(breaker.call(never))
    assert refused.value.time_until_retry is None
    assert "manual reset" in str(refused.value)


# -- invariants under random operation sequences ----------------------------------------


class BreakerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.breaker, self.clock, _ = make(
            failure_threshold=2, recovery_timeout=10, success_threshold=2, max_recovery_attempts=2
        )
        self.permits: list[int] = []

    @rule()
    def acquire(self) -> None:
        permit = self.breaker.acquire()
        if permit is not None:
            self.permits.append(permit)

    @rule(data=st.data(), ok=st.booleans())
    def finish(self, data: st.DataObject, ok: bool) -> None:
        if not self.permits:
            return
        permit = self.permits.pop(data.draw(st.integers(0, len(self.permits) - 1)))
        if ok:
            self.breaker.record_success(permit)
        else:
            self.breaker.record_failure(permit)

    @rule(seconds=st.floats(0, 25))
    def wait(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule()
    def reset(self) -> None:
        self.breaker.reset()
        self.permits.clear()

    @invariant()
    def consistent(self) -> None:
        snap = self.breaker.snapshot()
        assert snap["failure_count"] >= 0
        assert 0 <= snap["recovery_attempts"] <= 2
        assert self.breaker._trials_in_flight <= 2
        if snap["state"] == "OPEN":
            retry = snap["time_until_retry"]
            assert (retry is None) == snap["stuck_open"]
            assert retry is None or 0 < retry <= 10
        else:
            assert snap["time_until_retry"] is None
            assert not snap["stuck_open"]
        if snap["recovery_attempts"] == 2:
            assert snap["state"] == "OPEN" and snap["stuck_open"]


TestBreakerMachine = BreakerMachine.TestCase
TestBreakerMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
