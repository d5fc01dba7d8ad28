"""The seed's strategies, measured next to ours in the same run.

- `sequential_diagnosis`: the same checks as the diagnose flow, one after another, each
  doing its own requests with plain blocking clients and one timeout per request (the seed's
  scripts call `requests.get(..., timeout=...)` check by check; no concurrency, no shared
  answers, no deadline).
- `fixed_polling`: after the recovery action, GET /health every 10 s until three
  consecutive healthy answers (the seed's stabilisation strategy).
- `force_new_deployment` and `reset_breakers`: the recovery actions themselves, as plain
  calls, so that the fixed-polling baseline starts from the same action as the flow.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import boto3
import httpx
import psycopg
import redis
from botocore.config import Config

# The seed's scripts import no Prefect: neither does this (tests/bench checks it).
from service_health.endpoints import AUTHENTICATED, ENDPOINTS


@dataclass
class SequentialRun:
    total_s: float = 0.0
    checks: dict[str, float] = field(default_factory=dict)  # seconds per check
    requests: int = 0
    failures: int = 0  # requests that raised (timeout, refused, ...)


class _SeedStyle:
    """One diagnosis, seed style: every check on its own, every request blocking."""

    def __init__(self, info: dict[str, Any], timeout_s: float) -> None:
        self.info = info
        self.timeout_s = timeout_s
        self.run = SequentialRun()
        self.http = httpx.Client(
            timeout=timeout_s,
            limits=httpx.Limits(max_keepalive_connections=0),
            headers={"User-Agent": "seed-style-baseline"},
        )
        self.session = boto3.Session(
            aws_access_key_id=info["aws_access_key_id"],
            aws_secret_access_key=info["aws_secret_access_key"],
            region_name=info["aws_region"],
        )
        self._clients: dict[str, Any] = {}

    def close(self) -> None:
        self.http.close()

    def _aws(self, service: str) -> Any:
        if service not in self._clients:
            self._clients[service] = cast(Any, self.session).client(
                service,
                endpoint_url=self.info["aws_endpoint_url"],
                config=Config(connect_timeout=self.timeout_s, read_timeout=self.timeout_s),
            )
        return self._clients[service]

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        self.run.requests += 1
        try:
            return fn(*args, **kwargs)
        except Exception:  # the seed's scripts log the error and go on to the next check
            self.run.failures += 1
            return None

    def get(self, url: str, authenticated: bool = False) -> httpx.Response | None:
        headers = {"Authorization": f"Bearer {self.info['api_key']}"} if authenticated else {}
        response: httpx.Response | None = self._call(self.http.get, url, headers=headers)
        return response

    def api(self, path: str) -> httpx.Response | None:
        return self.get(self.info["api_url"] + path, path in AUTHENTICATED)

    # -- the checks, in the seed's order -------------------------------------------------------

    def api_connectivity(self) -> None:
        self.api("/health")

    def health_endpoints(self) -> None:
        for path in ENDPOINTS:
            self.api(path)

    def circuit_breaker(self) -> None:
        ecs = self._aws("ecs")
        services = self._call(
            ecs.describe_services,
            cluster=self.info["ecs_cluster"],
            services=self.info["ecs_services"],
        )
        arns = [
            lb["targetGroupArn"]
            for s in (services or {}).get("services", [])
            if s["serviceName"] != self.info["mlflow_ecs_service"]
            for lb in s.get("loadBalancers", [])
        ]
        elb = self._aws("elbv2")
        for arn in arns:
            health = self._call(elb.describe_target_health, TargetGroupArn=arn)
            for d in (health or {}).get("TargetHealthDescriptions", []):
                if d["TargetHealth"]["State"] in ("draining", "unused"):
                    continue
                target = d["Target"]
                self.get(f"http://{target['Id']}:{target['Port']}/health/mlflow", True)
        self.api("/ready")
        self.api("/metrics")

    def mlflow_service(self) -> None:
        base = self.info["mlflow_url"]
        self.get(base + "/health")
        self._call(
            self.http.post, base + "/api/2.0/mlflow/experiments/search", json={"max_results": 1}
        )

    def database(self) -> None:
        def probe() -> None:
            timeout = max(1, round(self.timeout_s))
            with psycopg.connect(self.info["database_url"], connect_timeout=timeout) as conn:
                conn.execute("SELECT 1").fetchone()

        self._call(probe)

    def redis(self) -> None:
        def probe() -> None:
            client = redis.Redis.from_url(
                self.info["redis_url"],
                socket_connect_timeout=self.timeout_s,
                socket_timeout=self.timeout_s,
            )
            try:
                client.ping()
            finally:
                client.close()

        self._call(probe)

    def alb(self) -> None:
        elb = self._aws("elbv2")
        self._call(elb.describe_load_balancers, Names=self.info["alb_names"])
        groups = self._call(elb.describe_target_groups, Names=self.info["target_groups"])
        for g in (groups or {}).get("TargetGroups", []):
            self._call(elb.describe_target_health, TargetGroupArn=g["TargetGroupArn"])

    def ecs(self) -> None:
        ecs = self._aws("ecs")
        self._call(
            ecs.describe_services,
            cluster=self.info["ecs_cluster"],
            services=self.info["ecs_services"],
        )

    def rds(self) -> None:
        rds = self._aws("rds")
        for instance in self.info["rds_instances"]:
            self._call(rds.describe_db_instances, DBInstanceIdentifier=instance)

    def cloudwatch(self) -> None:
        cw = self._aws("cloudwatch")
        self._call(
            cw.describe_alarms, AlarmNamePrefix=self.info["alarm_prefix"], StateValue="ALARM"
        )

    def service_metrics(self) -> None:
        self.api("/metrics")


# The diagnose flow's check names (flows/diagnose.CHECKS), in the same order.
CHECK_NAMES = (
    "api_connectivity",
    "health_endpoints",
    "circuit_breaker",
    "mlflow_service",
    "database",
    "redis",
    "alb",
    "ecs",
    "rds",
    "cloudwatch",
    "service_metrics",
)


def sequential_diagnosis(info: dict[str, Any], timeout_s: float) -> SequentialRun:
    """Every check one after another, one blocking request at a time, `timeout_s` each."""
    started = time.perf_counter()
    seed = _SeedStyle(info, timeout_s)
    try:
        for name in CHECK_NAMES:
            check_started = time.perf_counter()
            getattr(seed, name)()
            seed.run.checks[name] = time.perf_counter() - check_started
    finally:
        seed.close()
    seed.run.total_s = time.perf_counter() - started
    return seed.run


# --- recovery: the action, then fixed polling ------------------------------------------------


def force_new_deployment(info: dict[str, Any], service: str) -> None:
    ecs = boto3.client(
        "ecs",
        region_name=info["aws_region"],
        endpoint_url=info["aws_endpoint_url"],
        aws_access_key_id=info["aws_access_key_id"],
        aws_secret_access_key=info["aws_secret_access_key"],
    )
    ecs.update_service(cluster=info["ecs_cluster"], service=service, forceNewDeployment=True)


def reset_breakers(info: dict[str, Any], replicas: list[str]) -> None:
    headers = {"Authorization": f"Bearer {info['api_key']}"}
    with httpx.Client(timeout=10.0) as http:
        for replica in replicas:
            http.post(f"http://{replica}/health/mlflow/reset", headers=headers).raise_for_status()


def healthy_answer(response: httpx.Response) -> bool:
    """HTTP 200 and `status: healthy` (a degraded 200 is not healthy yet)."""
    if response.status_code != 200:
        return False
    try:
        body = response.json()
    except ValueError:
        return False
    return isinstance(body, dict) and body.get("status") == "healthy"


@dataclass
class PollingRun:
    seconds: float
    polls: int


def fixed_polling(
    api_url: str,
    interval_s: float = 10.0,
    needed: int = 3,
    timeout_s: float = 600.0,
    request_timeout_s: float = 10.0,
) -> PollingRun:
    """GET /health at a fixed interval until `needed` consecutive healthy answers."""
    started = time.perf_counter()
    streak = polls = 0
    with httpx.Client(timeout=request_timeout_s) as http:
        while True:
            polls += 1
            try:
                ok = healthy_answer(http.get(api_url + "/health"))
            except httpx.HTTPError:
                ok = False
            streak = streak + 1 if ok else 0
            if streak >= needed:
                return PollingRun(time.perf_counter() - started, polls)
            elapsed = time.perf_counter() - started
            if elapsed > timeout_s:
                raise TimeoutError(f"not healthy {needed} times in a row after {elapsed:.0f} s")
            # The next poll on the fixed grid (0, 10, 20 ... s after the action).
            time.sleep(max(0.0, polls * interval_s - elapsed))
