"""Per-app runtime state of the registry stand-in, and small helpers both flavours use."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import psutil
from prometheus_client import CollectorRegistry

from sandbox.breaker import CircuitBreaker
from sandbox.registry.admin import SandboxControls
from sandbox.registry.config import RegistryConfig


@dataclass
class Runtime:
    config: RegistryConfig
    breaker: CircuitBreaker
    controls: SandboxControls
    # One registry per app, so several apps (replicas in tests) can share a process.
    metrics: CollectorRegistry = field(default_factory=CollectorRegistry)
    started_at: float = field(default_factory=time.monotonic)
    http: httpx.AsyncClient | None = None
    http_blocking: httpx.Client | None = None

    def open_clients(self) -> None:
        timeout = httpx.Timeout(self.config.mlflow_timeout)
        # trust_env off: a proxy from the environment must not sit between loopback peers.
        self.http = httpx.AsyncClient(timeout=timeout, trust_env=False)
        self.http_blocking = httpx.Client(timeout=timeout, trust_env=False)

    async def close_clients(self) -> None:
        if self.http is not None:
            await self.http.aclose()
        if self.http_blocking is not None:
            self.http_blocking.close()

    def async_client(self) -> httpx.AsyncClient:
        if self.http is None:
            raise RuntimeError("the app's lifespan has not started")
        return self.http

    def blocking_client(self) -> httpx.Client:
        if self.http_blocking is None:
            raise RuntimeError("the app's lifespan has not started")
        return self.http_blocking

    def uptime(self) -> float:
        return time.monotonic() - self.started_at


def utc_now() -> str:
    """ISO 8601 in UTC with an explicit zone, as the contract asks."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def naive_now() -> str:
    """UTC wall time without a zone, as the deployed version wrote it."""
    return datetime.now(UTC).replace(tzinfo=None).isoformat()


def epoch_to_iso(value: float | None) -> str | None:
    if value is None:
        return None
    stamp = datetime.fromtimestamp(value, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def process_memory_mb() -> float:
    return round(psutil.Process().memory_info().rss / 2**20, 2)


# Each replica stands for one ECS task, whose container sees its own CPU use, not that of
# every process on this machine.
_PROCESS = psutil.Process()
# An ECS task's CPU figure is an average over a window (CloudWatch: a minute), not over
# the milliseconds between two requests, which a burst of concurrent probes would make
# spike past 100 % on a loaded host. The figure is renewed at most once a window.
CPU_WINDOW_S = 5.0
_cpu = {"at": float("-inf"), "percent": 0.0}


def _cpu_percent() -> float:
    now = time.monotonic()
    if now - _cpu["at"] >= CPU_WINDOW_S:
        # interval=None never blocks: the figure covers the time since the previous renewal.
        _cpu["percent"] = _PROCESS.cpu_percent(interval=None)
        _cpu["at"] = now
    return _cpu["percent"]


def system_info(uptime: float) -> dict[str, Any]:
    memory = psutil.virtual_memory()
    return {
        "cpu_percent": _cpu_percent(),
        "memory_percent": memory.percent,
        "memory_available_mb": round(memory.available / 2**20, 1),
        "process_memory_mb": process_memory_mb(),
        "process_threads": psutil.Process().num_threads(),
        "uptime_seconds": round(uptime, 1),
        "pid": os.getpid(),
    }
