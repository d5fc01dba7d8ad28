"""Configuration of the registry stand-in, read from the environment the supervisor sets."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from sandbox.breaker import BreakerConfig, env_number


class Flavor(StrEnum):
    CONTRACT = "contract"  # honours docs/health-contract.md
    LEGACY = "legacy"  # reproduces "Observed in a deployed version"


# The deployed version opened later, waited longer and tried more recoveries (observed
# failure_threshold 5, recovery_timeout 60, 5 recovery attempts); the success threshold
# keeps the seed's default.
_BREAKER_DEFAULTS = {
    Flavor.CONTRACT: BreakerConfig(),
    Flavor.LEGACY: BreakerConfig(
        failure_threshold=5, recovery_timeout=60.0, max_recovery_attempts=5
    ),
}
# Per HTTP request. The legacy client's cost comes from its retries, not from one long wait;
# 2 s also makes the sandbox's mlflow-slow (3 s) a timeout for both flavours.
_MLFLOW_TIMEOUT_DEFAULTS = {Flavor.CONTRACT: 2.0, Flavor.LEGACY: 2.0}

ENV_MLFLOW_ATTEMPTS = "LEGACY_MLFLOW_ATTEMPTS"
ENV_MLFLOW_HTTP_RETRIES = "LEGACY_MLFLOW_HTTP_RETRIES"
ENV_MLFLOW_BACKOFF_FACTOR = "LEGACY_MLFLOW_BACKOFF_FACTOR"
ENV_DB_ATTEMPTS = "LEGACY_DB_ATTEMPTS"
ENV_DB_RETRY_DELAY = "LEGACY_DB_RETRY_DELAY_SECONDS"


@dataclass(frozen=True)
class LegacyRetryBudget:
    """How long the deployed version's blocking retries take (the legacy flavour only).

    MLflow check: ``mlflow_attempts`` application-level attempts, each one request plus
    ``mlflow_http_retries`` urllib3-style retries on a refused connection, a timeout or a
    429/5xx answer. urllib3's backoff: no sleep before the first retry, then
    ``factor * 2 ** (n - 1)`` before retry n. The defaults (2 x (0 + 1.7 + 3.4 s)) make a
    refused check cost about 10 s, as measured on the deployed version (11 s for
    /health/mlflow, 20 s for /ready); a timed-out request adds its timeout to every try.

    Database check: ``db_attempts`` connections, sleeping ``db_retry_delay * 2 ** (n - 1)``
    after failed attempt n (1 s, then 2 s: about 3 s before /ready answers 503).
    """

    mlflow_attempts: int = 2
    mlflow_http_retries: int = 3
    mlflow_backoff_factor: float = 0.85
    db_attempts: int = 3
    db_retry_delay: float = 1.0

    def __post_init__(self) -> None:
        if self.mlflow_attempts < 1 or self.db_attempts < 1:
            raise ValueError("attempts must be at least 1")
        if self.mlflow_http_retries < 0:
            raise ValueError("retries must not be negative")
        if self.mlflow_backoff_factor < 0 or self.db_retry_delay < 0:
            raise ValueError("backoff and delays must not be negative")

    def mlflow_retry_sleeps(self) -> list[float]:
        """The sleep before each retry of one attempt, urllib3's schedule."""
        return [
            0.0 if n == 1 else self.mlflow_backoff_factor * 2 ** (n - 1)
            for n in range(1, self.mlflow_http_retries + 1)
        ]

    def mlflow_check_seconds(self, per_request: float = 0.0) -> float:
        """Nominal duration of one failing MLflow check when each try costs `per_request`
        seconds (about 0 when refused or answered 5xx, the timeout when MLflow is slow)."""
        tries = self.mlflow_http_retries + 1
        return self.mlflow_attempts * (sum(self.mlflow_retry_sleeps()) + tries * per_request)

    def db_retry_sleeps(self) -> list[float]:
        return [self.db_retry_delay * 2 ** (n - 1) for n in range(1, self.db_attempts)]

    def db_check_seconds(self) -> float:
        """Nominal duration of one failing database check (connections refused at once)."""
        return sum(self.db_retry_sleeps())

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> LegacyRetryBudget:
        """Read the LEGACY_* variables; unset or empty ones keep the deployed defaults."""
        base = cls()

        def number(var: str, current: float, kind: type[int] | type[float]) -> Any:
            return env_number(env, var, current, kind)

        return cls(
            mlflow_attempts=number(ENV_MLFLOW_ATTEMPTS, base.mlflow_attempts, int),
            mlflow_http_retries=number(ENV_MLFLOW_HTTP_RETRIES, base.mlflow_http_retries, int),
            mlflow_backoff_factor=number(
                ENV_MLFLOW_BACKOFF_FACTOR, base.mlflow_backoff_factor, float
            ),
            db_attempts=number(ENV_DB_ATTEMPTS, base.db_attempts, int),
            db_retry_delay=number(ENV_DB_RETRY_DELAY, base.db_retry_delay, float),
        )


@dataclass(frozen=True)
class RegistryConfig:
    """Per-flavour defaults (breaker thresholds, MLflow timeout) are applied by `from_env`;
    a directly constructed config takes the field defaults, which are the contract's."""

    flavor: Flavor = Flavor.CONTRACT
    # URLs may carry passwords, and the keys are secrets: keep them out of reprs and logs.
    database_url: str = field(default="", repr=False)
    redis_url: str = field(default="", repr=False)
    mlflow_tracking_uri: str = "http://127.0.0.1:5000"
    api_key: str = field(default="", repr=False)
    sandbox_admin_token: str = field(default="", repr=False)
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    legacy: LegacyRetryBudget = field(default_factory=LegacyRetryBudget)
    mlflow_timeout: float = 2.0
    dependency_timeout: float = 2.0
    service_name: str = "hokusai-registry"
    service_version: str = "1.0.0"
    replica_id: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> RegistryConfig:
        raw_flavor = env.get("REGISTRY_FLAVOR", "").strip().lower() or Flavor.CONTRACT.value
        try:
            flavor = Flavor(raw_flavor)
        except ValueError:
            choices = ", ".join(f.value for f in Flavor)
            raise ValueError(f"REGISTRY_FLAVOR must be one of {choices}") from None

        def seconds(var: str, default: float) -> float:
            raw = env.get(var, "").strip()
            if not raw:
                return default
            try:
                value = float(raw)
            except ValueError:
                raise ValueError(f"{var} must be a number of seconds, got {raw!r}") from None
            if value <= 0:
                raise ValueError(f"{var} must be positive")
            return value

        return cls(
            flavor=flavor,
            database_url=env.get("DATABASE_URL", ""),
            redis_url=env.get("REDIS_URL", ""),
            mlflow_tracking_uri=env.get("MLFLOW_TRACKING_URI", "") or cls.mlflow_tracking_uri,
            api_key=env.get("API_KEY", ""),
            sandbox_admin_token=env.get("SANDBOX_ADMIN_TOKEN", ""),
            breaker=BreakerConfig.from_env(env, _BREAKER_DEFAULTS[flavor]),
            legacy=LegacyRetryBudget.from_env(env),
            mlflow_timeout=seconds("MLFLOW_TIMEOUT_SECONDS", _MLFLOW_TIMEOUT_DEFAULTS[flavor]),
            dependency_timeout=seconds("DEPENDENCY_TIMEOUT_SECONDS", 2.0),
            service_name=env.get("SERVICE_NAME", "") or cls.service_name,
            service_version=env.get("SERVICE_VERSION", "") or cls.service_version,
            replica_id=env.get("REPLICA_ID", ""),
        )
