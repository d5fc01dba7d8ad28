"""diagnose-service-health: every component checked concurrently under one deadline."""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger
from prefect.states import State

from flows import publishing
from flows.naming import diagnose_run_name
from flows.standdown import automation_notes
from service_health.assessment import build_diagnostic_report
from service_health.log_lines import check_lines, verdict_line
from service_health.models import CheckResult, DiagnosticReport, Verdict
from service_health.redaction import Redactor, redact_url
from service_health.rendering import checks_table, diagnosis_markdown
from service_health.settings import ConfigError, Target
from tasks import checks, events
from tasks.config import load_target, with_secrets
from tasks.deadline import TimedOut, gather_by_deadline
from tasks.evidence import Evidence
from tasks.retries import in_task_retrying

Check = Callable[..., Coroutine[Any, Any, CheckResult]]

# Report check name -> the task producing it. ALB, ECS, RDS and CloudWatch are separate
# tasks whose results the report groups under aws_infrastructure.
CHECKS: dict[str, Check] = {
    "api_connectivity": checks.check_api_connectivity,
    "health_endpoints": checks.check_health_endpoints,
    "circuit_breaker": checks.check_circuit_breaker,
    "mlflow_service": checks.check_mlflow,
    "database": checks.check_database,
    "redis": checks.check_redis,
    "alb": checks.check_alb,
    "ecs": checks.check_ecs,
    "rds": checks.check_rds,
    "cloudwatch": checks.check_cloudwatch,
    "service_metrics": checks.check_service_metrics,
}


def _in_this_task(check: Check) -> Check:
    """The check's body called directly, with the retries its task run would have had."""
    body: Check = getattr(check, "fn", check)

    async def call(*args: Any) -> CheckResult:
        result: CheckResult = await in_task_retrying(checks.CHECK_RETRIES)(body, *args)
        return result

    return call


async def run_checks(
    target: Target, deadline_s: float, task_runs: bool = True
) -> dict[str, CheckResult]:
    """Every check concurrently; one still running at the deadline is an `error` result.

    With `task_runs` each check is a task run of its own (the diagnose flow: each shows in
    the run, is retried by Prefect); without, the checks run inside the caller's task with
    the same retries (a recovery's own diagnoses: eleven task runs cost about 0.2 s of the
    recovery's time and CPU it shares with the stabilisation wait)."""
    redactor = Redactor(target.secret_values())
    api_key = target.api_key.get_secret_value() if target.api_key else None
    async with Evidence(target, api_key, time.monotonic() + deadline_s) as ev:
        started = time.perf_counter()

        async def timed(check: Check, *args: Any) -> CheckResult:
            result = await check(*args)
            duration = round((time.perf_counter() - started) * 1000, 1)
            return result.model_copy(update={"duration_ms": result.duration_ms or duration})

        jobs = {
            name: timed(check if task_runs else _in_this_task(check), ev)
            for name, check in CHECKS.items()
        }
        outcomes = await gather_by_deadline(jobs, deadline_s)
        results: dict[str, CheckResult] = {}
        for name, outcome in outcomes.items():
            if isinstance(outcome, TimedOut):
                results[name] = CheckResult.failed(
                    name,
                    f"timed out: still running at the {deadline_s:g}s deadline",
                    duration_ms=round((time.perf_counter() - started) * 1000, 1),
                )
            elif isinstance(outcome, BaseException):
                results[name] = CheckResult.failed(
                    name, redactor.text(f"check failed: {type(outcome).__name__}: {outcome}")[:500]
                )
            else:
                results[name] = outcome
        return results


TOP_FINDINGS = 3
MESSAGE_CHARS = 600


def final_state(report: DiagnosticReport) -> State[Any]:
    verdict = report.overall_status
    message = f"{report.target}: {verdict.value}"
    # The top findings, critical first: the message is what a notification carries.
    top = (report.critical_issues + report.warnings)[:TOP_FINDINGS]
    if top:
        message += " - " + "; ".join(top)
    if len(message) > MESSAGE_CHARS:
        message = message[: MESSAGE_CHARS - 1] + "…"
    if verdict is Verdict.CRITICAL:
        return publishing.failed(verdict.state_name, message, report)
    return publishing.completed(verdict.state_name, message, report)


@flow(name="diagnose-service-health", flow_run_name=diagnose_run_name)
async def diagnose_service_health(
    target: str = "env",
    api_url: str | None = None,
    mlflow_url: str | None = None,
    aws_region: str | None = None,
    deadline_seconds: float | None = None,
    slow_response_seconds: float | None = None,
    follow_up_of: str | None = None,
) -> State[Any]:
    """Check every component of the service and give a verdict: healthy, degraded, critical.

    Args:
        target: Target name from targets.yaml; "env" reads everything from the environment.
        api_url: Override the target's API URL.
        mlflow_url: Override the target's MLflow tracking URL.
        aws_region: Override the target's AWS region.
        deadline_seconds: Deadline for the whole check phase (default 30 s).
        slow_response_seconds: API response time above which a warning is raised (default 5 s).
        follow_up_of: Set by a recovery that ended Recovered (its flow-run id): this run is
            its relapse check, and a verdict other than healthy marks it relapsed.
    """
    logger = get_run_logger()
    started_at = datetime.now(UTC)
    started = time.perf_counter()
    overrides = {"api_url": api_url, "mlflow_url": mlflow_url, "aws_region": aws_region}
    try:
        resolved = await with_secrets(load_target(target, overrides))
        thresholds = resolved.thresholds.with_overrides(
            deadline_s=deadline_seconds, slow_response_s=slow_response_seconds
        )
    except ConfigError as exc:
        # One clean line, no traceback; the command line maps it to exit code 64.
        logger.error("Configuration error: %s", exc)
        return publishing.failed("Config error", f"configuration error: {exc}", exc)
    resolved = resolved.model_copy(update={"thresholds": thresholds})
    logger.info("Diagnosing %s at %s", resolved.name, redact_url(resolved.api_url))

    results = await run_checks(resolved, thresholds.deadline_s)
    report = build_diagnostic_report(
        resolved.name, results, started_at, time.perf_counter() - started
    )
    redactor = Redactor(resolved.secret_values())
    report = DiagnosticReport.model_validate(redactor.obj(report.model_dump(mode="json")))
    # A freeze or relapse hold of automated recovery, and the relapse check this run may be.
    report = await automation_notes(resolved, report, redactor, follow_up_of)

    key = f"diagnosis-{resolved.slug}"
    await publishing.markdown(key, diagnosis_markdown(report), f"Diagnosis of {resolved.name}")
    await publishing.table(f"{key}-checks", checks_table(report), f"Checks of {resolved.name}")
    # The Logs tab tells the story: each check with its main finding, then the verdict's
    # reasons (the report was redacted above; the lines are redacted again as built).
    for line in check_lines(report):
        logger.info("%s", redactor.text(line))
    verdict = logger.warning if report.overall_status is not Verdict.HEALTHY else logger.info
    verdict("%s", redactor.text(verdict_line(report)))
    # The report (redacted above) for a recovery this verdict starts: it may plan from it.
    events.diagnosis_finished(resolved.slug, report)
    return final_state(report)
