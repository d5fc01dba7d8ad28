"""The one place that reaches into moto's in-memory backends.

moto answers the ECS and ELBv2 APIs but never simulates them: an ECS service's
runningCount stays at 0 and its deployment never completes, and every registered ALB
target is reported "healthy". The sandbox's ECS simulation runs real processes and uses
this bridge to make moto's answers match them. moto is served in-process (see
`sandbox.aws`), so the backends written here are the ones its request threads read.

Three moto methods are wrapped, once per process, when the first bridge is made:
`FakeTargetGroup.health_for` (to report the simulation's target health),
`EC2ContainerServiceBackend.update_service`, which otherwise reports a scale-up or a forced
deployment as converged in the same response (runningCount := desiredCount, one COMPLETED
deployment), so a services_stable waiter started right after would succeed at once (with the
wrapper, update_service leaves the counts alone and opens a new IN_PROGRESS primary
deployment, as ECS does, until the simulation reports progress), and
`EC2ContainerServiceBackend.list_tasks`, which ignores `serviceName` and lists every desired
status when none is asked for (ECS lists RUNNING ones).

The simulation's tasks are moto `Task` records the bridge creates and stops itself (moto
runs none for a service), with the fields DescribeTasks reports for a stopped task: stop
code, stopped reason, the container's exit code, timestamps. moto's state manager would walk
a described RUNNING task towards STOPPED on its own; the bridge turns that off (moto's public
`state_manager.set_transition`), so a task stops only when its process does.

Everything moto-internal this module relies on is pinned by tests/sandbox/test_moto_bridge.py,
so that a moto upgrade that moves it fails there rather than in a demo.
"""

from __future__ import annotations

import inspect
import sys
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from moto.core import DEFAULT_ACCOUNT_ID
from moto.ecs.models import EC2ContainerServiceBackend, Task, ecs_backends
from moto.elbv2.models import FakeHealthStatus, FakeTargetGroup, elbv2_backends
from moto.moto_api import state_manager

# Held by the bridge while it mutates backend state, and by sandbox.aws around every
# request it hands to moto: moto itself takes no locks, and a describe_services serialised
# halfway through set_service_state could show a torn state (e.g. a stable service that
# is not). Reentrant because the health_for wrapper runs inside a request under it.
BACKEND_LOCK = threading.RLock()

TARGET_HEALTH_STATES = frozenset({"initial", "healthy", "unhealthy", "draining", "unused"})
_MAX_EVENTS = 100  # ECS keeps the most recent 100 service events
# Stopped tasks kept per service (ECS shows them for about an hour); the oldest go first.
MAX_STOPPED_TASKS = 100

# (target group ARN, target id, port) -> (state, reason, description)
_health_overrides: dict[tuple[str, str, int], tuple[str, str | None, str | None]] = {}
_patch_lock = threading.Lock()


@dataclass
class DeploymentState:
    """One ECS deployment as describe_services should report it."""

    id: str
    status: str  # PRIMARY | ACTIVE
    rollout_state: str  # IN_PROGRESS | COMPLETED | FAILED
    desired: int
    running: int
    pending: int
    task_definition: str
    created_at: datetime
    updated_at: datetime
    rollout_state_reason: str = ""
    failed_tasks: int = 0  # tasks of this deployment that failed to start or to stay up


@dataclass(frozen=True)
class TaskStop:
    """Why a task stopped, as DescribeTasks reports it."""

    stop_code: str  # EssentialContainerExited | ServiceSchedulerInitiated | TaskFailedToStart
    reason: str  # stoppedReason
    exit_code: int | None  # of the essential container; None when it never ran
    container_reason: str | None = None


