"""AWS infrastructure: load balancer, ECS services, RDS instances, CloudWatch alarms.

A failed AWS call (throttling, missing credentials) makes the check `error` with a warning:
it says nothing about the resource itself, so it is never critical.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime

from service_health.assessment.common import ResultBuilder, aws_error, plural, unexplained
from service_health.assessment.deploys import add_deploy_findings, deploy_labels, judge_service
from service_health.aws_responses import (
    DbInstanceEntry,
    EcsServiceEntry,
    TargetHealthEntry,
    read_alarms,
    read_db_instances,
    read_ecs_services,
    read_load_balancers,
    read_target_health,
)
from service_health.deploy_evidence import DeployObservations, read_service_deployments
from service_health.details import (
    AlbFacts,
    EcsFacts,
    EcsServiceState,
    MissingService,
    TargetGroupError,
    TargetGroupState,
    TargetState,
)
from service_health.models import CheckName, CheckResult, CheckStatus, Finding, worst_status
from service_health.observations import AwsObservation

# RDS states in which the instance still serves connections.
_RDS_SERVING = {
    "available",
    "backing-up",
    "modifying",
    "maintenance",
    "upgrading",
    "storage-optimization",
    "configuring-enhanced-monitoring",
    "configuring-iam-database-auth",
    "configuring-log-exports",
    "renaming",
    "resetting-master-credentials",
}
_FORCE_DEPLOY = "force a new deployment (recover_service)"


def assess_alb(
    lbs: AwsObservation | None,
    target_health: Mapping[str, AwsObservation],
    non_critical_groups: Collection[str] = (),
) -> CheckResult:
    """Load balancer state and target health per target group.

    A group without a healthy target is critical, except groups in `non_critical_groups`
    (the MLflow groups: the registry degrades gracefully without MLflow).
    """
    b = ResultBuilder(CheckName.ALB)
    if lbs is None and not target_health:
        return CheckResult.skipped(b.name, "no load balancer or target group configured")
    summary_parts: list[str] = []
    load_balancers = None
    if lbs is not None:
        b.cite(lbs.label)
        if aws_error(b, lbs, "the load balancer") is None:
            load_balancers = _load_balancers(b, lbs)
    groups: dict[str, TargetGroupState | TargetGroupError] = {}
    for group, obs in target_health.items():
        b.cite(obs.label)
        if (error := aws_error(b, obs, f"target group {group}")) is not None:
            groups[group] = TargetGroupError(error=error)
            continue
        view = read_target_health(obs.response)
        states = Counter(t.state or "unknown" for t in view.targets)
        healthy = states.get("healthy", 0)
        total = len(view.targets)
        groups[group] = TargetGroupState(
            healthy=healthy,
            total=total,
            targets=[
                TargetState(address=t.address or t.id, state=t.state, reason=t.reason)
                for t in view.targets
            ],
        )
        summary_parts.append(f"{group} {healthy}/{total} healthy")
        _group_findings(b, group, obs, view.targets, group in non_critical_groups)
    # Which groups serve MLflow (configured, or derived from ECS): the planner reads it.
    b.facts = AlbFacts(
        load_balancers=load_balancers,
        target_groups=groups,
        mlflow_target_groups=sorted(non_critical_groups),
    )
    return b.build(", ".join(summary_parts) or "load balancer checked")


def _load_balancers(b: ResultBuilder, obs: AwsObservation) -> dict[str, str | None]:
    """The load balancers' states (name -> state), with their findings."""
    problems: list[str] = []
    entries = read_load_balancers(obs.response, problems)
    if not entries:
        b.warning(
            f"No load balancer found by {obs.label}",
            "Check alb_names in the target configuration",
            [obs.label],
            CheckStatus.ERROR,
        )
    for lb in entries:
        if lb.state == "failed":
            b.critical(
                f"Load balancer {lb.name} is in state failed",
                "Check the load balancer in the AWS console; recreate it if needed",
                [obs.label],
            )
        elif lb.state == "provisioning":
            b.warning(
                f"Load balancer {lb.name} is still provisioning",
                "Wait for it to become active",
                [obs.label],
                CheckStatus.RECOVERING,
            )
        elif lb.state != "active":
            b.warning(
                f"Load balancer {lb.name} is in state {lb.state}",
                "Check the load balancer's availability zones and subnets",
                [obs.label],
            )
    return {e.name or "?": e.state for e in entries}


