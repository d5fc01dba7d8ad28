"""Benchmark 3: time to recover, against the sandbox's own floor and fixed polling.

For each fault, repetition by repetition:
- ours: the `recover-service` flow (in this process), from its start until it returns
  `Recovered` (its own final diagnosis verified the service healthy);
- the floor: from the same start until the sandbox itself is healthy again, as its ground
  truth says (polled every 0.1 s next to the run);
- the seed's strategy: the same recovery action as a plain call, then GET /health every
  10 s until three consecutive healthy answers.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from bench import baselines
from bench.environment import REGISTRY, BenchEnv, RunOptions, wait_until
from bench.harness import BenchResult, ratio, say
from flows.recover import recover_service

TARGET = "sandbox"
WATCH_INTERVAL_S = 0.1
STABILIZATION_TIMEOUT_S = 180.0


class HealthWatch:
    """Polls a ground-truth probe in a thread; remembers when it first said healthy."""

    def __init__(self, probe: Callable[[], bool]) -> None:
        self._probe = probe
        self._stop = threading.Event()
        self.healthy_at: float | None = None
        self._thread = threading.Thread(target=self._run, name="health-watch", daemon=True)

    def start(self) -> HealthWatch:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                healthy = self._probe()
            except Exception:  # a probe that fails is "not healthy yet"
                healthy = False
            if healthy:
                self.healthy_at = time.perf_counter()
                return
            self._stop.wait(WATCH_INTERVAL_S)

    def wait(self, timeout: float) -> float | None:
        self._thread.join(timeout)
        self._stop.set()
        self._thread.join()
        return self.healthy_at


def breaker_states(replicas: list[str]) -> list[str | None]:
    """circuit_breaker_state read on each replica directly."""
    states: list[str | None] = []
    with httpx.Client(timeout=5.0) as http:
        for replica in replicas:
            try:
                body = http.get(f"http://{replica}/health/mlflow").json()
                states.append(body.get("circuit_breaker_state"))
            except (httpx.HTTPError, ValueError):
                states.append(None)
    return states


@dataclass
class Scenario:
    """A recoverable fault: how to inject it, when it has taken hold, what healthy means to
    the sandbox, and the recovery action the seed would take."""

    fault: str
    options: dict[str, Any]
    short: str

    def inject(self, env: BenchEnv) -> None:
        env.client.fault(self.fault, **self.options)
        wait_until(lambda: self.took_hold(env), 30, f"{self.fault} to take hold")

    def took_hold(self, env: BenchEnv) -> bool:
        if self.fault == "ecs-tasks-crashed":
            service = env.client.status()["services"][REGISTRY]
            return service["running"] == 0 and all(
                r["health"] == "unhealthy" for r in service["replicas"]
            )
        return set(breaker_states(env.registry_replicas())) == {"OPEN"}

    def ground_truth(self, env: BenchEnv) -> Callable[[], bool]:
        if self.fault == "ecs-tasks-crashed":
            return env.converged
        replicas = env.registry_replicas()
        return lambda: set(breaker_states(replicas)) == {"CLOSED"}

    def seed_action(self, env: BenchEnv) -> None:
        if self.fault == "ecs-tasks-crashed":
            baselines.force_new_deployment(env.info, REGISTRY)
        else:
            baselines.reset_breakers(env.info, env.registry_replicas())


SCENARIOS = (
    Scenario("ecs-tasks-crashed", {"all": True}, "recover-crash"),
    Scenario("breaker-stuck-open", {}, "recover-breaker"),
)


def run_recovery(dry_run: bool = False) -> Any:
    async def go() -> Any:
        return await recover_service(
            target=TARGET,
            dry_run=dry_run,
            cooldown_seconds=0,
            stabilization_timeout_seconds=STABILIZATION_TIMEOUT_S,
            return_state=True,
        )

    return asyncio.run(go())


def _declare(result: BenchResult) -> None:
    result.figure("recovery_s", "s", "recovery flow start -> it returns Recovered (verified)")
    result.figure("floor_s", "s", "same start -> the sandbox itself healthy (ground truth)")
    result.figure("over_floor_s", "s", "recovery_s - floor_s, per repetition")
    result.figure("fixed_polling_s", "s", "same action, then /health every 10 s until 3 healthy")
    result.figure("fixed_polling_floor_s", "s", "the sandbox's own healthy, in that run")
    result.figure("speedup_x", "x", "fixed_polling_s / recovery_s, per repetition")
    result.figure("recovered", "bool", "1 when the flow ended Recovered")
    result.goal("recovered within 3 s of the floor", "over_floor_s", "<=", 3.0)
    result.goal("at least 3x faster than fixed polling", "speedup_x", ">=", 3.0)
    result.goal("every run recovered", "recovered", ">=", 1.0, stat="min")


def _ours(env: BenchEnv, scenario: Scenario, result: BenchResult) -> float:
    scenario.inject(env)
    probe = scenario.ground_truth(env)
    started = time.perf_counter()
    watch = HealthWatch(probe).start()
    state = run_recovery()
    done = time.perf_counter()
    healthy_at = watch.wait(STABILIZATION_TIMEOUT_S)
    recovery_s = done - started
    result.add("recovery_s", recovery_s)
    result.add("recovered", 1.0 if state.name == "Recovered" else 0.0)
    if healthy_at is not None:
        result.add("floor_s", healthy_at - started)
        result.add("over_floor_s", recovery_s - (healthy_at - started))
    floor = f"{healthy_at - started:.2f} s" if healthy_at is not None else "never"
    say(f"  flow {recovery_s:.2f} s ({state.name}), sandbox healthy after {floor}")
    return recovery_s


def _fixed_polling(env: BenchEnv, scenario: Scenario, result: BenchResult) -> float:
    scenario.inject(env)
    probe = scenario.ground_truth(env)
    started = time.perf_counter()
    watch = HealthWatch(probe).start()
    scenario.seed_action(env)
    polling = baselines.fixed_polling(env.info["api_url"])
    seconds = time.perf_counter() - started
    healthy_at = watch.wait(STABILIZATION_TIMEOUT_S)
    result.add("fixed_polling_s", seconds)
    if healthy_at is not None:
        result.add("fixed_polling_floor_s", healthy_at - started)
    say(f"  fixed polling {seconds:.2f} s ({polling.polls} polls)")
    return seconds


def bench_recovery(env: BenchEnv, options: RunOptions) -> list[BenchResult]:
    results = []
    env.heal()
    say("recovery: warm-up (a dry run on the healthy sandbox, not counted)")
    run_recovery(dry_run=True)
    for scenario in SCENARIOS:
        result = BenchResult(scenario.short, f"Time to recover from {scenario.fault}")
        _declare(result)
        for rep in range(options.reps(3)):
            say(f"{scenario.short}: repetition {rep + 1}")
            try:
                ours = _ours(env, scenario, result)
            finally:
                env.heal()
            try:
                seed = _fixed_polling(env, scenario, result)
            finally:
                env.heal()
            result.add("speedup_x", ratio(seed, ours))
        opts = ", ".join(f"{k}={v}" for k, v in scenario.options.items())
        result.note(
            f"fault {scenario.fault}{f' ({opts})' if opts else ''}; ground truth: "
            + (
                "the sandbox's ECS view converged (one completed deployment, every task "
                "running, every ALB target healthy)"
                if scenario.fault == "ecs-tasks-crashed"
                else "every registry replica's breaker reads CLOSED"
            )
        )
        results.append(result)
    return results
