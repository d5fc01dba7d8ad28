"""The ECS simulation: each task of a service is a real local process.

moto keeps ECS and ELB records but never runs anything. This module runs every task as
a replica process on its own loopback address, probes each replica's health path the
way an ALB target group does, rolls a forced new deployment by really starting new
replicas and stopping the old ones, and writes what it sees back into moto (through
`MotoBridge`) so that describe_services, describe_target_health and boto3's waiters
report what is really running.

Simplification, documented in the README: the scheduler does not replace a crashed task
on its own (as when a replacement keeps failing to start); a forced new deployment or
`heal` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
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
from sandbox.moto_bridge import DeploymentState, MotoBridge
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
    proc: asyncio.subprocess.Process | None = None
    health: str = "initial"  # initial | healthy | unhealthy
    ok_streak: int = 0
    fail_streak: int = 0
    forced_unhealthy: bool = False
    stalled: bool = False  # fails every health check (a bad deployment's task)
    reason: str | None = None

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
                await self._launch(svc, deployment_id)
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
                "deployments": [
                    {"id": d.id, "status": d.status, "rollout_state": d.rollout_state}
                    for d in svc.deployments
                ],
                "replicas": [
                    {
                        "task_id": r.task_id,
                        "address": r.address,
                        "alive": r.alive,
                        "health": "unhealthy" if r.forced_unhealthy else r.health,
                        "deployment_id": r.deployment_id,
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
        """Heal: start the dead replicas of the current deployment again in place."""
        for r in self.services[service].replicas:
            if not r.alive:
                await self._spawn(self.services[service], r)

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
            try:
                await self._tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("ECS simulation tick failed")
            await asyncio.sleep(PROBE_INTERVAL_S)

    async def _tick(self) -> None:
        for name, svc in self.services.items():
            self._notice_forced_deployment(name, svc)
        await asyncio.gather(
            *(self._probe(r) for svc in self.services.values() for r in svc.replicas)
        )
        for name, svc in self.services.items():
            await self._advance_rollout(svc)
            self._publish(name, svc)
        await self._publish_target_health()

    def _notice_forced_deployment(self, name: str, svc: ServiceRuntime) -> None:
        current = self.bridge.primary_deployment_id(self.cluster, name)
        if current == svc.primary.id:
            return
        now = datetime.now(UTC)
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
                task_definition=self.seeded.task_definition_arns[name],
                created_at=now,
                updated_at=now,
            ),
        )
        self.bridge.add_service_event(
            self.cluster, name, f"(service {name}) has started a new deployment {current}."
        )
        # Launching happens in the rollout step so a slow start never blocks probing.
        svc.replicas.extend(self._placeholder(svc, current) for _ in range(desired))

    async def _advance_rollout(self, svc: ServiceRuntime) -> None:
        primary = svc.primary
        for r in svc.replicas:
            if r.deployment_id == primary.id and r.proc is None:
                await self._spawn(svc, r)
        new = [r for r in svc.replicas if r.deployment_id == primary.id]
        if primary.rollout_state == "IN_PROGRESS" and all(r.health == "healthy" for r in new):
            old = [r for r in svc.replicas if r.deployment_id != primary.id]
            await self._deregister(svc, old)
            await asyncio.gather(*(self._terminate(r) for r in old))
            svc.replicas = new
            svc.deployments = [primary]
            primary.rollout_state = "COMPLETED"
            primary.rollout_state_reason = f"ECS deployment {primary.id} completed."
            primary.updated_at = datetime.now(UTC)
            self.bridge.add_service_event(
                self.cluster,
                svc.spec.name,
                f"(service {svc.spec.name}) has reached a steady state.",
            )

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
                if state == "unhealthy":
                    reason = "Target.Timeout" if r.alive else "Target.FailedHealthChecks"
                elif state == "initial":
                    reason = "Elb.RegistrationInProgress"
                self.bridge.set_target_health(tg, r.host, r.port, state, reason, r.reason)
                self._published[key] = state

    # -- replicas -------------------------------------------------------------------------

    def _placeholder(self, svc: ServiceRuntime, deployment_id: str) -> Replica:
        host = self._next_address()
        return Replica(
            service=svc.spec.name,
            task_id=uuid.uuid4().hex,
            host=host,
            port=free_port(host),
            deployment_id=deployment_id,
        )

    async def _launch(self, svc: ServiceRuntime, deployment_id: str) -> Replica:
        replica = self._placeholder(svc, deployment_id)
        svc.replicas.append(replica)
        await self._spawn(svc, replica)
        return replica

    async def _spawn(self, svc: ServiceRuntime, r: Replica) -> None:
        r.health, r.ok_streak, r.fail_streak = "initial", 0, 0
        r.forced_unhealthy = False
        r.stalled = svc.stall_new
        logfile = (self.log_dir / f"{svc.spec.name}-{r.task_id[:8]}.log").open("ab")
        env = {**os.environ, **svc.env, "REPLICA_ID": r.task_id, "ECS_TASK_ADDRESS": r.address}
        r.proc = await asyncio.create_subprocess_exec(
            *svc.launcher(r.host, r.port),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=logfile,
            stderr=logfile,
            env=env,
            preexec_fn=die_with_parent,
        )
        logfile.close()
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
        if r.alive and r.stalled:
            r.reason = "Health checks failed with these codes: [503]"
        elif r.alive:
            path = self.services[r.service].spec.health_check_path
            try:
                resp = await self._client.get(f"http://{r.address}{path}")
                ok = resp.status_code == 200
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
        else:
            r.ok_streak, r.fail_streak = 0, r.fail_streak + 1
            if r.fail_streak >= UNHEALTHY_THRESHOLD and (r.health != "initial" or not r.alive):
                r.health = "unhealthy"

    def _next_address(self) -> str:
        n = next(self._addresses)
        return f"127.0.{n // 250}.{n % 250 + 2}"
