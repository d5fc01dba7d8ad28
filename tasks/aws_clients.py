"""AWS read clients made from boto3 sessions shared by every run of a process.

A fresh boto3 session loads each service's model and endpoint rules again for its first
client (tens of milliseconds of CPU each); a session per run was a visible share of a
fleet run's per-target CPU. A session caches what it loaded, so one per region and
credential source serves every run of the worker, and a client made from it is cheap.
Each run still gets clients of its own: botocore's adaptive retry mode keeps its
client-side rate limit per client, and one run's throttling must not slow the next.
Clients are made under a lock because a boto3 Session is not thread-safe. Sessions
expire so that rotated credentials held in a Prefect block are picked up.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # boto3 is imported only by runs that use AWS
    from boto3 import Session
    from botocore.client import BaseClient

    from tasks.aws import ServiceName

TTL_S = 900.0
# The environment the default credential chain reads: a change makes a new client.
_CREDENTIAL_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_DEFAULT_REGION",
)

_lock = threading.Lock()
_sessions: dict[tuple[str, ...], tuple[float, Session]] = {}


def _credential_source(credentials_block: str | None) -> str:
    """Names the credentials without holding them: a digest of the environment's."""
    digest = hashlib.sha256()
    for name in _CREDENTIAL_ENV:
        digest.update(f"{name}={os.environ.get(name, '')}\0".encode())
    return f"{credentials_block or ''}|{digest.hexdigest()}"


def made(
    make: Callable[[Session], BaseClient], region: str | None, credentials_block: str | None
) -> BaseClient:
    """A new client, `make(session)`, from the process's shared session."""
    from tasks import aws

    key = (region or "", _credential_source(credentials_block))
    now = time.monotonic()
    with _lock:
        cached = _sessions.get(key)
        if cached is None or now - cached[0] >= TTL_S:
            cached = (now, aws.make_session(region, credentials_block))
            _sessions[key] = cached
        return make(cached[1])


def read_client(
    service: ServiceName,
    region: str | None,
    endpoint_url: str | None,
    credentials_block: str | None,
) -> BaseClient:
    """A new read client (timeouts, adaptive retries) from the process's shared session."""
    from tasks import aws

    return made(
        lambda session: aws.make_client(session, service, region, endpoint_url),
        region,
        credentials_block,
    )


def clear() -> None:
    """Forget every session (tests that change what a session is made with)."""
    with _lock:
        _sessions.clear()
