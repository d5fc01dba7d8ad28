"""AWS on loopback: moto served in a background thread, seeded with the production topology.

moto runs in this process (so `sandbox.moto_bridge` can reach its backends) behind a WSGI
middleware that records every call, adds latency and injects throttling in each
protocol's own wire format. Clients reach it only over HTTP at `endpoint_url`.
"""

from __future__ import annotations

import io
import json
import re
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import boto3
from botocore.config import Config
from moto.server import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import BaseWSGIServer, make_server

from sandbox.moto_bridge import BACKEND_LOCK
from sandbox.ports import free_port

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WsgiApp = Callable[[Environ, StartResponse], Iterable[bytes]]

TEST_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


@dataclass
class ServiceDef:
    name: str
    desired: int
    container_port: int
    target_group: str
    health_check_path: str


def _default_services() -> list[ServiceDef]:
    return [
        ServiceDef("hokusai-registry", 2, 8000, "hokusai-registry-tg", "/live"),
        ServiceDef("hokusai-mlflow", 1, 5000, "hokusai-mlflow-tg", "/health"),
    ]


@dataclass
class Topology:
    """What `AwsSandbox.seed` creates. The ALB's port-80 listener forwards to services[0]."""

    cluster: str = "hokusai-sandbox"
    services: list[ServiceDef] = field(default_factory=_default_services)
    load_balancer: str = "hokusai-sandbox-alb"
    rds_instance: str = "hokusai-sandbox-db"
    alarm_prefix: str = "hokusai-sandbox"


@dataclass
class Seeded:
    cluster_arn: str
    service_arns: dict[str, str]
    target_group_arns: dict[str, str]  # by service name
    load_balancer_arn: str
    load_balancer_dns: str
    rds_instance_id: str
    alarm_names: list[str]
    task_definition_arns: dict[str, str]  # by service name


# -- request identification ---------------------------------------------------------

_CREDENTIAL_SCOPE = re.compile(r"Credential=[^/,]+/\d{8}/([^/]+)/([^/]+)/aws4_request")
_CBOR_PATH = re.compile(r"^/service/([^/]+)/operation/([^/]+)$")
_ELB_V2_VERSION = "2015-12-01"


@dataclass(frozen=True)
class _Call:
    service: str  # the boto3 client name: ecs, elbv2, rds, cloudwatch, ec2, ...
    operation: str
    protocol: str  # json | cbor | query | ec2 | other
    query_compatible: bool = False


def _read_body(environ: Environ) -> bytes:
    """Read the whole body and put an equivalent stream back for moto."""
    stream = environ.get("wsgi.input")
    if stream is None:
        return b""
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length > 0:
        body = stream.read(length)
    elif environ.get("wsgi.input_terminated"):
        body = stream.read()  # chunked: the server has bounded the stream for us
    else:
        return b""
    environ["wsgi.input"] = io.BytesIO(body)
    return bytes(body)


def _identify(environ: Environ, body: bytes) -> _Call:
    auth = environ.get("HTTP_AUTHORIZATION", "")
    m = _CREDENTIAL_SCOPE.search(auth)
    signing_name = m.group(2) if m else "unknown"
    query_compatible = environ.get("HTTP_X_AMZN_QUERY_MODE", "").lower() == "true"
    path = environ.get("PATH_INFO", "")

    if environ.get("HTTP_SMITHY_PROTOCOL") == "rpc-v2-cbor":
        cm = _CBOR_PATH.match(path)
        op = cm.group(2) if cm else path
        return _Call(_client_name(signing_name, None), op, "cbor", query_compatible)

    target = environ.get("HTTP_X_AMZ_TARGET")
    if target:
        op = target.rsplit(".", 1)[-1]
        return _Call(_client_name(signing_name, None), op, "json", query_compatible)

    params: dict[str, list[str]] = parse_qs(environ.get("QUERY_STRING", ""))
    if environ.get("CONTENT_TYPE", "").startswith("application/x-www-form-urlencoded"):
        params.update(parse_qs(body.decode("utf-8", "replace")))
    if "Action" in params:
        version = params.get("Version", [None])[0]
        protocol = "ec2" if signing_name == "ec2" else "query"
        return _Call(_client_name(signing_name, version), params["Action"][0], protocol)

    # rest-json / rest-xml: the operation is not named on the wire; record the route.
    method = environ.get("REQUEST_METHOD", "GET")
    return _Call(_client_name(signing_name, None), f"{method} {path}", "other")


