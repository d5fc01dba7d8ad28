"""The registry stand-in's `POST /health/mlflow/reset`: every way of presenting a key other
than a correct bearer header is refused, and no presented key reaches a log.

Two real setups: one replica process started exactly as the sandbox starts its ECS tasks
(its breaker forced stuck OPEN, so a reset that wrongly went through would show), and the
shared sandbox through its load balancer (the whole chain's logs searched).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, quote_plus

import httpx
import pytest

from sandbox.client import SandboxProcess
from sandbox.ports import free_port
from sandbox.registry.admin import TOKEN_HEADER
from tests.helpers import wait_for
from tests.reliability.figures import record

ROOT = Path(__file__).resolve().parents[2]
RESET = "/health/mlflow/reset"


@dataclass(frozen=True)
class Attempt:
    name: str
    headers: dict[str, str]
    query: str = ""
    presented: str = ""  # the key as presented, searched for in the logs


def attempts(real_key: str) -> list[Attempt]:
    wrong = f"wrong-key-{secrets.token_urlsafe(16)}"
    long_key = f"long-key-{secrets.token_urlsafe(16)}" + "x" * 70_000  # over any header limit
    longish = f"longish-key-{secrets.token_urlsafe(16)}" + "y" * 8_000  # under it
    return [
        Attempt("no key", {}),
        Attempt("wrong key", {"Authorization": f"Bearer {wrong}"}, presented=wrong),
        Attempt("empty bearer", {"Authorization": "Bearer "}),
        Attempt("real key after a prefix", {"Authorization": f"Bearer x{real_key}"},
                presented=f"x{real_key}"),
        Attempt("real key with a suffix", {"Authorization": f"Bearer {real_key}x"},
                presented=f"{real_key}x"),
        Attempt("real key, Basic scheme", {"Authorization": f"Basic {real_key}"},
                presented=real_key),
        Attempt("real key, X-API-Key header", {"X-API-Key": real_key}, presented=real_key),
        Attempt("real key in the query (api_key)", {}, f"api_key={quote(real_key)}", real_key),
        Attempt("real key in the query (key)", {}, f"key={quote(real_key)}", real_key),
        Attempt("real key in the query (token)", {}, f"token={quote(real_key)}", real_key),
        Attempt("real key in the query (access_token)", {},
                f"access_token={quote(real_key)}", real_key),
        Attempt("8 KiB wrong key", {"Authorization": f"Bearer {longish}"}, presented=longish),
        Attempt("70 KB header", {"Authorization": f"Bearer {long_key}"}, presented=long_key),
    ]  # fmt: skip


def refused(base_url: str, attempt: Attempt) -> tuple[bool, str]:
    """(refused, what came back): a 401/403/4xx answer or a dropped connection."""
    url = f"{base_url}{RESET}" + (f"?{attempt.query}" if attempt.query else "")
    try:
        resp = httpx.post(url, headers=attempt.headers, timeout=10)
    except httpx.TransportError as exc:  # e.g. a header too large to be read at all
        return True, f"connection dropped ({type(exc).__name__})"
    return 400 <= resp.status_code < 500, f"HTTP {resp.status_code}"


def forms(key: str) -> set[str]:
    """The key as it could appear in a log: raw, URL-encoded; long keys by their head."""
    head = key[:40]
    return {head, quote(head, safe=""), quote_plus(head)} if head else set()


def leaks(texts: dict[str, str], presented: list[str]) -> list[str]:
    return [
        f"{where}: {form[:20]}..."
        for where, text in texts.items()
        for key in presented
        for form in forms(key)
        if form in text
    ]


@pytest.fixture
def replica(tmp_path: Path) -> Iterator[tuple[str, str, Path, str]]:
    """One registry replica process, started as the sandbox starts its ECS tasks."""
    key = f"canary-KEY-{secrets.token_hex(8)}"
    admin = secrets.token_urlsafe(12)
    port = free_port()
    log = tmp_path / "replica.log"
    env = {
        **os.environ,
        "API_KEY": key,
        "SANDBOX_ADMIN_TOKEN": admin,
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}",  # nothing there
        "REGISTRY_FLAVOR": "contract",
        "PYTHONPATH": str(ROOT),
    }
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sandbox.registry", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:

        def live() -> bool:
            try:
                return httpx.get(f"{url}/live", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(live, 30, "the replica to answer")
        yield url, key, log, admin
    finally:
        proc.terminate()
        proc.wait(10)


def breaker_state(url: str, admin: str) -> str:
    state = httpx.get(f"{url}/__sandbox/state", headers={TOKEN_HEADER: admin}, timeout=5).json()
    return str(state["breaker"]["state"])


def test_reset_refuses_every_other_way_of_presenting_a_key(
    replica: tuple[str, str, Path, str],
) -> None:
    url, key, log, admin = replica
    httpx.post(f"{url}/__sandbox/breaker/stuck-open", headers={TOKEN_HEADER: admin}, timeout=5)
    assert breaker_state(url, admin) == "OPEN"
    tried = attempts(key)
    for attempt in tried:
        ok, seen = refused(url, attempt)
        assert ok, f"{attempt.name}: {seen}"
        assert breaker_state(url, admin) == "OPEN", f"{attempt.name} reset the breaker"
    # The real key, as the contract asks for it, does reset it (the control).
    good = httpx.post(f"{url}{RESET}", headers={"Authorization": f"Bearer {key}"}, timeout=5)
    assert good.status_code == 200 and good.json()["previous_state"] == "OPEN"
    assert key not in good.text
    presented = [a.presented for a in tried if a.presented] + [key]
    found = leaks({"replica log": log.read_text(errors="replace")}, presented)
    assert found == [], found
    record(
        section="Reset endpoint",
        name="presented keys found in the replica's log",
        value=len(found),
        detail="each key as presented (and the real one), raw and URL-encoded",
    )
    record(
        section="Reset endpoint",
        name="reset attempts refused (one replica)",
        value=len(tried),
        detail="no key, wrong keys, the real key with a prefix, a suffix, the Basic scheme, "
        "in X-API-Key, in the query string (api_key, key, token, access_token), an 8 KiB "
        "and a 70 KB header; the breaker stayed OPEN; the real bearer key reset it",
    )


def test_reset_through_the_load_balancer_logs_no_presented_key(sandbox: SandboxProcess) -> None:
    url, key = sandbox.info["api_url"], sandbox.info["api_key"]
    tried = attempts(key)
    for attempt in tried:
        ok, seen = refused(url, attempt)
        assert ok, f"{attempt.name}: {seen}"
    state_dir = Path(sandbox.info["state_dir"])
    logs = {
        str(path.relative_to(state_dir)): path.read_text(errors="replace")
        for path in [state_dir / "sandbox.log", *sorted((state_dir / "logs").glob("*.log"))]
        if path.exists()
    }
    assert logs, f"no logs found under {state_dir}"
    found = leaks(logs, [a.presented for a in tried if a.presented])
    assert found == [], found
    record(
        section="Reset endpoint",
        name="reset attempts refused (sandbox, through the load balancer)",
        value=len(tried),
        detail="the same attempts through the ALB stand-in to the replicas",
    )
    record(
        section="Reset endpoint",
        name="presented keys found in the sandbox's logs",
        value=len(found),
        detail=f"{len(logs)} log files searched (the sandbox supervisor with its load "
        "balancers, every registry and MLflow task), for each key as presented, raw and "
        "URL-encoded",
    )
