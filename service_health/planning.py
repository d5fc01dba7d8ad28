"""Recovery planning: the steps a diagnosis calls for. Pure rules, no I/O, no Prefect.

`plan_recovery` reads a DiagnosticReport (the details the assessment rules leave in
circuit_breaker, mlflow_service, database, redis, api_connectivity and the alb/ecs/rds
components of aws_infrastructure), the target's configuration and what ECS says about the
services' recent past (RecoveryHistory), and returns a RecoveryPlan. Every step carries its
reason. The rules:

- already healthy -> no step;
- breaker OPEN (or stuck) and MLflow reachable -> reset it on exactly the OPEN replicas,
  addressed directly; from a partial (sampled) view -> one reset through the API URL, said
  to be partial (repeating it through the load balancer would not reach the OPEN ones);
- breaker OPEN and MLflow unreachable -> force a new deployment of the MLflow ECS service
  first, wait for MLflow to answer, then reset every affected replica;
- ECS service with running < desired, unhealthy ALB targets, or the API failing (all
  registry tasks down, 5xx) -> force a new deployment, unless one is already rolling (wait
  for it) or the service was (re)deployed within the cooldown (skip, with the reason); at
  most `max_restarts` services per run, the most urgent first (the others are skipped);
- ECS service whose PRIMARY deployment's revision is failing (its rollout FAILED, or its
  tasks stop for the revision's own reasons while it rolls out; service_health.
  assessment.deploys) -> roll back to the last revision that completed a deployment, with
  the evidence, under the same cooldown and cap as a restart; never a new deployment of
  the failing revision, and no wait for its rollout. No earlier good revision (none
  completed, the same one completed before, or it fails too) -> escalate, no restart;
- ECS service missing, not ACTIVE or scaled to zero -> escalate (a deployment cannot help);
- database or RDS down -> escalate, no automatic action, and registry restarts are held
  back (new tasks would fail the same way); Redis down -> escalate;
- anything else not healthy -> escalate with the diagnosis' own issues.

Then: wait for stabilisation of what was restarted or reset, check the ALB targets, verify
with a final diagnosis.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from service_health.deploy_evidence import DeployFacts
from service_health.details import (
    AlbFacts,
    ApiFacts,
    BreakerFacts,
    EcsFacts,
    MissingService,
    TargetGroupError,
)
from service_health.models import (
    BreakerState,
    CheckName,
    CheckResult,
    CheckStatus,
    DiagnosticReport,
    Verdict,
)
from service_health.recovery import RecoveryHistory, RecoveryPlan, RecoveryStep, StepKind
from service_health.settings import COOLDOWN_S, MAX_RESTARTS, Target

_GATEWAY_CODES = (502, 503, 504)
# The steps `_tail` adds after the acting ones; a plan with nothing else escalates.
_TAIL = frozenset({StepKind.WAIT_FOR_STABILIZATION, StepKind.CHECK_ALB_TARGETS, StepKind.VERIFY})
_BAD_TARGET_STATES = ("unhealthy", "unavailable")


# --- what the report says -------------------------------------------------------------------


@dataclass
class _Breaker:
    state: str  # overall: OPEN, HALF_OPEN, CLOSED, UNKNOWN...
    open: list[str] = field(default_factory=list)  # addresses of OPEN replicas
    stuck: list[str] = field(default_factory=list)
    # OPEN, HALF_OPEN, unreadable, or CLOSED with MLflow calls failing
    affected: list[str] = field(default_factory=list)
    addresses: list[str] = field(default_factory=list)  # every replica read directly
    partial: bool = False
    sampled: int = 0  # answers read through the load balancer
    attempts: int = 0  # most failed recovery attempts on a stuck replica


@dataclass
class _Service:
    name: str
    status: str | None
    desired: int | None
    running: int | None
    rolling: bool
    rollout_state: str | None = None  # of the PRIMARY deployment


@dataclass
class _Group:
    name: str
    healthy: int = 0
    total: int = 0
    bad: list[str] = field(default_factory=list)  # "address (reason)"
    error: str | None = None


@dataclass
class _Candidate:
    """An ECS service with symptoms a new deployment may cure."""

    service: str
    reasons: list[str] = field(default_factory=list)
    urgent: bool = False  # the service cannot serve at all (registry down)
    # Its PRIMARY deployment's revision is failing: a rollback, never a new deployment.
    failing: DeployFacts | None = None


def _check(report: DiagnosticReport, name: str) -> CheckResult | None:
    check = report.checks.get(name)
    if check is not None:
        return check
    aws = report.checks.get(CheckName.AWS_INFRASTRUCTURE)
    return aws.components.get(name) if aws is not None else None


def _read_breaker(report: DiagnosticReport) -> _Breaker | None:
    check = report.checks.get(CheckName.CIRCUIT_BREAKER)
    if check is None or check.status == CheckStatus.SKIPPED:
        return None
    facts = check.facts if isinstance(check.facts, BreakerFacts) else None
    b = _Breaker(state=(facts.state if facts else "") or BreakerState.UNKNOWN)
    b.partial = check.partial or (facts is not None and facts.sampled_through_load_balancer)
    for label, replica in (facts.replicas if facts else {}).items():
        address = replica.replica or (None if label.startswith("sample-") else label)
        if address is None:
            b.partial = True
            b.sampled += 1
            continue
        b.addresses.append(address)
        if replica.state == BreakerState.OPEN:
            b.open.append(address)
            if replica.stuck:
                b.stuck.append(address)
                b.attempts = max(b.attempts, replica.recovery_attempts or 0)
        if replica.state != BreakerState.CLOSED or replica.connected is False:
            b.affected.append(address)
    return b


def _read_services(report: DiagnosticReport) -> tuple[dict[str, _Service] | None, str | None]:
    """(services, None), or (None, why the ECS state is unknown)."""
    check = _check(report, CheckName.ECS)
    if check is None or check.status == CheckStatus.SKIPPED:
        return None, "ECS not checked (no cluster or service configured)"
    facts = check.facts if isinstance(check.facts, EcsFacts) else None
    if check.status == CheckStatus.ERROR and not (facts and facts.services):
        return None, f"ECS state unknown ({check.error or check.summary or 'check failed'})"
    services: dict[str, _Service] = {}
    for name, entry in (facts.services if facts else {}).items():
        if isinstance(entry, MissingService):
            services[name] = _Service(name, entry.status, None, None, rolling=False)
            continue
        services[name] = _Service(
            name=name,
            status=entry.status,
            desired=entry.desired,
            running=entry.running,
            rolling=entry.rollout_state == "IN_PROGRESS" or entry.deployments > 1,
            rollout_state=entry.rollout_state,
        )
    if not services:
        return None, "ECS state unknown (no service in the diagnosis)"
    return services, None


def _read_failing(report: DiagnosticReport) -> dict[str, DeployFacts]:
    """The services whose PRIMARY deployment's revision the diagnosis found failing."""
    check = _check(report, CheckName.ECS)
    facts = check.facts if check is not None and isinstance(check.facts, EcsFacts) else None
    return {
        name: deploy
        for name, deploy in (facts.deploys if facts else {}).items()
        if deploy.failing_revision is not None
    }


