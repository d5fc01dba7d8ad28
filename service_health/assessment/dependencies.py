"""The service's dependencies: MLflow, PostgreSQL and Redis, read directly or through the
service's own view when the worker cannot reach them."""

from __future__ import annotations

from typing import Any

from service_health.assessment.common import ResultBuilder, seconds
from service_health.assessment.mlflow_refusals import REFUSAL_DETAIL, observed_refusal
from service_health.models import CheckName, CheckResult, CheckStatus
from service_health.observations import HttpObservation, PostgresObservation, RedisObservation
from service_health.parsing import parse_health, parse_mlflow_search, parse_ready
from service_health.settings import SLOW_RESPONSE_S
from service_health.views import HealthView, ReadyCheck, ReadyView

_DB_CHECKS = ("database", "postgres", "postgresql", "db")
_DB_SERVICES = ("postgres", "postgresql", "database")
_REDIS_CHECKS = ("redis", "cache")
_REDIS_INFO_KEYS = (
    "redis_version",
    "role",
    "connected_clients",
    "used_memory_human",
    "maxmemory_human",
    "uptime_in_seconds",
)
_REDIS_MEMORY_RATIO = 0.9


def assess_mlflow(
    health: HttpObservation | None, search: HttpObservation | None, slow_s: float = SLOW_RESPONSE_S
) -> CheckResult:
    """MLflow itself: GET /health and POST /api/2.0/mlflow/experiments/search.

    None for both means no MLflow URL is configured. MLflow down is a warning: the registry
    keeps serving behind its circuit breaker.
    """
    b = ResultBuilder(CheckName.MLFLOW_SERVICE)
    if health is None and search is None:
        return CheckResult.skipped(b.name, "no MLflow URL configured (MLFLOW_TRACKING_URI)")
    failures: list[str] = []
    ok: list[str] = []
    if health is not None:
        b.cite(health.label)
        b.details["health_status_code"] = health.status_code
        if health.status_code == 200:
            ok.append(health.label)
        elif not _refused(b, health):
            failures.append(f"{health.label}: {health.failure_text()}")
    if search is not None:
        b.cite(search.label)
        view = parse_mlflow_search(search)
        b.details["search_status_code"] = search.status_code
        if search.status_code == 200 and view.error_code is None:
            ok.append(search.label)
            b.details["experiments_count"] = view.experiment_count
        elif not _refused(b, search):
            why = search.failure_text()
            if view.error_code:
                why += f" {view.error_code}: {view.message or ''}".rstrip(": ")
            if search.status_code == 404:
                why += " (experiments search API not served at this URL)"
            failures.append(f"{search.label}: {why}")
    evidence = list(b.evidence)
    latency = health.elapsed_ms if health is not None else search.elapsed_ms if search else None
    if failures and not ok:
        b.warning(
            f"MLflow is unreachable or failing ({'; '.join(failures)}); the registry serves "
            "in degraded mode without it",
            "Check the MLflow ECS service and its logs; restart it (recover_service) and then "
            "reset the registry's circuit breaker",
            evidence,
            CheckStatus.UNHEALTHY,
        )
        return b.build("unreachable", latency_ms=latency, error="; ".join(failures))
    if failures:
        b.warning(
            f"MLflow partly failing: {'; '.join(failures)}",
            "Check the MLflow server logs and its backend store",
            evidence,
        )
    slow = [o for o in (health, search) if o is not None and (o.elapsed_ms or 0) > slow_s * 1000]
    for o in slow:
        b.warning(
            f"MLflow answered slowly: {seconds(o.elapsed_ms)} on {o.label} "
            f"(threshold {slow_s:g} s)",
            "Check MLflow's load and its backend store; slow calls feed the breaker",
            [o.label],
        )
    count = b.details.get("experiments_count")
    summary = "reachable" + (f", {count} experiments" if count is not None else "")
    if REFUSAL_DETAIL in b.details:
        summary = f"reachable, refusing requests ({b.details[REFUSAL_DETAIL]})"
    return b.build(summary, latency_ms=latency)


