"""Raw evidence gathered by the I/O tasks: finished exchanges, no judgment yet."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, Field


class ErrorKind(StrEnum):
    """Why an HTTP exchange produced no usable answer."""

    TIMEOUT = "timeout"
    CONNECT = "connect"
    # The peer dropped the connection, e.g. a keep-alive connection closed after a 500.
    RESET = "reset"
    TOO_LARGE = "too_large"
    PROTOCOL = "protocol"
    REDIRECT = "redirect"
    OTHER = "other"
    # Deliberately not sent (request discipline: it would have blocked or fed the breaker
    # of a failing service, or the budget or deadline was spent); `error` says why.
    NOT_SENT = "not_sent"


class HttpObservation(BaseModel):
    """One HTTP exchange, already finished."""

    url: str  # already redacted by the producer
    method: str = "GET"
    status_code: int | None = None
    elapsed_ms: float | None = None
    content_type: str | None = None
    body_text: str | None = None  # decoded with errors="replace", capped by the producer
    body_truncated: bool = False
    body_invalid_utf8: bool = False  # undecodable bytes were replaced by U+FFFD in body_text
    error: str | None = None  # transport failure message; None when an HTTP answer arrived
    error_kind: ErrorKind | None = None
    # "10.0.1.5:8000" when addressed directly to a replica, None via the load balancer.
    replica: str | None = None

    @property
    def answered(self) -> bool:
        """True when an HTTP status line arrived, whatever the status."""
        return self.status_code is not None

    @property
    def sent(self) -> bool:
        return self.error_kind is not ErrorKind.NOT_SENT

    @classmethod
    def not_sent(
        cls, url: str, reason: str, replica: str | None = None, method: str = "GET"
    ) -> HttpObservation:
        return cls(
            url=url, method=method, error=reason, error_kind=ErrorKind.NOT_SENT, replica=replica
        )

    @property
    def path(self) -> str:
        """Path and query of the URL, for evidence labels ("/health?detailed=true")."""
        try:
            parts = urlsplit(self.url)
        except ValueError:
            return self.url
        path = parts.path or "/"
        return f"{path}?{parts.query}" if parts.query else path

    @property
    def label(self) -> str:
        """Evidence label such as "GET /ready" or "GET 10.0.1.5:8000/health/mlflow"."""
        where = f"{self.replica}{self.path}" if self.replica else self.path
        return f"{self.method.upper()} {where}"

    def failure_text(self) -> str:
        """Short description of why there is no usable answer (transport error or status)."""
        if self.error_kind is ErrorKind.NOT_SENT:
            return f"not sent: {self.error}"
        if self.error is not None or self.status_code is None:
            kind = f"{self.error_kind.value}: " if self.error_kind else ""
            return f"{kind}{self.error or 'no answer'}"
        return f"HTTP {self.status_code}"

    def encoding_problem(self) -> str | None:
        """Why the body's text is not exactly what was sent, or None."""
        if self.body_invalid_utf8 and not self.body_truncated:
            return "body is not valid UTF-8 (undecodable bytes read as U+FFFD)"
        return None

    def json_body(self) -> tuple[Any, str | None]:
        """Parse the body as JSON: (value, None) or (None, reason). Never raises."""
        if self.body_text is None:
            return None, "no body" if self.error is None else f"no answer ({self.failure_text()})"
        if not self.body_text.strip():
            return None, "empty body"
        try:
            value = json.loads(self.body_text)
        except RecursionError:
            return None, "body is JSON nested too deeply to read"
        except ValueError as exc:
            # ValueError covers JSONDecodeError and the int-digits limit of huge numbers.
            why = "body truncated by the client" if self.body_truncated else _not_json(self, exc)
            return None, why
        return value, None


def _not_json(obs: HttpObservation, exc: ValueError) -> str:
    kind = f" ({obs.content_type})" if obs.content_type else ""
    first = obs.body_text.strip()[:60] if obs.body_text else ""
    return f"body is not JSON{kind}: {type(exc).__name__} near {first!r}"


class AwsObservation(BaseModel):
    """One AWS API call: the response, or the error code it failed with."""

    service: str
    operation: str
    # boto3 response with datetimes already converted to ISO strings by the producer.
    response: dict[str, Any] | None = None
    # e.g. "ThrottlingException", "AccessDenied", "NoCredentials", "EndpointConnectionError"
    error_code: str | None = None
    error_message: str | None = None
    http_status: int | None = None  # of an error answer (403: refused credentials/permission)
    elapsed_ms: float | None = None

    @property
    def label(self) -> str:
        """Evidence label in IAM action style, e.g. "ecs:DescribeServices"."""
        return f"{self.service}:{self.operation}"


class PostgresObservation(BaseModel):
    """A direct connection attempt to PostgreSQL plus one trivial query."""

    connect_ms: float | None = None
    query_ms: float | None = None
    error: str | None = None
    server_version: str | None = None


class RedisObservation(BaseModel):
    """A direct PING to Redis, with INFO when it answered."""

    ping_ms: float | None = None
    error: str | None = None
    info: dict[str, Any] = Field(default_factory=dict)
