"""The assembled sandbox, through the interfaces production offers (HTTP, AWS APIs)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from typing import Any
from urllib.parse import urlsplit

import boto3
import httpx
import psutil
import pytest

from sandbox.client import SandboxProcess
from sandbox.statefiles import ENV_NAME
from tests.conftest import converged
from tests.helpers import wait_for

REQUIRED = [
    "api_url", "api_key", "mlflow_url", "database_url", "redis_url", "aws_endpoint_url",
    "aws_region", "ecs_cluster", "ecs_services", "control_url",
]  # fmt: skip


def aws(sandbox: SandboxProcess, service: str) -> Any:
    info = sandbox.info
    return boto3.client(  # type: ignore[call-overload]
        service,
        region_name=info["aws_region"],
        endpoint_url=info["aws_endpoint_url"],
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def ecs_service(sandbox: SandboxProcess, name: str) -> dict[str, Any]:
    resp = aws(sandbox, "ecs").describe_services(cluster="hokusai-sandbox", services=[name])
    service: dict[str, Any] = resp["services"][0]
    return service


def target_states(sandbox: SandboxProcess, tg_name: str) -> list[str]:
    elb = aws(sandbox, "elbv2")
    arn = elb.describe_target_groups(Names=[tg_name])["TargetGroups"][0]["TargetGroupArn"]
    return [
        d["TargetHealth"]["State"]
        for d in elb.describe_target_health(TargetGroupArn=arn)["TargetHealthDescriptions"]
    ]


def get(sandbox: SandboxProcess, path: str, **kw: Any) -> httpx.Response:
    return httpx.get(sandbox.info["api_url"] + path, timeout=10, **kw)


def test_state_files_describe_the_running_system(sandbox: SandboxProcess) -> None:
    info = sandbox.info
    assert set(REQUIRED) <= set(info)
    assert info["ecs_services"] == ["hokusai-registry", "hokusai-mlflow"]
    env_text = (sandbox.state_dir / ENV_NAME).read_text()
    for name in ["API_URL", "API_KEY", "MLFLOW_TRACKING_URI", "DATABASE_URL", "REDIS_URL",
                 "AWS_REGION", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "ECS_CLUSTER",
                 "TARGET_GROUPS", "RDS_INSTANCES"]:  # fmt: skip
        assert f"export {name}=" in env_text
    # The env file is shell-sourceable and gives the same values.
    out = subprocess.run(
        ["bash", "-c", f"source {sandbox.state_dir / ENV_NAME} && echo $API_URL"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert out.stdout.strip() == info["api_url"]
    assert get(sandbox, "/health").json()["status"] == "healthy"


def test_ecs_and_alb_report_what_really_runs(sandbox: SandboxProcess) -> None:
    svc = ecs_service(sandbox, "hokusai-registry")
    assert (svc["desiredCount"], svc["runningCount"]) == (2, 2)
    assert [d["rolloutState"] for d in svc["deployments"]] == ["COMPLETED"]
    assert target_states(sandbox, "hokusai-registry-tg") == ["healthy", "healthy"]
    aws(sandbox, "ecs").get_waiter("services_stable").wait(
        cluster="hokusai-sandbox", services=["hokusai-registry", "hokusai-mlflow"],
        WaiterConfig={"Delay": 1, "MaxAttempts": 5},
    )  # fmt: skip
    rds = aws(sandbox, "rds").describe_db_instances()["DBInstances"]
    assert rds[0]["DBInstanceStatus"] == "available"


def test_forced_deployment_replaces_replica_processes(healed: SandboxProcess) -> None:
    sandbox = healed
    before = {
        r["address"] for r in sandbox.client.status()["services"]["hokusai-registry"]["replicas"]
    }
    aws(sandbox, "ecs").update_service(
        cluster="hokusai-sandbox", service="hokusai-registry", forceNewDeployment=True
    )
    wait_for(
        lambda: len(ecs_service(sandbox, "hokusai-registry")["deployments"]) == 2, 10, "rollout"
    )
    aws(sandbox, "ecs").get_waiter("services_stable").wait(
        cluster="hokusai-sandbox", services=["hokusai-registry"],
        WaiterConfig={"Delay": 1, "MaxAttempts": 60},
    )  # fmt: skip
    after = {
        r["address"] for r in sandbox.client.status()["services"]["hokusai-registry"]["replicas"]
    }
    assert before.isdisjoint(after) and len(after) == 2
    for address in before:  # the old processes are gone
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://{address}/live", timeout=2)
    assert target_states(sandbox, "hokusai-registry-tg") == ["healthy", "healthy"]


def test_crashed_task_lowers_running_count_and_target_health(healed: SandboxProcess) -> None:
    sandbox = healed
    sandbox.client.fault("ecs-tasks-crashed")
    wait_for(lambda: ecs_service(sandbox, "hokusai-registry")["runningCount"] == 1, 10, "running 1")
    wait_for(
        lambda: sorted(target_states(sandbox, "hokusai-registry-tg")) == ["healthy", "unhealthy"],
        10,
        "one unhealthy",
    )
    assert get(sandbox, "/health").status_code == 200  # the survivor still serves
    sandbox.client.heal("ecs-tasks-crashed")
    wait_for(lambda: converged(sandbox), 30, "heal")
    assert ecs_service(sandbox, "hokusai-registry")["runningCount"] == 2


def test_all_tasks_crashed_leaves_the_alb_without_targets(healed: SandboxProcess) -> None:
    sandbox = healed
    sandbox.client.fault("ecs-tasks-crashed", all=True)
    wait_for(lambda: get(sandbox, "/live").status_code == 503, 10, "ALB 503")
    assert ecs_service(sandbox, "hokusai-registry")["runningCount"] == 0


def test_alb_targets_unhealthy(healed: SandboxProcess) -> None:
    sandbox = healed
    sandbox.client.fault("alb-targets-unhealthy")
    wait_for(
        lambda: target_states(sandbox, "hokusai-registry-tg") == ["unhealthy", "unhealthy"],
        10,
        "unhealthy",
    )
    assert get(sandbox, "/live").status_code == 503
    assert ecs_service(sandbox, "hokusai-registry")["runningCount"] == 2


def test_mlflow_down_opens_the_breaker_and_heals(healed: SandboxProcess) -> None:
    sandbox = healed
    sandbox.client.fault("mlflow-down")
    wait_for(
        lambda: ecs_service(sandbox, "hokusai-mlflow")["runningCount"] == 0, 10, "mlflow stopped"
    )
    # Once the target is found unhealthy the ALB answers 503 itself (502 until then).
    wait_for(
        lambda: httpx.get(sandbox.info["mlflow_url"] + "/health", timeout=5).status_code == 503,
        10,
        "503",
    )
    # Both replicas see MLflow fail; /health says degraded, the API keeps serving.
    body = wait_for(
        lambda: (b := get(sandbox, "/health").json())["status"] == "degraded" and b, 10, "degraded"
    )
    assert body["services"]["postgres"] == "healthy"
    sandbox.client.heal("mlflow-down")
    wait_for(
        lambda: httpx.get(sandbox.info["mlflow_url"] + "/health", timeout=5).status_code == 200,
        30,
        "mlflow back",
    )


def test_mlflow_slow_and_errors_show_at_mlflow_url(healed: SandboxProcess) -> None:
    sandbox = healed
    search = sandbox.info["mlflow_url"] + "/api/2.0/mlflow/experiments/search"
    sandbox.client.fault("mlflow-errors")
    assert httpx.post(search, json={"max_results": 1}, timeout=5).status_code == 500
    sandbox.client.heal("mlflow-errors")
    sandbox.client.fault("mlflow-slow")
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(search, json={"max_results": 1}, timeout=1)


def test_breaker_stuck_open_on_one_replica(healed: SandboxProcess) -> None:
    sandbox = healed
    result = sandbox.client.fault("breaker-stuck-open", replica=1)
    (stuck,) = result["replicas"]
    views = {
        r["address"]: httpx.get(f"http://{r['address']}/health/mlflow", timeout=5)
        for r in sandbox.client.status()["services"]["hokusai-registry"]["replicas"]
    }
    assert views[stuck].status_code == 503
    assert views[stuck].json()["circuit_breaker_details"]["time_until_retry"] is None
    others = [v for a, v in views.items() if a != stuck]
    assert [v.json()["circuit_breaker_state"] for v in others] == ["CLOSED"]


def test_registry_wedged_and_hung(healed: SandboxProcess) -> None:
    sandbox = healed
    sandbox.client.fault("registry-wedged")
    assert get(sandbox, "/health").status_code == 500
    sandbox.client.heal("registry-wedged")
    assert get(sandbox, "/health").status_code == 200
    sandbox.client.fault("registry-hung")
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(sandbox.info["api_url"] + "/health", timeout=1.5)


def test_postgres_and_redis_down(healed: SandboxProcess) -> None:
    sandbox = healed
    sandbox.client.fault("postgres-down")
    resp = get(sandbox, "/health")
    assert resp.status_code == 503 and resp.json()["services"]["postgres"] == "unhealthy"
    assert get(sandbox, "/ready").status_code == 503
    sandbox.client.heal("postgres-down")
    sandbox.client.fault("redis-down")
    resp = get(sandbox, "/health")
    assert resp.status_code == 200 and resp.json()["services"]["redis"] == "unhealthy"


def test_redis_asks_for_the_password_redis_url_carries(sandbox: SandboxProcess) -> None:
    """The sandbox's Redis has a password: REDIS_URL carries it (a secret, as in production),
    a client without it is refused, and the diagnosis's Redis probe passes with it."""
    import asyncio
    from urllib.parse import urlsplit

    import redis

    from service_health.redaction import Redactor
    from tasks.datastores import probe_redis

    url = sandbox.info["redis_url"]
    parts = urlsplit(url)
    assert parts.password and len(parts.password) >= 16, "REDIS_URL carries no password"
    without = redis.Redis(host=parts.hostname, port=parts.port, socket_timeout=5)
    with pytest.raises(redis.AuthenticationError):
        without.ping()
    without.close()
    wrong = url.replace(parts.password, "not-the-password")
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(wrong, socket_timeout=5).ping()
    redactor = Redactor([url, parts.password])
    observed = asyncio.run(probe_redis(url, 5.0, redactor))
    assert observed.error is None and observed.ping_ms is not None, observed
    refused = asyncio.run(probe_redis(wrong, 5.0, redactor))
    assert refused.error is not None and "not-the-password" not in refused.error, refused
    # The registry's own /health reaches Redis through the same URL.
    assert get(sandbox, "/health").json()["services"]["redis"] == "healthy"