class MotoBridge:
    """Reads and overrides moto's ECS service and ALB target-health state."""

    def __init__(self, region: str, account_id: str = DEFAULT_ACCOUNT_ID) -> None:
        self.region = region
        self.account_id = account_id
        _install_target_health_patch()
        _install_update_service_patch()
        _install_list_tasks_patch()
        # The simulation owns the task lifecycle (see the module docstring).
        state_manager.set_transition("ecs::task", {"progression": "manual", "times": sys.maxsize})

    # -- ECS -------------------------------------------------------------------------

    def _ecs(self) -> Any:
        return ecs_backends[self.account_id][self.region]

    def _service(self, cluster: str, service: str) -> Any:
        # _get_service accepts a name or an ARN and raises moto's ServiceNotFoundException
        return self._ecs()._get_service(cluster, service.split("/")[-1])

    def primary_deployment_id(self, cluster: str, service: str) -> str:
        """The id moto reports for the service's primary deployment.

        moto rewrites deployments[0]["id"] on update_service(forceNewDeployment=True) and
        does nothing else, so a change here is how a forced deployment is noticed.
        """
        with BACKEND_LOCK:
            deployments = self._service(cluster, service).deployments
            if not deployments:
                raise LookupError(f"service {service} has no deployments")
            return str(deployments[0]["id"])

    def primary_task_definition(self, cluster: str, service: str) -> str:
        """The task definition ARN of the service's primary deployment."""
        with BACKEND_LOCK:
            svc = self._service(cluster, service)
            if not svc.deployments:
                raise LookupError(f"service {service} has no deployments")
            return str(svc.deployments[0].get("taskDefinition") or svc.task_definition)

    def container_environment(self, task_definition: str) -> dict[str, str]:
        """The environment a task of this definition's essential container starts with."""
        with BACKEND_LOCK:
            td = self._ecs().describe_task_definition(task_definition)
            container = td.container_definitions[0]
            return {
                str(e["name"]): str(e.get("value", ""))
                for e in container.get("environment") or []
                if e.get("name")
            }

    def desired_count(self, cluster: str, service: str) -> int:
        with BACKEND_LOCK:
            return int(self._service(cluster, service).desired_count)

    def set_service_state(
        self,
        cluster: str,
        service: str,
        running: int,
        pending: int,
        deployments: list[DeploymentState],
        if_primary: str | None = None,
    ) -> bool:
        """Make describe_services report these counts and deployments.

        The PRIMARY deployment is stored first: moto's forced deployment rewrites the id
        of deployments[0], and that must stay the primary's. With `if_primary`, nothing is
        written (and False returned) when the stored primary is no longer that one: an
        UpdateService arrived since the caller last looked, and must not be lost.
        """
        ordered = sorted(deployments, key=lambda d: d.status != "PRIMARY")
        with BACKEND_LOCK:
            backend = self._ecs()
            svc = self._service(cluster, service)
            if (
                if_primary is not None
                and svc.deployments
                and svc.deployments[0]["id"] != if_primary
            ):
                return False
            template = svc.deployments[0] if svc.deployments else {}
            new = [_deployment_dict(d, template) for d in ordered]
            svc.running_count = running
            svc.pending_count = pending
            svc.deployments = new
            _recount_cluster(backend, svc.cluster_name)
        return True

    def add_service_event(self, cluster: str, service: str, message: str) -> None:
        """Prepend an event (describe_services lists them newest first)."""
        event = {
            "id": str(uuid.uuid4()),
            "createdAt": datetime.now(UTC),
            "message": message,
        }
        with BACKEND_LOCK:
            svc = self._service(cluster, service)
            svc.events = [event, *svc.events][:_MAX_EVENTS]

    # -- ECS tasks ---------------------------------------------------------------------

    def start_task(
        self,
        cluster: str,
        service: str,
        task_id: str,
        task_definition: str,
        deployment_id: str,
        address: str,
    ) -> str:
        """Record a RUNNING task of `service` (its process has just started); its ARN.

        Listed by list_tasks(serviceName=service), started by the deployment (ECS's
        `startedBy` is the deployment id), reached at `address` (its ENI's private IP).
        """
        now = datetime.now(UTC)
        with BACKEND_LOCK:
            backend = self._ecs()
            svc = self._service(cluster, service)
            cl = backend._get_cluster(cluster)
            definition = backend.describe_task_definition(task_definition)
            # Task.__init__ makes an EC2 ENI for an awsvpc definition, and on this moto that
            # fails (the ENI has no private_dns_name); the task's address is the replica's
            # anyway. So it is built as a non-awsvpc task, and given its attachment here.
            mode, definition.network_mode = definition.network_mode, "bridge"
            try:
                task: Any = Task(
                    cluster=cl,
                    task_definition=definition,
                    container_instance_arn=None,
                    resource_requirements=None,
                    backend=backend,
                    group=f"service:{svc.name}",
                    launch_type=svc.launch_type or "FARGATE",
                    started_by=deployment_id,
                )
            finally:
                definition.network_mode = mode
            task.id = task_id
            task.last_status = "RUNNING"
            task.desired_status = "RUNNING"
            task.health_status = "UNKNOWN"  # no container health check is defined
            task.created_at = task.started_at = now
            task.attachments = [
                {
                    "id": str(uuid.uuid4()),
                    "type": "ElasticNetworkInterface",
                    "status": "ATTACHED",
                    "details": [{"name": "privateIPv4Address", "value": address}],
                }
            ]
            for container in task.containers:
                container.last_status = "RUNNING"
                container.exitCode = None
                container.health_status = "UNKNOWN"
                container.task_arn = task.task_arn
            backend.tasks.setdefault(cl.name, {})[task.task_arn] = task
            return str(task.task_arn)

    def stop_task(self, cluster: str, task_id: str, stop: TaskStop) -> None:
        """Mark a task STOPPED with its reason and exit code (its process is gone)."""
        now = datetime.now(UTC)
        with BACKEND_LOCK:
            backend = self._ecs()
            task = self._task(cluster, task_id)
            task.last_status = "STOPPED"
            task.desired_status = "STOPPED"
            task.stop_code = stop.stop_code
            task.stopped_reason = stop.reason
            task.stopping_at = task.execution_stopped_at = task.stopped_at = now
            for container in task.containers:
                container.last_status = "STOPPED"
                container.exitCode = stop.exit_code
                container.reason = stop.container_reason
            self._prune_stopped(backend, task.cluster_name, task.group)

    def _task(self, cluster: str, task_id: str) -> Any:
        tasks = self._ecs().tasks.get(self._ecs()._get_cluster(cluster).name, {})
        for arn, task in tasks.items():
            if arn.rsplit("/", 1)[-1] == task_id:
                return task
        raise LookupError(f"no task {task_id} in cluster {cluster}")

    def _prune_stopped(self, backend: Any, cluster: str, group: str) -> None:
        """Forget the oldest stopped tasks of a service beyond MAX_STOPPED_TASKS."""
        tasks = backend.tasks.get(cluster, {})
        stopped = sorted(
            (t for t in tasks.values() if t.group == group and t.desired_status == "STOPPED"),
            key=lambda t: t.stopped_at,
        )
        for task in stopped[: max(0, len(stopped) - MAX_STOPPED_TASKS)]:
            del tasks[task.task_arn]

    # -- ELBv2 target health ---------------------------------------------------------

    def set_target_health(
        self,
        target_group_arn: str,
        target_id: str,
        port: int,
        state: str,
        reason: str | None = None,
        description: str | None = None,
    ) -> None:
        """Make describe_target_health report `state` for this target.

        The override wins over moto's own answer, registered or not, so that the
        simulation can also report targets it is draining.
        """
        if state not in TARGET_HEALTH_STATES:
            raise ValueError(f"unknown target health state {state!r}")
        with BACKEND_LOCK:
            if target_group_arn not in elbv2_backends[self.account_id][self.region].target_groups:
                raise LookupError(f"no target group {target_group_arn}")
            _health_overrides[(target_group_arn, target_id, int(port))] = (
                state,
                reason,
                description,
            )

    def clear_target_health(self, target_group_arn: str, target_id: str, port: int) -> None:
        with BACKEND_LOCK:
            _health_overrides.pop((target_group_arn, target_id, int(port)), None)


