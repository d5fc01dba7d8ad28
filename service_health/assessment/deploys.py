"""Why tasks die: which revision of an ECS service is failing, on what evidence, and the
last revision that completed a deployment. Pure: observations in, facts and findings out.

A revision is failing when it is the PRIMARY deployment's and that deployment's rollout
FAILED (ECS's deployment circuit breaker), or is still in progress while its tasks stop for
a reason that is the revision's (an essential container exited, the task failed to start or
failed its health checks). That is critical only when no task of any revision runs (the
service serves nothing); otherwise a warning, since the earlier revision's tasks serve.
Stopped tasks of a revision that is not failing are told as information: they explain a
symptom the ECS check already judges (running < desired) and must not turn a service that
has since recovered into a degraded one.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta

from service_health.assessment.common import CREDENTIAL_CODES, ResultBuilder, plural
from service_health.deploy_evidence import (
    STOPPED_TASKS_PAGE,
    STOPPED_WINDOW_S,
    DeployFacts,
    Deployment,
    DeployObservations,
    EcsTask,
    RevisionStops,
    ServiceDeployments,
    StopCause,
    read_task_arns,
    read_task_definition,
    read_tasks,
)
from service_health.models import CheckStatus
from service_health.observations import AwsObservation

# Stop codes and reasons that say the revision itself could not run.
_FAILED_STOP_CODES = frozenset({"EssentialContainerExited", "TaskFailedToStart"})
_FAILED_REASON_WORDS = (
    "health check",
    "CannotPull",
    "ResourceInitializationError",
    "OutOfMemory",
    "CannotStartContainer",
)
LATEST_STOPPED_KEPT = 5  # stopped tasks shown one by one in the report
# Service events worth quoting next to a failing revision.
_TELLING_EVENTS = ("is unhealthy in", "failed container health checks", "unable to place")


def _is_failure(stop_code: str | None, reason: str | None) -> bool:
    if stop_code in _FAILED_STOP_CODES:
        return True
    text = (reason or "").lower()
    return any(word.lower() in text for word in _FAILED_REASON_WORDS)


def failed_stop(task: EcsTask) -> bool:
    """Whether a stopped task stopped for a reason that is its revision's (not a scale-in,
    a deployment draining it, or an operator)."""
    return _is_failure(task.stop_code, task.stopped_reason)


def _of_deployment(task: EcsTask, deployment: Deployment) -> bool:
    """Whether `task` was started by `deployment`: ECS's startedBy names it; without one,
    a task of its revision that stopped since it began."""
    if task.started_by and deployment.id:
        return task.started_by == deployment.id
    if task.task_definition != deployment.task_definition:
        return False
    began = deployment.created_at
    return began is None or task.stopped_at is None or task.stopped_at >= began


def _minutes(seconds: int) -> str:
    return f"{seconds // 60} min" if seconds >= 60 else f"{seconds} s"


def _causes(tasks: list[EcsTask]) -> list[StopCause]:
    by_reason: dict[tuple[str, str | None], StopCause] = {}
    for task in tasks:
        key = (task.stopped_reason or "no stopped reason given", task.stop_code)
        cause = by_reason.setdefault(key, StopCause(reason=key[0], stop_code=key[1]))
        cause.count += 1
        for code in task.exit_codes:
            if code not in cause.exit_codes and len(cause.exit_codes) < 5:
                cause.exit_codes.append(code)
        for c in task.containers:
            if c.reason and c.reason not in cause.container_reasons:
                cause.container_reasons.append(c.reason)
        if task.stopped_at and (cause.last_at is None or task.stopped_at > cause.last_at):
            cause.last_at = task.stopped_at
    return sorted(by_reason.values(), key=lambda c: -c.count)


def _stops_by_revision(tasks: list[EcsTask]) -> list[RevisionStops]:
    groups: dict[str | None, list[EcsTask]] = {}
    for task in tasks:
        groups.setdefault(task.task_definition, []).append(task)
    out = [
        RevisionStops(
            revision=group[0].revision,
            task_definition=td,
            stopped=len(group),
            failed=sum(failed_stop(t) for t in group),
            causes=_causes(group),
        )
        for td, group in groups.items()
    ]
    return sorted(out, key=lambda r: -r.stopped)


def _last_completed(deployments: list[Deployment]) -> Deployment | None:
    """The newest deployment whose rollout completed."""
    done = [d for d in deployments if d.rollout_state == "COMPLETED"]
    if not done:
        return None
    return max(done, key=lambda d: (d.created_at is not None, d.created_at or datetime.min))


def _read_failure(obs: AwsObservation | None, what: str) -> str | None:
    if obs is None or (obs.error_code is None and obs.response is not None):
        return None
    code = obs.error_code or "NoResponse"
    hint = f"; grant {obs.label}" if code in CREDENTIAL_CODES or obs.http_status == 403 else ""
    message = f": {obs.error_message}" if obs.error_message else ""
    return f"{what} not read ({obs.label} {code}{message}{hint})"


def judge_service(
    service: ServiceDeployments,
    observed: DeployObservations | None,
    now: datetime,
    window_s: int = STOPPED_WINDOW_S,
) -> DeployFacts:
    """The facts about one service's deployments and the tasks that stopped recently."""
    facts = DeployFacts(
        service=service.name,
        window_s=window_s,
        primary=service.primary,
        deployments=service.deployments,
        events=service.events,
    )
    for d in service.deployments:
        if d.revision and d.running:
            facts.running_revisions[d.revision] = facts.running_revisions.get(d.revision, 0) + (
                d.running
            )
    last = _last_completed(service.deployments)
    if last is not None:
        facts.last_completed_revision = last.revision
        facts.last_completed_task_definition = last.task_definition

    tasks: list[EcsTask] = []
    if observed is not None:
        for obs, what in (
            (observed.list_stopped, "stopped tasks"),
            (observed.describe_stopped, "stopped tasks' details"),
        ):
            failure = _read_failure(obs, what)
            if failure:
                facts.not_read.append(failure)
        if observed.not_read:
            facts.not_read.append(observed.not_read)
        if observed.describe_stopped is not None and observed.describe_stopped.response:
            tasks = read_tasks(observed.describe_stopped.response, facts.problems)
        for arn, obs in observed.task_definitions.items():
            found = read_task_definition(obs.response, facts.problems) if obs.response else None
            if found is not None and found.revision:
                facts.images[found.revision] = found.images
            elif (failure := _read_failure(obs, f"task definition {arn}")) is not None:
                facts.not_read.append(failure)
    facts.stopped_tasks_read = len(tasks)
    since = now - timedelta(seconds=window_s)
    recent = [t for t in tasks if t.stopped_at is not None and t.stopped_at >= since]
    facts.stopped = _stops_by_revision(recent)
    facts.latest_stopped = sorted(recent, key=lambda t: t.stopped_at or since, reverse=True)[
        :LATEST_STOPPED_KEPT
    ]

    primary = service.primary
    if primary is None:
        return facts
    failed_rollout = primary.rollout_state == "FAILED"
    # Without a rollout state (not a rolling update), a second deployment says one rolls.
    rolling = primary.rollout_state == "IN_PROGRESS" or (
        primary.rollout_state is None and len(service.deployments) > 1
    )
    own = [t for t in recent if failed_stop(t) and _of_deployment(t, primary)]
    if not (failed_rollout or (rolling and (own or (primary.failed_tasks or 0) > 0))):
        return facts
    facts.failing_revision = primary.revision or primary.task_definition
    facts.failing_task_definition = primary.task_definition
    evidence = facts.failing_evidence
    if own:
        causes = "; ".join(c.text() for c in _causes(own))
        # A full page may have left older ones out: the count is then a lower bound.
        bound = "at least " if len(tasks) >= STOPPED_TASKS_PAGE else ""
        evidence.append(
            f"{bound}{plural(len(own), 'task')} stopped in the last {_minutes(window_s)}: {causes}"
        )
    if failed_rollout:
        failed = f", {plural(primary.failed_tasks, 'failed task')}" if primary.failed_tasks else ""
        reason = (primary.rollout_reason or "no reason given").rstrip(".")
        evidence.append(f"its deployment {primary.id or '?'} FAILED ({reason}{failed})")
    elif primary.failed_tasks:
        evidence.append(
            f"its deployment {primary.id or '?'} is {primary.rollout_state or 'in progress'} "
            f"with {plural(primary.failed_tasks, 'failed task')}"
        )
    telling = next(
        (
            e
            for e in service.events
            if any(w in e.message for w in _TELLING_EVENTS) and (e.at is None or e.at >= since)
        ),
        None,
    )
    if telling is not None:
        evidence.append(f"ECS says: {telling.message.rstrip('.')}")
    return facts