def test_aws_throttling_is_retried_by_botocore(healed: SandboxProcess) -> None:
    sandbox = healed
    sandbox.client.fault("aws-throttling")
    ecs = aws(sandbox, "ecs")
    from botocore.config import Config

    strict = boto3.client(
        "ecs",
        region_name=sandbox.info["aws_region"],
        endpoint_url=sandbox.info["aws_endpoint_url"],
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(retries={"total_max_attempts": 1}),
    )
    codes = set()
    for _ in range(4):
        try:
            strict.describe_clusters(clusters=["hokusai-sandbox"])
            codes.add("ok")
        except strict.exceptions.ClientError as exc:
            codes.add(exc.response["Error"]["Code"])
    assert codes == {"ok", "ThrottlingException"}
    assert ecs.describe_clusters(clusters=["hokusai-sandbox"])["clusters"]


def test_latency_is_added_where_asked(healed: SandboxProcess) -> None:
    sandbox = healed
    sandbox.client.fault("latency", ms=400, component="mlflow")
    resp = httpx.get(sandbox.info["mlflow_url"] + "/health", timeout=5)
    assert resp.elapsed.total_seconds() >= 0.4


def test_cli_fault_heal_status(sandbox: SandboxProcess) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "sandbox", *args, "--state-dir", str(sandbox.state_dir)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    assert cli("fault", "aws-throttling").returncode == 0
    assert "aws-throttling" in json.loads(cli("status").stdout)["faults"]
    assert json.loads(cli("heal").stdout)["healed"] == ["aws-throttling"]
    bad = cli("fault", "latency", "--ms", "10")
    assert bad.returncode == 64 and "component" in bad.stderr
    [address, *_] = json.loads(cli("breaker", "OPEN", "--replica", "0").stdout)["replicas"]
    assert httpx.get(f"http://{address}/ready", timeout=10).json()["degraded_mode"] is True
    assert cli("breaker", "CLOSED").returncode == 0
    counted = json.loads(cli("requests", "--reset").stdout)["replicas"][address]
    assert counted["counts"]["GET /ready"] >= 1 and counted["mlflow_refused"] >= 1
    assert json.loads(cli("requests").stdout)["replicas"][address]["mlflow_refused"] == 0


