"""Everything one run reads, fetched at most once and shared by every check.

First, do no harm (service_health.discipline): the light endpoints of the registry are read
first; the MLflow-touching ones go one at a time per replica (per load balancer in sample
mode), in a fixed order, each at most once, never retried, within a per-run budget, and
stop where an answer shows that more would block the replica or feed its breaker. Checks
ask this object for what they need; concurrent asks for the same thing wait for the one
request in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import math
import re
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from service_health.aws_responses import (
    read_ecs_services,
    read_target_groups,
    read_target_health,
)
from service_health.discipline import (
    MLFLOW_TOUCHING,
    RequestLog,
    halt_reason,
    touches_mlflow,
)
from service_health.endpoints import (
    AUTHENTICATED,
    HEALTH,
    HEALTH_MLFLOW,
    LIVE,
    MLFLOW_HEALTH,
)
from service_health.observations import (
    AwsObservation,
    ErrorKind,
    HttpObservation,
    PostgresObservation,
)
from service_health.redaction import Redactor
from service_health.settings import Target
from tasks.datastores import probe_postgres
from tasks.http import client, fetch, fetch_with_retries

if TYPE_CHECKING:  # boto3 is imported only by runs that use AWS
    from botocore.client import BaseClient

    from tasks.aws import ServiceName

T = TypeVar("T")

UNUSABLE_TARGET_STATES = frozenset({"draining", "unused"})
_HOST_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})$")


def replica_address(host: Any, port: Any) -> str | None:
    """The "host:port" of a registered target; None unless the registration is a plain IP
    address or host name with a valid port (a hostile one could send the key elsewhere)."""
    if not isinstance(host, str) or not isinstance(port, int) or not 0 < port < 65536:
        return None
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return f"{host}:{port}" if _HOST_NAME.match(host) else None
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


class _Channel:
    """Our requests to one replica (or to the load balancer, in sample mode)."""

    def __init__(self, base: str, replica: str | None) -> None:
        self.base = base.rstrip("/")
        self.replica = replica
        # One MLflow-touching request in flight at a time; later light reads wait too.
        self.lock = asyncio.Lock()
        self.halted: str | None = None
        self.sent = 0

    @property
    def name(self) -> str:
        return self.replica or "load balancer"


class Evidence:
    def __init__(
        self, target: Target, api_key: str | None, deadline_at: float | None = None
    ) -> None:
        self.target = target
        self._api_key = api_key
        # Monotonic time by which every answer must be in: requests and their retries are
        # cut to fit, so a hung service shows as a timeout rather than a check cut short.
        self._deadline_at = deadline_at
        self._memo: dict[Any, asyncio.Task[Any]] = {}
        limit = target.thresholds.per_service_concurrency
        self._limits = {"registry": asyncio.Semaphore(limit), "mlflow": asyncio.Semaphore(limit)}
        # Replicas are read over plain HTTP (http://host:port): the CA bundle is loaded
        # only when the service or MLflow is configured with a URL that is not plain HTTP.
        urls = (target.api_url, target.mlflow_url)
        tls = any(urlsplit(url).scheme != "http" for url in urls if url)
        self._http = client("diagnose", target.thresholds.request_timeout_s, tls=tls)
        self._clients: dict[str, BaseClient] = {}  # this run's own (see tasks/aws_clients.py)
        self.redactor = Redactor(target.secret_values())
        self._lb = _Channel(target.api_url, None)
        self._replicas: dict[str, _Channel] = {}
        self._mlflow_sent = 0
        # Every MLflow-touching exchange, sent or not, in the order decided.
        self.touching: list[HttpObservation] = []
        self.sample_basis = ""
        # How many registry replicas there are, where something said (sample mode).
        self.known_replicas: int | None = None
        # Why replicas were not read one by one although discovery was asked for.
        self.discovery_cut = ""

    async def __aenter__(self) -> Evidence:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for task in self._memo.values():
            task.cancel()
        await self._http.aclose()

    def _budget(self) -> float:
        """Seconds one request (with its retries) may still take."""
        limit = self.target.thresholds.request_timeout_s
        if self._deadline_at is None:
            return limit * 3
        return max(0.2, self._deadline_at - time.monotonic() - 0.5)

    def _timeout(self) -> float:
        return min(self.target.thresholds.request_timeout_s, self._budget())

    def probe_deadline(self) -> float | None:
        """When a direct datastore probe must be done (monotonic), a little before the run's
        deadline: its thread must not outlive the deadline that cancels its task."""
        return None if self._deadline_at is None else self._deadline_at - 0.5

    def seconds_left(self, margin_s: float = 0.0) -> float | None:
        """Seconds until the run's deadline, less `margin_s`; None without a deadline."""
        if self._deadline_at is None:
            return None
        return self._deadline_at - time.monotonic() - margin_s

    def _once(self, key: Any, make: Callable[[], Awaitable[T]]) -> Awaitable[T]:
        if key not in self._memo:
            self._memo[key] = asyncio.ensure_future(make())
        task: asyncio.Task[T] = self._memo[key]
        return asyncio.shield(task)

    # -- the registry service --------------------------------------------------------------

    def _headers(self, path: str) -> dict[str, str]:
        if self._api_key and path in AUTHENTICATED:
            return {"Authorization": f"Bearer {self._api_key}"}
        return {}

    def _channel(self, replica: str) -> _Channel:
        if replica not in self._replicas:
            self._replicas[replica] = _Channel(f"http://{replica}", replica)
        return self._replicas[replica]

    async def _light(self, ch: _Channel, path: str) -> HttpObservation:
        """A light read (no MLflow, no database): retried on transient failures."""
        async with self._limits["registry"]:
            return await fetch_with_retries(
                self._http,
                "GET",
                ch.base + path,
                retry=True,
                budget_s=self._budget(),
                headers=self._headers(path),
                timeout_s=self._timeout(),
                replica=ch.replica,
            )

    def _first_light(self, ch: _Channel, path: str) -> Awaitable[HttpObservation]:
        return self._once(("light", ch.name, path), lambda: self._light(ch, path))

    async def _ahead_of_touching(self, ch: _Channel, path: str) -> None:
        """What must be in before `path` goes to `ch`: the light reads through the load
        balancer (they land on some replica) and of `ch` itself, and the MLflow-touching
        endpoint before `path` on `ch`, in priority order."""
        # /health through the load balancer lands on some replica: it must be in first.
        await self._first_light(self._lb, HEALTH)
        live = await self._first_light(ch, LIVE)  # in sample mode, the load balancer's
        if ch.halted is None and (reason := halt_reason(live, math.inf)) is not None:
            ch.halted = reason
        if path == HEALTH_MLFLOW:
            return  # first on every replica
        assignment = await self._assignment()
        order = [HEALTH_MLFLOW, *(p for p in MLFLOW_TOUCHING if assignment.get(p) is ch)]
        index = order.index(path) if path in order else len(order)
        await self._touching(ch, order[index - 1])

    def _touching(self, ch: _Channel, path: str) -> Awaitable[HttpObservation]:
        async def go() -> HttpObservation:
            await self._ahead_of_touching(ch, path)
            return await self._send_touching(ch, path)

        return self._once(("touching", ch.name, path), go)

    async def _send_touching(self, ch: _Channel, path: str) -> HttpObservation:
        """One MLflow-touching request to `ch`, or the reason it is not sent. Never retried:
        each attempt is one more MLflow call counted by the breaker."""
        thresholds = self.target.thresholds
        url = ch.base + path
        async with ch.lock:
            remaining = self._budget()
            if ch.halted is not None:
                obs = HttpObservation.not_sent(url, ch.halted, ch.replica)
            elif self._mlflow_sent >= thresholds.mlflow_request_budget:
                obs = HttpObservation.not_sent(
                    url,
                    f"the run's budget of {thresholds.mlflow_request_budget} "
                    "MLflow-touching requests is spent",
                    ch.replica,
                )
            elif remaining < 1.0:
                obs = HttpObservation.not_sent(
                    url, "the deadline leaves no time to wait for its answer", ch.replica
                )
            else:
                self._mlflow_sent += 1
                ch.sent += 1
                obs = await fetch(
                    self._http,
                    "GET",
                    url,
                    headers=self._headers(path),
                    timeout_s=min(thresholds.mlflow_request_timeout_s, remaining),
                    replica=ch.replica,
                )
                ch.halted = halt_reason(obs, thresholds.blocking_s, thresholds.slow_response_s)
        self.touching.append(obs)
        return obs

    async def _assignment(self) -> dict[str, _Channel]:
        """Where each service-wide MLflow-touching endpoint is read: spread over the
        replicas that answered /live when they are read one by one (so no replica's chain
        is longer than it must be), else the load balancer. Each is read once."""
        return await self._once("assignment", self._assign)

    async def _assign(self) -> dict[str, _Channel]:
        replicas, _ = await self._direct_replicas()
        channels = [self._channel(r) for r in replicas]
        lives = [await self._first_light(ch, LIVE) for ch in channels]
        answering = [
            ch for ch, live in zip(channels, lives, strict=True) if live.status_code == 200
        ]
        pool = answering or channels[:1] or [self._lb]
        wide = [p for p in MLFLOW_TOUCHING if p != HEALTH_MLFLOW]
        return {path: pool[i % len(pool)] for i, path in enumerate(wide)}

    async def _live(self) -> HttpObservation:
        """/live: where replicas are read one by one, the answer of the first one that
        answered (each replica is asked once, and one asked through the load balancer
        would be asked twice); else through the load balancer."""
        replicas, _ = await self._direct_replicas()
        if not replicas:
            return await self._first_light(self._lb, LIVE)
        lives = [await self._first_light(self._channel(r), LIVE) for r in replicas]
        return next((o for o in lives if o.status_code == 200), lives[0])

    async def _home(self, path: str) -> _Channel:
        """The channel an MLflow-touching `path` of the service goes to."""
        if path != HEALTH_MLFLOW:
            return (await self._assignment())[path]
        pool = sorted(set((await self._assignment()).values()), key=lambda c: c.name)
        return pool[0]

    async def _direct_replicas(self) -> tuple[list[str], bool]:
        """(replicas to read one by one, whether they were discovered at all)."""
        return await self._once("direct-replicas", self._find_direct_replicas)

    async def _find_direct_replicas(self) -> tuple[list[str], bool]:
        mode = self.target.replica_discovery
        replicas = await self._discovered_in_time() if mode != "sample" else []
        if not replicas:
            return [], False
        lives = await asyncio.gather(*(self._first_light(self._channel(r), LIVE) for r in replicas))
        unreachable = all(obs.error_kind is ErrorKind.CONNECT for obs in lives)
        if unreachable and mode == "auto":
            return [], True  # registered, but not reachable from here: sample the LB
        return sorted(replicas), True

    def endpoint(self, path: str) -> Awaitable[HttpObservation]:
        """`path` of the service: light ones through the load balancer, MLflow-touching ones
        where the request discipline sends them (read once either way)."""
        if path == LIVE:
            return self._once(("endpoint", path), self._live)
        if not touches_mlflow(path):
            return self._first_light(self._lb, path)

        async def go() -> HttpObservation:
            return await self._touching(await self._home(path), path)

        return self._once(("endpoint", path), go)

    async def reread(self, path: str) -> HttpObservation:
        """`path` again, now (not memoised), under the same discipline."""
        if not touches_mlflow(path):
            # Through the load balancer it lands on any replica: wait until none has an
            # MLflow-touching request of ours in flight (the first reads are in; rereads
            # hold their channel's lock, so hold every one of them).
            await asyncio.gather(self.endpoint(path), self.breaker_views())
            async with contextlib.AsyncExitStack() as held:
                for ch in sorted(self._channels(), key=lambda c: c.name):
                    await held.enter_async_context(ch.lock)
                return await self._light(self._lb, path)
        ch = await self._home(path)
        await self._touching(ch, path)
        return await self._send_touching(ch, path)

    async def breaker_views(self) -> tuple[dict[str, HttpObservation], bool]:
        """/health/mlflow of every replica, and whether that view is partial.

        Direct per-replica reads where the ALB's registered targets are reachable from here;
        otherwise samples through the load balancer (serially, and more than one only with
        evidence of more than one replica), marked partial.
        """
        return await self._once("breaker-views", self._breaker_views)

    async def _breaker_views(self) -> tuple[dict[str, HttpObservation], bool]:
        replicas, _ = await self._direct_replicas()
        if replicas:
            views = await asyncio.gather(
                *(self._touching(self._channel(r), HEALTH_MLFLOW) for r in replicas)
            )
            return dict(zip(replicas, views, strict=True)), False
        samples, self.sample_basis = await self._sample_count()
        observations = [await self.endpoint(HEALTH_MLFLOW)]
        for _ in range(samples - 1):
            observations.append(await self._send_touching(self._lb, HEALTH_MLFLOW))
        return {f"sample-{i + 1}": obs for i, obs in enumerate(observations)}, True

    def _discovery_budget(self) -> float | None:
        """Seconds replica discovery may take before the breaker reads must go ahead: AWS
        answers slowed by throttling retries must not starve the reads that depend on
        them. The reserve left is what the chain of reads before and including the
        breaker's needs on a slow machine (a third of the deadline, at least 3 s)."""
        reserve = max(3.0, self.target.thresholds.deadline_s / 3)
        return self.seconds_left(reserve)

    async def _discovered_in_time(self) -> list[str]:
        """The registered registry replicas, or [] when AWS has not said within the
        discovery budget (the reads then sample the load balancer; discovery goes on for
        the checks that read it)."""
        budget = self._discovery_budget()
        discovery = asyncio.ensure_future(self.registry_replicas())
        done, _ = await asyncio.wait(
            {discovery}, timeout=None if budget is None else max(0.0, budget)
        )
        if not done:
            self.discovery_cut = (
                "replica discovery through AWS was still running when the breaker reads "
                "had to start"
            )
            return []
        return discovery.result()

    async def _sample_count(self) -> tuple[int, str]:
        """How many /health/mlflow samples through the load balancer, and on what evidence:
        more than one only where something says there is more than one replica."""
        t = self.target
        known: list[tuple[int, str]] = []
        if t.replicas is not None:
            known.append((t.replicas, "configured replicas"))
        if self.discovery_cut:
            # What AWS would say is not in time: only the configuration counts.
            count = t.replicas or 1
            self.known_replicas = t.replicas
            samples = max(1, min(t.samples, count))
            return samples, f"{self.discovery_cut}; {samples} sample{'s' if samples != 1 else ''}"
        if t.ecs_cluster and t.ecs_services:
            services = read_ecs_services((await self.ecs_services()).response).services
            desired = [
                s.desired
                for s in services
                if s.name != t.mlflow_ecs_service and s.desired is not None
            ]
            if desired:
                known.append((sum(desired), "ECS desired count"))
        registered = len(await self.registry_replicas())
        if registered:
            known.append((registered, "registered targets"))
        if not known:
            return 1, "no evidence of more than one replica: one sample"
        count, source = max(known)
        self.known_replicas = count
        samples = max(1, min(t.samples, count))
        return samples, f"{source}: {count}; {samples} sample{'s' if samples != 1 else ''}"

    def discipline(self) -> dict[str, Any]:
        """What the run sent under the request discipline, for the report."""
        channels = self._channels()
        return {
            "mlflow_touching_sent": self._mlflow_sent,
            "mlflow_touching_budget": self.target.thresholds.mlflow_request_budget,
            "sent_per_replica": {ch.name: ch.sent for ch in channels if ch.sent},
            "halted": {ch.name: ch.halted for ch in channels if ch.halted},
            "not_sent": [f"{o.label}: {o.error}" for o in self.touching if not o.sent],
            "sample_basis": self.sample_basis or None,
        }

    async def registry_replicas(self) -> list[str]:
        """host:port of every registered registry target that is not draining or unused.

        Discovery rule: the target groups attached (DescribeServices loadBalancers) to the
        configured ECS services other than the MLflow service; without ECS configuration,
        the first of the configured target groups.
        """
        return await self._once("registry-replicas", self._registry_replicas)

    async def _registry_replicas(self) -> list[str]:
        arns = await self.registry_target_group_arns()
        healths = await asyncio.gather(*(self.target_health(arn) for arn in arns))
        replicas: list[str] = []
        for obs in healths:
            for target in read_target_health(obs.response).targets:
                address = replica_address(target.id, target.port)
                if address and target.state not in UNUSABLE_TARGET_STATES:
                    replicas.append(address)
        return replicas

    async def service_target_group_arns(self) -> dict[str, list[str]]:
        """ECS service name -> the target group ARNs ECS says it is registered in."""
        t = self.target
        if not (t.ecs_cluster and t.ecs_services):
            return {}
        services = read_ecs_services((await self.ecs_services()).response)
        return {name: s.target_group_arns for name, s in services.named().items()}

    async def registry_target_group_arns(self) -> list[str]:
        t = self.target
        by_service = await self.service_target_group_arns()
        arns = [
            arn
            for name, group_arns in by_service.items()
            if name != t.mlflow_ecs_service
            for arn in group_arns
        ]
        if arns:
            return arns
        if not t.target_groups:
            return []
        groups = read_target_groups((await self.target_groups()).response)
        return [g.arn for g in groups][:1]

    # -- the datastores and MLflow, directly ----------------------------------------------

    def postgres(self) -> Awaitable[PostgresObservation | None]:
        """The direct PostgreSQL probe (None without a database URL), shared by the checks."""

        async def go() -> PostgresObservation | None:
            url = self.target.database_url
            if url is None:
                return None
            timeout = self.target.thresholds.request_timeout_s
            return await probe_postgres(
                url.get_secret_value(), timeout, self.redactor, self.probe_deadline()
            )

        return self._once("postgres", go)

    async def request_log(self) -> RequestLog:
        """The MLflow-touching exchanges so far, and what the direct probes say of the
        database and MLflow (to attribute a stall to the right one)."""
        log = RequestLog(touching=list(self.touching))
        db = await self.postgres()
        if db is not None and db.error:
            log.database_failing = f"direct PostgreSQL probe: {db.error}"
        if self.target.mlflow_url:
            health = await self.mlflow(MLFLOW_HEALTH)
            if health.status_code != 200:
                log.mlflow_failing = f"direct {health.label} to MLflow: {health.failure_text()}"
        return log

    def _channels(self) -> list[_Channel]:
        return [self._lb, *self._replicas.values()]

    def mlflow(self, path: str) -> Awaitable[HttpObservation]:
        assert self.target.mlflow_url
        base = self.target.mlflow_url.rstrip("/")

        async def go() -> HttpObservation:
            async with self._limits["mlflow"]:
                method, body = (
                    ("GET", None) if path == MLFLOW_HEALTH else ("POST", {"max_results": 1})
                )
                return await fetch_with_retries(
                    self._http,
                    method,
                    base + path,
                    retry=True,
                    budget_s=self._budget(),
                    json_body=body,
                    timeout_s=self._timeout(),
                )

        return self._once(("mlflow", path), go)

    # -- AWS ---------------------------------------------------------------------------------

    def _client(self, service: ServiceName) -> BaseClient:
        # boto3 costs a third of a second to import: only runs that use AWS get here.
        from tasks.aws_clients import read_client

        if service not in self._clients:
            t = self.target
            self._clients[service] = read_client(
                service, t.aws_region, t.aws_endpoint_url, t.aws_credentials_block
            )
        return self._clients[service]

    def aws_call(
        self, service: ServiceName, operation: str, **params: Any
    ) -> Awaitable[AwsObservation]:
        key = ("aws", service, operation, tuple(sorted((k, repr(v)) for k, v in params.items())))

        def blocking() -> AwsObservation:
            # The client (made on first use) and the call in one trip off the event loop.
            try:
                client = self._client(service)
            except Exception as exc:  # a credentials block that cannot load, a bad region
                # botocore's own errors keep their name (InvalidRegionError, NoRegionError,
                # ProfileNotFound); anything else is a client that could not be set up.
                botocore_error = type(exc).__module__.startswith("botocore")
                return AwsObservation(
                    service=service,
                    operation=operation,
                    error_code=type(exc).__name__ if botocore_error else "ClientSetupError",
                    error_message=" ".join(f"{type(exc).__name__}: {exc}".split())[:300],
                )
            from tasks import aws

            return aws.call_sync(client, service, operation, **params)

        async def go() -> AwsObservation:
            return await asyncio.to_thread(blocking)

        return self._once(key, go)

    def ecs_services(self) -> Awaitable[AwsObservation]:
        t = self.target
        return self.aws_call(
            "ecs", "describe_services", cluster=t.ecs_cluster, services=t.ecs_services
        )

    def target_groups(self) -> Awaitable[AwsObservation]:
        return self.aws_call("elbv2", "describe_target_groups", Names=self.target.target_groups)

    def target_health(self, arn: str) -> Awaitable[AwsObservation]:
        return self.aws_call("elbv2", "describe_target_health", TargetGroupArn=arn)
