"""The whole production system on loopback, assembled, and its faults.

Layout (every arrow is a real network hop on 127.0.0.0/8):

    api_url --> registry ALB (lb.py) --> registry replicas (ECS tasks, ecs.py)
                                              |--> PostgreSQL (tcpproxy -> real server)
                                              |--> Redis      (tcpproxy -> real server)
                                              '--> mlflow_url --> MLflow LB --> MLflow replica
    aws_endpoint_url --> moto (aws.py), kept truthful by the ECS simulation
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import secrets
import sys
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import uvicorn

from sandbox.aws import AwsSandbox, ServiceDef, Topology
from sandbox.ecs import EcsSimulation, Launcher
from sandbox.faultnames import BAD_DEPLOY_MODES, FAULTS, LATENCY_COMPONENTS
from sandbox.lb import LoadBalancer
from sandbox.moto_bridge import MotoBridge
from sandbox.ports import free_port
from sandbox.real_mlflow import real_mlflow_launcher
from sandbox.registry.defects import ENV_RELEASE_DEFECT
from sandbox.servers import PostgresServer, RedisServer
from sandbox.tcpproxy import TcpProxy

log = logging.getLogger("sandbox")

REGISTRY = "hokusai-registry"
MLFLOW = "hokusai-mlflow"
MLFLOW_SLOW_MS = 3000  # longer than the registry's MLflow client timeout (2 s)
# A legacy replica answers its admin routes only once its blocked event loop is free again;
# wait that long (within the control client's 30 s) rather than drop its figures.
ACCOUNTING_TIMEOUT_S = 25.0
AWS_TEST_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


class FaultError(ValueError):
    """A fault request that cannot be carried out (unknown name, bad argument)."""


@dataclass
class SandboxOptions:
    state_dir: Path
    registry_flavor: str = "contract"
    mlflow: str = "stub"  # "stub" or "real"
    registry_replicas: int = 2
    region: str = "us-east-1"
    api_key: str | None = None
    db_password: str | None = None
    redis_password: str | None = None


@dataclass
class _Fault:
    name: str
    params: dict[str, Any] = field(default_factory=dict)


# How long the load balancers (and the control API) keep an idle client connection open:
# the ALB's default idle timeout. uvicorn's own 5 s equals httpx's keep-alive expiry, so a
# pooled client (a registry replica's MLflow client) could send a request on a connection
# at the very moment the server closed it, and that MLflow call failed: a race a real ALB,
# which outlasts its clients' idle pools, does not have.
IDLE_TIMEOUT_S = 60


class _EmbeddedServer(uvicorn.Server):
    """A uvicorn server inside the sandbox's loop: signals belong to the sandbox."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class Sandbox:
    def __init__(self, options: SandboxOptions) -> None:
        if options.registry_flavor not in ("contract", "legacy"):
            raise ValueError(f"unknown registry flavor {options.registry_flavor!r}")
        if options.mlflow == "real" and importlib.util.find_spec("mlflow") is None:
            raise ValueError("--mlflow real needs the optional 'mlflow' dependency group")
        self.options = options
        self.state_dir = options.state_dir
        self.api_key = options.api_key or secrets.token_urlsafe(24)
        self.db_password = options.db_password or secrets.token_urlsafe(18)
        self.redis_password = options.redis_password or secrets.token_urlsafe(18)
        self.admin_token = secrets.token_urlsafe(18)
        self.topology = Topology(
            services=[
                ServiceDef(
                    REGISTRY, options.registry_replicas, 8000, "hokusai-registry-tg", "/live"
                ),
                ServiceDef(MLFLOW, 1, 5000, "hokusai-mlflow-tg", "/health"),
            ]
        )
        self.faults: dict[str, _Fault] = {}
        # The health-check round in flight at the last fault, heal or breaker change.
        self._changed_at_tick = 0
        self._servers: list[tuple[_EmbeddedServer, asyncio.Task[None]]] = []
        self._http = httpx.AsyncClient(timeout=5.0)

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        logs = self.state_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        # Started from the main thread so that die-with-parent is tied to it.
        self.postgres = PostgresServer(self.state_dir / "postgres", password=self.db_password)
        self.redis = RedisServer(self.state_dir / "redis", password=self.redis_password)
        self.postgres.start()
        self.redis.start()
        self.pg_proxy = TcpProxy(self.postgres.host, self.postgres.port)
        self.redis_proxy = TcpProxy(self.redis.host, self.redis.port)
        await self.pg_proxy.start()
        await self.redis_proxy.start()

        self.aws = AwsSandbox(region=self.options.region)
        await asyncio.to_thread(self.aws.start)
        self.seeded = await asyncio.to_thread(self.aws.seed, self.topology)
        self.bridge = MotoBridge(self.options.region)

        self.mlflow_lb = LoadBalancer("mlflow", lambda: self.ecs.healthy_backends(MLFLOW))
        self.registry_lb = LoadBalancer("registry", lambda: self.ecs.healthy_backends(REGISTRY))
        mlflow_port = await self._serve(self.mlflow_lb)
        alb_port = await self._serve(self.registry_lb)
        self.mlflow_url = f"http://127.0.0.1:{mlflow_port}"
        self.api_url = f"http://127.0.0.1:{alb_port}"

        registry_env = {
            "REGISTRY_FLAVOR": self.options.registry_flavor,
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url,
            "MLFLOW_TRACKING_URI": self.mlflow_url,
            "API_KEY": self.api_key,
            "SANDBOX_ADMIN_TOKEN": self.admin_token,
            "SERVICE_NAME": REGISTRY,
        }
        services: dict[str, tuple[ServiceDef, Launcher, dict[str, str]]] = {
            s.name: (s, *self._launcher(s.name, registry_env)) for s in self.topology.services
        }
        self.ecs = EcsSimulation(
            self.aws, self.bridge, self.seeded, self.topology.cluster, services, logs
        )
        await self.ecs.start()

    async def stop(self) -> None:
        with contextlib.suppress(AttributeError):
            await self.ecs.stop()
        for server, task in self._servers:
            server.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 5)
        for lb_name in ("mlflow_lb", "registry_lb"):
            lb = getattr(self, lb_name, None)
            if lb is not None:
                await lb.aclose()
        for proxy_name in ("pg_proxy", "redis_proxy"):
            proxy = getattr(self, proxy_name, None)
            if proxy is not None:
                await proxy.stop()
        if hasattr(self, "aws"):
            await asyncio.to_thread(self.aws.stop)
        if hasattr(self, "redis"):
            self.redis.stop()
        if hasattr(self, "postgres"):
            self.postgres.remove()
        await self._http.aclose()

    async def _serve(self, app: Any, port: int | None = None) -> int:
        port = port or free_port()
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_keep_alive=IDLE_TIMEOUT_S,
        )
        server = _EmbeddedServer(config)
        task = asyncio.create_task(server.serve())
        self._servers.append((server, task))
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        return port

    async def serve_app(self, app: Any) -> int:
        """Serve another ASGI app (the control API) in this process; returns its port."""
        return await self._serve(app)

    def _launcher(
        self, service: str, registry_env: dict[str, str]
    ) -> tuple[Launcher, dict[str, str]]:
        py = sys.executable
        if service == REGISTRY:
            return (
                lambda h, p: [py, "-m", "sandbox.registry", "--host", h, "--port", str(p)]
            ), registry_env
        if self.options.mlflow == "real":
            return real_mlflow_launcher(self.state_dir / "mlflow", self.mlflow_url)
        return (lambda h, p: [py, "-m", "sandbox.mlflow_stub", "--host", h, "--port", str(p)]), {}

    # -- what clients are told ----------------------------------------------------------------

    @property
    def database_url(self) -> str:
        return (
            f"postgresql://{PostgresServer.user}:{self.db_password}"
            f"@127.0.0.1:{self.pg_proxy.port}/{PostgresServer.database}"
        )

    @property
    def redis_url(self) -> str:
        # The password as the URL's (empty-user) userinfo, as redis-py and the registry read it.
        return f"redis://:{quote(self.redis_password, safe='')}@127.0.0.1:{self.redis_proxy.port}/0"

    def info(self, control_url: str) -> dict[str, Any]:
        return {
            "api_url": self.api_url,
            "api_key": self.api_key,
            "mlflow_url": self.mlflow_url,
            "database_url": self.database_url,
            "redis_url": self.redis_url,
            "aws_endpoint_url": self.aws.endpoint_url,
            "aws_region": self.options.region,
            "aws_access_key_id": AWS_TEST_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": AWS_TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            "ecs_cluster": self.topology.cluster,
            "ecs_services": [s.name for s in self.topology.services],
            "mlflow_ecs_service": MLFLOW,
            "target_groups": [s.target_group for s in self.topology.services],
            "alb_names": [self.topology.load_balancer],
            "rds_instances": [self.topology.rds_instance],
            "alarm_prefix": self.topology.alarm_prefix,
            "registry_flavor": self.options.registry_flavor,
            "control_url": control_url,
            "state_dir": str(self.state_dir),
        }

    def status(self) -> dict[str, Any]:
        return {
            "faults": {f.name: f.params for f in self.faults.values()},
            "services": self.ecs.describe(),
            "postgres": "up" if self.postgres.running else "down",
            "redis": "up" if self.redis.running else "down",
            # The health checks have seen the last change (one round begun after it ended):
            # until then a replica's health may still move on a probe sent before it.
            "settled": self.ecs.ticks_ended > self._changed_at_tick,
            "aws_throttling": self.aws.throttling,
            "load_balancers": {
                lb.name: {"requests": lb.stats.requests, "5xx": lb.stats.status_5xx}
                for lb in (self.registry_lb, self.mlflow_lb)
            },
        }

    # -- faults ---------------------------------------------------------------------------------

    async def inject(
        self,
        name: str,
        replica: int | None = None,
        everything: bool = False,
        ms: int | None = None,
        component: str | None = None,
        mode: str | None = None,
    ) -> dict[str, Any]:
        if name not in FAULTS:
            raise FaultError(f"unknown fault {name!r}; known: {', '.join(FAULTS)}")
        params: dict[str, Any] = {}
        if name == "mlflow-down":
            params["tasks"] = await self.ecs.crash(MLFLOW, everything=True)
        elif name == "mlflow-slow":
            self.mlflow_lb.faults.latency_ms = MLFLOW_SLOW_MS
        elif name == "mlflow-errors":
            self.mlflow_lb.faults.errors = True
        elif name in ("breaker-stuck-open", "registry-wedged", "registry-hung"):
            targets = self._registry_replicas(replica)
            params["replicas"] = [r.address for r in targets]
            for r in targets:
                if name == "breaker-stuck-open":
                    await self._admin(r.address, "POST", "/breaker/stuck-open")
                else:
                    mode = name.removeprefix("registry-")
                    await self._admin(r.address, "POST", "/fault", {"mode": mode})
        elif name == "redis-down":
            self.redis.stop()
        elif name == "postgres-down":
            self.postgres.stop()
        elif name == "ecs-tasks-crashed":
            params["tasks"] = await self.ecs.crash(REGISTRY, everything=everything)
        elif name == "alb-targets-unhealthy":
            self.ecs.set_forced_unhealthy(REGISTRY, True)
        elif name == "ecs-rollout-stalled":
            self.ecs.set_rollouts_stalled(REGISTRY, True)
        elif name == "aws-throttling":
            self.aws.throttling = True
        elif name == "latency":
            params = await self._set_latency(component, ms)
        elif name == "bad-deploy":
            if mode not in BAD_DEPLOY_MODES:
                raise FaultError(f"bad-deploy needs --mode, one of {', '.join(BAD_DEPLOY_MODES)}")
            if name in self.faults:
                raise FaultError("a bad deploy is already in place; heal it first")
            params = await asyncio.to_thread(self._release_bad_revision, mode)
        key = f"latency:{component}" if name == "latency" else name
        self.faults[key] = _Fault(name, params)
        self._changed_at_tick = self.ecs.ticks_started
        return {"fault": name, **params}

    async def heal(self, name: str | None = None) -> list[str]:
        if name is not None and name not in FAULTS:
            raise FaultError(f"unknown fault {name!r}; known: {', '.join(FAULTS)}")
        healed = []
        for key, fault in list(self.faults.items()):
            if name is None or fault.name == name:
                await self._heal_one(fault)
                del self.faults[key]
                healed.append(key)
        if name is None:
            # Healing everything also closes breakers that opened as a consequence.
            for r in self._registry_replicas(None):
                await self._reset_breaker(r.address)
        self._changed_at_tick = self.ecs.ticks_started
        return healed

    async def _heal_one(self, fault: _Fault) -> None:
        name = fault.name
        if name == "mlflow-down":
            await self.ecs.restart_dead(MLFLOW)
        elif name == "mlflow-slow":
            self.mlflow_lb.faults.latency_ms = 0
        elif name == "mlflow-errors":
            self.mlflow_lb.faults.errors = False
        elif name == "breaker-stuck-open":
            for address in fault.params["replicas"]:
                await self._reset_breaker(address)
        elif name in ("registry-wedged", "registry-hung"):
            for address in fault.params["replicas"]:
                await self._admin(address, "POST", "/fault", {"mode": "none"}, missing_ok=True)
        elif name == "redis-down":
            self.redis.start()
        elif name == "postgres-down":
            self.postgres.start()
        elif name == "ecs-tasks-crashed":
            await self.ecs.restart_dead(REGISTRY)
        elif name == "alb-targets-unhealthy":
            self.ecs.set_forced_unhealthy(REGISTRY, False)
        elif name == "ecs-rollout-stalled":
            self.ecs.set_rollouts_stalled(REGISTRY, False)
        elif name == "aws-throttling":
            self.aws.throttling = False
        elif name == "latency":
            await self._set_latency(fault.params["component"], 0)
        elif name == "bad-deploy":
            await asyncio.to_thread(self._roll_back, fault.params["previous"])

    def _release_bad_revision(self, mode: str) -> dict[str, Any]:
        """Release a bad revision of the registry as a pipeline would, through the ECS API:
        register a new revision of its task definition (a new image whose tasks fail as
        `mode` says, see sandbox/registry/defects.py), then update the service to it.

        The revision's environment also carries a release token, a secret as careless task
        definitions carry, so that tests can show it never reaches a report.
        """
        ecs = self.aws.client("ecs")
        cluster = self.topology.cluster
        current = ecs.describe_services(cluster=cluster, services=[REGISTRY])["services"][0][
            "taskDefinition"
        ]
        spec = ecs.describe_task_definition(taskDefinition=current)["taskDefinition"]
        container = dict(spec["containerDefinitions"][0])
        container["image"] = f"{str(container['image']).split(':')[0]}:release-{mode}"
        kept = [
            e
            for e in container.get("environment") or []
            if e.get("name") not in (ENV_RELEASE_DEFECT, "RELEASE_TOKEN")
        ]
        container["environment"] = [
            *kept,
            {"name": ENV_RELEASE_DEFECT, "value": mode},
            {"name": "RELEASE_TOKEN", "value": secrets.token_urlsafe(18)},
        ]
        revision = ecs.register_task_definition(
            family=spec["family"],
            containerDefinitions=[container],
            networkMode=spec["networkMode"],
            requiresCompatibilities=spec["requiresCompatibilities"],
            cpu=spec["cpu"],
            memory=spec["memory"],
        )["taskDefinition"]["taskDefinitionArn"]
        ecs.update_service(cluster=cluster, service=REGISTRY, taskDefinition=revision)
        return {"mode": mode, "revision": revision, "previous": current}

    def _roll_back(self, previous: str) -> None:
        """Heal a bad deploy: update the registry back to the revision it ran before (a new
        deployment of it, as an operator's rollback is), unless it already runs it."""
        ecs = self.aws.client("ecs")
        cluster = self.topology.cluster
        service = ecs.describe_services(cluster=cluster, services=[REGISTRY])["services"][0]
        if service["taskDefinition"] != previous:
            ecs.update_service(cluster=cluster, service=REGISTRY, taskDefinition=previous)

    async def _set_latency(self, component: str | None, ms: int | None) -> dict[str, Any]:
        if component not in LATENCY_COMPONENTS:
            raise FaultError(f"latency needs --component, one of {', '.join(LATENCY_COMPONENTS)}")
        if ms is None or ms < 0:
            raise FaultError("latency needs --ms N (N >= 0)")
        if component == "registry":
            for r in self._registry_replicas(None):
                await self._admin(r.address, "POST", "/fault", {"mode": "none", "latency_ms": ms})
        elif component == "alb":
            self.registry_lb.faults.latency_ms = ms
        elif component == "mlflow":
            self.mlflow_lb.faults.latency_ms = ms
        elif component == "postgres":
            self.pg_proxy.latency_ms = ms
        elif component == "redis":
            self.redis_proxy.latency_ms = ms
        elif component == "aws":
            self.aws.latency_ms = ms
        return {"component": component, "ms": ms}

    def _registry_replicas(self, index: int | None) -> list[Any]:
        # Serving tasks: one being stopped (a finished rollout drains it) takes no fault.
        alive = [r for r in self.ecs.replicas(REGISTRY) if r.alive and not r.terminating]
        if index is None:
            return alive
        if not 0 <= index < len(alive):
            raise FaultError(f"--replica must be between 0 and {len(alive) - 1}")
        return [alive[index]]

    async def _admin(
        self,
        address: str,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        missing_ok: bool = False,
        read_timeout: float | None = None,
    ) -> Any:
        try:
            resp = await self._http.request(
                method,
                f"http://{address}/__sandbox{path}",
                json=body,
                headers={"X-Sandbox-Token": self.admin_token},
                timeout=read_timeout if read_timeout is not None else self._http.timeout,
            )
        except httpx.HTTPError:
            if missing_ok:  # the replica was replaced meanwhile: nothing left to heal
                return None
            raise
        resp.raise_for_status()
        return resp.json()

    async def _reset_breaker(self, address: str) -> None:
        with contextlib.suppress(httpx.HTTPError):
            await self._http.post(
                f"http://{address}/health/mlflow/reset",
                headers={"Authorization": f"Bearer {self.api_key}"},
            )

    async def request_stats(self) -> dict[str, dict[str, Any]]:
        """Per live registry replica (by address): its request accounting (RequestStats in
        sandbox/registry/admin.py: counts, MLflow-touching requests in flight and their
        maximum, MLflow calls the breaker admitted and refused)."""
        stats: dict[str, dict[str, Any]] = {}
        for r in self.ecs.replicas(REGISTRY):
            if r.alive:
                data = await self._admin(
                    r.address,
                    "GET",
                    "/requests",
                    missing_ok=True,
                    read_timeout=ACCOUNTING_TIMEOUT_S,
                )
                if data is not None:
                    stats[r.address] = data
        return stats

    async def request_counts(self) -> dict[str, dict[str, int]]:
        return {address: s["counts"] for address, s in (await self.request_stats()).items()}

    async def reset_request_counts(self) -> None:
        """Resets every counter of request_stats (counts, maximum in flight, MLflow calls)."""
        for r in self.ecs.replicas(REGISTRY):
            if r.alive:
                await self._admin(
                    r.address,
                    "POST",
                    "/requests/reset",
                    missing_ok=True,
                    read_timeout=ACCOUNTING_TIMEOUT_S,
                )

    async def breaker_states(self) -> dict[str, str]:
        """Per live registry replica: its breaker's state, read from the replica's own
        control route (which touches nothing: no MLflow call, not counted)."""
        states: dict[str, str] = {}
        for r in self.ecs.replicas(REGISTRY):
            if r.alive:
                data = await self._admin(
                    r.address, "GET", "/state", missing_ok=True, read_timeout=ACCOUNTING_TIMEOUT_S
                )
                if data is not None:
                    states[r.address] = str(data["breaker"]["state"])
        return states

    async def force_breaker(self, state: str, replica: int | None = None) -> list[str]:
        """Put the breaker of every live replica (or of replica N) in `state` directly:
        OPEN (with automatic retries), HALF_OPEN or CLOSED. A test control, not a fault."""
        if state not in ("CLOSED", "OPEN", "HALF_OPEN"):
            raise FaultError("breaker state must be CLOSED, OPEN or HALF_OPEN")
        targets = self._registry_replicas(replica)
        for r in targets:
            await self._admin(r.address, "POST", "/breaker/state", {"state": state})
        self._changed_at_tick = self.ecs.ticks_started
        return [r.address for r in targets]
