"""The ECS simulation: each task of a service is a real local process.

moto keeps ECS and ELB records but never runs anything. This module runs every task as
a replica process on its own loopback address, with the environment of its task
definition revision, probes each replica's health path the way an ALB target group does,
rolls a new deployment (forced, or to another task definition revision) by really starting
new replicas and stopping the old ones, and writes what it sees back into moto (through
`MotoBridge`) so that describe_services, list_tasks/describe_tasks, describe_target_health
and boto3's waiters report what is really running and what stopped, and why.

A rollout, as ECS's rolling update with minimumHealthyPercent 100 and the deployment
circuit breaker on (rollback off): the old tasks keep serving until every new one is
healthy. A new task whose process exits ("Essential container in task exited") or that
answers its health checks with an error until its target is unhealthy ("Task failed ELB
health checks in (target-group ...)", stopped by the scheduler) is a failed task of the
deployment and is replaced; at the circuit breaker's threshold (half the desired count,
at least 3, at most 200 failed tasks) the deployment's rollout is FAILED and no more of
its tasks are started, the old ones still serving.

Simplifications, documented in the README: a target still starting (its port refuses
connections) stays `initial`, as within a health-check grace period; outside a rollout the
scheduler neither replaces a crashed task nor stops an unhealthy one on its own; a forced
new deployment or `heal` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import os
import signal
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from botocore.config import Config

from sandbox.aws import AwsSandbox, Seeded, ServiceDef
from sandbox.moto_bridge import DeploymentState, MotoBridge, TaskStop
from sandbox.ports import free_port
from sandbox.processes import die_with_parent

log = logging.getLogger("sandbox.ecs")

# Target-group health checking, faster than AWS's defaults so the sandbox converges in
# seconds; the thresholds keep AWS's shape (a run of results, not a single probe).
PROBE_INTERVAL_S = 0.25
PROBE_TIMEOUT_S = 1.0
# AWS's own default timeout is 5 s: a sandbox standing in for the deployed version, whose
# event loop stalls for one MLflow check at a time, sets it so that one stall does not flip a
# target that a real ALB would keep (its checks are 30 s apart, 5 s each).
ENV_PROBE_TIMEOUT = "SANDBOX_HEALTH_CHECK_TIMEOUT_SECONDS"
HEALTHY_THRESHOLD = 2
UNHEALTHY_THRESHOLD = 2
START_TIMEOUT_S = 60.0
# ECS's deployment circuit breaker: a deployment fails after this many failed tasks.
CIRCUIT_BREAKER_MIN, CIRCUIT_BREAKER_MAX = 3, 200
ESSENTIAL_EXITED = "Essential container in task exited"
CIRCUIT_BREAKER_REASON = "ECS deployment circuit breaker: tasks failed to start."


def failure_threshold(desired: int) -> int:
    """Failed tasks after which the circuit breaker fails a deployment (0.5 x desired)."""
    return max(CIRCUIT_BREAKER_MIN, min(CIRCUIT_BREAKER_MAX, math.ceil(0.5 * desired)))


def container_exit_code(returncode: int | None) -> int | None:
    """A process's return code as a container runtime reports it (a signal N is 128 + N)."""
    if returncode is None:
        return None
    return 128 - returncode if returncode < 0 else returncode


Launcher = Callable[[str, int], list[str]]  # (host, port) -> argv


def _probe_timeout() -> float:
    raw = os.environ.get(ENV_PROBE_TIMEOUT, "").strip()
    try:
        value = float(raw) if raw else PROBE_TIMEOUT_S
    except ValueError:
        raise ValueError(f"{ENV_PROBE_TIMEOUT} must be a number of seconds, got {raw!r}") from None
    if not 0 < value <= 60:
        raise ValueError(f"{ENV_PROBE_TIMEOUT} must be between 0 and 60 seconds")
    return value


