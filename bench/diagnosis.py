"""Benchmarks 1 and 2: the diagnose flow under added latency, and with a hung registry.

Both run the real `diagnose-service-health` flow in this process against the sandbox
target, reported to the benchmark's Prefect server, and the seed-style sequential baseline
(bench.baselines) right after it, repetition by repetition.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import yaml
from prefect import flow

import flows.diagnose as diagnose_module
from bench.baselines import sequential_diagnosis
from bench.environment import REGISTRY, BenchEnv, RunOptions, wait_until
from bench.harness import BenchResult, ratio, say, stopwatch
from flows.diagnose import CHECKS, diagnose_service_health
from service_health.models import CheckName, DiagnosticReport
from tasks.config import load_target, read_targets, with_secrets
from tasks.evidence import Evidence

TARGET = "sandbox"
LATENCY_MS = 300
LATENCY_COMPONENTS = ("registry", "mlflow")
LATENCY_BASELINE_TIMEOUT_S = 10.0
HUNG_DEADLINE_S = 10.0
HUNG_BASELINE_TIMEOUT_S = 10.0
PATIENT = "sandbox-patient"
PATIENT_TIMEOUT_S = 60.0
TOP_LEVEL_CHECKS = {
    CheckName.API_CONNECTIVITY,
    CheckName.HEALTH_ENDPOINTS,
    CheckName.CIRCUIT_BREAKER,
    CheckName.MLFLOW_SERVICE,
    CheckName.DATABASE,
    CheckName.REDIS,
    CheckName.AWS_INFRASTRUCTURE,
    CheckName.SERVICE_METRICS,
}
AWS_COMPONENTS = {CheckName.ALB, CheckName.ECS, CheckName.RDS, CheckName.CLOUDWATCH}


@contextmanager
def check_phase_timer() -> Iterator[list[float]]:
    """Seconds spent in the diagnose flow's check phase (`run_checks`), one per flow run.

    The flow looks `run_checks` up in its module at call time, so the real flow runs with
    a timed wrapper around its own check phase.
    """
    phases: list[float] = []
    original = diagnose_module.run_checks

    async def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await original(*args, **kwargs)
        finally:
            phases.append(time.perf_counter() - started)

    diagnose_module.run_checks = timed
    try:
        yield phases
    finally:
        diagnose_module.run_checks = original


@flow(name="bench-single-checks")
async def single_checks(target: str = TARGET) -> dict[str, float]:
    """Each check of the diagnose flow alone, one after another, each with its own
    evidence (nothing shared): how long each would take if it were the only one."""
    resolved = await with_secrets(load_target(target))
    key = resolved.api_key.get_secret_value() if resolved.api_key else None
    seconds: dict[str, float] = {}
    for name, check in CHECKS.items():
        deadline = time.monotonic() + resolved.thresholds.deadline_s
        async with Evidence(resolved, key, deadline) as ev:
            started = time.perf_counter()
            await check(ev)
            seconds[name] = time.perf_counter() - started
    return seconds


def run_diagnosis(
    deadline_s: float | None = None, target: str = TARGET
) -> tuple[float, float, Any]:
    """(whole flow run s, check phase s, final state) of one diagnose flow run."""

    async def go() -> Any:
        return await diagnose_service_health(
            target=target, deadline_seconds=deadline_s, return_state=True
        )

    with check_phase_timer() as phases, stopwatch() as total:
        state = asyncio.run(go())
    return total(), phases[0], state


def report_complete(report: Any) -> bool:
    """Every check of the seed's report is there, each with a status."""
    if not isinstance(report, DiagnosticReport):
        return False
    top = set(report.checks)
    aws = report.checks.get(CheckName.AWS_INFRASTRUCTURE)
    components = set(aws.components) if aws is not None else set()
    return top >= TOP_LEVEL_CHECKS and components >= AWS_COMPONENTS


def timed_out_checks(report: Any) -> int:
    if not isinstance(report, DiagnosticReport):
        return 0
    results = list(report.checks.values())
    results += [c for r in report.checks.values() for c in r.components.values()]
    return sum(1 for r in results if r.error and "timed out: still running" in r.error)


