"""Zero mutation by construction: the read clients refuse every write before it leaves the
process (proven against moto and a loopback HTTP server that count what reaches them), and
only the apply path can obtain a client that writes."""

from __future__ import annotations

import ast
import asyncio
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest

import flows.recover
from sandbox.aws import AwsSandbox
from sandbox.client import SandboxProcess
from service_health.endpoints import MLFLOW_SEARCH, RESET
from tasks import aws, http
from tasks.contract import post_reset
from tasks.readonly import MutationRefused
from tasks.recovery import ActionContext
from tests.flows.test_recover_flow import recover
from tests.helpers import moto_server, wait_for
from tests.recovery.world import make_target

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("service_health", "tasks", "flows", "scripts", "deployments")
REGISTRY = "hokusai-registry"


# -- AWS: moto on loopback, which records every call that reaches it ---------------------------


@pytest.fixture
def moto() -> Iterator[AwsSandbox]:
    with moto_server() as server:
        yield server


def seeded_target(moto: AwsSandbox, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    admin = boto3.client("ecs", region_name="us-east-1", endpoint_url=moto.endpoint_url)
    admin.create_cluster(clusterName="c")
    admin.register_task_definition(
        family="reg", containerDefinitions=[{"name": "app", "image": "x", "memory": 64}]
    )
    admin.create_service(cluster="c", serviceName="reg", taskDefinition="reg", desiredCount=1)
    moto.calls.clear()
    return make_target(aws_region="us-east-1", aws_endpoint_url=moto.endpoint_url)


def test_read_client_refuses_aws_writes_before_sending(
    moto: AwsSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = seeded_target(moto, monkeypatch)
    ecs = aws.ecs_client(target)
    arn = ecs.describe_services(cluster="c", services=["reg"])["services"][0]["serviceArn"]
    ecs.list_tags_for_resource(resourceArn=arn)
    assert list(ecs.get_paginator("list_services").paginate(cluster="c"))  # paginators read
    reads = list(moto.calls)
    assert ("ecs", "DescribeServices") in reads and ("ecs", "ListServices") in reads

    with pytest.raises(MutationRefused, match="UpdateService refused"):
        ecs.update_service(cluster="c", service="reg", forceNewDeployment=True)
    with pytest.raises(MutationRefused, match="TagResource"):
        ecs.tag_resource(resourceArn=arn, tags=[{"key": "k", "value": "v"}])
    # Not swallowed as an AWS failure by the never-raising caller either.
    with pytest.raises(MutationRefused):
        aws.call_sync(ecs, "ecs", "delete_cluster", cluster="c")
    elb = aws.elbv2_client(target)
    with pytest.raises(MutationRefused, match="DeregisterTargets"):
        elb.deregister_targets(TargetGroupArn="arn:aws:x", Targets=[{"Id": "10.0.0.1"}])

    assert moto.calls == reads, "a refused call reached the server"
    service = ecs.describe_services(cluster="c", services=["reg"])["services"][0]
    assert len(service["deployments"]) == 1
    assert ecs.list_tags_for_resource(resourceArn=arn)["tags"] == []


def test_the_action_context_writes(moto: AwsSandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    """The write client of the apply path does write: the refusal is the read client's."""
    target = seeded_target(moto, monkeypatch)
    writers = ActionContext(target).writers
    arn = writers.ecs().update_service(cluster="c", service="reg", forceNewDeployment=True)[
        "service"
    ]["serviceArn"]
    writers.ecs(idempotent=True).tag_resource(resourceArn=arn, tags=[{"key": "k", "value": "v"}])
    assert [c for c in moto.calls if c[1] in ("UpdateService", "TagResource")] == [
        ("ecs", "UpdateService"),
        ("ecs", "TagResource"),
    ]


# -- HTTP: a loopback server counting every request that reaches it ----------------------------


class _Counting(BaseHTTPRequestHandler):
    seen: Counter[str]

    def _answer(self) -> None:
        self.seen[f"{self.command} {self.path}"] += 1
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = _answer

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, Counter[str]]]:
    seen: Counter[str] = Counter()
    handler = type("Handler", (_Counting,), {"seen": seen})
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}", seen
    finally:
        srv.shutdown()
        srv.server_close()


