"""Targets (deployed instances of the service) and how they are configured.

A target is resolved from three layers, highest precedence first: explicit overrides (command
line, flow parameters), the environment (the seed's variable names), the targets file.
Secrets are SecretStr everywhere and never appear in error messages.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal
from urllib.parse import quote, unquote, urlsplit

import yaml
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service_health.redaction import redact_url


class ConfigError(ValueError):
    """A configuration mistake, described in one line without secrets."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


# Defaults, defined once: the thresholds below, the flows' parameters, the tasks and the
# command lines read them from here.
REQUEST_TIMEOUT_S = 5.0  # one request
SLOW_RESPONSE_S = 5.0  # an API answer slower than this is a warning
DEADLINE_S = 30.0  # a whole diagnosis
STABILIZATION_TIMEOUT_S = 300.0  # the recovery's wait for the service to stabilise
MLFLOW_WAIT_TIMEOUT_S = 120.0  # the recovery's wait for MLflow to answer after its restart
CONSECUTIVE_HEALTHY = 2  # healthy /health answers in a row that end a stabilisation wait
COOLDOWN_S = 600.0  # an ECS service restarted by a recovery this recently is left alone
MAX_RESTARTS = 2  # ECS services one recovery may restart


class Thresholds(BaseModel):
    model_config = ConfigDict(extra="forbid")

    slow_response_s: float = Field(SLOW_RESPONSE_S, gt=0, allow_inf_nan=False)
    # The registry's own MLflow client gives up after 2 s: slower answers fail there.
    mlflow_slow_s: float = Field(2.0, gt=0, allow_inf_nan=False)
    db_slow_s: float = Field(1.0, gt=0, allow_inf_nan=False)
    redis_slow_ms: float = Field(100.0, gt=0, allow_inf_nan=False)
    deadline_s: float = Field(DEADLINE_S, gt=0, allow_inf_nan=False)  # the whole diagnosis
    request_timeout_s: float = Field(REQUEST_TIMEOUT_S, gt=0, allow_inf_nan=False)
    per_service_concurrency: int = Field(4, ge=1)
    # An MLflow-touching request is given as long as the service's own MLflow client may
    # retry (about 10 s a check, two checks for /ready): cut short, it would go on holding
    # the replica while we sent the next one.
    mlflow_request_timeout_s: float = Field(25.0, gt=0, allow_inf_nan=False)
    # An MLflow-touching answer slower than this held the deployed version's event loop.
    blocking_s: float = Field(1.0, gt=0, allow_inf_nan=False)
    # MLflow-touching requests one run may send to the registry, all replicas together.
    mlflow_request_budget: int = Field(12, ge=1, le=200)

    def with_overrides(self, **values: float | None) -> Thresholds:
        """A validated copy with `values` (None ones ignored): a flag or flow parameter such
        as a negative deadline is a ConfigError, like the same value in the targets file."""
        updates = {key: value for key, value in values.items() if value is not None}
        try:
            return Thresholds.model_validate({**self.model_dump(), **updates})
        except ValidationError as exc:
            raise _one_line(exc, "thresholds") from None


class SecretBlocks(BaseModel):
    """Names of Prefect Secret blocks holding the target's secrets (read by the tasks)."""

    model_config = ConfigDict(extra="forbid")

    api_key: str | None = None
    database_url: str | None = None
    redis_url: str | None = None