def _refused(b: ResultBuilder, obs: HttpObservation) -> bool:
    """A refusal (host validation, authentication, permission) is its own finding: MLflow is
    up and answering, so neither "unreachable" (which would plan a restart) nor "failing".
    Degraded: the registry's calls are refused the same way and its breaker opens."""
    refusal = observed_refusal(obs)
    if refusal is None:
        return False
    b.warning(refusal.describe(obs.label), refusal.recommendation, [obs.label])
    b.details.setdefault(REFUSAL_DETAIL, str(refusal.kind))
    return True


def assess_database(obs: PostgresObservation | None, slow_s: float = 1.0) -> CheckResult:
    """PostgreSQL reached directly by the worker (connect and a trivial query)."""
    b = ResultBuilder(CheckName.DATABASE)
    if obs is None:
        return CheckResult.skipped(b.name, "no database URL configured (DATABASE_URL)")
    b.cite("postgres:connect")
    total = None
    if obs.connect_ms is not None:
        total = obs.connect_ms + (obs.query_ms or 0.0)
    b.details.update(
        {
            "connect_ms": obs.connect_ms,
            "query_ms": obs.query_ms,
            "server_version": obs.server_version,
            "source": "direct",
        }
    )
    if obs.error is not None:
        b.critical(
            f"PostgreSQL is down or unreachable: {obs.error}",
            "Restore PostgreSQL (RDS instance state, security groups, credentials); the "
            "service cannot serve traffic without it, and no automatic action is taken",
            ["postgres:connect"],
        )
        return b.build("unreachable", latency_ms=total, error=obs.error)
    if total is not None and total > slow_s * 1000:
        b.warning(
            f"PostgreSQL answered slowly: {seconds(total)} to connect and query "
            f"(threshold {slow_s:g} s)",
            "Check the RDS instance's CPU, connections and storage in CloudWatch",
            ["postgres:connect"],
        )
    return b.build(f"reachable in {seconds(total)}", latency_ms=total)


def _readable(obs: HttpObservation | None) -> bool:
    return obs is not None and obs.answered


def _service_views(
    health: HttpObservation | None, ready: HttpObservation | None
) -> tuple[HealthView | None, ReadyView | None]:
    return (
        parse_health(health) if health is not None and _readable(health) else None,
        parse_ready(ready) if ready is not None and _readable(ready) else None,
    )


def _service_value(view: HealthView | None, names: tuple[str, ...]) -> str | None:
    if view is None:
        return None
    for name in names:
        if name in view.services:
            return view.services[name]
    return None


def _limited(b: ResultBuilder, what: str, why: str) -> CheckResult:
    b.details["evidence_limited"] = True
    b.info(
        f"{what} not checked: not reachable from the worker, and {why}; its state is unknown "
        "(evidence limited)",
        list(b.evidence),
    )
    return b.build(f"unknown: {why}", partial=True, default=CheckStatus.SKIPPED)


def assess_database_from_service(
    health: HttpObservation | None, ready: HttpObservation | None
) -> CheckResult:
    """PostgreSQL as the service sees it (/ready's database check, /health's services), for
    when the worker cannot reach the database itself."""
    b = ResultBuilder(CheckName.DATABASE)
    b.details.update({"source": "service", "evidence_limited": False})
    health_view, ready_view = _service_views(health, ready)
    check: ReadyCheck | None = ready_view.check(*_DB_CHECKS) if ready_view else None
    service_state = _service_value(health_view, _DB_SERVICES)
    sources = []
    if check is not None and check.passed is not None and ready is not None:
        sources.append(ready.label)
    if service_state is not None and health is not None:
        sources.append(health.label)
    b.cite(*sources)
    down = (check is not None and check.passed is False) or service_state == "unhealthy"
    up = (check is not None and check.passed is True) or service_state == "healthy"
    if down:
        error = f" ({check.error})" if check is not None and check.error else ""
        b.critical(
            f"PostgreSQL is down according to the service{error}",
            "Restore PostgreSQL (RDS instance state, security groups, credentials); no "
            "automatic action is taken for the database",
            sources,
        )
        return b.build("down (service's view)", partial=True)
    if up:
        b.info("Database not checked directly: relying on the service's own view", sources)
        return b.build("healthy (service's view)")
    if health_view is not None and health_view.lightweight:
        why = "GET /health is a lightweight answer that does not report it"
    else:
        why = "the service reports no database state"
    if ready_view is None:
        why += " and GET /ready gave no readable answer"
    b.cite(*(o.label for o in (health, ready) if o is not None))
    return _limited(b, "Database", why)