def _deployment_dict(d: DeploymentState, template: dict[str, Any]) -> dict[str, Any]:
    """A deployment in the shape moto keeps it: boto's camelCase field names."""
    return {
        # Fields the simulation does not model keep what moto set at create_service.
        "launchType": template.get("launchType"),
        "platformVersion": template.get("platformVersion"),
        "platformFamily": template.get("platformFamily"),
        "networkConfiguration": template.get("networkConfiguration"),
        "failedTasks": d.failed_tasks,
        "id": d.id,
        "status": d.status,
        "taskDefinition": d.task_definition,
        "desiredCount": d.desired,
        "runningCount": d.running,
        "pendingCount": d.pending,
        "createdAt": d.created_at,
        "updatedAt": d.updated_at,
        "rolloutState": d.rollout_state,
        "rolloutStateReason": d.rollout_state_reason,
    }


def _recount_cluster(backend: Any, cluster: str) -> None:
    """Recompute describe_clusters' task counts from the services.

    moto keeps them by increments and its update_service drops the pending ones, so they
    drift; the sandbox runs no standalone tasks, so the services are the truth.
    """
    cl = backend._get_cluster(cluster)
    active = [
        s for s in backend.services.values() if s.cluster_name == cl.name and s.status == "ACTIVE"
    ]
    cl.running_tasks_count = sum(s.running_count for s in active)
    cl.pending_tasks_count = sum(s.pending_count for s in active)
    cl.active_services_count = len(active)


def _install_target_health_patch() -> None:
    """Wrap FakeTargetGroup.health_for once so overrides show through.

    Idempotent: the wrapper marks itself, and a second bridge finds it in place.
    """
    with _patch_lock:
        original = FakeTargetGroup.health_for
        if getattr(original, "_sandbox_override", False):
            return

        def health_for(self: FakeTargetGroup, target: dict[str, Any], ec2_backend: Any) -> Any:
            status = original(self, target, ec2_backend)
            with BACKEND_LOCK:
                override = _health_overrides.get((self.arn, status.instance_id, int(status.port)))
            if override is None:
                return status
            state, reason, description = override
            return FakeHealthStatus(
                status.instance_id,
                status.port,
                status.health_check_port,
                state,
                reason,
                description,
            )

        health_for._sandbox_override = True  # type: ignore[attr-defined]
        FakeTargetGroup.health_for = health_for  # type: ignore[method-assign]