def _group_findings(
    b: ResultBuilder,
    group: str,
    obs: AwsObservation,
    targets: list[TargetHealthEntry],
    non_critical: bool,
) -> None:
    states = Counter(t.state or "unknown" for t in targets)
    healthy = states.get("healthy", 0)
    evidence = [obs.label]
    if healthy == 0:
        if targets:
            detail = ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
            reasons = sorted({t.reason for t in targets if t.reason})
            why = f" ({detail}{'; ' + ', '.join(reasons) if reasons else ''})"
            message = f"Target group {group} has no healthy target{why}"
        else:
            message = f"Target group {group} has no registered target"
        recommendation = (
            f"Check the ECS service behind {group} (running tasks, stopped-task reasons) "
            f"and {_FORCE_DEPLOY}"
        )
        if non_critical:
            b.warning(
                message + ": MLflow traffic fails, the registry degrades",
                recommendation,
                evidence,
                CheckStatus.UNHEALTHY,
            )
        else:
            b.critical(
                message + ": the load balancer has nowhere to send traffic",
                recommendation,
                evidence,
            )
        return
    bad = [t for t in targets if t.state in ("unhealthy", "unavailable")]
    if bad:
        listed = ", ".join(f"{t.address or t.id} ({t.reason or t.state})" for t in bad)
        b.warning(
            f"{len(bad)} of {len(targets)} targets unhealthy in {group}: {listed}",
            f"Check those tasks' health and logs; {_FORCE_DEPLOY} if they do not recover",
            evidence,
        )
    moving = [t for t in targets if t.state in ("initial", "draining")]
    if moving:
        counts = Counter(t.state for t in moving)
        listed = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        b.warning(
            f"Targets changing in {group}: {listed} (a deployment or scaling in progress)",
            "Wait for registration to finish; re-run the diagnosis",
            evidence,
            CheckStatus.RECOVERING,
        )


def assess_ecs(
    services: AwsObservation | None,
    expected: list[str],
    non_critical: Collection[str] = (),
    deploys: Mapping[str, DeployObservations] | None = None,
    now: datetime | None = None,
) -> CheckResult:
    """ECS services: running vs desired tasks, rollout state, service status, and, with
    `deploys` (the stopped tasks read at `now`), why tasks die (assessment.deploys).

    No running task, a missing or inactive service is critical, except for services in
    `non_critical` (the MLflow service: without it the registry degrades gracefully).
    """
    b = ResultBuilder(CheckName.ECS)
    if services is None:
        return CheckResult.skipped(b.name, "no ECS cluster or service configured")
    b.cite(services.label)
    if (error := aws_error(b, services, "the ECS services")) is not None:
        return b.build("state unknown", error=error)
    view = read_ecs_services(services.response)
    by_name = view.named()
    rollouts = read_service_deployments(services.response, []) if deploys is not None else {}
    labels = [services.label, *deploy_labels(deploys or {})]
    names = list(expected) or list(by_name)
    facts = b.facts = EcsFacts(services={})
    parts = []
    for name in names:
        entry = by_name.get(name)
        critical = name not in non_critical
        if entry is None:
            reason = view.failures.get(name, "not in the DescribeServices answer")
            _severe(
                b,
                critical,
                f"ECS service {name} not found in the cluster ({reason})",
                "Check ecs_cluster and ecs_services in the target configuration and the "
                "service in the AWS console",
                services.label,
            )
            facts.services[name] = MissingService()
            parts.append(f"{name} missing")
            continue
        facts.services[name] = EcsServiceState(
            status=entry.status,
            desired=entry.desired,
            running=entry.running,
            pending=entry.pending,
            rollout_state=entry.rollout_state,
            deployments=entry.deployments,
            recent_events=entry.recent_events,
        )
        parts.append(f"{name} {entry.running}/{entry.desired}")
        rollout = rollouts.get(name)
        judged = None
        if rollout is not None and deploys is not None and now is not None:
            judged = facts.deploys[name] = judge_service(rollout, deploys.get(name), now)
        failing = judged is not None and judged.failing_revision is not None
        _service_findings(b, entry, name, critical, services.label, failing)
        if judged is not None and rollout is not None:
            add_deploy_findings(b, rollout, judged, critical, labels)
    if not names:
        b.warning(
            "No ECS service found in the answer",
            "Check ecs_services in the target",
            [services.label],
            CheckStatus.ERROR,
        )
    return b.build(", ".join(parts) or "no service")