def _alb_facts(report: DiagnosticReport) -> AlbFacts | None:
    check = _check(report, CheckName.ALB)
    return check.facts if check is not None and isinstance(check.facts, AlbFacts) else None


def _read_groups(report: DiagnosticReport) -> dict[str, _Group]:
    facts = _alb_facts(report)
    groups: dict[str, _Group] = {}
    for name, entry in (facts.target_groups if facts else {}).items():
        g = _Group(name=name)
        if isinstance(entry, TargetGroupError):
            g.error = str(entry.error)
        else:
            g.healthy, g.total = entry.healthy, entry.total
            g.bad = [
                f"{t.address} ({t.reason or t.state})"
                for t in entry.targets
                if t.state in _BAD_TARGET_STATES
            ]
        groups[g.name] = g
    return groups


def _read_mlflow_groups(report: DiagnosticReport) -> list[str]:
    """The target groups the diagnosis found serving MLflow (derived from ECS)."""
    facts = _alb_facts(report)
    return list(facts.mlflow_target_groups) if facts else []


def _first_finding(check: CheckResult, severities: tuple[str, ...]) -> tuple[str, str | None]:
    for finding in check.findings:
        if finding.severity in severities:
            return finding.message, finding.recommendation
    return check.summary or f"{check.name} is {check.status}", None


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


# --- the planner ----------------------------------------------------------------------------