def test_read_client_refuses_http_writes_before_sending(
    server: tuple[str, Counter[str]],
) -> None:
    base, seen = server

    async def go() -> None:
        async with http.client("diagnose", 5) as client:
            assert (await http.fetch(client, "GET", base + "/health")).status_code == 200
            assert (await http.fetch(client, "HEAD", base + "/health")).status_code == 200
            search = await http.fetch(client, "POST", base + MLFLOW_SEARCH, json_body={})
            assert search.status_code == 200  # MLflow's search: a POST that reads
            for method in ("POST", "PUT", "DELETE", "PATCH"):
                with pytest.raises(MutationRefused, match=f"{method} {RESET} refused"):
                    await http.fetch(client, method, base + RESET)
            with pytest.raises(MutationRefused):  # retries do not hide it either
                await http.fetch_with_retries(client, "POST", base + RESET, retry=True)
            with pytest.raises(MutationRefused):  # nor does httpx's own API
                await client.post(base + RESET)

    asyncio.run(go())
    assert seen == Counter({"GET /health": 1, "HEAD /health": 1, f"POST {MLFLOW_SEARCH}": 1})


def test_write_client_sends_only_what_it_is_allowed(server: tuple[str, Counter[str]]) -> None:
    base, seen = server
    writers = ActionContext(make_target(api_url=base)).writers

    async def go() -> None:
        async with writers.http({("POST", RESET)}) as client:
            assert (await http.fetch(client, "POST", base + RESET)).status_code == 200
            with pytest.raises(MutationRefused):
                await http.fetch(client, "POST", base + "/admin/drop")
            with pytest.raises(MutationRefused):
                await http.fetch(client, "DELETE", base + RESET)

    asyncio.run(go())
    assert seen == Counter({f"POST {RESET}": 1})


def test_contract_reset_probe_is_refused_in_a_read_only_run(
    server: tuple[str, Counter[str]],
) -> None:
    base, seen = server
    with pytest.raises(MutationRefused):
        asyncio.run(post_reset(base, None, 5, read_only=True))
    assert not seen
    assert asyncio.run(post_reset(base, None, 5, read_only=False)).status_code == 200
    assert seen == Counter({f"POST {RESET}": 1})


# -- who can obtain a write client ------------------------------------------------------------


def _calls(name: str) -> dict[str, list[str]]:
    """Product module -> the functions in which `name` is called (by name or attribute)."""
    found: dict[str, list[str]] = {}
    for package in PRODUCT:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for fn in ast.walk(tree):
                if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                    continue
                for node in ast.walk(fn):
                    if not isinstance(node, ast.Call):
                        continue
                    called = node.func
                    ref = called.id if isinstance(called, ast.Name) else getattr(called, "attr", "")
                    if ref == name:
                        module = str(path.relative_to(ROOT))
                        found.setdefault(module, [])
                        if fn.name not in found[module]:
                            found[module].append(fn.name)
    return found


def test_only_the_apply_path_builds_write_clients() -> None:
    # The unguarded builders are called by the ActionContext's Writers alone (and the
    # contract's reset probe, for its one POST, in a run that is not read-only).
    assert _calls("ecs_write_client") == {"tasks/recovery/registry.py": ["ecs"]}
    assert _calls("write_client") == {
        "tasks/recovery/registry.py": ["http"],
        "tasks/contract.py": ["_reset_client"],
    }
    # An ActionContext is built in one place: the flow's `apply`, after every gate.
    assert _calls("ActionContext") == {"flows/recover.py": ["apply"]}


@pytest.fixture
def env(prefect_server: str, sandbox_env: dict[str, str], healed: SandboxProcess) -> SandboxProcess:
    return healed


def test_a_dry_run_never_obtains_a_write_client(
    env: SandboxProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    sandbox = env
    built: list[str] = []
    for module, name in (
        (aws, "ecs_write_client"),
        (http, "write_client"),
        (flows.recover, "ActionContext"),
    ):
        original = getattr(module, name)

        def spy(*a: Any, _name: str = name, _original: Any = original, **kw: Any) -> Any:
            built.append(_name)
            return _original(*a, **kw)

        monkeypatch.setattr(module, name, spy)
    sandbox.client.fault("breaker-stuck-open")
    wait_for(lambda: set(sandbox.client.breaker_states().values()) == {"OPEN"}, 30, "OPEN")
    sandbox.client.reset_request_counts()

    state, result = recover(dry_run=True)
    assert state.name == "Planned" and result.plan.mutates, result.message
    assert built == []
    posts = {
        replica: {k: n for k, n in counts.items() if not k.startswith(("GET ", "HEAD "))}
        for replica, counts in sandbox.client.request_counts().items()
    }
    assert posts and all(not p for p in posts.values()), posts
    # The same fault applied: the writers are built, and the resets are sent.
    state, _ = recover(dry_run=False, stabilization_timeout_seconds=60)
    assert state.name == "Recovered"
    assert "ActionContext" in built and "write_client" in built
