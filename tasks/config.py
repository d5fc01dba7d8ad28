"""Resolving a target: the targets file, the environment, overrides, Secret blocks."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, cast

from pydantic import SecretStr

from service_health.settings import (
    ConfigError,
    EnvSettings,
    Target,
    TargetSpec,
    load_env_settings,
    load_targets,
    resolve_target,
)
from tasks.redacting import remember

DEFAULT_TARGETS_FILE = Path(__file__).resolve().parents[1] / "targets.yaml"


def targets_file() -> Path:
    return Path(os.environ.get("HOKUSAI_TARGETS_FILE", DEFAULT_TARGETS_FILE))


def read_targets() -> dict[str, TargetSpec]:
    path = targets_file()
    try:
        text = path.read_text()
    except FileNotFoundError:
        if "HOKUSAI_TARGETS_FILE" in os.environ:
            raise ConfigError(f"targets file {path} not found") from None
        return {}
    except OSError as exc:
        raise ConfigError(f"targets file {path} cannot be read: {exc.strerror}") from None
    return dict(_parsed(text))


@functools.lru_cache(maxsize=4)
def _parsed(text: str) -> dict[str, TargetSpec]:
    """The file's text parsed once: a fleet run resolves every target from the same file,
    and parsing it for each (O(N) each, O(N^2) in all) showed in its profile. Keyed by the
    text itself, so an edited file is always read anew; callers get a copy of the mapping."""
    return load_targets(text)


def load_target(name: str | None, overrides: dict[str, Any] | None = None) -> Target:
    """The resolved target, without the secrets held in Prefect blocks (see `with_secrets`).

    Its secrets are redacted from every log record of this process from now on."""
    env = _env_settings(tuple(sorted(os.environ.items()))).model_copy()
    target = resolve_target(name, read_targets(), env, overrides)
    remember(target.secret_values())
    return target


@functools.lru_cache(maxsize=8)
def _env_settings(environment: tuple[tuple[str, str], ...]) -> EnvSettings:
    """The environment's settings, read once per distinct environment: pydantic-settings
    scans every variable (a few ms), and every run of a fleet would scan the same ones.
    Keyed by the environment itself, so a changed variable is always seen; a bad value
    raises each time (exceptions are not cached)."""
    return load_env_settings()


async def with_secrets(target: Target) -> Target:
    """Fill secrets named as Prefect Secret blocks in the target (environment wins)."""
    from prefect.blocks.system import Secret

    updates: dict[str, SecretStr] = {}
    for field, block in target.secret_blocks.model_dump().items():
        if block and getattr(target, field) is None:
            try:
                secret = cast(Secret[str], await Secret.aload(block))
            except ValueError as exc:
                raise ConfigError(f"Secret block {block!r} for {field} cannot be loaded") from exc
            updates[field] = SecretStr(str(secret.get()))
    if not updates:
        return target
    filled = target.model_copy(update=updates)
    remember(filled.secret_values())  # before anything can log them
    return filled