ReplicaDiscovery = Literal["direct", "sample", "auto"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_DB_SCHEMES = ("postgres", "postgresql")
_REDIS_SCHEMES = ("redis", "rediss", "unix")


def _check_url(value: str, schemes: tuple[str, ...]) -> str:
    """Validate scheme and host; the error shows the URL with credentials masked."""
    try:
        parts = urlsplit(value)
        host = parts.hostname
    except ValueError:
        raise ValueError(f"{redact_url(value)!r} is not a valid URL") from None
    scheme = parts.scheme.split("+", 1)[0].lower()  # postgresql+psycopg counts as postgresql
    if scheme not in schemes:
        raise ValueError(
            f"{redact_url(value)!r} must use {' or '.join(s + '://' for s in schemes)}"
        )
    if not host and scheme != "unix":
        raise ValueError(f"{redact_url(value)!r} has no host")
    return value


def _http_url(value: str | None) -> str | None:
    if value is None:
        return None
    return _check_url(value.strip(), ("http", "https")).rstrip("/")


class _TargetFields(BaseModel):
    """Fields shared by a file entry and a resolved target."""

    model_config = ConfigDict(extra="forbid")

    mlflow_url: str | None = None
    database_url: SecretStr | None = None
    redis_url: SecretStr | None = None
    api_key: SecretStr | None = None
    aws_region: str | None = None
    aws_endpoint_url: str | None = None
    aws_credentials_block: str | None = None  # prefect-aws AwsCredentials block name
    ecs_cluster: str | None = None
    ecs_services: list[str] = Field(default_factory=list)
    mlflow_ecs_service: str | None = None
    alb_names: list[str] = Field(default_factory=list)
    target_groups: list[str] = Field(default_factory=list)
    # Groups serving MLflow: no healthy target there degrades (graceful degradation),
    # whereas an empty registry group is critical.
    mlflow_target_groups: list[str] = Field(default_factory=list)
    rds_instances: list[str] = Field(default_factory=list)
    alarm_prefix: str | None = None
    # direct: read every ALB-registered replica; sample: several requests through the LB;
    # auto: direct when the replicas answer from the worker, else sample.
    replica_discovery: ReplicaDiscovery = "auto"
    # /health/mlflow requests through the LB in sample mode: at most this many, and more
    # than one only with evidence of more than one replica (ECS desired count, registered
    # targets, or `replicas` below).
    samples: int = Field(4, ge=1, le=32)
    replicas: int | None = Field(None, ge=1, le=1000)  # registry replicas, when known
    # A recovery may roll an ECS service back to an earlier revision without asking an
    # operator first (otherwise a plan with a rollback always waits for approval).
    allow_automatic_rollback: bool = False
    secret_blocks: SecretBlocks = Field(default_factory=SecretBlocks)
    thresholds: Thresholds = Field(default_factory=Thresholds)

    @field_validator("mlflow_url", "aws_endpoint_url")
    @classmethod
    def _http_urls(cls, value: str | None) -> str | None:
        return _http_url(value)

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            _check_url(value.get_secret_value(), _DB_SCHEMES)
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            _check_url(value.get_secret_value(), _REDIS_SCHEMES)
        return value


class TargetSpec(_TargetFields):
    """One entry of the targets file: everything optional, URLs may come from elsewhere."""

    api_url: str | None = None

    @field_validator("api_url")
    @classmethod
    def _api_url(cls, value: str | None) -> str | None:
        return _http_url(value)


class Target(_TargetFields):
    """A resolved target: everything a diagnosis or recovery needs to know."""

    name: str
    api_url: str

    @field_validator("api_url")
    @classmethod
    def _api_url(cls, value: str) -> str:
        checked = _http_url(value)
        assert checked is not None  # a str in gives a str out
        return checked

    @property
    def slug(self) -> str:
        """Lowercase letters, digits and dashes: usable in Prefect artifact keys."""
        return re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-") or "target"

    def secret_values(self) -> list[str]:
        """Every secret value of this target, for a Redactor."""
        values: list[str] = []
        for secret in (self.api_key, self.database_url, self.redis_url):
            if secret is not None:
                values.append(secret.get_secret_value())
        for url in (self.database_url, self.redis_url):
            if url is not None:
                try:
                    password = urlsplit(url.get_secret_value()).password
                except ValueError:
                    password = None
                if password:
                    values.extend({password, unquote(password)})
        return values

    def public_view(self) -> dict[str, Any]:
        """The target as JSON without secrets, URLs with credentials masked."""
        data = self.model_dump(mode="json", exclude={"api_key", "database_url", "redis_url"})
        data["api_key"] = "***" if self.api_key else None
        for key in ("database_url", "redis_url"):
            secret = getattr(self, key)
            data[key] = redact_url(secret.get_secret_value()) if secret else None
        return data


def _split_list(value: Any) -> Any:
    """Comma-separated environment value to a list (a JSON-style list is accepted too)."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("[") and text.endswith("]"):
            text = text[1:-1]
        return [item.strip().strip("\"'") for item in text.split(",") if item.strip()]
    return value


EnvList = Annotated[list[str] | None, NoDecode]


class EnvSettings(BaseSettings):
    """Target fields from the environment, under the seed's variable names."""

    model_config = SettingsConfigDict(
        env_prefix="", extra="ignore", populate_by_name=True, env_file=None
    )

    api_url: str | None = Field(None, validation_alias=AliasChoices("API_URL", "api_url"))
    api_key: SecretStr | None = Field(None, validation_alias=AliasChoices("API_KEY", "api_key"))
    mlflow_url: str | None = Field(
        None, validation_alias=AliasChoices("MLFLOW_TRACKING_URI", "mlflow_url")
    )
    database_url: SecretStr | None = Field(
        None, validation_alias=AliasChoices("DATABASE_URL", "POSTGRES_URI", "database_url")
    )
    redis_url: SecretStr | None = Field(
        None, validation_alias=AliasChoices("REDIS_URL", "redis_url")
    )
    redis_host: str | None = Field(None, validation_alias=AliasChoices("REDIS_HOST", "redis_host"))
    redis_port: int | None = Field(None, validation_alias=AliasChoices("REDIS_PORT", "redis_port"))
    redis_password: SecretStr | None = Field(
        None, validation_alias=AliasChoices("REDIS_PASSWORD", "redis_password")
    )
    aws_region: str | None = Field(
        None, validation_alias=AliasChoices("AWS_REGION", "AWS_DEFAULT_REGION", "aws_region")
    )
    aws_endpoint_url: str | None = Field(
        None, validation_alias=AliasChoices("AWS_ENDPOINT_URL", "aws_endpoint_url")
    )
    aws_credentials_block: str | None = Field(
        None, validation_alias=AliasChoices("AWS_CREDENTIALS_BLOCK", "aws_credentials_block")
    )
    ecs_cluster: str | None = Field(
        None, validation_alias=AliasChoices("ECS_CLUSTER", "ecs_cluster")
    )
    ecs_services: EnvList = Field(
        None, validation_alias=AliasChoices("ECS_SERVICES", "ecs_services")
    )
    mlflow_ecs_service: str | None = Field(
        None, validation_alias=AliasChoices("MLFLOW_ECS_SERVICE", "mlflow_ecs_service")
    )
    alb_names: EnvList = Field(None, validation_alias=AliasChoices("ALB_NAMES", "alb_names"))
    target_groups: EnvList = Field(
        None, validation_alias=AliasChoices("TARGET_GROUPS", "target_groups")
    )
    mlflow_target_groups: EnvList = Field(
        None, validation_alias=AliasChoices("MLFLOW_TARGET_GROUPS", "mlflow_target_groups")
    )
    rds_instances: EnvList = Field(
        None, validation_alias=AliasChoices("RDS_INSTANCES", "rds_instances")
    )
    alarm_prefix: str | None = Field(
        None, validation_alias=AliasChoices("ALARM_PREFIX", "alarm_prefix")
    )
    replica_discovery: ReplicaDiscovery | None = Field(
        None, validation_alias=AliasChoices("REPLICA_DISCOVERY", "replica_discovery")
    )
    replicas: int | None = Field(
        None, ge=1, le=1000, validation_alias=AliasChoices("REGISTRY_REPLICAS", "replicas")
    )
    allow_automatic_rollback: bool | None = Field(
        None,
        validation_alias=AliasChoices("ALLOW_AUTOMATIC_ROLLBACK", "allow_automatic_rollback"),
    )

    @field_validator(
        "ecs_services",
        "alb_names",
        "target_groups",
        "mlflow_target_groups",
        "rds_instances",
        mode="before",
    )
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator("*", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        # `export API_KEY=` means "not set", not "the empty key".
        return None if isinstance(value, str) and not value.strip() else value

    def target_fields(self) -> dict[str, Any]:
        """The Target fields the environment sets (unset ones left out)."""
        fields = self.model_dump(
            exclude_none=True, exclude={"redis_host", "redis_port", "redis_password"}
        )
        if self.redis_url is None and self.redis_host:
            password = self.redis_password.get_secret_value() if self.redis_password else ""
            auth = f":{quote(password, safe='')}@" if password else ""
            fields["redis_url"] = SecretStr(
                f"redis://{auth}{self.redis_host}:{self.redis_port or 6379}"
            )
        return fields


def load_env_settings() -> EnvSettings:
    """EnvSettings from the process environment; a bad value is a ConfigError."""
    try:
        return EnvSettings()
    except ValidationError as exc:
        raise _one_line(exc, "environment") from None


def _one_line(exc: ValidationError, where: str) -> ConfigError:
    """Pydantic's errors without the input values (they may be secrets)."""
    parts = []
    for error in exc.errors(include_input=False, include_url=False):
        loc = ".".join(str(p) for p in error["loc"]) or "value"
        message = "unknown field" if error["type"] == "extra_forbidden" else error["msg"]
        parts.append(f"{loc}: {message.removeprefix('Value error, ')}")
    return ConfigError(f"{where}: {'; '.join(parts)}")


def load_targets(text: str) -> dict[str, TargetSpec]:
    """Parse the YAML text of a targets file: `targets: {name: {field: value}}`."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigError(f"targets file is not valid YAML: {problem}{line}") from None
    if document is None:
        return {}
    if not isinstance(document, dict) or not isinstance(document.get("targets"), dict):
        raise ConfigError("targets file must be a mapping with a `targets:` mapping of names")
    specs: dict[str, TargetSpec] = {}
    for name, entry in document["targets"].items():
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(f"targets file: invalid target name {name!r}")
        if entry is not None and not isinstance(entry, dict):
            raise ConfigError(f"targets file: target {name!r} must be a mapping of fields")
        try:
            specs[name] = TargetSpec.model_validate(entry or {})
        except ValidationError as exc:
            raise _one_line(exc, f"targets file: target {name!r}") from None
    return specs


def _merge(base: dict[str, Any], layer: dict[str, Any]) -> dict[str, Any]:
    """Layer over base; nested settings (thresholds, secret_blocks) merge key by key."""
    merged = dict(base)
    for key, value in layer.items():
        if value is None:
            continue
        if isinstance(value, BaseModel):
            value = value.model_dump(exclude_unset=True)
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **{k: v for k, v in value.items() if v is not None}}
        else:
            merged[key] = value
    return merged


ENV_TARGET = "env"


def resolve_target(
    name: str | None,
    targets: dict[str, TargetSpec],
    env: EnvSettings,
    overrides: dict[str, Any] | None = None,
) -> Target:
    """The target named `name`: overrides > environment > targets file.

    `name` None (or "env" when the file has no such entry) means environment only.
    None values in overrides are ignored, so unset command-line flags can be passed as is.
    """
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(Target.model_fields) - {"name"})
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(unknown)}")
    if name is None or (name == ENV_TARGET and name not in targets):
        resolved_name, base = ENV_TARGET, {}
    elif name in targets:
        resolved_name = name
        base = targets[name].model_dump(exclude_unset=True)  # SecretStr values stay wrapped
    else:
        known = ", ".join(sorted(targets)) or "none defined"
        raise ConfigError(f"unknown target {name!r} (known: {known})")
    data = _merge(_merge(base, env.target_fields()), overrides)
    data["name"] = resolved_name
    if not data.get("api_url"):
        raise ConfigError(
            f"target {resolved_name!r}: api_url is not set (targets file, API_URL or --api-url)"
        )
    try:
        return Target.model_validate(data)
    except ValidationError as exc:
        raise _one_line(exc, f"target {resolved_name!r}") from None
