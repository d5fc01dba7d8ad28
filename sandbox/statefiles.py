"""sandbox.json and sandbox.env in the state directory, written atomically."""

from __future__ import annotations

import json
import os
import shlex
import tempfile
from pathlib import Path
from typing import Any

JSON_NAME = "sandbox.json"
ENV_NAME = "sandbox.env"


def env_lines(info: dict[str, Any]) -> dict[str, str]:
    """Every setting the flows read, under the seed's environment names."""
    return {
        "API_URL": info["api_url"],
        "API_KEY": info["api_key"],
        "MLFLOW_TRACKING_URI": info["mlflow_url"],
        "DATABASE_URL": info["database_url"],
        "REDIS_URL": info["redis_url"],
        "AWS_REGION": info["aws_region"],
        "AWS_DEFAULT_REGION": info["aws_region"],
        "AWS_ENDPOINT_URL": info["aws_endpoint_url"],
        "AWS_ACCESS_KEY_ID": info["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": info["aws_secret_access_key"],
        "ECS_CLUSTER": info["ecs_cluster"],
        "ECS_SERVICES": ",".join(info["ecs_services"]),
        "MLFLOW_ECS_SERVICE": info["mlflow_ecs_service"],
        "TARGET_GROUPS": ",".join(info["target_groups"]),
        "ALB_NAMES": ",".join(info["alb_names"]),
        "RDS_INSTANCES": ",".join(info["rds_instances"]),
        "ALARM_PREFIX": info["alarm_prefix"],
        "SANDBOX_CONTROL_URL": info["control_url"],
    }


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)  # it holds the sandbox's secrets
    os.replace(tmp, path)


def write(state_dir: Path, info: dict[str, Any]) -> None:
    env = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env_lines(info).items())
    _atomic_write(state_dir / ENV_NAME, env)
    # sandbox.json last: its presence means "ready".
    _atomic_write(state_dir / JSON_NAME, json.dumps(info, indent=2) + "\n")


def read(state_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((state_dir / JSON_NAME).read_text())
    return data


def remove(state_dir: Path) -> None:
    for name in (JSON_NAME, ENV_NAME):
        (state_dir / name).unlink(missing_ok=True)
