"""AwsSandbox: moto over HTTP, seeding, call recording, throttling and latency."""

from __future__ import annotations

import gzip
import json
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import botocore
import botocore.session
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from botocore.parsers import RpcV2CBORParser

from sandbox.aws import AwsSandbox, Seeded, Topology, _cbor_text_map
from tests.helpers import moto_server

NO_RETRIES = Config(retries={"total_max_attempts": 1})
CLOUDWATCH_MODEL = botocore.session.Session().get_service_model("cloudwatch")
THROTTLING_CODES = {"Throttling", "ThrottlingException", "RequestLimitExceeded"}


@pytest.fixture(scope="module")
def aws() -> Iterator[AwsSandbox]:
    with moto_server() as sandbox:
        yield sandbox


@pytest.fixture(scope="module")
def seeded(aws: AwsSandbox) -> Seeded:
    return aws.seed(Topology())


@pytest.fixture
def sandbox(aws: AwsSandbox, seeded: Seeded) -> Iterator[AwsSandbox]:
    """The module's sandbox, seeded, with the fault knobs turned back off afterwards."""
    yield aws
    aws.throttling = False
    aws.latency_ms = 0


# -- seeding ------------------------------------------------------------------------


def test_seed_creates_cluster_services_and_task_definitions(
    sandbox: AwsSandbox, seeded: Seeded
) -> None:
    ecs = sandbox.client("ecs")
    topo = Topology()
    cluster = ecs.describe_clusters(clusters=[topo.cluster])["clusters"][0]
    assert cluster["status"] == "ACTIVE"
    assert cluster["clusterArn"] == seeded.cluster_arn

    described = ecs.describe_services(
        cluster=topo.cluster, services=[s.name for s in topo.services]
    )["services"]
    by_name = {s["serviceName"]: s for s in described}
    assert set(by_name) == {"hokusai-registry", "hokusai-mlflow"}
    for svc in topo.services:
        got = by_name[svc.name]
        assert got["serviceArn"] == seeded.service_arns[svc.name]
        assert got["desiredCount"] == svc.desired
        assert got["taskDefinition"] == seeded.task_definition_arns[svc.name]
        assert got["loadBalancers"] == [
            {
                "targetGroupArn": seeded.target_group_arns[svc.name],
                "containerName": svc.name,
                "containerPort": svc.container_port,
            }
        ]
        td = ecs.describe_task_definition(taskDefinition=seeded.task_definition_arns[svc.name])
        (container,) = td["taskDefinition"]["containerDefinitions"]
        assert container["portMappings"][0]["containerPort"] == svc.container_port
    assert by_name["hokusai-registry"]["desiredCount"] == 2
    assert by_name["hokusai-mlflow"]["desiredCount"] == 1


def test_seed_creates_active_alb_with_listener_and_target_groups(
    sandbox: AwsSandbox, seeded: Seeded
) -> None:
    elbv2 = sandbox.client("elbv2")
    (lb,) = elbv2.describe_load_balancers(LoadBalancerArns=[seeded.load_balancer_arn])[
        "LoadBalancers"
    ]
    assert lb["State"]["Code"] == "active"
    assert lb["Scheme"] == "internet-facing"
    assert lb["Type"] == "application"
    assert lb["DNSName"] == seeded.load_balancer_dns
    assert len(lb["AvailabilityZones"]) == 2

    listeners = elbv2.describe_listeners(LoadBalancerArn=seeded.load_balancer_arn)["Listeners"]
    (public,) = [listener for listener in listeners if listener["Port"] == 80]
    assert public["DefaultActions"] == [
        {"Type": "forward", "TargetGroupArn": seeded.target_group_arns["hokusai-registry"]}
    ]

    tgs = elbv2.describe_target_groups(TargetGroupArns=list(seeded.target_group_arns.values()))
    by_name = {tg["TargetGroupName"]: tg for tg in tgs["TargetGroups"]}
    for svc in Topology().services:
        tg = by_name[svc.target_group]
        assert tg["TargetGroupArn"] == seeded.target_group_arns[svc.name]
        assert tg["TargetType"] == "ip"
        assert tg["Protocol"] == "HTTP"
        assert tg["Port"] == svc.container_port
        assert tg["HealthCheckPath"] == svc.health_check_path
        assert tg["LoadBalancerArns"] == [seeded.load_balancer_arn]
    assert by_name["hokusai-registry-tg"]["HealthCheckPath"] == "/live"
    assert by_name["hokusai-mlflow-tg"]["HealthCheckPath"] == "/health"