@dataclass
class _Decision:
    kind: StepKind  # FORCE_DEPLOYMENT, ROLLBACK, WAIT_FOR_ROLLOUT, SKIP or ESCALATE
    reason: str
    revision: str | None = None  # ROLLBACK: the revision rolled back to ("family:N")
    task_definition: str | None = None  # ... and its ARN
    deployment_id: str | None = None  # ROLLBACK: the PRIMARY deployment it replaces
    recommendation: str | None = None

    @property
    def acts(self) -> bool:
        """A step that changes the service or waits for its rollout."""
        return self.kind not in (StepKind.SKIP, StepKind.ESCALATE)


@dataclass
class _RollbackTarget:
    """Where a failing revision rolls back to, or why nowhere (then: escalate)."""

    revision: str | None
    task_definition: str | None
    why_not: str | None = None


def rollback_target(facts: DeployFacts) -> _RollbackTarget:
    """The last revision that completed a deployment, if it is a good one to return to.

    Not when none completed, when it is the failing revision itself (the cause lies
    outside the revision), or when it fails too: its deployment runs no task and its own
    tasks stopped for the revision's reasons within the window.
    """
    failing, last = facts.failing_revision, facts.last_completed_revision
    if last is None:
        return _RollbackTarget(
            None, None, "no earlier revision is known to have completed a deployment"
        )
    if last == failing:
        return _RollbackTarget(
            None,
            None,
            f"the last revision that completed a deployment is {failing} itself: the cause "
            "may lie outside it (dependencies, configuration, capacity)",
        )
    stops = next((r for r in facts.stopped if r.revision == last and r.failed), None)
    if stops is not None and not facts.running_revisions.get(last):
        causes = "; ".join(c.text() for c in stops.causes[:2])
        return _RollbackTarget(
            None,
            None,
            f"the previous revision {last} fails too: no task of it runs and "
            f"{_plural(stops.failed, 'task')} of it stopped recently ({causes})",
        )
    return _RollbackTarget(last, facts.last_completed_task_definition)