@dataclass
class Replica:
    service: str
    task_id: str
    host: str
    port: int
    deployment_id: str
    task_definition: str  # the ARN of the revision this task runs
    proc: asyncio.subprocess.Process | None = None
    health: str = "initial"  # initial | healthy | unhealthy
    ok_streak: int = 0
    fail_streak: int = 0
    forced_unhealthy: bool = False
    stalled: bool = False  # never answers a health check (the ecs-rollout-stalled fault)
    reason: str | None = None
    answered: bool = False  # the last health check got an HTTP answer
    ever_healthy: bool = False
    recorded: bool = False  # moto has a task record for the current process
    stopped: bool = False  # ...and it is marked STOPPED
    terminating: bool = False  # sent SIGTERM: still exiting, no longer a serving task

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass
class ServiceRuntime:
    spec: ServiceDef
    launcher: Launcher
    env: dict[str, str]
    replicas: list[Replica] = field(default_factory=list)
    deployments: list[DeploymentState] = field(default_factory=list)
    force_unhealthy: bool = False
    stall_new: bool = False  # tasks started from now on fail their health checks
    # New deployments noticed since start: ECS's events keep only the latest 100 messages,
    # too few to count them over a long session.
    deployments_started: int = 0

    @property
    def primary(self) -> DeploymentState:
        return self.deployments[0]