def test_seed_creates_available_rds_and_ok_alarms(sandbox: AwsSandbox, seeded: Seeded) -> None:
    (db,) = sandbox.client("rds").describe_db_instances(
        DBInstanceIdentifier=seeded.rds_instance_id
    )["DBInstances"]
    assert db["DBInstanceStatus"] == "available"
    assert db["Engine"] == "postgres"

    assert sorted(seeded.alarm_names) == sorted(
        [
            "hokusai-sandbox-registry-unhealthy-hosts",
            "hokusai-sandbox-registry-5xx",
            "hokusai-sandbox-mlflow-unhealthy-hosts",
            "hokusai-sandbox-rds-cpu",
        ]
    )
    alarms = sandbox.client("cloudwatch").describe_alarms(AlarmNames=seeded.alarm_names)
    assert {a["AlarmName"]: a["StateValue"] for a in alarms["MetricAlarms"]} == dict.fromkeys(
        seeded.alarm_names, "OK"
    )


# -- call recording -----------------------------------------------------------------


def test_calls_are_recorded_with_client_service_names(sandbox: AwsSandbox) -> None:
    before = len(sandbox.calls)
    sandbox.client("ecs").list_clusters()
    sandbox.client("elbv2").describe_load_balancers()
    sandbox.client("rds").describe_db_instances()
    sandbox.client("cloudwatch").describe_alarms()
    assert sandbox.calls[before:] == [
        ("ecs", "ListClusters"),
        ("elbv2", "DescribeLoadBalancers"),
        ("rds", "DescribeDBInstances"),
        ("cloudwatch", "DescribeAlarms"),
    ]


# -- throttling ---------------------------------------------------------------------

# (client, call, code botocore must parse, operation as recorded)
PROTOCOL_CASES: list[tuple[str, Callable[[Any], Any], str, str]] = [
    ("ecs", lambda c: c.list_clusters(), "ThrottlingException", "ListClusters"),  # json
    ("elbv2", lambda c: c.describe_load_balancers(), "Throttling", "DescribeLoadBalancers"),
    ("rds", lambda c: c.describe_db_instances(), "Throttling", "DescribeDBInstances"),  # query
    # CloudWatch: botocore 1.43 speaks awsJson1_0 to it (query-compatible: the code comes
    # from the x-amzn-query-error header); the CBOR wire format is tested separately.
    ("cloudwatch", lambda c: c.describe_alarms(), "Throttling", "DescribeAlarms"),
    ("ec2", lambda c: c.describe_vpcs(), "RequestLimitExceeded", "DescribeVpcs"),
]


@pytest.mark.parametrize(
    ("service", "call", "code", "operation"), PROTOCOL_CASES, ids=[c[0] for c in PROTOCOL_CASES]
)
def test_throttled_request_parses_as_throttling_and_never_reaches_moto(
    sandbox: AwsSandbox, service: str, call: Callable[[Any], Any], code: str, operation: str
) -> None:
    client = sandbox.client(service, config=NO_RETRIES)
    sandbox.throttling = True
    calls, throttled = len(sandbox.calls), sandbox.throttled
    with pytest.raises(ClientError) as err:
        call(client)
    assert err.value.response["Error"]["Code"] == code
    assert code in THROTTLING_CODES
    assert sandbox.calls[calls:] == []
    assert sandbox.throttled == throttled + 1

    # every other request per operation: the next one goes through
    call(client)
    assert sandbox.calls[calls:] == [(service, operation)]


@pytest.mark.parametrize(
    ("service", "call", "code", "operation"), PROTOCOL_CASES, ids=[c[0] for c in PROTOCOL_CASES]
)
def test_standard_retries_ride_out_throttling(
    sandbox: AwsSandbox, service: str, call: Callable[[Any], Any], code: str, operation: str
) -> None:
    client = sandbox.client(service)  # standard retry mode
    sandbox.throttling = True
    calls = len(sandbox.calls)
    response = call(client)
    assert response["ResponseMetadata"]["RetryAttempts"] == 1
    assert sandbox.calls[calls:] == [(service, operation)]


