"""test-enhanced-health-checks: does a running service honour its health contract?

The read-only tests run concurrently on one shared set of answers under one deadline; the
two reset tests (the only requests that could change the service) run afterwards, so that
a service wrongly accepting a reset cannot alter the evidence of the others, and are
skipped in a read-only run.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger
from prefect.states import State

from flows import publishing
from service_health.contract import (
    READ_ONLY,
    RESET_PROBES,
    ContractReport,
    ContractTestResult,
    build_contract_report,
    contract_markdown,
    reset_probes_unsafe,
    tests_table,
)
from service_health.redaction import Redactor, redact_url
from service_health.settings import ConfigError, Target
from tasks.config import load_target, with_secrets
from tasks.contract import reset_probe, run_contract_test
from tasks.deadline import TimedOut, gather_by_deadline
from tasks.evidence import Evidence


def _failure(redactor: Redactor, exc: BaseException) -> str:
    return redactor.text(f"{type(exc).__name__}: {exc}")[:500]


async def run_read_only_tests(
    target: Target, deadline_s: float
) -> tuple[dict[str, ContractTestResult], str | None]:
    """Every read-only test concurrently; one still running at the deadline fails.

    Also says why the reset probes must not follow (None when a reset would change
    nothing), from every replica's breaker as this run read it."""
    redactor = Redactor(target.secret_values())
    api_key = target.api_key.get_secret_value() if target.api_key else None
    started = time.perf_counter()

    def elapsed() -> float:
        return round((time.perf_counter() - started) * 1000, 1)

    async with Evidence(target, api_key, time.monotonic() + deadline_s) as ev:
        outcomes = await gather_by_deadline(
            {test.name: run_contract_test(test, ev) for test in READ_ONLY}, deadline_s
        )
        results: dict[str, ContractTestResult] = {}
        for name, outcome in outcomes.items():
            if isinstance(outcome, TimedOut):
                results[name] = ContractTestResult.errored(
                    name, f"timed out: still running at the {deadline_s:g}s deadline", elapsed()
                )
            elif isinstance(outcome, BaseException):
                results[name] = ContractTestResult.errored(
                    name, _failure(redactor, outcome), elapsed()
                )
            else:
                results[name] = outcome
        views, partial = await ev.breaker_views()
        return results, reset_probes_unsafe(views, partial, ev.known_replicas)


async def run_mutating_tests(
    target: Target, read_only: bool, unsafe: str | None = None
) -> dict[str, ContractTestResult]:
    """The reset tests, one after the other; skipped (not passed) in a read-only run or
    where `unsafe` says a reset could change the service. In a read-only run the probe's
    client itself refuses the POST (tasks/contract.py), should it ever get that far."""
    if read_only or unsafe is not None:
        reason = (
            "read-only run: no POST /health/mlflow/reset sent"
            if read_only
            else f"not sent, to change nothing: {unsafe}"
        )
        return {p.name: ContractTestResult.skipped(p.name, reason) for p in RESET_PROBES}
    redactor = Redactor(target.secret_values())
    timeout_s = target.thresholds.request_timeout_s
    results: dict[str, ContractTestResult] = {}
    for probe in RESET_PROBES:
        try:
            results[probe.name] = await reset_probe(probe, target.api_url, timeout_s, read_only)
        except Exception as exc:  # a test that raises is a failed test, never a crashed run
            results[probe.name] = ContractTestResult.errored(probe.name, _failure(redactor, exc))
    return results


def final_state(report: ContractReport) -> State[Any]:
    s = report.summary
    message = f"{report.target}: {s.passed}/{s.total_tests} contract tests passed"
    if s.skipped:
        message += f", {s.skipped} skipped"
    failed = report.failed_tests()
    if failed:
        message += f"; failed: {', '.join(failed)}"
    if report.all_passed:
        return publishing.completed(report.state_name, message, report)
    return publishing.failed(report.state_name, message, report)


@flow(name="test-enhanced-health-checks")
async def verify_contract(
    target: str = "env",
    api_url: str | None = None,
    read_only: bool = False,
    deadline_seconds: float | None = None,
    request_timeout_seconds: float | None = None,
) -> State[Any]:
    """Verify that the running service honours its health contract; Passed or Failed.

    Args:
        target: Target name from targets.yaml; "env" reads everything from the environment.
        api_url: Override the target's API URL.
        read_only: Skip the two POST /health/mlflow/reset tests (reported as skipped).
        deadline_seconds: Deadline for the read-only tests together (default 30 s).
        request_timeout_seconds: Timeout of one request (default 5 s).
    """
    logger = get_run_logger()
    started_at = datetime.now(UTC)
    started = time.perf_counter()
    try:
        resolved = await with_secrets(load_target(target, {"api_url": api_url}))
        thresholds = resolved.thresholds.with_overrides(
            deadline_s=deadline_seconds, request_timeout_s=request_timeout_seconds
        )
    except ConfigError as exc:
        # A clean one-line failure (no traceback in the run's logs); the command line maps
        # it to exit code 64.
        logger.error("Configuration error: %s", exc)
        return publishing.failed("Failed", f"configuration error: {exc}", exc)
    resolved = resolved.model_copy(update={"thresholds": thresholds})
    logger.info(
        "Contract tests of %s at %s%s",
        resolved.name,
        redact_url(resolved.api_url),
        " (read-only)" if read_only else "",
    )

    results, unsafe = await run_read_only_tests(resolved, thresholds.deadline_s)
    results.update(await run_mutating_tests(resolved, read_only, unsafe))
    report = build_contract_report(
        resolved.name,
        resolved.api_url,
        started_at.isoformat(),
        time.perf_counter() - started,
        results,
        read_only=read_only,
    )
    redactor = Redactor(resolved.secret_values())
    report = ContractReport.model_validate(redactor.obj(report.model_dump(mode="json")))

    key = f"contract-{resolved.slug}"
    await publishing.markdown(
        key, contract_markdown(report), f"Health contract tests of {resolved.name}"
    )
    await publishing.table(
        f"{key}-tests",
        tests_table(report),
        f"Health contract tests of {resolved.name}, one row per test",
    )
    for name, result in report.tests.items():
        if result.diff:
            logger.info("%s failed: %s", name, " | ".join(result.diff))
    state = final_state(report)
    logger.info("%s", state.message)
    return state