def test_sigterm_leaves_no_process_behind(tmp_path: Any) -> None:
    proc = SandboxProcess(tmp_path / "sb")
    proc.start()
    assert proc.proc is not None
    children = psutil.Process(proc.proc.pid).children(recursive=True)
    assert len(children) >= 5  # postgres, redis, 2 registry replicas, mlflow
    assert proc.stop() == 0
    _gone, alive = psutil.wait_procs(children, timeout=10)
    assert alive == [], f"orphans: {[p.cmdline() for p in alive]}"
    assert not (tmp_path / "sb" / "sandbox.json").exists()


def test_converged_waits_for_a_health_check_round_begun_after_the_heal(
    healed: SandboxProcess,
) -> None:
    sandbox = healed
    wait_for(lambda: converged(sandbox), 30, "converged before")
    sandbox.client.fault("registry-hung")
    sandbox.client.heal("registry-hung")
    # Right after a change no round begun after it has ended: not converged, whatever
    # the replicas' health still reads.
    assert sandbox.client.status()["settled"] is False
    assert not converged(sandbox)
    wait_for(lambda: converged(sandbox), 30, "converged after the heal")
    assert sandbox.client.status()["settled"] is True


def _get_on(conn: socket.socket, host: str) -> bytes:
    """One keep-alive GET /health on an open connection; the status line of its answer."""
    conn.sendall(f"GET /health HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = conn.recv(65536)
        if not chunk:
            raise ConnectionError("closed by the server")
        head += chunk
    headers, _, body = head.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1]) for line in headers.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )  # fmt: skip
    while len(body) < length:
        body += conn.recv(65536)
    return headers.split(b"\r\n", 1)[0]


def test_load_balancers_outlast_a_pooled_clients_idle_connection(sandbox: SandboxProcess) -> None:
    """The load balancers keep an idle connection open longer than httpx keeps one in its
    pool (5 s), as an ALB does (60 s): a pooled client never sends a request on a
    connection the server is closing. With uvicorn's default of 5 s the two raced, and a
    registry replica's MLflow call failed now and then on a healthy sandbox."""
    urls = [sandbox.info["mlflow_url"], sandbox.info["api_url"], sandbox.info["control_url"]]
    conns = []
    for url in urls:
        parts = urlsplit(url)
        conn = socket.create_connection((parts.hostname, parts.port), timeout=10)
        conns.append(conn)
        assert _get_on(conn, parts.netloc).startswith(b"HTTP/1.1 ")
    # Idle for longer than httpx's keep-alive expiry: the time itself is what is tested.
    time.sleep(5.5)
    for conn, url in zip(conns, urls, strict=True):
        with conn:
            assert _get_on(conn, urlsplit(url).netloc).startswith(b"HTTP/1.1 "), url
