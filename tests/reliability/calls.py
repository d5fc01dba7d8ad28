"""Record every AWS call and every HTTP request the flows make in this process.

AWS: a botocore `before-parameter-build` handler added to botocore's built-in handlers, so every
botocore session created while recording (ours, prefect-aws's) reports each operation
before it is sent. HTTP: a wrapper around httpx's `send` that notes the method and URL and
then sends the request as usual. Requests to the Prefect API and to the sandbox's control
port are the test harness talking, not the flows, and are left out.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import botocore.handlers
import httpx
import pytest

READ_ONLY_AWS = ("Describe", "List", "Get")
READ_ONLY_HTTP = ("GET", "HEAD")
# MLflow's REST API searches with POST; the search changes nothing.
READ_ONLY_POSTS = ("/api/2.0/mlflow/experiments/search",)


@dataclass
class Calls:
    # (service, operation), the ECS service named in brackets: "UpdateService(hokusai-mlflow)"
    aws: list[tuple[str, str]] = field(default_factory=list)
    http: list[tuple[str, str]] = field(default_factory=list)  # (method, url)

    def mutating_aws(self) -> list[tuple[str, str]]:
        return [c for c in self.aws if not c[1].startswith(READ_ONLY_AWS)]

    def mutating_http(self) -> list[tuple[str, str]]:
        return [
            (method, url)
            for method, url in self.http
            if method not in READ_ONLY_HTTP
            and not (method == "POST" and httpx.URL(url).path in READ_ONLY_POSTS)
        ]


@contextmanager
def recording(monkeypatch: pytest.MonkeyPatch, ignore: tuple[str, ...]) -> Iterator[Calls]:
    """Record while inside; `ignore`: URL prefixes that are not the flows' requests."""
    calls = Calls()

    def on_call(model: Any, params: Any, **_: Any) -> None:
        service = params.get("service") if isinstance(params, dict) else None
        operation = f"{model.name}({service})" if isinstance(service, str) else model.name
        calls.aws.append((model.service_model.service_name, operation))

    # Emitted with the operation's own parameters, once per API call (not per retry).
    handlers = [*botocore.handlers.BUILTIN_HANDLERS, ("before-parameter-build", on_call)]
    monkeypatch.setattr(botocore.handlers, "BUILTIN_HANDLERS", handlers)

    def note(request: httpx.Request) -> None:
        url = str(request.url)
        if not url.startswith(ignore):
            calls.http.append((request.method, url))

    async_send = httpx.AsyncClient.send
    sync_send = httpx.Client.send

    async def send_async(self: httpx.AsyncClient, request: httpx.Request, **kw: Any) -> Any:
        note(request)
        return await async_send(self, request, **kw)

    def send_sync(self: httpx.Client, request: httpx.Request, **kw: Any) -> Any:
        note(request)
        return sync_send(self, request, **kw)

    monkeypatch.setattr(httpx.AsyncClient, "send", send_async)
    monkeypatch.setattr(httpx.Client, "send", send_sync)
    try:
        yield calls
    finally:
        monkeypatch.setattr(botocore.handlers, "BUILTIN_HANDLERS", handlers[:-1])
        monkeypatch.setattr(httpx.AsyncClient, "send", async_send)
        monkeypatch.setattr(httpx.Client, "send", sync_send)