def _client_name(signing_name: str, version: str | None) -> str:
    if signing_name == "monitoring":
        return "cloudwatch"
    if signing_name == "elasticloadbalancing":
        # elb and elbv2 share a signing name; only the query Version tells them apart
        return "elb" if version and version != _ELB_V2_VERSION else "elbv2"
    return signing_name


# -- throttling responses -----------------------------------------------------------


def _cbor_text(s: str) -> bytes:
    """A CBOR text string (major type 3); enough for the short strings we send."""
    data = s.encode("utf-8")
    n = len(data)
    if n < 24:
        head = bytes([0x60 | n])
    elif n < 0x100:
        head = bytes([0x78, n])
    elif n < 0x10000:
        head = bytes([0x79]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x7A]) + n.to_bytes(4, "big")
    return head + data


def _cbor_text_map(items: dict[str, str]) -> bytes:
    """A CBOR map (major type 5) of text to text; botocore has no public encoder."""
    if len(items) >= 24:
        raise ValueError("small maps only")
    out = bytes([0xA0 | len(items)])
    for k, v in items.items():
        out += _cbor_text(k) + _cbor_text(v)
    return out


_MESSAGE = "Rate exceeded"


def _throttle_response(call: _Call, request_id: str) -> tuple[str, list[tuple[str, str]], bytes]:
    """The service's throttling error in the protocol the request came in."""
    headers = [("x-amzn-RequestId", request_id)]
    if call.query_compatible:
        # botocore takes the code from this header for services that used to speak
        # query (CloudWatch), giving the same "Throttling" the query protocol gives.
        headers.append(("x-amzn-query-error", "Throttling;Sender"))
    if call.protocol == "json":
        body = json.dumps({"__type": "ThrottlingException", "message": _MESSAGE}).encode()
        headers.append(("Content-Type", "application/x-amz-json-1.1"))
        return "400 Bad Request", headers, body
    if call.protocol == "cbor":
        body = _cbor_text_map({"__type": "ThrottlingException", "message": _MESSAGE})
        headers += [("Content-Type", "application/cbor"), ("Smithy-Protocol", "rpc-v2-cbor")]
        return "400 Bad Request", headers, body
    if call.protocol == "ec2":
        body = (
            "<?xml version='1.0' encoding='UTF-8'?><Response><Errors><Error>"
            f"<Code>RequestLimitExceeded</Code><Message>{_MESSAGE}</Message>"
            f"</Error></Errors><RequestID>{request_id}</RequestID></Response>"
        ).encode()
        headers.append(("Content-Type", "text/xml"))
        return "503 Service Unavailable", headers, body
    body = (
        "<ErrorResponse><Error><Type>Sender</Type><Code>Throttling</Code>"
        f"<Message>{_MESSAGE}</Message></Error><RequestId>{request_id}</RequestId>"
        "</ErrorResponse>"
    ).encode()
    headers.append(("Content-Type", "text/xml"))
    return "400 Bad Request", headers, body