class _Planner:
    def __init__(
        self,
        report: DiagnosticReport,
        target: Target,
        history: RecoveryHistory,
        now: datetime,
        cooldown_s: float,
        max_restarts: int,
    ) -> None:
        self.report = report
        self.target = target
        self.history = history
        self.now = now
        self.cooldown_s = cooldown_s
        self.max_restarts = max_restarts
        self.steps: list[RecoveryStep] = []
        self.notes: list[str] = []
        self.mlflow_service = target.mlflow_ecs_service
        self.registry_services = [s for s in target.ecs_services if s != self.mlflow_service]
        self.services, self.ecs_unknown = _read_services(report)
        self.groups = _read_groups(report)
        self.mlflow_groups = list(target.mlflow_target_groups) or _read_mlflow_groups(report)
        self.breaker = _read_breaker(report)
        self.failing = {
            name: facts
            for name, facts in _read_failing(report).items()
            if name in target.ecs_services
        }
        self.db_down: list[tuple[str, str | None]] = []

    # -- building blocks --

    def add(self, kind: StepKind, reason: str, **fields: Any) -> RecoveryStep:
        step = RecoveryStep(number=len(self.steps) + 1, kind=kind, reason=reason, **fields)
        self.steps.append(step)
        return step

    def plan(self) -> RecoveryPlan:
        if self.report.overall_status != Verdict.HEALTHY:
            self._escalations()
            candidates = self._candidates()
            decisions = self._decide(candidates)
            ready = self._mlflow_block(decisions)
            self._breaker_block(ready, decisions)
            self._registry_block(decisions)
            self._catch_all()
            self._tail()
        else:
            self.notes.append("The diagnosis is healthy: nothing to recover")
        return RecoveryPlan(
            target=self.target.name,
            created_at=self.now.astimezone(UTC).isoformat(),
            diagnosis_timestamp=self.report.timestamp,
            verdict=self.report.overall_status,
            steps=self.steps,
            notes=self.notes,
            cooldown_s=self.cooldown_s,
            max_restarts=self.max_restarts,
        )

    # -- escalations: what no automatic action may touch --

    def _escalations(self) -> None:
        db = self.report.checks.get(CheckName.DATABASE)
        if db is not None and db.status == CheckStatus.UNHEALTHY:
            message, recommendation = _first_finding(db, ("critical", "warning"))
            self.db_down.append((message, recommendation))
        rds = _check(self.report, CheckName.RDS)
        if rds is not None:
            for finding in rds.findings:
                if finding.severity == "critical":
                    self.db_down.append((finding.message, finding.recommendation))
        for message, recommendation in self.db_down:
            self.add(
                StepKind.ESCALATE,
                f"Database down: {message}. No automatic action is taken for the database.",
                recommendation=recommendation
                or "Restore PostgreSQL (RDS instance state, security groups, credentials), "
                "then re-run recover_service",
            )
        redis = self.report.checks.get(CheckName.REDIS)
        if redis is not None and redis.status == CheckStatus.UNHEALTHY:
            message, recommendation = _first_finding(redis, ("critical", "warning"))
            self.add(
                StepKind.ESCALATE,
                f"Redis down: {message}. No automatic action is taken for Redis.",
                recommendation=recommendation or "Restore the Redis server",
            )
        for name, svc in (self.services or {}).items():
            if name not in self.target.ecs_services:
                continue
            if svc.status is not None and svc.status != "ACTIVE":
                what = "not found in the cluster" if svc.status == "MISSING" else svc.status
                self.add(
                    StepKind.ESCALATE,
                    f"ECS service {name} is {what}: a new deployment cannot be forced on it",
                    recommendation=f"Recreate or reactivate {name}; check ecs_cluster and "
                    "ecs_services in the target configuration",
                )
            elif svc.desired == 0:
                self.add(
                    StepKind.ESCALATE,
                    f"ECS service {name} is scaled to zero (desired count 0): a new deployment "
                    "would start no task",
                    recommendation=f"Set the desired count of {name} back",
                )

    # -- candidates for a new deployment --

    def _owner(self, group: str) -> str | None:
        owner = self.history.service_of_group(group)
        if owner:
            return owner
        if group in self.mlflow_groups and self.mlflow_service:
            return self.mlflow_service
        if len(self.registry_services) == 1 and group not in self.mlflow_groups:
            return self.registry_services[0]
        return None

    def _api_failure(self) -> tuple[str, bool] | None:
        """(what the API does, whether it is a server error from the service itself)."""
        api = self.report.checks.get(CheckName.API_CONNECTIVITY)
        if api is None or api.status != CheckStatus.UNHEALTHY:
            return None
        code = api.facts.status_code if isinstance(api.facts, ApiFacts) else None
        if code is None:
            return f"API unreachable ({api.error or api.summary})", False
        if code in _GATEWAY_CODES and "no backend" in api.summary:
            return f"API unavailable: the load balancer answered HTTP {code}", False
        if code >= 500:
            return f"API fails: HTTP {code} from the service (replicas likely wedged)", True
        return None

    def _candidates(self) -> dict[str, _Candidate]:
        candidates: dict[str, _Candidate] = {}

        def note(service: str, reason: str, urgent: bool = False) -> None:
            c = candidates.setdefault(service, _Candidate(service))
            if reason not in c.reasons:
                c.reasons.append(reason)
            c.urgent = c.urgent or urgent

        services = self.services or {}
        for name in self.target.ecs_services:
            svc = services.get(name)
            if svc is None or svc.status != "ACTIVE" or not svc.desired or svc.running is None:
                continue
            if svc.running < svc.desired:
                registry = name != self.mlflow_service
                if svc.running == 0:
                    note(name, f"no running task (0/{svc.desired})", registry)
                else:
                    note(name, f"runs {svc.running} of {svc.desired} desired tasks")
        for group in self.groups.values():
            if group.error is not None:
                self.notes.append(f"Target group {group.name}: health unknown ({group.error})")
                continue
            owner = self._owner(group.name)
            problem = None
            if group.total == 0:
                problem = f"target group {group.name} has no registered target"
            elif group.bad:
                problem = (
                    f"{len(group.bad)} of {group.total} targets unhealthy in {group.name}: "
                    + ", ".join(group.bad)
                )
            if problem is None:
                continue
            if owner is None or owner not in self.target.ecs_services:
                self.notes.append(
                    f"{problem[0].upper()}{problem[1:]}; no ECS service is known to own this "
                    "group (configure mlflow_target_groups or attach it to an ECS service)"
                )
                continue
            note(owner, problem, owner != self.mlflow_service and group.healthy == 0)
        for name, facts in self.failing.items():
            svc = services.get(name)
            if svc is None or svc.status != "ACTIVE" or not svc.desired:
                continue  # escalated above: nothing to roll back on
            evidence = "; ".join(facts.failing_evidence) or "its rollout failed"
            note(name, f"revision {facts.failing_revision} is failing: {evidence}",
                 name != self.mlflow_service and svc.running == 0)  # fmt: skip
            candidates[name].failing = facts
        failure = self._api_failure()
        if failure is not None:
            text, server_error = failure
            down = [s for s in self.registry_services if s in candidates and candidates[s].urgent]
            if down:
                for s in down:
                    note(s, f"{text}: all registry tasks are down", True)
            elif server_error and self.registry_services and self.services is not None:
                for s in self.registry_services:
                    note(s, text, True)
            elif self.services is not None or self.ecs_unknown is None:
                self.add(
                    StepKind.ESCALATE,
                    f"{text}, although the ECS tasks run and the load balancer has healthy "
                    "targets: not something a new deployment fixes",
                    recommendation="Check the load balancer's listeners, DNS, security groups "
                    "and the network path from the worker to api_url",
                )
        mlflow = self._mlflow_state()
        if mlflow[0] == "unreachable" and self.mlflow_service:
            note(self.mlflow_service, f"MLflow unreachable ({mlflow[1]})")
        if self.services is None and (candidates or failure is not None):
            symptoms = "; ".join(r for c in candidates.values() for r in c.reasons)
            if failure is not None and failure[0] not in symptoms:
                symptoms = f"{failure[0]}; {symptoms}".rstrip("; ")
            self.add(
                StepKind.ESCALATE,
                f"{self.ecs_unknown}: no ECS action can be planned safely, although the "
                f"diagnosis shows {symptoms}",
                recommendation="Re-run recover_service once the ECS API answers (check the "
                "worker's AWS credentials and permissions), or restart the service by hand",
            )
            return {}
        return candidates

    def _mlflow_state(self) -> tuple[str, str]:
        """("reachable" | "unreachable" | "unknown", evidence)."""
        check = self.report.checks.get(CheckName.MLFLOW_SERVICE)
        if check is not None and check.status == CheckStatus.UNHEALTHY:
            return "unreachable", check.error or check.summary or "mlflow_service unhealthy"
        if check is not None and check.status in (
            CheckStatus.HEALTHY,
            CheckStatus.DEGRADED,
            CheckStatus.RECOVERING,
        ):
            return "reachable", check.summary or str(check.status)
        svc = (self.services or {}).get(self.mlflow_service or "")
        if svc is not None and svc.running == 0:
            return "unreachable", f"ECS service {svc.name} has no running task"
        for group in self.mlflow_groups:
            g = self.groups.get(group)
            if g is not None and g.error is None and g.healthy == 0:
                return "unreachable", f"target group {group} has no healthy target"
        why = "no MLflow URL configured" if check is None or check.status == "skipped" else ""
        return "unknown", why or (check.error if check and check.error else "not checked")

    def _decide(self, candidates: Mapping[str, _Candidate]) -> dict[str, _Decision]:
        """Force, wait or skip for each candidate, the most urgent first under the cap."""
        order = {name: i for i, name in enumerate(self.target.ecs_services)}
        breaker_open = self.breaker is not None and (
            self.breaker.state == BreakerState.OPEN or bool(self.breaker.open)
        )

        def priority(c: _Candidate) -> tuple[int, int]:
            if c.urgent:
                rank = 0
            elif c.service == self.mlflow_service and breaker_open:
                rank = 1
            else:
                rank = 2
            return rank, order.get(c.service, len(order))

        decisions: dict[str, _Decision] = {}
        restarts = 0
        services = self.services or {}
        for c in sorted(candidates.values(), key=priority):
            why = "; ".join(c.reasons)
            svc = services.get(c.service)
            rollback = None
            if c.failing is not None:
                rollback = rollback_target(c.failing)
                if rollback.revision is None:
                    decisions[c.service] = self._no_rollback(c, why, rollback.why_not or "")
                    continue
            elif svc is not None and svc.rollout_state == "FAILED":
                # A failed rollout without the deploy facts: which revision fails and what
                # ran before is unknown, so neither a rollback nor a redeployment of it.
                decisions[c.service] = _Decision(
                    StepKind.ESCALATE,
                    f"{c.service}: {why}; its PRIMARY deployment's rollout FAILED: a new "
                    "deployment of the same revision would fail the same way, and the revision "
                    "to roll back to is not known",
                    recommendation=f"Roll {c.service} back by hand to its last good revision "
                    "(UpdateService with that task definition)",
                )
                continue
            if rollback is not None:
                pass  # a failing rollout is never waited for: it is rolled back
            elif svc is not None and svc.rolling:
                decisions[c.service] = _Decision(
                    StepKind.WAIT_FOR_ROLLOUT,
                    f"{c.service}: {why}; a deployment is already rolling out: wait for it "
                    "instead of forcing another",
                )
                continue
            verb = "rolled back" if rollback is not None else "restarted"
            if self.db_down and c.service != self.mlflow_service:
                decisions[c.service] = _Decision(
                    StepKind.SKIP,
                    f"{c.service}: {why}; not {verb} while the database is down: new "
                    "tasks would fail the same way. Restore the database first",
                    revision=rollback.revision if rollback else None,
                )
                continue
            last = self.history.last_restart(c.service)
            if last is not None:
                age = (self.now - last).total_seconds()
                if age < self.cooldown_s:
                    decisions[c.service] = _Decision(
                        StepKind.SKIP,
                        f"{c.service}: {why}; its last deployment started {max(age, 0):.0f} s "
                        f"ago ({last.astimezone(UTC).isoformat()}), within the cooldown of "
                        f"{self.cooldown_s:g} s: not {verb} again",
                        revision=rollback.revision if rollback else None,
                    )
                    continue
            elif self.cooldown_s > 0:
                self.notes.append(
                    f"No deployment history for {c.service}"
                    + (f" ({self.history.error})" if self.history.error else "")
                    + ": the cooldown could not be checked"
                )
            if restarts >= self.max_restarts:
                decisions[c.service] = _Decision(
                    StepKind.SKIP,
                    f"{c.service}: {why}; not {verb}: the cap of "
                    f"{_plural(self.max_restarts, 'service')} restarted per run is reached",
                    revision=rollback.revision if rollback else None,
                )
                continue
            restarts += 1
            if rollback is not None and c.failing is not None:
                decisions[c.service] = _Decision(
                    StepKind.ROLLBACK,
                    f"{c.service}: {why}: roll back to revision {rollback.revision}, the last "
                    f"that completed a deployment (a new deployment of "
                    f"{c.failing.failing_revision} would fail the same way)",
                    revision=rollback.revision,
                    task_definition=rollback.task_definition,
                    deployment_id=(c.failing.primary.id if c.failing.primary else None)
                    or self.history.deployment_id(c.service),
                )
                continue
            decisions[c.service] = _Decision(
                StepKind.FORCE_DEPLOYMENT,
                f"{c.service}: {why}: force a new deployment (replaces its tasks)",
            )
        return decisions

    def _no_rollback(self, c: _Candidate, why: str, why_not: str) -> _Decision:
        """A failing revision with no good one to return to: an operator decides."""
        failing = c.failing.failing_revision if c.failing else "?"
        return _Decision(
            StepKind.ESCALATE,
            f"{c.service}: {why}; no rollback: {why_not}. A new deployment of {failing} "
            "would fail the same way: not restarted",
            recommendation=f"Read the stopped tasks' logs of {c.service}; fix the release or "
            "deploy a known good revision by hand",
        )

    def _service_step(self, service: str, decision: _Decision) -> RecoveryStep:
        if decision.kind == StepKind.ESCALATE:
            return self.add(
                StepKind.ESCALATE,
                decision.reason,
                service=service,
                recommendation=decision.recommendation,
            )
        if decision.kind == StepKind.SKIP and decision.revision is not None:
            return self.add(
                StepKind.SKIP,
                decision.reason,
                service=service,
                skipped=StepKind.ROLLBACK,
                revision=decision.revision,
                recommendation=f"Roll {service} back to revision {decision.revision} by hand, "
                "or re-run recover_service later",
            )
        if decision.kind == StepKind.SKIP:
            return self.add(
                StepKind.SKIP,
                decision.reason,
                service=service,
                skipped=StepKind.FORCE_DEPLOYMENT,
                recommendation=f"Force a new deployment of {service} by hand if it does not "
                "recover, or re-run recover_service later",
            )
        if decision.kind == StepKind.ROLLBACK:
            return self.add(
                StepKind.ROLLBACK,
                decision.reason,
                service=service,
                revision=decision.revision,
                task_definition=decision.task_definition,
                expected_deployment_id=decision.deployment_id,
            )
        return self.add(
            decision.kind,
            decision.reason,
            service=service,
            expected_deployment_id=self.history.deployment_id(service)
            if decision.kind == StepKind.FORCE_DEPLOYMENT
            else None,
        )

    # -- MLflow first, then the breaker --

    def _mlflow_block(self, decisions: Mapping[str, _Decision]) -> RecoveryStep | None:
        """The MLflow service's step and, when it is restarted or rolling, a wait for MLflow.
        Returns the step a breaker reset must wait for (None: no restart in flight)."""
        if not self.mlflow_service or self.mlflow_service not in decisions:
            return None
        decision = decisions[self.mlflow_service]
        step = self._service_step(self.mlflow_service, decision)
        if not decision.acts:
            return None
        if not self.target.mlflow_url:
            self.notes.append("No MLflow URL configured: MLflow's own answer cannot be awaited")
            return step
        return self.add(
            StepKind.WAIT_FOR_MLFLOW,
            f"Wait until MLflow answers GET /health after step {step.number}, before anything "
            "that calls it (a breaker reset while MLflow fails would re-open at once)",
            depends_on=[step.number],
        )

    def _breaker_block(
        self, mlflow_ready: RecoveryStep | None, decisions: Mapping[str, _Decision]
    ) -> None:
        b = self.breaker
        if b is None:
            return
        is_open = b.state == BreakerState.OPEN or bool(b.open)
        if not is_open:
            if b.state == BreakerState.HALF_OPEN:
                self.notes.append(
                    "Circuit breaker HALF_OPEN: it is testing MLflow and closes by itself"
                )
            return
        mlflow, evidence = self._mlflow_state()
        registry_replaced = bool(self.registry_services) and all(
            decisions.get(s, _Decision(StepKind.SKIP, "")).kind
            in (StepKind.FORCE_DEPLOYMENT, StepKind.ROLLBACK)
            for s in self.registry_services
        )
        where = self._where(b)
        if registry_replaced:
            self.add(
                StepKind.SKIP,
                f"Circuit breaker OPEN on {where}, but the registry replicas are replaced by "
                "the new deployment; new replicas start with a closed breaker",
                skipped=StepKind.RESET_BREAKER,
            )
            return
        if mlflow == "unreachable":
            if mlflow_ready is None:
                mlflow_decision = decisions.get(self.mlflow_service or "")
                if mlflow_decision is not None:
                    why = f"the MLflow restart is skipped ({mlflow_decision.reason})"
                elif not self.mlflow_service:
                    why = "no MLflow ECS service is configured (mlflow_ecs_service)"
                else:
                    why = self.ecs_unknown or "the MLflow service cannot be restarted"
                self.add(
                    StepKind.ESCALATE,
                    f"Circuit breaker OPEN on {where} and MLflow unreachable ({evidence}); "
                    f"{why}. A reset now would re-open the breaker at once",
                    recommendation="Restore MLflow (its ECS service, logs, backend store), "
                    "then reset the breaker: POST /health/mlflow/reset on each replica, or "
                    "re-run recover_service",
                )
                return
            replicas = b.affected or b.open
            reason = (
                f"Circuit breaker OPEN on {where} while MLflow was unreachable ({evidence}): "
                f"once MLflow answers again (step {mlflow_ready.number}), reset the breaker"
            )
            self._reset_step(b, reason, replicas, [mlflow_ready.number])
            return
        stuck = ""
        if b.stuck:
            after = f" after {b.attempts} failed recovery attempts" if b.attempts else ""
            stuck = f" (stuck on {', '.join(b.stuck)}: no retry scheduled{after})"
        known = "MLflow is reachable" if mlflow == "reachable" else f"MLflow state {evidence}"
        reason = f"Circuit breaker OPEN on {where}{stuck} while {known}: reset it"
        if mlflow == "unknown":
            reason += "; if MLflow still fails, the breaker opens again (verification shows it)"
        self._reset_step(b, reason, b.open, [])

    def _where(self, b: _Breaker) -> str:
        if b.open and not b.partial:
            return ", ".join(b.open)
        if b.partial:
            return f"the service (seen through the load balancer, {_plural(b.sampled, 'sample')})"
        return "the service (per /ready or /metrics; no replica showed it)"

    def _reset_step(
        self, b: _Breaker, reason: str, replicas: list[str], depends_on: list[int]
    ) -> RecoveryStep:
        if b.partial:
            return self.add(
                StepKind.RESET_BREAKER,
                reason + ". Partial view: the replicas cannot be addressed from here, so one "
                "reset is sent through the API URL; it reaches a single replica, and repeating "
                "it through the load balancer would not target the OPEN ones. Verification "
                "shows whether others stay OPEN",
                replicas=None,
                partial_view=True,
                depends_on=depends_on,
            )
        if not replicas:
            if b.addresses:
                return self.add(
                    StepKind.RESET_BREAKER,
                    reason + ". No replica read showed which one is OPEN: reset every replica "
                    "(harmless on a closed breaker)",
                    replicas=list(b.addresses),
                    depends_on=depends_on,
                )
            return self.add(
                StepKind.RESET_BREAKER,
                reason + ". No replica could be addressed: one reset through the API URL",
                replicas=None,
                partial_view=True,
                depends_on=depends_on,
            )
        return self.add(
            StepKind.RESET_BREAKER,
            reason + f" on exactly {'this replica' if len(replicas) == 1 else 'these replicas'}",
            replicas=list(replicas),
            depends_on=depends_on,
        )

    # -- the registry services and the tail --

    def _registry_block(self, decisions: Mapping[str, _Decision]) -> None:
        for service in self.target.ecs_services:
            if service != self.mlflow_service and service in decisions:
                self._service_step(service, decisions[service])
        for service, decision in decisions.items():
            if service not in self.target.ecs_services and service != self.mlflow_service:
                self._service_step(service, decision)

    def _catch_all(self) -> None:
        if any(s.kind not in _TAIL for s in self.steps):
            return
        issues = self.report.critical_issues or self.report.warnings
        listed = "; ".join(issues[:3]) + (f" (+{len(issues) - 3} more)" if len(issues) > 3 else "")
        self.add(
            StepKind.ESCALATE,
            f"The service is {self.report.overall_status.value} and no automatic recovery "
            f"applies: {listed or 'no issue named by the diagnosis'}",
            recommendation="; ".join(self.report.recommendations[:3]) or None,
        )

    def _tail(self) -> None:
        # Stabilisation follows every change made, and every rollout waited for.
        waited = [s for s in self.steps if s.mutating or s.kind == StepKind.WAIT_FOR_ROLLOUT]
        if waited:
            services = [s.service for s in waited if s.service]
            # A rollback is done when its revision's rollout completed, not any one.
            revisions = {
                s.service: s.revision
                for s in waited
                if s.kind == StepKind.ROLLBACK and s.service and s.revision
            }
            on = "".join(
                f", {service} on revision {revision}" for service, revision in revisions.items()
            )
            self.add(
                StepKind.WAIT_FOR_STABILIZATION,
                "Wait for real signals: "
                + (
                    f"ECS rollout of {', '.join(services)} complete (one deployment{on}, "
                    "running = desired), their targets healthy, then "
                    if services
                    else ""
                )
                + "consecutive healthy answers from the API's /health",
                services=services,
                revisions=revisions,
                depends_on=[s.number for s in waited],
            )
        ecs_steps = any(s.service for s in waited)
        unhealthy_groups = any(g.bad or g.total == 0 for g in self.groups.values())
        if (ecs_steps or unhealthy_groups) and (self.target.target_groups or self.groups):
            self.add(
                StepKind.CHECK_ALB_TARGETS,
                "Record the load balancer's target health (healthy/total per target group)",
            )
        self.add(
            StepKind.VERIFY,
            "Run a final diagnosis: the recovery succeeded only if it is healthy",
        )


def plan_recovery(
    report: DiagnosticReport,
    target: Target,
    history: RecoveryHistory | None = None,
    now: datetime | None = None,
    cooldown_s: float = COOLDOWN_S,
    max_restarts: int = MAX_RESTARTS,
) -> RecoveryPlan:
    """The recovery plan a diagnosis calls for (see the module docstring for the rules).

    `history` says when each ECS service was last (re)deployed (for the cooldown), its
    primary deployment id (so that the deployment task never restarts twice) and its target
    groups; without it the cooldown is not checked and target groups are mapped to services
    by the target's configuration. `now` defaults to the current time (naive: UTC).
    """
    if cooldown_s < 0:
        raise ValueError("cooldown_s must be >= 0")
    if max_restarts < 0:
        raise ValueError("max_restarts must be >= 0")
    moment = now or datetime.now(UTC)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    planner = _Planner(
        report, target, history or RecoveryHistory(), moment, cooldown_s, max_restarts
    )
    return planner.plan()
