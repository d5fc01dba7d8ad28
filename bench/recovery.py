"""Benchmark 3: time to recover, against the action's own convergence and fixed polling.

For each fault, repetition by repetition, in the same run of the same fault:
- ours: the `recover-service` flow (in this process), from its start until it returns
  `Recovered` (its own final diagnosis verified the service healthy);
- the action: the moment the recovery's first mutating call is made (heard on botocore's
  event emitter and httpx's send, before the request leaves);
- the floor: from that moment until the sandbox itself is healthy again, as its ground
  truth says (polled every 0.1 s next to the run): the action's own convergence, which no
  flow can beat;
- the overhead: before the action (diagnosis, plan, lock) and after the floor (noticing
  convergence, verifying), together recovery_s - floor_s;
- the seed's strategy: the same recovery action as a plain call, then GET /health every
  10 s until three consecutive healthy answers;
- the automatic path, as its own figures: a real diagnosis run of the fault first (not
  timed), then the recovery as the automation starts it (`triggered_by` that run, the
  budget raised so that it does not stand the run down, no relapse check), which may plan
  from that diagnosis' report. The automation's own start (a deployment run a worker picks
  up) is not timed either: the recovery starts once the report is in the event feed, as
  it is by the time a worker has started a run.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import botocore.hooks
import httpx

from bench import baselines
from bench.environment import REGISTRY, BenchEnv, RunOptions, wait_until
from bench.harness import BenchResult, ratio, say
from flows.recover import recover_service
from service_health.recovery import parse_time
from tasks.readonly import READ_METHODS, READ_ONLY_POSTS, is_read_operation

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


class FirstWrite:
    """When the first mutating call is made (AWS or HTTP), by whatever client, noted as the
    call is about to be sent. Installed around one run, in this process. The Prefect API's
    own requests (run states, logs, artifacts: POSTs all) are the orchestration, not the
    recovery, and are left out."""

    def __init__(self, prefect_url: str | None) -> None:
        self.at: float | None = None
        self._prefect = (prefect_url or "").rstrip("/")

    def _note(self) -> None:
        if self.at is None:
            self.at = time.perf_counter()

    def __enter__(self) -> FirstWrite:
        self._emit = emit = botocore.hooks.HierarchicalEmitter.emit
        self._send = send = httpx.AsyncClient.send
        note = self._note

        def emit_noted(emitter: Any, event_name: str, **kwargs: Any) -> Any:
            # Emitted once per API call, before it is built and sent (before-call goes
            # through emit_until_response, and is not seen here).
            model = (
                kwargs.get("model") if event_name.startswith("before-parameter-build.") else None
            )
            if model is not None and not is_read_operation(model.name):
                note()
            return emit(emitter, event_name, **kwargs)

        async def send_noted(client: httpx.AsyncClient, request: httpx.Request, **kw: Any) -> Any:
            method, url = request.method.upper(), str(request.url)
            prefect = bool(self._prefect) and url.startswith(self._prefect)
            reads = method in READ_METHODS or (method, request.url.path) in READ_ONLY_POSTS
            if not (prefect or reads):
                note()
            return await send(client, request, **kw)

        botocore.hooks.HierarchicalEmitter.emit = emit_noted  # type: ignore[method-assign,assignment]
        httpx.AsyncClient.send = send_noted  # type: ignore[method-assign,assignment]
        return self

    def __exit__(self, *_: object) -> None:
        botocore.hooks.HierarchicalEmitter.emit = self._emit  # type: ignore[method-assign]
        httpx.AsyncClient.send = self._send  # type: ignore[method-assign]


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


AUTOMATIC = {
    "budget_per_target": 10_000,
    "budget_all_targets": 10_000,
    "relapse_check_delay_seconds": None,
}


def run_recovery(dry_run: bool = False, **params: Any) -> Any:
    async def go() -> Any:
        return await recover_service(
            target=TARGET,
            dry_run=dry_run,
            cooldown_seconds=0,
            stabilization_timeout_seconds=STABILIZATION_TIMEOUT_S,
            return_state=True,
            **params,
        )

    return asyncio.run(go())


def trigger_diagnosis() -> str:
    """A diagnosis run, as the schedule makes them; the resource id the automation passes
    on. Returns once its report can be read from the event feed."""
    from flows.diagnose import diagnose_service_health
    from tasks.trigger_report import read_trigger_event

    async def go() -> str:
        state = await diagnose_service_health(target=TARGET, return_state=True)
        resource = f"prefect.flow-run.{state.state_details.flow_run_id}"
        # The server writes events in batches, every few seconds at most.
        if await read_trigger_event(resource, 600, wait_s=30) is None:
            raise RuntimeError(f"no report of {resource} in the event feed within 30 s")
        return resource

    return asyncio.run(go())


def _timings(result: BenchResult) -> None:
    result.figure("recovery_s", "s", "recovery flow start -> it returns Recovered (verified)")
    result.figure(
        "before_action_s", "s", "flow start -> first mutating call (diagnosis, plan, lock)"
    )
    result.figure(
        "floor_s", "s", "first mutating call -> the sandbox itself healthy (ground truth)"
    )
    result.figure("after_floor_s", "s", "sandbox healthy -> the flow returns (detect, verify)")
    result.figure("over_floor_s", "s", "before_action_s + after_floor_s = recovery_s - floor_s")


def _declare(result: BenchResult) -> None:
    _timings(result)
    result.figure("fixed_polling_s", "s", "same action, then /health every 10 s until 3 healthy")
    result.figure("fixed_polling_floor_s", "s", "the sandbox's own healthy, in that run")
    result.figure("speedup_x", "x", "fixed_polling_s / recovery_s, per repetition")
    result.figure("recovered", "bool", "1 when the flow ended Recovered")
    result.goal("recovered within 1 s of the action's floor", "over_floor_s", "<=", 1.0)
    result.goal("at least 3x faster than fixed polling", "speedup_x", ">=", 3.0)
    result.goal("every run recovered", "recovered", ">=", 1.0, stat="min")


def _declare_automatic(result: BenchResult) -> None:
    _timings(result)
    result.figure("from_trigger", "bool", "1 when the plan came from the triggering diagnosis")
    result.figure("recovered", "bool", "1 when the flow ended Recovered")
    result.goal("recovered within 1 s of the action's floor", "over_floor_s", "<=", 1.0)
    result.goal("every run recovered", "recovered", ">=", 1.0, stat="min")


def _ours(env: BenchEnv, scenario: Scenario, result: BenchResult, automatic: bool = False) -> float:
    scenario.inject(env)
    params: dict[str, Any] = {}
    if automatic:
        params = {**AUTOMATIC, "triggered_by": trigger_diagnosis()}
    probe = scenario.ground_truth(env)
    started_at = datetime.now(UTC)
    started = time.perf_counter()
    watch = HealthWatch(probe).start()
    with FirstWrite(env.prefect_url) as first:
        state = run_recovery(**params)
    done = time.perf_counter()
    healthy_at = watch.wait(STABILIZATION_TIMEOUT_S)
    recovery_s = done - started
    result.add("recovery_s", recovery_s)
    result.add("recovered", 1.0 if state.name == "Recovered" else 0.0)
    if automatic:
        plan = state.result(raise_on_failure=False).plan
        diagnosed = parse_time(plan.diagnosis_timestamp)
        from_trigger = diagnosed is not None and diagnosed < started_at
        result.add("from_trigger", 1.0 if from_trigger else 0.0)
    if first.at is None or healthy_at is None or healthy_at < first.at:
        # No action, or healthy before it: this repetition has no floor to measure against.
        say(f"  flow {recovery_s:.2f} s ({state.name}): no floor (action {first.at}, healthy "
            f"{healthy_at})")  # fmt: skip
        return recovery_s
    before, floor, after = first.at - started, healthy_at - first.at, done - healthy_at
    result.add("before_action_s", before)
    result.add("floor_s", floor)
    result.add("after_floor_s", after)
    result.add("over_floor_s", before + after)
    say(f"  flow {recovery_s:.2f} s ({state.name}): {before:.2f} s before the action, "
        f"{floor:.2f} s floor, {after:.2f} s after")  # fmt: skip
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
        automatic = BenchResult(
            f"{scenario.short}-auto", f"Time to recover from {scenario.fault}, automatic"
        )
        _declare_automatic(automatic)
        for rep in range(options.reps(3)):
            say(f"{scenario.short}, automatic: repetition {rep + 1}")
            try:
                _ours(env, scenario, automatic, automatic=True)
            finally:
                env.heal()
        automatic.note(
            "started as the automation starts it: triggered_by a diagnosis run of the fault "
            "made just before (not timed), the budget raised, no relapse check"
        )
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
        results.append(automatic)
    return results