class _NoLogRequestHandler(MotoRequestHandler):
    """moto's handler without werkzeug's per-request access log line on stderr."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        return


# -- the sandbox --------------------------------------------------------------------


class AwsSandbox:
    """moto on loopback with call recording, latency and throttling injection."""

    def __init__(self, region: str = "us-east-1", host: str = "127.0.0.1", port: int | None = None):
        self.region = region
        self.host = host
        # Chosen now so endpoint_url is known before start and survives a restart.
        self.port = port or free_port(host)
        self.endpoint_url = f"http://{host}:{self.port}"
        self.latency_ms = 0
        self.calls: list[tuple[str, str]] = []
        self.throttled = 0
        self._throttling = False
        self._parity: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._session: boto3.session.Session | None = None
        self._session_lock = threading.Lock()
        self._moto: WsgiApp = DomainDispatcherApplication(create_backend_app)

    # -- fault knobs --

    @property
    def throttling(self) -> bool:
        return self._throttling

    @throttling.setter
    def throttling(self, on: bool) -> None:
        with self._lock:
            # Restart the alternation so the first request after switching on is throttled.
            self._parity.clear()
            self._throttling = on

    def _should_throttle(self, call: _Call) -> bool:
        with self._lock:
            if not self._throttling:
                return False
            key = (call.service, call.operation)
            n = self._parity.get(key, 0)
            self._parity[key] = n + 1
            if n % 2 == 0:
                self.throttled += 1
                return True
            return False

    # -- WSGI --

    def _app(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO", "").startswith("/moto-api"):
            return self._to_moto(environ, start_response)  # sandbox plumbing: no faults
        if self.latency_ms > 0:
            time.sleep(self.latency_ms / 1000)
        call = _identify(environ, _read_body(environ))
        if call.protocol != "other" and self._should_throttle(call):
            status, headers, body = _throttle_response(call, str(uuid.uuid4()))
            headers.append(("Content-Length", str(len(body))))
            start_response(status, headers)
            return [body]
        with self._lock:
            self.calls.append((call.service, call.operation))
        return self._to_moto(environ, start_response)

    def _to_moto(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        # Build the whole response under the bridge's lock: moto serialises model objects
        # while iterating, and the bridge mutates them from other threads.
        with BACKEND_LOCK:
            result = self._moto(environ, start_response)
            try:
                body = b"".join(result)
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        return [body]

    # -- lifecycle --

    def start(self, timeout: float = 10.0) -> None:
        if self._server is not None:
            return
        server = make_server(
            self.host,
            self.port,
            self._app,
            threaded=True,
            request_handler=_NoLogRequestHandler,
        )
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},  # shutdown() waits up to one poll interval
            name=f"moto-{self.port}",
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(  # noqa: S310 - our own loopback URL
                    f"{self.endpoint_url}/moto-api/config", timeout=1
                ):
                    return  # any HTTP answer will do (moto says 201 here)
            except urllib.error.HTTPError:
                return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"moto did not answer on {self.endpoint_url}")
            time.sleep(0.05)

    def stop(self) -> None:
        server, self._server = self._server, None
        thread, self._thread = self._thread, None
        if server is None:
            return
        server.shutdown()
        server.server_close()  # ThreadedMotoServer skips this and keeps the port bound
        if thread is not None:
            thread.join(timeout=10)

    def reset(self) -> None:
        """Empty every moto backend (moto's state is process-wide, not per sandbox)."""
        url = f"{self.endpoint_url}/moto-api/reset"
        req = urllib.request.Request(url, method="POST")  # noqa: S310 - our loopback URL
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
            resp.read()

    def __enter__(self) -> AwsSandbox:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- clients --

    def client(self, service: str, config: Config | None = None) -> Any:
        """A boto3 client for `service` against the sandbox, with standard retries."""
        base = Config(
            connect_timeout=2,
            read_timeout=10,
            retries={"mode": "standard", "max_attempts": 5},
        )
        # One session, reused: building one reloads botocore's data (~0.1 s), and a
        # session is not safe to create clients from concurrently.
        with self._session_lock:
            if self._session is None:
                self._session = boto3.session.Session()
            return self._session.client(
                service,  # type: ignore[call-overload]
                endpoint_url=self.endpoint_url,
                region_name=self.region,
                config=base.merge(config) if config else base,
                **TEST_CREDENTIALS,
            )

    # -- seeding --

    def seed(self, topology: Topology) -> Seeded:
        """Create the production topology; expects a fresh (or reset) moto."""
        ec2 = self.client("ec2")
        ecs = self.client("ecs")
        elbv2 = self.client("elbv2")
        rds = self.client("rds")
        cw = self.client("cloudwatch")

        vpc_id = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        subnet_ids = [
            ec2.create_subnet(VpcId=vpc_id, CidrBlock=cidr, AvailabilityZone=f"{self.region}{az}")[
                "Subnet"
            ]["SubnetId"]
            for cidr, az in (("10.0.1.0/24", "a"), ("10.0.2.0/24", "b"))
        ]
        sg_id = ec2.create_security_group(
            GroupName=f"{topology.cluster}-tasks", Description="sandbox tasks", VpcId=vpc_id
        )["GroupId"]

        lb = elbv2.create_load_balancer(
            Name=topology.load_balancer,
            Subnets=subnet_ids,
            SecurityGroups=[sg_id],
            Scheme="internet-facing",
            Type="application",
        )["LoadBalancers"][0]
        lb_arn = lb["LoadBalancerArn"]

        tg_arns: dict[str, str] = {}
        for svc in topology.services:
            tg_arns[svc.name] = elbv2.create_target_group(
                Name=svc.target_group,
                Protocol="HTTP",
                Port=svc.container_port,
                VpcId=vpc_id,
                TargetType="ip",
                HealthCheckProtocol="HTTP",
                HealthCheckPath=svc.health_check_path,
                HealthCheckIntervalSeconds=10,
                HealthyThresholdCount=2,
                UnhealthyThresholdCount=2,
            )["TargetGroups"][0]["TargetGroupArn"]
        # The public listener (port 80) forwards to services[0]. Each other service gets a
        # listener on its own port: ECS only accepts a target group that an ALB uses.
        listener_ports = {80}
        for i, svc in enumerate(topology.services):
            port = 80 if i == 0 else svc.container_port
            if i > 0 and port in listener_ports:
                continue
            listener_ports.add(port)
            elbv2.create_listener(
                LoadBalancerArn=lb_arn,
                Protocol="HTTP",
                Port=port,
                DefaultActions=[{"Type": "forward", "TargetGroupArn": tg_arns[svc.name]}],
            )

        cluster_arn = ecs.create_cluster(clusterName=topology.cluster)["cluster"]["clusterArn"]
        td_arns: dict[str, str] = {}
        service_arns: dict[str, str] = {}
        for svc in topology.services:
            td_arns[svc.name] = ecs.register_task_definition(
                family=svc.name,
                networkMode="awsvpc",
                requiresCompatibilities=["FARGATE"],
                cpu="256",
                memory="512",
                containerDefinitions=[
                    {
                        "name": svc.name,
                        "image": f"hokusai/{svc.name}:sandbox",
                        "essential": True,
                        "portMappings": [{"containerPort": svc.container_port, "protocol": "tcp"}],
                    }
                ],
            )["taskDefinition"]["taskDefinitionArn"]
            service_arns[svc.name] = ecs.create_service(
                cluster=topology.cluster,
                serviceName=svc.name,
                taskDefinition=td_arns[svc.name],
                desiredCount=svc.desired,
                launchType="FARGATE",
                networkConfiguration={
                    "awsvpcConfiguration": {"subnets": subnet_ids, "securityGroups": [sg_id]}
                },
                loadBalancers=[
                    {
                        "targetGroupArn": tg_arns[svc.name],
                        "containerName": svc.name,
                        "containerPort": svc.container_port,
                    }
                ],
            )["service"]["serviceArn"]

        rds.create_db_instance(
            DBInstanceIdentifier=topology.rds_instance,
            Engine="postgres",
            DBInstanceClass="db.t3.micro",
            AllocatedStorage=20,
            MasterUsername="registry",
            MasterUserPassword="sandbox-password",  # moto stores no data behind it
        )

        alarm_names = self._seed_alarms(cw, topology, lb_arn, tg_arns)

        # moto reports "provisioning"/"creating" on the first describe and advances on it.
        lb = self._settle(
            lambda: elbv2.describe_load_balancers(LoadBalancerArns=[lb_arn])["LoadBalancers"][0],
            lambda d: d["State"]["Code"] == "active",
        )
        self._settle(
            lambda: rds.describe_db_instances(DBInstanceIdentifier=topology.rds_instance)[
                "DBInstances"
            ][0],
            lambda d: d["DBInstanceStatus"] == "available",
        )
        return Seeded(
            cluster_arn=cluster_arn,
            service_arns=service_arns,
            target_group_arns=tg_arns,
            load_balancer_arn=lb_arn,
            load_balancer_dns=lb["DNSName"],
            rds_instance_id=topology.rds_instance,
            alarm_names=alarm_names,
            task_definition_arns=td_arns,
        )

    @staticmethod
    def _seed_alarms(
        cw: Any, topology: Topology, lb_arn: str, tg_arns: dict[str, str]
    ) -> list[str]:
        # CloudWatch dimensions use the ARN suffixes "app/..." and "targetgroup/...".
        lb_dim = lb_arn.split(":loadbalancer/", 1)[1]
        specs: list[dict[str, Any]] = []
        for i, svc in enumerate(topology.services):
            short = svc.name.removeprefix("hokusai-")
            tg_dim = tg_arns[svc.name].rsplit(":", 1)[1]
            dims = [
                {"Name": "TargetGroup", "Value": tg_dim},
                {"Name": "LoadBalancer", "Value": lb_dim},
            ]
            specs.append(
                {
                    "AlarmName": f"{topology.alarm_prefix}-{short}-unhealthy-hosts",
                    "Namespace": "AWS/ApplicationELB",
                    "MetricName": "UnHealthyHostCount",
                    "Dimensions": dims,
                    "Statistic": "Maximum",
                    "Threshold": 0.0,
                    "ComparisonOperator": "GreaterThanThreshold",
                }
            )
            if i == 0:  # the service behind the listener: its 5xx are what users see
                specs.append(
                    {
                        "AlarmName": f"{topology.alarm_prefix}-{short}-5xx",
                        "Namespace": "AWS/ApplicationELB",
                        "MetricName": "HTTPCode_Target_5XX_Count",
                        "Dimensions": dims,
                        "Statistic": "Sum",
                        "Threshold": 10.0,
                        "ComparisonOperator": "GreaterThanThreshold",
                    }
                )
        specs.append(
            {
                "AlarmName": f"{topology.alarm_prefix}-rds-cpu",
                "Namespace": "AWS/RDS",
                "MetricName": "CPUUtilization",
                "Dimensions": [{"Name": "DBInstanceIdentifier", "Value": topology.rds_instance}],
                "Statistic": "Average",
                "Threshold": 80.0,
                "ComparisonOperator": "GreaterThanThreshold",
            }
        )
        for spec in specs:
            cw.put_metric_alarm(Period=60, EvaluationPeriods=1, **spec)
            cw.set_alarm_state(
                AlarmName=spec["AlarmName"], StateValue="OK", StateReason="sandbox seed"
            )
        return [s["AlarmName"] for s in specs]

    @staticmethod
    def _settle(
        describe: Callable[[], dict[str, Any]],
        done: Callable[[dict[str, Any]], bool],
        attempts: int = 10,
    ) -> dict[str, Any]:
        for _ in range(attempts):
            d = describe()
            if done(d):
                return d
            time.sleep(0.05)
        raise RuntimeError(f"moto resource did not settle: {d}")