def assess_redis(obs: RedisObservation | None, slow_ms: float = 100.0) -> CheckResult:
    """Redis reached directly by the worker (PING, INFO). Redis down degrades, it is not
    critical: the service keeps serving with limited caching."""
    b = ResultBuilder(CheckName.REDIS)
    if obs is None:
        return CheckResult.skipped(b.name, "no Redis URL configured (REDIS_URL)")
    b.cite("redis:PING")
    b.details["ping_ms"] = obs.ping_ms
    b.details["source"] = "direct"
    info: dict[str, Any] = obs.info if isinstance(obs.info, dict) else {}
    b.details.update({k: info[k] for k in _REDIS_INFO_KEYS if k in info})
    if obs.error is not None:
        b.warning(
            f"Redis is down or unreachable: {obs.error}; the service keeps serving with "
            "limited caching",
            "Check the Redis server (ElastiCache node state, security groups, credentials)",
            ["redis:PING"],
            CheckStatus.UNHEALTHY,
        )
        return b.build("unreachable", latency_ms=obs.ping_ms, error=obs.error)
    if obs.ping_ms is not None and obs.ping_ms > slow_ms:
        b.warning(
            f"Redis answered slowly: PING took {obs.ping_ms:.0f} ms (threshold {slow_ms:g} ms)",
            "Check Redis load and memory, and the network path from the service",
            ["redis:PING"],
        )
    used, limit = info.get("used_memory"), info.get("maxmemory")
    if isinstance(used, int | float) and isinstance(limit, int | float) and limit > 0:
        ratio = used / limit
        if ratio >= _REDIS_MEMORY_RATIO:
            b.warning(
                f"Redis memory at {ratio:.0%} of maxmemory",
                "Check the eviction policy and key growth; scale the node if needed",
                ["redis:INFO"],
            )
    ping = f"{obs.ping_ms:.0f} ms" if obs.ping_ms is not None else "?"
    return b.build(f"PONG in {ping}", latency_ms=obs.ping_ms)


def assess_redis_from_service(
    health: HttpObservation | None, ready: HttpObservation | None = None
) -> CheckResult:
    """Redis as the service sees it (/health's services.redis, a /ready redis check), for when
    the worker cannot reach Redis. The deployed version's lightweight /health says nothing
    about Redis: the result is then skipped and partial, with a finding saying so."""
    b = ResultBuilder(CheckName.REDIS)
    b.details.update({"source": "service", "evidence_limited": False})
    health_view, ready_view = _service_views(health, ready)
    check = ready_view.check(*_REDIS_CHECKS) if ready_view else None
    state = _service_value(health_view, ("redis",))
    sources = []
    if state is not None and health is not None:
        sources.append(health.label)
    if check is not None and check.passed is not None and ready is not None:
        sources.append(ready.label)
    b.cite(*sources)
    if state == "unhealthy" or (check is not None and check.passed is False):
        b.warning(
            "Redis is down according to the service; it keeps serving with limited caching",
            "Check the Redis server (ElastiCache node state, security groups, credentials)",
            sources,
            CheckStatus.UNHEALTHY,
        )
        return b.build("down (service's view)", partial=True)
    if state == "healthy" or (check is not None and check.passed is True):
        b.info("Redis not checked directly: relying on the service's own view", sources)
        return b.build("healthy (service's view)")
    if health_view is not None and health_view.lightweight:
        why = "GET /health is a lightweight answer that does not report it"
    elif health_view is None:
        why = "GET /health gave no readable answer"
    else:
        why = "GET /health does not report it"
    b.cite(*(o.label for o in (health, ready) if o is not None))
    return _limited(b, "Redis", why)