def _severe(
    b: ResultBuilder, critical: bool, message: str, recommendation: str, evidence: str
) -> None:
    if critical:
        b.critical(message, recommendation, [evidence])
    else:
        b.warning(
            message + "; the registry degrades without it",
            recommendation,
            [evidence],
            CheckStatus.UNHEALTHY,
        )


def _service_findings(
    b: ResultBuilder,
    s: EcsServiceEntry,
    name: str,
    critical: bool,
    evidence: str,
    failing: bool = False,
) -> None:
    """`failing`: the primary deployment's revision is failing; the deploy findings say so
    (with the same severity), so the rollout findings here, which advise waiting for it or
    forcing a new deployment, are left out."""
    rolling = s.rollout_state == "IN_PROGRESS"
    running, desired = s.running, s.desired
    if s.status is not None and s.status != "ACTIVE":
        _severe(
            b,
            critical,
            f"ECS service {name} is {s.status}",
            "Recreate or reactivate the service",
            evidence,
        )
        return
    if running is None or desired is None:
        b.warning(
            f"ECS service {name}: task counts unreadable", None, [evidence], CheckStatus.ERROR
        )
        return
    if desired == 0:
        _severe(
            b,
            critical,
            f"ECS service {name} is scaled to zero (desired count 0)",
            f"Set the desired count of {name} back (it serves nothing now)",
            evidence,
        )
        return
    if failing:
        return
    if running == 0:
        during = " while a deployment rolls out" if rolling else ""
        events = f"; last event: {s.recent_events[0]}" if s.recent_events else ""
        _severe(
            b,
            critical,
            f"ECS service {name} has no running task (0/{desired}){during}{events}",
            f"Look at the stopped tasks' reasons and {_FORCE_DEPLOY}",
            evidence,
        )
        return
    if running < desired:
        if rolling:
            b.warning(
                f"ECS service {name} is rolling out a deployment ({running}/{desired} "
                "tasks running)",
                "Wait for the rollout to finish; re-run the diagnosis",
                [evidence],
                CheckStatus.RECOVERING,
            )
        else:
            b.warning(
                f"ECS service {name} runs {running} of {desired} desired tasks",
                f"Look at the stopped tasks' reasons; {_FORCE_DEPLOY} if it does not recover",
                [evidence],
            )
        return
    if rolling:
        active = plural(s.deployments, "deployment")
        b.warning(
            f"ECS service {name} is rolling out a deployment ({active} active)",
            "Wait for the rollout to finish",
            [evidence],
            CheckStatus.RECOVERING,
        )
    elif s.rollout_state == "FAILED":
        b.warning(
            f"The last deployment of ECS service {name} failed"
            f"{': ' + s.rollout_reason if s.rollout_reason else ''}",
            "Check the task definition and the deployment circuit breaker events",
            [evidence],
        )


