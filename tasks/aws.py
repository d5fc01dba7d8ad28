"""boto3 calls that never raise: each answer or failure becomes an AwsObservation.

Clients get explicit connect/read timeouts and botocore's adaptive retry mode, which
retries throttling and transient errors with backoff; definitive errors (AccessDenied,
unknown resources) come back at once.
"""

from __future__ import annotations

import asyncio
import functools
import time
from datetime import date, datetime
from typing import Any, cast
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
)

from service_health.observations import AwsObservation

BOTO_CONFIG = Config(
    connect_timeout=3,
    read_timeout=5,
    retries={"mode": "adaptive", "max_attempts": 4},
)


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

        creds = cast(AwsCredentials, AwsCredentials.load(credentials_block))
        session: boto3.Session = creds.get_boto3_session()
        return session
    return boto3.Session(region_name=region)


def make_client(
    session: boto3.Session, service: str, region: str | None, endpoint_url: str | None
) -> Any:
    return cast(Any, session).client(
        service, region_name=region, endpoint_url=endpoint_url or None, config=BOTO_CONFIG
    )


def _plain(value: Any) -> Any:
    """JSON-safe copy of a boto3 response (datetimes as ISO strings, no metadata)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if k != "ResponseMetadata"}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def call_sync(client: Any, service: str, operation: str, **params: Any) -> AwsObservation:
    started = time.perf_counter()

    def elapsed() -> float:
        return round((time.perf_counter() - started) * 1000, 1)

    try:
        response = getattr(client, operation)(**params)
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


async def call(client: Any, service: str, operation: str, **params: Any) -> AwsObservation:
    """`call_sync` off the event loop (boto3 is blocking)."""
    return await asyncio.to_thread(call_sync, client, service, operation, **params)
