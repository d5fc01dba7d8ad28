from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from service_health.settings import (
    ConfigError,
    EnvSettings,
    Target,
    Thresholds,
    load_env_settings,
    load_targets,
    resolve_target,
)

ENV_NAMES = [
    "API_URL",
    "API_KEY",
    "MLFLOW_TRACKING_URI",
    "DATABASE_URL",
    "POSTGRES_URI",
    "REDIS_URL",
    "REDIS_HOST",
    "REDIS_PORT",
    "REDIS_PASSWORD",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_CREDENTIALS_BLOCK",
    "ECS_CLUSTER",
    "ECS_SERVICES",
    "MLFLOW_ECS_SERVICE",
    "ALB_NAMES",
    "TARGET_GROUPS",
    "MLFLOW_TARGET_GROUPS",
    "RDS_INSTANCES",
    "ALARM_PREFIX",
    "REPLICA_DISCOVERY",
]
TARGETS_FILE = Path(__file__).resolve().parents[2] / "targets.yaml"

FILE = """
targets:
  prod:
    api_url: https://data.example.test/
    mlflow_url: https://mlflow.example.test
    ecs_cluster: prod-cluster
    ecs_services: [registry, mlflow]
    thresholds: {slow_response_s: 2.5, deadline_s: 20}
  bare:
"""


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_file_only() -> None:
    target = resolve_target("prod", load_targets(FILE), EnvSettings(), {})
    assert target.name == "prod"
    assert target.api_url == "https://data.example.test"  # trailing slash dropped
    assert target.ecs_services == ["registry", "mlflow"]
    assert target.thresholds == Thresholds(slow_response_s=2.5, deadline_s=20)
    assert target.replica_discovery == "auto" and target.samples == 4