def _serving(service: ServiceDeployments) -> str:
    """What the other revisions run, or that nothing does."""
    others = [
        f"revision {d.revision or d.task_definition or '?'} runs {d.running}/{d.desired or '?'}"
        for d in service.deployments
        if d.status != "PRIMARY" and d.running
    ]
    if others:
        return "; ".join(others)
    if service.running == 0:
        return "no task of any revision runs: the service serves nothing"
    return "no task of an earlier revision runs"


def add_deploy_findings(
    b: ResultBuilder,
    service: ServiceDeployments,
    facts: DeployFacts,
    critical: bool,
    evidence: list[str],
) -> None:
    """The findings about one service's deployments and stopped tasks."""
    name = service.name
    failing = facts.failing_revision
    if failing is not None:
        serving = _serving(service)
        image = facts.images.get(failing)
        with_image = f" (image {', '.join(image)})" if image else ""
        message = (
            f"ECS service {name}: revision {failing}{with_image} is failing: "
            f"{'; '.join(facts.failing_evidence)}; {serving}"
        )
        last = facts.last_completed_revision
        if last is not None and last != failing:
            recommendation = (
                f"Roll back {name} to revision {last} (the last that completed a deployment); "
                f"do not force a new deployment of {failing}: its tasks would fail the same "
                "way. The stopped tasks' logs say why they stop"
            )
        elif last == failing:
            message += (
                "; the same revision completed a deployment before: the cause may lie "
                "outside it (dependencies, configuration, capacity)"
            )
            recommendation = (
                f"Read the stopped tasks' logs of {name}; check its dependencies and "
                "configuration before deploying again"
            )
        else:
            message += "; no earlier revision is known to have completed a deployment"
            recommendation = (
                f"Read the stopped tasks' logs of {name} and fix the release; there is no "
                "known good revision to roll back to"
            )
        if service.running == 0 and critical:
            b.critical(message, recommendation, evidence)
        elif service.running == 0:
            b.warning(message, recommendation, evidence, CheckStatus.UNHEALTHY)
        else:
            b.warning(message, recommendation, evidence)
    for stops in facts.stopped:
        if stops.failed == 0 or (failing is not None and stops.revision == failing):
            continue
        causes = "; ".join(c.text() for c in stops.causes if _is_failure(c.stop_code, c.reason))
        b.info(
            f"ECS service {name}: {plural(stops.failed, 'task')} of revision "
            f"{stops.revision or stops.task_definition or '?'} stopped in the last "
            f"{_minutes(facts.window_s)}: {causes}",
            evidence,
        )
    for failure in facts.not_read:
        b.info(f"ECS service {name}: {failure}; why its tasks stop is not known", evidence)


def deploy_labels(observed: Mapping[str, DeployObservations]) -> list[str]:
    """The evidence labels of the reads made about stopped tasks and task definitions."""
    labels: list[str] = []
    for obs in observed.values():
        for one in (obs.list_stopped, obs.describe_stopped, *obs.task_definitions.values()):
            if one is not None and one.label not in labels:
                labels.append(one.label)
    return labels


def task_definitions_to_describe(
    service: ServiceDeployments, observed: DeployObservations, now: datetime
) -> list[str]:
    """The task definitions worth a DescribeTaskDefinition: the failing revision's and the
    last completed one's (their images tell what changed); none when nothing fails."""
    facts = judge_service(service, observed, now)
    if facts.failing_task_definition is None:
        return []
    arns = [facts.failing_task_definition]
    last = facts.last_completed_task_definition
    if last and last not in arns:
        arns.append(last)
    return arns


def stopped_task_arns(observed: DeployObservations) -> list[str]:
    """The ARNs of the page of stopped tasks ListTasks returned."""
    listed = observed.list_stopped
    if listed is None or listed.response is None:
        return []
    return read_task_arns(listed.response, [])