def assess_rds(
    obs: AwsObservation | Sequence[AwsObservation] | None, expected: list[str] | None = None
) -> CheckResult:
    """RDS instances: any state in which the instance does not serve connections is
    critical; maintenance-like states that still serve are warnings.

    Takes one DescribeDBInstances answer, or one per instance (the API filters by a single
    identifier); a failed call hides only the instances it was about.
    """
    b = ResultBuilder(CheckName.RDS)
    answers = [obs] if isinstance(obs, AwsObservation) else list(obs or [])
    if not answers:
        return CheckResult.skipped(b.name, "no RDS instance configured")
    problems: list[str] = []
    found: dict[str, DbInstanceEntry] = {}
    failed = 0
    error = None
    for answer in answers:
        b.cite(answer.label)
        if (failure := aws_error(b, answer, "the RDS instances")) is not None:
            failed, error = failed + 1, failure
            continue
        found.update({i.id: i for i in read_db_instances(answer.response, problems) if i.id})
    if failed == len(answers):
        return b.build("state unknown", error=error)
    label = answers[0].label
    b.details["instances"] = {
        i: {"status": d.status, "engine": d.engine, "multi_az": d.multi_az}
        for i, d in found.items()
    }
    for name in expected or []:
        if name not in found and not failed:
            b.warning(
                f"RDS instance {name} not found",
                "Check rds_instances in the target configuration",
                [label],
                CheckStatus.ERROR,
            )
    for name, instance in found.items():
        if instance.status == "available":
            continue
        if instance.status in _RDS_SERVING:
            b.warning(
                f"RDS instance {name} is {instance.status} (still serving)",
                "Watch its performance until the operation completes",
                [label],
            )
        else:
            b.critical(
                f"RDS instance {name} is not available (state {instance.status})",
                f"Start or repair the RDS instance {name}; the service cannot serve "
                "traffic without its database",
                [label],
            )
    summary = ", ".join(f"{i} {d.status}" for i, d in found.items()) or "no instance"
    return b.build(summary)


def assess_cloudwatch(obs: AwsObservation | None) -> CheckResult:
    """CloudWatch alarms (already filtered by the target's alarm prefix): each one in ALARM
    is a warning."""
    b = ResultBuilder(CheckName.CLOUDWATCH)
    if obs is None:
        return CheckResult.skipped(b.name, "no CloudWatch alarm prefix configured")
    b.cite(obs.label)
    if (error := aws_error(b, obs, "the CloudWatch alarms")) is not None:
        return b.build("state unknown", error=error)
    problems: list[str] = []
    alarms = read_alarms(obs.response, problems)
    firing = [a for a in alarms if a.state == "ALARM"]
    no_data = [a for a in alarms if a.state == "INSUFFICIENT_DATA"]
    b.details.update(
        {
            "alarms_total": len(alarms),
            "in_alarm": [a.name for a in firing],
            "insufficient_data": [a.name for a in no_data],
        }
    )
    for alarm in firing:
        reason = f": {alarm.reason}" if alarm.reason else ""
        b.warning(
            f"CloudWatch alarm {alarm.name} is in ALARM{reason}",
            f"Investigate the metric behind {alarm.name}"
            f"{' (' + alarm.metric + ')' if alarm.metric else ''}",
            [obs.label],
        )
    if no_data:
        b.info(
            f"{plural(len(no_data), 'alarm')} with insufficient data: "
            f"{', '.join(a.name or '?' for a in no_data)}",
            [obs.label],
        )
    return b.build(f"{len(firing)} of {plural(len(alarms), 'alarm')} in ALARM")


def assess_aws_infrastructure(components: Mapping[str, CheckResult]) -> CheckResult:
    """Fold alb, ecs, rds and cloudwatch into the seed's `aws_infrastructure` check.

    The components stay available in `components`; their findings are copied up so that
    `assess` reads top-level checks only. The status is the worst non-skipped one.
    """
    name = CheckName.AWS_INFRASTRUCTURE
    active = [c for c in components.values() if c.status != CheckStatus.SKIPPED]
    findings: list[Finding] = []
    for key, component in components.items():
        findings.extend(component.findings)
        extra = unexplained(key, component)
        if extra is not None:
            findings.append(extra)
    evidence: list[str] = []
    for c in components.values():
        evidence.extend(e for e in c.evidence if e not in evidence)
    durations = [c.duration_ms for c in components.values() if c.duration_ms is not None]
    summary = ", ".join(f"{k} {c.status}" for k, c in components.items()) or "nothing checked"
    return CheckResult(
        name=name,
        status=worst_status([c.status for c in active]) if active else CheckStatus.SKIPPED,
        duration_ms=max(durations) if durations else None,
        details={} if active else {"reason": "no AWS resource configured"},
        evidence=evidence,
        findings=findings,
        partial=any(c.partial for c in components.values()),
        summary=summary,
        components=dict(components),
        error="; ".join(c.error for c in components.values() if c.error) or None,
    )