def test_precedence_overrides_env_file(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("API_URL", "http://env.example.test:8000")
    clean_env.setenv("ECS_CLUSTER", "env-cluster")
    clean_env.setenv("ECS_SERVICES", "a, b ,c")
    clean_env.setenv("API_KEY", "env-key")
    overrides = {
        "api_url": "http://flag.example.test",
        "api_key": None,
        "thresholds": {"deadline_s": 5},
    }
    target = resolve_target("prod", load_targets(FILE), EnvSettings(), overrides)
    assert target.api_url == "http://flag.example.test"  # override beats environment
    assert target.ecs_cluster == "env-cluster"  # environment beats file
    assert target.ecs_services == ["a", "b", "c"]
    assert target.mlflow_url == "https://mlflow.example.test"  # file fills the rest
    assert target.api_key is not None and target.api_key.get_secret_value() == "env-key"
    # Thresholds merge key by key across layers.
    assert (target.thresholds.slow_response_s, target.thresholds.deadline_s) == (2.5, 5)


def test_environment_only(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("API_URL", "http://localhost:8000")
    clean_env.setenv("POSTGRES_URI", "postgresql://u:pw@localhost:5432/db")
    clean_env.setenv("REDIS_HOST", "localhost")
    clean_env.setenv("REDIS_PORT", "6380")
    clean_env.setenv("REDIS_PASSWORD", "r p")
    clean_env.setenv("MLFLOW_TRACKING_URI", "http://localhost:5000")
    clean_env.setenv("AWS_REGION", "eu-west-1")
    clean_env.setenv("TARGET_GROUPS", '["tg-a", "tg-b"]')
    target = resolve_target(None, {}, EnvSettings(), {})
    assert target.name == "env"
    assert target.database_url is not None
    assert target.database_url.get_secret_value() == "postgresql://u:pw@localhost:5432/db"
    assert target.redis_url is not None
    assert target.redis_url.get_secret_value() == "redis://:r%20p@localhost:6380"
    assert target.target_groups == ["tg-a", "tg-b"]
    assert target.aws_region == "eu-west-1"


def test_database_url_beats_postgres_uri(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("DATABASE_URL", "postgresql://a@h/one")
    clean_env.setenv("POSTGRES_URI", "postgresql://a@h/two")
    env = EnvSettings()
    assert env.database_url is not None
    assert env.database_url.get_secret_value().endswith("/one")


def test_blank_environment_values_are_unset(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("API_KEY", "")
    clean_env.setenv("API_URL", "http://h")
    assert resolve_target(None, {}, EnvSettings(), {}).api_key is None


def test_secrets_never_in_repr_or_public_view(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("API_URL", "http://h")
    clean_env.setenv("API_KEY", "k-123456")
    clean_env.setenv("DATABASE_URL", "postgresql://u:dbpass99@h/db")
    target = resolve_target(None, {}, EnvSettings(), {})
    for text in (repr(target), str(target.public_view()), target.model_dump_json()):
        assert "k-123456" not in text and "dbpass99" not in text
    assert target.public_view()["database_url"] == "postgresql://u:***@h/db"
    assert {"k-123456", "dbpass99"} <= set(target.secret_values())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("targets: [1, 2]", "must be a mapping"),
        ("just text", "must be a mapping"),
        ("targets:\n  a:\n    api_url: [unclosed", "not valid YAML"),
        ("targets:\n  a:\n    ecs_servics: [x]", "target 'a': ecs_servics: unknown field"),
        ("targets:\n  a:\n    samples: lots", "target 'a': samples:"),
        ("targets:\n  a: 3", "must be a mapping of fields"),
        ("targets:\n  'bad name!': {}", "invalid target name"),
        ("targets:\n  a:\n    thresholds: {deadline_s: -1}", "thresholds.deadline_s"),
        ("targets:\n  a:\n    replica_discovery: sometimes", "replica_discovery"),
    ],
)
def test_malformed_file(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_targets(text)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_empty_file_has_no_targets() -> None:
    assert load_targets("") == {}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"api_url": "ftp://u:topsecret@h"}, "'ftp://u:***@h' must use http:// or https://"),
        ({"api_url": "not a url"}, "must use http"),
        ({"mlflow_url": "http://"}, "has no host"),
        ({"database_url": "mysql://u:topsecret@h/d"}, "must use postgres"),
        ({"redis_url": SecretStr("http://x")}, "must use redis"),
        ({"api_urll": "http://x"}, "unknown setting(s): api_urll"),
    ],
)
def test_invalid_settings(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_target("prod", load_targets(FILE), EnvSettings(), overrides)
    assert message in str(info.value)
    assert "topsecret" not in str(info.value)


def test_unknown_target_names_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown target 'nope' \(known: bare, prod\)"):
        resolve_target("nope", load_targets(FILE), EnvSettings(), {})


def test_missing_api_url() -> None:
    with pytest.raises(ConfigError, match="api_url is not set"):
        resolve_target("bare", load_targets(FILE), EnvSettings(), {})


def test_bad_environment_value(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("REDIS_PORT", "sixty")
    with pytest.raises(ConfigError, match="environment: REDIS_PORT"):
        load_env_settings()


def test_checked_in_targets_file(clean_env: pytest.MonkeyPatch) -> None:
    targets = load_targets(TARGETS_FILE.read_text())
    assert {"sandbox", "production", "staging"} <= set(targets)
    sandbox = targets["sandbox"]
    assert sandbox.api_url is None  # comes from the environment
    assert sandbox.ecs_cluster == "hokusai-sandbox"
    assert sandbox.ecs_services == ["hokusai-registry", "hokusai-mlflow"]
    assert sandbox.mlflow_ecs_service == "hokusai-mlflow"
    assert sandbox.target_groups == ["hokusai-registry-tg", "hokusai-mlflow-tg"]
    assert sandbox.alb_names == ["hokusai-sandbox-alb"]
    assert sandbox.rds_instances == ["hokusai-sandbox-db"]
    assert sandbox.alarm_prefix == "hokusai-sandbox"
    for spec in targets.values():
        assert spec.api_key is None and spec.database_url is None and spec.redis_url is None
    clean_env.setenv("API_URL", "http://127.0.0.1:18000")
    target = resolve_target("sandbox", targets, EnvSettings(), {})
    assert isinstance(target, Target) and target.slug == "sandbox"
    production = resolve_target("production", targets, EnvSettings(), {"api_url": None})
    assert production.api_url == "http://127.0.0.1:18000"  # the environment wins over the file
