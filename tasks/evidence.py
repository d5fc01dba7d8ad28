"""Everything one diagnosis reads, fetched at most once and shared by every check.

First, do no harm: each endpoint of the service is requested at most once per run (per
replica), the endpoints that call MLflow through the breaker are never retried, and the
requests to one service are bounded in concurrency. Checks ask this object for what they
need; concurrent asks for the same thing wait for the one request in flight.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, TypeVar

import httpx

from service_health.aws_responses import read_target_health
from service_health.observations import AwsObservation, ErrorKind, HttpObservation
from service_health.settings import Target
from tasks import aws
from tasks.http import fetch_with_retries, tls_context

T = TypeVar("T")

ENDPOINTS = (
    "/health",
    "/health?detailed=true",
    "/ready",
    "/live",
    "/health/mlflow",
    "/health/status",
    "/metrics",
)
# Each of these calls MLflow through the breaker: a retry would feed a failing breaker.
BREAKER_FEEDING = frozenset({"/health/mlflow", "/ready", "/health?detailed=true", "/health/status"})
AUTHENTICATED = frozenset({"/health/mlflow", "/health/status"})
UNUSABLE_TARGET_STATES = frozenset({"draining", "unused"})
_HOST_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})$")


def dicts(response: Any, key: str) -> list[dict[str, Any]]:
    """The objects listed under `key` in an AWS answer; anything of another shape is left out."""
    items = response.get(key) if isinstance(response, dict) else None
    return [item for item in items if isinstance(item, dict)] if isinstance(items, list) else []


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
        # No keep-alive: a server that drops its connection after an error answer must not
        # make the next endpoint look broken.
        self._http = httpx.AsyncClient(
            limits=httpx.Limits(max_keepalive_connections=0),
            headers={"User-Agent": "hokusai-health/diagnose"},
            verify=tls_context(),
        )
        self._clients: dict[str, Any] = {}

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

    async def _get(self, base: str, path: str, replica: str | None, limit: str) -> HttpObservation:
        async with self._limits[limit]:
            return await fetch_with_retries(
                self._http,
                "GET",
                base.rstrip("/") + path,
                retry=path not in BREAKER_FEEDING,
                budget_s=self._budget(),
                headers=self._headers(path),
                timeout_s=self._timeout(),
                replica=replica,
            )

    def endpoint(self, path: str) -> Awaitable[HttpObservation]:
        """`path` through the load balancer (the service's public URL)."""
        return self._once(
            ("lb", path), lambda: self._get(self.target.api_url, path, None, "registry")
        )

    async def reread(self, path: str) -> HttpObservation:
        """`path` through the load balancer again, now (not memoised)."""
        return await self._get(self.target.api_url, path, None, "registry")

    def replica_endpoint(self, replica: str, path: str) -> Awaitable[HttpObservation]:
        return self._once(
            ("replica", replica, path),
            lambda: self._get(f"http://{replica}", path, replica, "registry"),
        )

    async def breaker_views(self) -> tuple[dict[str, HttpObservation], bool]:
        """/health/mlflow of every replica, and whether that view is partial.

        Direct per-replica reads where the ALB's registered targets are reachable from here;
        otherwise several samples through the load balancer, marked partial.
        """
        return await self._once("breaker-views", self._breaker_views)

    async def _breaker_views(self) -> tuple[dict[str, HttpObservation], bool]:
        mode = self.target.replica_discovery
        replicas = await self.registry_replicas() if mode != "sample" else []
        if replicas:
            views = dict(
                zip(
                    replicas,
                    await asyncio.gather(
                        *(self.replica_endpoint(r, "/health/mlflow") for r in replicas)
                    ),
                    strict=True,
                )
            )
            unreachable = all(v.error_kind is ErrorKind.CONNECT for v in views.values())
            if not (unreachable and mode == "auto"):
                return views, False
        samples = max(1, self.target.samples)
        first = await self.endpoint("/health/mlflow")
        rest = await asyncio.gather(
            *(
                self._get(self.target.api_url, "/health/mlflow", None, "registry")
                for _ in range(samples - 1)
            )
        )
        return {f"sample-{i + 1}": obs for i, obs in enumerate([first, *rest])}, True

    async def registry_replicas(self) -> list[str]:
        """host:port of every registered registry target that is not draining or unused.

        Discovery rule: the target groups attached (DescribeServices loadBalancers) to the
        configured ECS services other than the MLflow service; without ECS configuration,
        the first of the configured target groups.
        """
        arns = await self.registry_target_group_arns()
        healths = await asyncio.gather(*(self.target_health(arn) for arn in arns))
        replicas: list[str] = []
        for obs in healths:
            for target in read_target_health(obs.response).targets:
                address = replica_address(target.id, target.port)
                if address and target.state not in UNUSABLE_TARGET_STATES:
                    replicas.append(address)
        return replicas

    async def registry_target_group_arns(self) -> list[str]:
        t = self.target
        if t.ecs_cluster and t.ecs_services:
            services = await self.ecs_services()
            arns = [
                lb["targetGroupArn"]
                for s in dicts(services.response, "services")
                if s.get("serviceName") != t.mlflow_ecs_service
                for lb in dicts(s, "loadBalancers")
                if isinstance(lb.get("targetGroupArn"), str) and lb["targetGroupArn"]
            ]
            if arns:
                return arns
        if not t.target_groups:
            return []
        groups = await self.target_groups()
        found = [g["TargetGroupArn"] for g in dicts(groups.response, "TargetGroups")
                 if isinstance(g.get("TargetGroupArn"), str)]  # fmt: skip
        return found[:1]

    # -- MLflow, directly ----------------------------------------------------------------

    def mlflow(self, path: str) -> Awaitable[HttpObservation]:
        assert self.target.mlflow_url
        base = self.target.mlflow_url.rstrip("/")

        async def go() -> HttpObservation:
            async with self._limits["mlflow"]:
                method, body = ("GET", None) if path == "/health" else ("POST", {"max_results": 1})
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

    def _client(self, service: str) -> Any:
        if service not in self._clients:
            if "session" not in self._clients:
                self._clients["session"] = aws.make_session(
                    self.target.aws_region, self.target.aws_credentials_block
                )
            self._clients[service] = aws.make_client(
                self._clients["session"],
                service,
                self.target.aws_region,
                self.target.aws_endpoint_url,
            )
        return self._clients[service]

    def aws_call(self, service: str, operation: str, **params: Any) -> Awaitable[AwsObservation]:
        key = ("aws", service, operation, tuple(sorted((k, repr(v)) for k, v in params.items())))

        async def go() -> AwsObservation:
            try:
                client = await asyncio.to_thread(self._client, service)
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
            return await aws.call(client, service, operation, **params)

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