# --- 1. latency ---------------------------------------------------------------------------


def bench_latency(env: BenchEnv, options: RunOptions) -> list[BenchResult]:
    result = BenchResult(
        "latency",
        f"Diagnosis with {LATENCY_MS} ms added to every registry and MLflow response",
    )
    result.figure("check_phase_s", "s", "the diagnose flow's check phase (concurrent checks)")
    result.figure("flow_run_s", "s", "the whole diagnose flow run (checks, report, artifacts)")
    result.figure("sequential_s", "s", "seed-style baseline: the same checks one after another")
    result.figure("slowest_single_s", "s", "the slowest check run alone (nothing shared)")
    result.figure("speedup_x", "x", "sequential_s / check_phase_s, per repetition")
    result.figure(
        "phase_vs_bound",
        "ratio",
        "check_phase_s / (1.5 x slowest_single_s + 0.5 s)",
    )
    result.figure("sequential_requests", "count", "requests made by the sequential baseline")
    result.goal("concurrent check phase >= 4x faster than sequential", "speedup_x", ">=", 4.0)
    result.goal(
        "check phase within 1.5x the slowest single check + 0.5 s", "phase_vs_bound", "<=", 1.0
    )
    env.heal()
    say("latency: warm-up diagnosis (not counted)")
    run_diagnosis()
    for component in LATENCY_COMPONENTS:
        env.client.fault("latency", ms=LATENCY_MS, component=component)
    slowest_names: list[str] = []
    try:
        for rep in range(options.reps(5)):
            say(f"latency: repetition {rep + 1}")
            flow_s, phase_s, state = run_diagnosis()
            seq = sequential_diagnosis(env.info, LATENCY_BASELINE_TIMEOUT_S)
            singles = asyncio.run(single_checks(TARGET))
            slowest_name = max(singles, key=singles.__getitem__)
            slowest_names.append(slowest_name)
            slowest = singles[slowest_name]
            result.add("check_phase_s", phase_s)
            result.add("flow_run_s", flow_s)
            result.add("sequential_s", seq.total_s)
            result.add("slowest_single_s", slowest)
            result.add("speedup_x", ratio(seq.total_s, phase_s))
            result.add("phase_vs_bound", phase_s / (1.5 * slowest + 0.5))
            result.add("sequential_requests", seq.requests)
            say(
                f"  flow {flow_s:.2f} s (checks {phase_s:.2f} s, {state.name}), sequential "
                f"{seq.total_s:.2f} s, slowest single {slowest_name} {slowest:.2f} s"
            )
    finally:
        env.heal()
    result.note(
        f"slowest single check: {', '.join(sorted(set(slowest_names)))}; latency added at the "
        f"registry replicas and the MLflow load balancer ({LATENCY_MS} ms each), so a registry "
        "endpoint that calls MLflow pays it twice"
    )
    return [result]


# --- 2. hung registry ------------------------------------------------------------------------


def _all_targets_unhealthy(env: BenchEnv) -> bool:
    replicas = env.client.status()["services"][REGISTRY]["replicas"]
    return bool(replicas) and all(r["health"] == "unhealthy" for r in replicas)


