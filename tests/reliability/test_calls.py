"""The call recorder sees every client, and its cross-check catches what it could miss."""

from __future__ import annotations

from collections.abc import Iterator

import boto3
import pytest

from sandbox.aws import AwsSandbox
from tasks import aws
from tasks.readonly import MutationRefused
from tests.helpers import moto_server
from tests.recovery.world import make_target
from tests.reliability.calls import Calls, Request, disagreements, recording

LB, R1, R2 = "127.0.0.1:8000", "127.0.1.1:8001", "127.0.1.2:8001"
RESET = "/health/mlflow/reset"


@pytest.fixture
def moto(monkeypatch: pytest.MonkeyPatch) -> Iterator[AwsSandbox]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with moto_server() as server:
        yield server


def test_every_client_is_recorded(moto: AwsSandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    target = make_target(aws_region="us-east-1", aws_endpoint_url=moto.endpoint_url)
    session = boto3.Session(region_name="us-east-1")  # a session made before recording
    early = session.client("ecs", endpoint_url=moto.endpoint_url)
    read_only = aws.ecs_client(target)  # and a product client made before
    with recording(monkeypatch, ()) as calls:
        early.list_clusters()
        boto3.client("ecs", endpoint_url=moto.endpoint_url).list_clusters()  # the default session
        later = boto3.Session(region_name="us-east-1").client("ecs", endpoint_url=moto.endpoint_url)
        later.create_cluster(clusterName="c")
        with pytest.raises(MutationRefused):
            read_only.update_service(cluster="c", service="reg", forceNewDeployment=True)
    assert calls.aws == [
        ("ecs", "ListClusters"),
        ("ecs", "ListClusters"),
        ("ecs", "CreateCluster"),
        ("ecs", "UpdateService(reg)"),  # refused before sending, and still recorded
    ]
    assert calls.mutating_aws() == [("ecs", "CreateCluster"), ("ecs", "UpdateService(reg)")]


def test_the_cross_check_holds_the_host() -> None:
    calls = Calls(http=[Request("POST", f"http://{R1}{RESET}", True)])
    assert not disagreements(calls, {R1: {f"POST {RESET}": 1}, R2: {}}, LB)
    # The replica that counted the reset is not the one the recorder saw it sent to.
    assert disagreements(calls, {R1: {}, R2: {f"POST {RESET}": 1}}, LB)


def test_the_cross_check_catches_requests_the_recorder_missed() -> None:
    calls = Calls(http=[Request("GET", f"http://{LB}/health", True)])
    assert not disagreements(calls, {R1: {"GET /health": 1}, R2: {}}, LB)
    # One more than the recorder saw sent: a client it does not see.
    assert disagreements(calls, {R1: {"GET /health": 1}, R2: {"GET /health": 1}}, LB)
    assert disagreements(calls, {R1: {"GET /health": 1, "DELETE /x": 1}}, LB)
    # An answered direct request the replica never counted.
    direct = Calls(http=[Request("GET", f"http://{R2}/ready", True)])
    assert disagreements(direct, {R1: {}, R2: {}}, LB)