class EcsSimulation:
    def __init__(
        self,
        aws: AwsSandbox,
        bridge: MotoBridge,
        seeded: Seeded,
        cluster: str,
        services: dict[str, tuple[ServiceDef, Launcher, dict[str, str]]],
        log_dir: Path,
    ) -> None:
        self.aws = aws
        self.bridge = bridge
        self.seeded = seeded
        self.cluster = cluster
        self.log_dir = log_dir
        self.services = {
            name: ServiceRuntime(spec, launcher, env)
            for name, (spec, launcher, env) in services.items()
        }
        self._addresses = itertools.count(2)
        self._client = httpx.AsyncClient(
            timeout=_probe_timeout(),
            limits=httpx.Limits(max_keepalive_connections=0),
            headers={"User-Agent": "ELB-HealthChecker/2.0"},  # what an ALB target sees
        )
        # The simulation stands in for ECS's own control plane: it rides out throttling.
        self._elbv2 = aws.client(
            "elbv2", config=Config(retries={"mode": "standard", "max_attempts": 10})
        )
        self._loop_task: asyncio.Task[None] | None = None
        # Health-check rounds begun and ended: a change is seen by the first round begun
        # after it (one in flight may still count a probe sent before it).
        self.ticks_started = 0
        self.ticks_ended = 0
        self._published: dict[tuple[str, str, int], str] = {}

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        for name, svc in self.services.items():
            deployment_id = self.bridge.primary_deployment_id(self.cluster, name)
            now = datetime.now(UTC)
            svc.deployments = [
                DeploymentState(
                    id=deployment_id,
                    status="PRIMARY",
                    rollout_state="IN_PROGRESS",
                    desired=svc.spec.desired,
                    running=0,
                    pending=svc.spec.desired,
                    task_definition=self.seeded.task_definition_arns[name],
                    created_at=now,
                    updated_at=now,
                )
            ]
            for _ in range(svc.spec.desired):
                await self._launch(svc, svc.primary)
        self._loop_task = asyncio.create_task(self._run())
        await self.wait_until(self.converged, START_TIMEOUT_S)

    async def stop(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        await asyncio.gather(
            *(self._terminate(r) for svc in self.services.values() for r in svc.replicas)
        )
        await self._client.aclose()

    async def wait_until(self, condition: Callable[[], bool], limit_s: float) -> None:
        deadline = asyncio.get_running_loop().time() + limit_s
        while not condition():
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError("ECS simulation did not converge")
            await asyncio.sleep(0.05)

    def converged(self) -> bool:
        return all(
            len(svc.deployments) == 1
            and svc.primary.rollout_state == "COMPLETED"
            and sum(r.alive for r in svc.replicas) == svc.spec.desired
            for svc in self.services.values()
        )

    # -- what the load balancers and the control API read ---------------------------------

    def healthy_backends(self, service: str) -> list[tuple[str, int]]:
        return [
            (r.host, r.port)
            for r in self.services[service].replicas
            if r.health == "healthy" and not r.forced_unhealthy
        ]

    def describe(self) -> dict[str, Any]:
        return {
            name: {
                "desired": svc.spec.desired,
                "running": sum(r.alive for r in svc.replicas),
                "deployments_started": svc.deployments_started,
                "deployments": [
                    {
                        "id": d.id,
                        "status": d.status,
                        "rollout_state": d.rollout_state,
                        "task_definition": d.task_definition,
                        "failed_tasks": d.failed_tasks,
                    }
                    for d in svc.deployments
                ],
                "replicas": [
                    {
                        "task_id": r.task_id,
                        "address": r.address,
                        "alive": r.alive,
                        "health": "unhealthy" if r.forced_unhealthy else r.health,
                        "deployment_id": r.deployment_id,
                        "task_definition": r.task_definition,
                    }
                    for r in svc.replicas
                ],
            }
            for name, svc in self.services.items()
        }

    def replicas(self, service: str) -> list[Replica]:
        return list(self.services[service].replicas)

    # -- faults ---------------------------------------------------------------------------

    async def crash(self, service: str, everything: bool = False) -> list[str]:
        """Kill one (or every) running replica of `service`, as a crashed task."""
        alive = [r for r in self.services[service].replicas if r.alive]
        victims = alive if everything else alive[:1]
        for r in victims:
            assert r.proc is not None
            r.proc.kill()
            await r.proc.wait()
        return [r.task_id for r in victims]

    async def restart_dead(self, service: str) -> None:
        """Heal: start the dead replicas of the current deployment again in place (each a
        new task, as ECS would start)."""
        svc = self.services[service]
        started = []
        for r in svc.replicas:
            if not r.alive:
                await self._spawn(svc, r)
                started.append(r)
        self._started_event(svc, started)

    def set_forced_unhealthy(self, service: str, on: bool) -> None:
        """Make the current replicas fail their health checks (new ones are not affected)."""
        for r in self.services[service].replicas:
            r.forced_unhealthy = on
        self.services[service].force_unhealthy = on

    def set_rollouts_stalled(self, service: str, on: bool) -> None:
        """Tasks started from now on fail their health checks, so a new deployment stays
        IN_PROGRESS (the current tasks keep serving); off: every task is let through."""
        svc = self.services[service]
        svc.stall_new = on
        if not on:
            for r in svc.replicas:
                r.stalled = False

    # -- the control loop -------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            self.ticks_started += 1
            try:
                await self._tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("ECS simulation tick failed")
            self.ticks_ended = self.ticks_started
            await asyncio.sleep(PROBE_INTERVAL_S)

    async def _tick(self) -> None:
        for name, svc in self.services.items():
            self._notice_new_deployment(name, svc)
        await asyncio.gather(
            *(self._probe(r) for svc in self.services.values() for r in svc.replicas)
        )
        for name, svc in self.services.items():
            await self._reap(svc)
            await self._advance_rollout(svc)
            self._publish(name, svc)
        await self._publish_target_health()

    def _event(self, svc: ServiceRuntime, message: str) -> None:
        self.bridge.add_service_event(self.cluster, svc.spec.name, message)

    def _notice_new_deployment(self, name: str, svc: ServiceRuntime) -> None:
        """A forced deployment or a new task definition revision shows as a new primary
        deployment id in moto (update_service); start rolling it."""
        current = self.bridge.primary_deployment_id(self.cluster, name)
        if current == svc.primary.id:
            return
        now = datetime.now(UTC)
        # A deployment left without a task (a failed one) is gone, as in ECS (INACTIVE).
        svc.deployments = [
            d for d in svc.deployments if any(r.deployment_id == d.id for r in svc.replicas)
        ]
        for d in svc.deployments:
            d.status = "ACTIVE"
        desired = self.bridge.desired_count(self.cluster, name)
        svc.spec.desired = desired
        svc.deployments.insert(
            0,
            DeploymentState(
                id=current,
                status="PRIMARY",
                rollout_state="IN_PROGRESS",
                desired=desired,
                running=0,
                pending=desired,
                task_definition=self.bridge.primary_task_definition(self.cluster, name),
                created_at=now,
                updated_at=now,
                rollout_state_reason=f"ECS deployment {current} in progress.",
            ),
        )
        svc.deployments_started += 1
        self._event(svc, f"(service {name}) has started a new deployment {current}.")
        # Tasks are launched in the rollout step, so that a slow start never blocks probing.

    async def _reap(self, svc: ServiceRuntime) -> None:
        """Record the tasks whose process ended as STOPPED, and, during a rollout, stop the
        new tasks that fail their health checks: both are failed tasks of the deployment."""
        primary = svc.primary
        tg = self.seeded.target_group_arns[svc.spec.name]
        stopped: list[Replica] = []
        for r in list(svc.replicas):
            if r.proc is None or r.stopped:
                continue
            # The tasks of a deployment rolling out (or failed): the scheduler stops and
            # counts them; elsewhere a dead task waits for heal or a new deployment.
            rolling = r.deployment_id == primary.id and primary.rollout_state != "COMPLETED"
            if not r.alive:
                code = container_exit_code(r.proc.returncode)
                self._record_stop(r, TaskStop("EssentialContainerExited", ESSENTIAL_EXITED, code))
                if rolling:
                    await self._deregister(svc, [r])
                    svc.replicas.remove(r)
                    self._task_failed(svc, primary)
            elif rolling and r.health == "unhealthy" and not r.ever_healthy:
                self._event(
                    svc,
                    f"(service {svc.spec.name}) (task {r.task_id}) (port {r.port}) is unhealthy "
                    f"in (target-group {tg}) due to (reason {r.reason or 'Health checks failed'}).",
                )
                await self._deregister(svc, [r])
                await self._terminate(r)
                stop = TaskStop(
                    "ServiceSchedulerInitiated",
                    f"Task failed ELB health checks in (target-group {tg})",
                    container_exit_code(r.proc.returncode),
                )
                self._record_stop(r, stop)
                svc.replicas.remove(r)
                stopped.append(r)
                self._task_failed(svc, primary)
        self._stopped_event(svc, stopped)

    def _task_failed(self, svc: ServiceRuntime, deployment: DeploymentState) -> None:
        deployment.failed_tasks += 1
        deployment.updated_at = datetime.now(UTC)
        if deployment.rollout_state != "IN_PROGRESS" or deployment.failed_tasks < failure_threshold(
            deployment.desired
        ):
            return
        deployment.rollout_state = "FAILED"
        deployment.rollout_state_reason = CIRCUIT_BREAKER_REASON
        # A failed deployment starts no more tasks; the older deployments keep serving.
        svc.replicas = [
            r for r in svc.replicas if not (r.deployment_id == deployment.id and r.proc is None)
        ]
        self._event(
            svc,
            f"(service {svc.spec.name}) (deployment {deployment.id}) deployment failed: "
            "tasks failed to start.",
        )

    async def _advance_rollout(self, svc: ServiceRuntime) -> None:
        primary = svc.primary
        if primary.rollout_state == "IN_PROGRESS":
            # Keep the deployment at its desired count: failed tasks are replaced.
            missing = primary.desired - sum(r.deployment_id == primary.id for r in svc.replicas)
            svc.replicas.extend(self._placeholder(svc, primary) for _ in range(missing))
        started = []
        for r in svc.replicas:
            if r.deployment_id == primary.id and r.proc is None:
                await self._spawn(svc, r)
                started.append(r)
        self._started_event(svc, started)
        new = [r for r in svc.replicas if r.deployment_id == primary.id]
        if primary.rollout_state == "IN_PROGRESS" and all(r.health == "healthy" for r in new):
            old = [r for r in svc.replicas if r.deployment_id != primary.id]
            await self._deregister(svc, old)
            draining = [r for r in old if r.alive]
            await asyncio.gather(*(self._terminate(r) for r in draining))
            for r in draining:
                stop = TaskStop(
                    "ServiceSchedulerInitiated",
                    f"Scaling activity initiated by (deployment {primary.id})",
                    container_exit_code(r.proc.returncode if r.proc else None),
                )
                self._record_stop(r, stop)
            self._stopped_event(svc, draining)
            svc.replicas = new
            svc.deployments = [primary]
            primary.rollout_state = "COMPLETED"
            primary.rollout_state_reason = f"ECS deployment {primary.id} completed."
            primary.updated_at = datetime.now(UTC)
            self._event(
                svc, f"(service {svc.spec.name}) (deployment {primary.id}) deployment completed."
            )
            self._event(svc, f"(service {svc.spec.name}) has reached a steady state.")

    def _started_event(self, svc: ServiceRuntime, replicas: list[Replica]) -> None:
        if replicas:
            tasks = " ".join(f"(task {r.task_id})" for r in replicas)
            self._event(
                svc, f"(service {svc.spec.name}) has started {len(replicas)} tasks: {tasks}."
            )

    def _stopped_event(self, svc: ServiceRuntime, replicas: list[Replica]) -> None:
        if replicas:
            tasks = " ".join(f"(task {r.task_id})" for r in replicas)
            self._event(
                svc,
                f"(service {svc.spec.name}) has stopped {len(replicas)} running tasks: {tasks}.",
            )

    def _record_stop(self, r: Replica, stop: TaskStop) -> None:
        if r.recorded and not r.stopped:
            self.bridge.stop_task(self.cluster, r.task_id, stop)
        r.stopped = True

    def _publish(self, name: str, svc: ServiceRuntime) -> None:
        def counts(replicas: list[Replica]) -> tuple[int, int]:
            running = sum(r.alive and r.health != "initial" for r in replicas)
            pending = sum(r.alive and r.health == "initial" for r in replicas) + sum(
                r.proc is None for r in replicas
            )
            return running, pending

        for d in svc.deployments:
            d.running, d.pending = counts([r for r in svc.replicas if r.deployment_id == d.id])
        running, pending = counts(svc.replicas)
        self.bridge.set_service_state(
            self.cluster, name, running, pending, svc.deployments, if_primary=svc.primary.id
        )

    async def _publish_target_health(self) -> None:
        for name, svc in self.services.items():
            tg = self.seeded.target_group_arns[name]
            for r in svc.replicas:
                state = "unhealthy" if r.forced_unhealthy else r.health
                key = (tg, r.host, r.port)
                if self._published.get(key) == state:
                    continue
                reason = None
                if state == "unhealthy" and r.alive and r.answered and not r.forced_unhealthy:
                    reason = "Target.ResponseCodeMismatch"
                elif state == "unhealthy":
                    reason = "Target.Timeout" if r.alive else "Target.FailedHealthChecks"
                elif state == "initial":
                    reason = "Elb.RegistrationInProgress"
                self.bridge.set_target_health(tg, r.host, r.port, state, reason, r.reason)
                self._published[key] = state

    # -- replicas -------------------------------------------------------------------------

    def _placeholder(self, svc: ServiceRuntime, deployment: DeploymentState) -> Replica:
        host = self._next_address()
        return Replica(
            service=svc.spec.name,
            task_id=uuid.uuid4().hex,
            host=host,
            port=free_port(host),
            deployment_id=deployment.id,
            task_definition=deployment.task_definition,
        )

    async def _launch(self, svc: ServiceRuntime, deployment: DeploymentState) -> Replica:
        replica = self._placeholder(svc, deployment)
        svc.replicas.append(replica)
        await self._spawn(svc, replica)
        return replica

    async def _spawn(self, svc: ServiceRuntime, r: Replica) -> None:
        if r.recorded:  # a dead task started again: ECS would start a new task
            r.task_id = uuid.uuid4().hex
        r.health, r.ok_streak, r.fail_streak = "initial", 0, 0
        r.forced_unhealthy = r.terminating = False
        r.stalled = svc.stall_new
        r.answered = r.ever_healthy = r.recorded = r.stopped = False
        logfile = (self.log_dir / f"{svc.spec.name}-{r.task_id[:8]}.log").open("ab")
        # What ECS gives the container: its task definition's environment, then the
        # sandbox's wiring (URLs and keys the seeded definitions leave out).
        revision_env = self.bridge.container_environment(r.task_definition)
        env = {
            **os.environ,
            **revision_env,
            **svc.env,
            "REPLICA_ID": r.task_id,
            "ECS_TASK_ADDRESS": r.address,
        }
        r.proc = await asyncio.create_subprocess_exec(
            *svc.launcher(r.host, r.port),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=logfile,
            stderr=logfile,
            env=env,
            preexec_fn=die_with_parent,
        )
        logfile.close()
        self.bridge.start_task(
            self.cluster, svc.spec.name, r.task_id, r.task_definition, r.deployment_id, r.host
        )
        r.recorded = True
        self._published.pop((self.seeded.target_group_arns[svc.spec.name], r.host, r.port), None)
        await asyncio.to_thread(
            self._elbv2.register_targets,
            TargetGroupArn=self.seeded.target_group_arns[svc.spec.name],
            Targets=[{"Id": r.host, "Port": r.port}],
        )

    async def _deregister(self, svc: ServiceRuntime, replicas: list[Replica]) -> None:
        if not replicas:
            return
        tg = self.seeded.target_group_arns[svc.spec.name]
        await asyncio.to_thread(
            self._elbv2.deregister_targets,
            TargetGroupArn=tg,
            Targets=[{"Id": r.host, "Port": r.port} for r in replicas],
        )
        for r in replicas:
            self.bridge.clear_target_health(tg, r.host, r.port)
            self._published.pop((tg, r.host, r.port), None)

    async def _terminate(self, r: Replica) -> None:
        if r.proc is None or r.proc.returncode is not None:
            return
        r.terminating = True
        with contextlib.suppress(ProcessLookupError):
            r.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(r.proc.wait(), 5)
        except TimeoutError:
            r.proc.kill()
            await r.proc.wait()

    async def _probe(self, r: Replica) -> None:
        if r.proc is None:
            return
        ok = False
        r.answered = False
        if r.alive and r.stalled:
            r.reason = "Health checks failed with these codes: [503]"
        elif r.alive:
            path = self.services[r.service].spec.health_check_path
            try:
                resp = await self._client.get(f"http://{r.address}{path}")
                ok = resp.status_code == 200
                r.answered = True
                r.reason = (
                    None if ok else f"Health checks failed with these codes: [{resp.status_code}]"
                )
            except httpx.HTTPError as exc:
                r.reason = f"Request timed out or failed: {type(exc).__name__}"
        else:
            r.reason = "Target is not responding (task stopped)"
        if ok:
            r.ok_streak, r.fail_streak = r.ok_streak + 1, 0
            if r.ok_streak >= HEALTHY_THRESHOLD:
                r.health = "healthy"
                r.ever_healthy = True
        else:
            r.ok_streak, r.fail_streak = 0, r.fail_streak + 1
            # A target that is still starting (no answer yet) stays initial, as within a
            # health-check grace period; one that answers with an error does not.
            settled = r.health != "initial" or not r.alive or r.answered
            if r.fail_streak >= UNHEALTHY_THRESHOLD and settled:
                r.health = "unhealthy"

    def _next_address(self) -> str:
        n = next(self._addresses)
        return f"127.0.{n // 250}.{n % 250 + 2}"