def bench_hung(env: BenchEnv, options: RunOptions) -> list[BenchResult]:
    result = BenchResult(
        "hung",
        f"Diagnosis with every registry replica hung, deadline {HUNG_DEADLINE_S:g} s",
    )
    result.figure("diagnosis_s", "s", "the whole diagnose flow run, deadline_seconds=10")
    result.figure("over_deadline_s", "s", "diagnosis_s - deadline")
    result.figure("report_complete", "bool", "1 when the report has every check (seed names)")
    result.figure("timed_out_checks", "count", "checks cut by the deadline (reported as error)")
    result.figure(
        "sequential_s",
        "s",
        f"seed-style baseline, {HUNG_BASELINE_TIMEOUT_S:g} s timeout a request",
    )
    result.figure("sequential_failures", "count", "requests of the baseline that failed")
    result.figure("speedup_x", "x", "sequential_s / diagnosis_s, per repetition")
    result.goal(
        "every run finishes within the deadline + 2 s", "over_deadline_s", "<=", 2.0, stat="max"
    )
    result.goal("every report complete", "report_complete", ">=", 1.0, stat="min")
    result.figure(
        "patient_diagnosis_s",
        "s",
        f"the same, per-request timeouts {PATIENT_TIMEOUT_S:g} s: only the deadline bounds it",
    )
    result.figure("patient_over_deadline_s", "s", "patient_diagnosis_s - deadline")
    result.figure("patient_timed_out_checks", "count", "checks cut by the deadline")
    result.figure("patient_report_complete", "bool", "1 when the report has every check")
    result.goal(
        "per-request timeouts past the deadline: every run within the deadline + 2 s",
        "patient_over_deadline_s",
        "<=",
        2.0,
        stat="max",
    )
    result.goal(
        "per-request timeouts past the deadline: every report complete",
        "patient_report_complete",
        ">=",
        1.0,
        stat="min",
    )
    env.heal()
    verdicts: list[str] = []
    # A target whose requests may each take longer than the whole deadline (an operator's
    # patient setting for a slow service): the deadline, not a request timeout, ends it.
    patient = read_targets()[TARGET].model_dump(mode="json", exclude_unset=True)
    patient["thresholds"] = {
        **patient.get("thresholds", {}),
        "request_timeout_s": PATIENT_TIMEOUT_S,
        "mlflow_request_timeout_s": PATIENT_TIMEOUT_S,
    }
    targets_file = env.work / "hung-targets.yaml"
    targets_file.write_text(yaml.safe_dump({"targets": {PATIENT: patient}}))
    try:
        env.client.fault("registry-hung")
        # The steady state of a hung service: the ALB has marked every target unhealthy
        # (it answers 503 at once); only requests to the replicas themselves hang.
        wait_until(lambda: _all_targets_unhealthy(env), 30, "the ALB to mark the hung targets")
        for rep in range(options.reps(3)):
            say(f"hung: repetition {rep + 1}")
            flow_s, _, state = run_diagnosis(HUNG_DEADLINE_S)
            report = state.result(raise_on_failure=False)
            seq = sequential_diagnosis(env.info, HUNG_BASELINE_TIMEOUT_S)
            verdicts.append(str(state.name))
            result.add("diagnosis_s", flow_s)
            result.add("over_deadline_s", flow_s - HUNG_DEADLINE_S)
            result.add("report_complete", 1.0 if report_complete(report) else 0.0)
            result.add("timed_out_checks", timed_out_checks(report))
            result.add("sequential_s", seq.total_s)
            result.add("sequential_failures", seq.failures)
            result.add("speedup_x", ratio(seq.total_s, flow_s))
            say(f"  flow {flow_s:.2f} s ({state.name}), sequential {seq.total_s:.2f} s")
            previous = os.environ.get("HOKUSAI_TARGETS_FILE")
            os.environ["HOKUSAI_TARGETS_FILE"] = str(targets_file)
            try:
                flow_s, _, state = run_diagnosis(HUNG_DEADLINE_S, target=PATIENT)
            finally:
                if previous is None:
                    os.environ.pop("HOKUSAI_TARGETS_FILE", None)
                else:
                    os.environ["HOKUSAI_TARGETS_FILE"] = previous
            report = state.result(raise_on_failure=False)
            result.add("patient_diagnosis_s", flow_s)
            result.add("patient_over_deadline_s", flow_s - HUNG_DEADLINE_S)
            result.add("patient_timed_out_checks", timed_out_checks(report))
            result.add("patient_report_complete", 1.0 if report_complete(report) else 0.0)
            say(f"  patient timeouts: flow {flow_s:.2f} s ({state.name})")
    finally:
        env.heal()
    result.note(f"final states: {', '.join(sorted(set(verdicts)))}")
    return [result]
