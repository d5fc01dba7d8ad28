"""Configuration of the registry stand-in, read from the environment the supervisor sets."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from sandbox.breaker import BreakerConfig


class Flavor(StrEnum):
    CONTRACT = "contract"  # honours DESIGN.md section 4
    LEGACY = "legacy"  # reproduces "Observed in a deployed version"


# The deployed version opened later and waited longer (observed failure_threshold 5,
# recovery_timeout 60); everything else keeps the seed's defaults.
_BREAKER_DEFAULTS = {
    Flavor.CONTRACT: BreakerConfig(),
    Flavor.LEGACY: BreakerConfig(failure_threshold=5, recovery_timeout=60.0),
}
_MLFLOW_TIMEOUT_DEFAULTS = {Flavor.CONTRACT: 2.0, Flavor.LEGACY: 10.0}


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
            mlflow_timeout=seconds("MLFLOW_TIMEOUT_SECONDS", _MLFLOW_TIMEOUT_DEFAULTS[flavor]),
            dependency_timeout=seconds("DEPENDENCY_TIMEOUT_SECONDS", 2.0),
            service_name=env.get("SERVICE_NAME", "") or cls.service_name,
            service_version=env.get("SERVICE_VERSION", "") or cls.service_version,
            replica_id=env.get("REPLICA_ID", ""),
        )