def test_default_boto3_retry_mode_also_rides_out_throttling(sandbox: AwsSandbox) -> None:
    # botocore's default mode is still "legacy"; it also treats these codes as throttling.
    import boto3

    client = boto3.session.Session().client(
        "ecs",
        endpoint_url=sandbox.endpoint_url,
        region_name=sandbox.region,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    sandbox.throttling = True
    assert client.list_clusters()["ResponseMetadata"]["RetryAttempts"] == 1


def test_throttled_update_service_reaches_moto_once(sandbox: AwsSandbox, seeded: Seeded) -> None:
    ecs = sandbox.client("ecs")
    sandbox.throttling = True
    calls, throttled = len(sandbox.calls), sandbox.throttled
    response = ecs.update_service(
        cluster=Topology().cluster, service="hokusai-mlflow", desiredCount=1
    )
    assert response["ResponseMetadata"]["RetryAttempts"] == 1
    assert sandbox.calls[calls:].count(("ecs", "UpdateService")) == 1
    assert sandbox.throttled == throttled + 1


def test_throttling_alternates_per_operation(sandbox: AwsSandbox) -> None:
    ecs = sandbox.client("ecs", config=NO_RETRIES)
    sandbox.throttling = True
    outcomes = []
    for call in (ecs.list_clusters, ecs.list_task_definitions) * 2:
        try:
            call()
            outcomes.append("ok")
        except ClientError:
            outcomes.append("throttled")
    assert outcomes == ["throttled", "throttled", "ok", "ok"]

    sandbox.throttling = False
    ecs.list_clusters()
    ecs.list_clusters()


def test_switching_throttling_on_restarts_the_alternation(sandbox: AwsSandbox) -> None:
    ecs = sandbox.client("ecs", config=NO_RETRIES)
    sandbox.throttling = True
    with pytest.raises(ClientError):
        ecs.list_clusters()
    sandbox.throttling = True  # again: the next request is throttled, not let through
    with pytest.raises(ClientError):
        ecs.list_clusters()


def _cbor_cloudwatch_client(sandbox: AwsSandbox, tmp_path: Path) -> Any:
    """A CloudWatch client forced onto smithy-rpc-v2-cbor (botocore 1.43 prefers json)."""
    src = Path(botocore.__file__).parent / "data/cloudwatch/2010-08-01/service-2.json.gz"
    model = json.loads(gzip.decompress(src.read_bytes()))
    model["metadata"]["protocol"] = "smithy-rpc-v2-cbor"
    model["metadata"]["protocols"] = ["smithy-rpc-v2-cbor"]
    data = tmp_path / "cloudwatch" / "2010-08-01"
    data.mkdir(parents=True)
    (data / "service-2.json").write_text(json.dumps(model))
    session = botocore.session.Session()
    session.get_component("data_loader").search_paths.insert(0, str(tmp_path))
    return session.create_client(
        "cloudwatch",
        endpoint_url=sandbox.endpoint_url,
        region_name=sandbox.region,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=NO_RETRIES,
    )


def test_cbor_throttling_parses_as_throttling(sandbox: AwsSandbox, tmp_path: Path) -> None:
    client = _cbor_cloudwatch_client(sandbox, tmp_path)
    sent: list[str] = []
    client.meta.events.register("before-send", lambda request, **_: sent.append(request.url))
    sandbox.throttling = True
    calls = len(sandbox.calls)
    with pytest.raises(ClientError) as err:
        client.describe_alarms()
    assert sent == [
        f"{sandbox.endpoint_url}/service/GraniteServiceVersion20100801/operation/DescribeAlarms"
    ]
    error: dict[str, Any] = dict(err.value.response["Error"])
    assert error["Code"] == "Throttling"  # from x-amzn-query-error
    assert error["QueryErrorCode"] == "ThrottlingException"  # the CBOR body's __type
    assert error["Message"] == "Rate exceeded"
    assert sandbox.calls[calls:] == []


@pytest.mark.parametrize("length", [0, 1, 23, 24, 255, 256, 70000])
def test_cbor_encoder_round_trips_through_botocore(length: int) -> None:
    # every CBOR text-length form: inline, 1-, 2- and 4-byte lengths
    value = "x" * length
    body = _cbor_text_map({"__type": "ThrottlingException", "message": value})
    shape = CLOUDWATCH_MODEL.operation_model("DescribeAlarms").output_shape
    assert shape is not None
    parsed = RpcV2CBORParser().parse({"body": body, "headers": {}, "status_code": 400}, shape)
    assert parsed["Error"]["Code"] == "ThrottlingException"
    assert parsed["Error"]["Message"] == value


# -- latency and lifecycle ----------------------------------------------------------


def test_latency_is_added_before_each_request(sandbox: AwsSandbox) -> None:
    ecs = sandbox.client("ecs")
    ecs.list_clusters()  # warm the connection
    t0 = time.monotonic()
    ecs.list_clusters()
    base = time.monotonic() - t0
    sandbox.latency_ms = 300
    t0 = time.monotonic()
    ecs.list_clusters()
    slow = time.monotonic() - t0
    assert slow >= 0.3
    assert slow - base >= 0.25


def test_stop_frees_the_port_and_start_again_serves() -> None:
    sandbox = AwsSandbox()
    sandbox.start()
    sandbox.client("ecs").list_clusters()
    sandbox.stop()
    with socket.socket() as s:
        s.bind((sandbox.host, sandbox.port))  # raises EADDRINUSE if the listener leaked
    sandbox.start()
    try:
        sandbox.client("ecs").list_clusters()
    finally:
        sandbox.stop()
    sandbox.stop()  # idempotent
