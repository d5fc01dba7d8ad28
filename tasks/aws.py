"""AWS clients, and boto3 calls that never raise: each answer or failure becomes an
AwsObservation.

Clients for reads are read-only (tasks/readonly.py: anything but Describe*/List*/Get* is
refused before it is sent) and get explicit connect/read timeouts and botocore's adaptive
retry mode, which retries throttling and transient errors with backoff; definitive errors
(AccessDenied, unknown resources) come back at once. The ECS client that may write exists
for the recovery's ActionContext only; for UpdateService it has no botocore retry
(tasks/retries.py says why).
"""

from __future__ import annotations

import asyncio
import functools
import time
from datetime import date, datetime
from typing import TYPE_CHECKING, Any, Literal, cast
from urllib.parse import urlsplit

import boto3
from botocore.client import BaseClient
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
)

from service_health.observations import AwsObservation
from service_health.settings import Target
from tasks.readonly import MutationRefused, read_only_aws
from tasks.retries import aws_read_config, aws_write_config

if TYPE_CHECKING:  # the stubs are a development dependency
    from mypy_boto3_ecs import ECSClient
    from mypy_boto3_elbv2 import ElasticLoadBalancingv2Client

ServiceName = Literal["ecs", "elbv2", "rds", "cloudwatch"]


@functools.cache
def _regions(service: str) -> frozenset[str]:
    session = boto3.Session()
    return frozenset(
        region
        for partition in session.get_available_partitions()
        for region in session.get_available_regions(service, partition_name=partition)
    )


def known_region(service: str, region: str | None) -> bool:
    """Whether botocore knows `region` for `service` (in any partition)."""
    return region is not None and region in _regions(service)


def _is_aws_endpoint(url: str | None) -> bool:
    host = urlsplit(url or "").hostname or ""
    return host.endswith((".amazonaws.com", ".amazonaws.com.cn"))


def make_session(region: str | None, credentials_block: str | None = None) -> boto3.Session:
    """The worker's default credential chain, or a prefect-aws AwsCredentials block."""
    if credentials_block:
        from prefect_aws import AwsCredentials

        # Called in worker threads whose copied context holds an async run: Prefect would
        # dispatch `load` to its coroutine there (never awaited), so sync is asked for.
        creds = cast(AwsCredentials, AwsCredentials.load(credentials_block, _sync=True))  # type: ignore[call-arg]
        session: boto3.Session = creds.get_boto3_session()
        return session
    return boto3.Session(region_name=region)


def make_client(
    session: boto3.Session, service: ServiceName, region: str | None, endpoint_url: str | None
) -> BaseClient:
    """A read-only client (tasks/readonly.py): timeouts, adaptive retries, and every
    operation but Describe*/List*/Get* refused before it is sent."""
    return read_only_aws(
        session.client(
            service, region_name=region, endpoint_url=endpoint_url or None, config=aws_read_config()
        )
    )


def _read_client(service: ServiceName, target: Target) -> BaseClient:
    from tasks.aws_clients import read_client  # it imports this module

    return read_client(
        service, target.aws_region, target.aws_endpoint_url, target.aws_credentials_block
    )


def ecs_client(target: Target) -> ECSClient:
    """The target's ECS client, read-only."""
    return cast("ECSClient", _read_client("ecs", target))


def elbv2_client(target: Target) -> ElasticLoadBalancingv2Client:
    """The target's ELBv2 client, read-only."""
    return cast("ElasticLoadBalancingv2Client", _read_client("elbv2", target))


def ecs_write_client(target: Target, *, idempotent: bool = False) -> ECSClient:
    """The target's ECS client that may write. Only for the recovery's ActionContext
    (tasks/recovery/registry.py; tests/recovery/test_read_only.py checks who calls it).

    Without botocore retries (UpdateService is not idempotent: tasks/retries.py), unless
    `idempotent` (TagResource, say), which keeps the reads' adaptive retries.
    """
    from tasks.aws_clients import made

    def make(session: boto3.Session) -> BaseClient:
        return session.client(
            "ecs",
            region_name=target.aws_region,
            endpoint_url=target.aws_endpoint_url or None,
            config=aws_read_config() if idempotent else aws_write_config(),
        )

    # The process's shared session (tasks/aws_clients.py): a new one would load the ECS
    # model again, a few hundred milliseconds before the recovery's first write.
    return cast("ECSClient", made(make, target.aws_region, target.aws_credentials_block))


def _plain(value: Any) -> Any:
    """JSON-safe copy of a boto3 response (datetimes as ISO strings, no metadata)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if k != "ResponseMetadata"}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def call_sync(client: BaseClient, service: str, operation: str, **params: Any) -> AwsObservation:
    started = time.perf_counter()

    def elapsed() -> float:
        return round((time.perf_counter() - started) * 1000, 1)

    try:
        response = getattr(client, operation)(**params)
    except MutationRefused:
        raise  # a bug in the caller, not an answer from AWS
    except ClientError as exc:
        err = exc.response.get("Error", {})
        return AwsObservation(
            service=service,
            operation=operation,
            error_code=str(err.get("Code", "ClientError")),
            error_message=str(err.get("Message", ""))[:500],
            http_status=exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode"),
            elapsed_ms=elapsed(),
        )
    except EndpointConnectionError as exc:
        region = client.meta.region_name
        unknown = not known_region(service, region) and _is_aws_endpoint(client.meta.endpoint_url)
        return AwsObservation(
            service=service,
            operation=operation,
            error_code="UnknownRegion" if unknown else type(exc).__name__,
            error_message=(
                f"AWS region {region!r} is not a region botocore knows, and its endpoint "
                f"{client.meta.endpoint_url} cannot be reached"
                if unknown
                else str(exc)[:500]
            ),
            elapsed_ms=elapsed(),
        )
    except NoCredentialsError:
        return AwsObservation(
            service=service,
            operation=operation,
            error_code="NoCredentials",
            error_message="no AWS credentials found (environment, profile, role or block)",
            elapsed_ms=elapsed(),
        )
    except BotoCoreError as exc:
        return AwsObservation(
            service=service,
            operation=operation,
            error_code=type(exc).__name__,
            error_message=str(exc)[:500],
            elapsed_ms=elapsed(),
        )
    except Exception as exc:  # e.g. an answer botocore cannot parse
        return AwsObservation(
            service=service,
            operation=operation,
            error_code=type(exc).__name__,
            error_message=f"the answer could not be read: {' '.join(str(exc).split())[:300]}",
            elapsed_ms=elapsed(),
        )
    return AwsObservation(
        service=service, operation=operation, response=_plain(response), elapsed_ms=elapsed()
    )


async def call(client: BaseClient, service: str, operation: str, **params: Any) -> AwsObservation:
    """`call_sync` off the event loop (boto3 is blocking)."""
    return await asyncio.to_thread(call_sync, client, service, operation, **params)