def _install_update_service_patch() -> None:
    """Wrap EC2ContainerServiceBackend.update_service once (see the module docstring)."""
    with _patch_lock:
        original = EC2ContainerServiceBackend.update_service
        if getattr(original, "_sandbox_override", False):
            return

        def update_service(
            self: EC2ContainerServiceBackend, service_properties: dict[str, Any]
        ) -> Any:
            props = service_properties
            # moto pops keys from props: read what we need first
            cluster = props.get("cluster", "default")
            name = str(props.get("service", "")).split("/")[-1]
            force = bool(props.get("force_new_deployment"))
            td = props.get("task_definition")
            with BACKEND_LOCK:
                try:
                    svc = self._get_service(cluster, name)
                except Exception:
                    return original(self, service_properties)  # let moto raise its own error
                running, pending = svc.running_count, svc.pending_count
                before = [dict(d) for d in svc.deployments]
                before_td = svc.task_definition
                result = original(self, service_properties)
                svc.running_count, svc.pending_count = running, pending
                if td:
                    # moto stores the string as given ("family:2"); ECS reports the ARN
                    svc.task_definition = self.describe_task_definition(td).arn
                if before:
                    svc.deployments = _after_update(svc, before, before_td, force)
                _recount_cluster(self, svc.cluster_name)
                return result

        update_service._sandbox_override = True  # type: ignore[attr-defined]
        EC2ContainerServiceBackend.update_service = update_service  # type: ignore[method-assign]


def _after_update(
    svc: Any, before: list[dict[str, Any]], before_td: str | None, force: bool
) -> list[dict[str, Any]]:
    """The deployments ECS would show right after update_service."""
    now = datetime.now(UTC)
    if not force and svc.task_definition == before_td:
        # A scale: the primary deployment's target follows, nothing has moved yet.
        primary = {**before[0], "desiredCount": svc.desired_count, "updatedAt": now}
        return [primary, *before[1:]]
    # A new deployment. Keep the id moto drew for a forced one (its only visible change);
    # draw one the same way for a task definition change, which moto ignores.
    moto_id = svc.deployments[0]["id"]
    new_id = moto_id if moto_id != before[0]["id"] else f"ecs-svc/{uuid.uuid4().int >> 64}"
    primary = {
        **before[0],
        "id": new_id,
        "status": "PRIMARY",
        "taskDefinition": svc.task_definition,
        "desiredCount": svc.desired_count,
        "runningCount": 0,
        "pendingCount": 0,
        "failedTasks": 0,
        "createdAt": now,
        "updatedAt": now,
        "rolloutState": "IN_PROGRESS",
        "rolloutStateReason": f"ECS deployment {new_id} in progress.",
    }
    # Older deployments stay ACTIVE while their tasks drain (the simulation retires them).
    older = [{**d, "status": "ACTIVE"} for d in before if d.get("runningCount", 0) > 0]
    return [primary, *older]


def _install_list_tasks_patch() -> None:
    """Wrap EC2ContainerServiceBackend.list_tasks once: filter by service (a task's group is
    "service:NAME"), list RUNNING tasks when no desired status is asked for, as ECS does,
    and list the newest first (ECS leaves the order unsaid; moto lists the oldest first, so
    one page would never show a task that just stopped)."""
    with _patch_lock:
        original = EC2ContainerServiceBackend.list_tasks
        if getattr(original, "_sandbox_override", False):
            return
        signature = inspect.signature(original)

        def list_tasks(self: EC2ContainerServiceBackend, *args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(self, *args, **kwargs)
            bound.apply_defaults()
            service = bound.arguments.get("service_name")
            if not bound.arguments.get("desiredStatus"):
                bound.arguments["desiredStatus"] = "RUNNING"
            tasks = original(*bound.args, **bound.kwargs)
            if service:
                group = f"service:{str(service).split('/')[-1]}"
                tasks = [t for t in tasks if t.group == group]
            oldest = datetime.min.replace(tzinfo=UTC)
            return sorted(tasks, key=lambda t: getattr(t, "created_at", oldest), reverse=True)

        list_tasks._sandbox_override = True  # type: ignore[attr-defined]
        EC2ContainerServiceBackend.list_tasks = list_tasks  # type: ignore[method-assign]
