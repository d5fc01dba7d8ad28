"""Record every AWS call and every HTTP request the flows make in this process, and
cross-check the HTTP side against what the sandbox's registry replicas counted.

AWS: botocore's `before-parameter-build` event, heard on botocore's event emitter class
itself (`HierarchicalEmitter.emit`), so that every session and every client reports each
operation before it is sent: sessions and clients created before recording started,
boto3's default session, prefect-aws's. Emitted once per API call (not per retry), and
before the read-only guard of tasks/readonly.py: a refused write is recorded too.
HTTP: a wrapper around httpx's `send` that notes the method, the full URL (host kept: a
reset sent to the wrong replica must not pass for the planned one) and whether an answer
came back. Requests to the Prefect API and to the sandbox's control port are the test
harness talking, not the flows, and are left out.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import botocore.hooks
import httpx
import pytest

from tasks.readonly import READ_METHODS, READ_ONLY_POSTS, is_read_operation


@dataclass(frozen=True)
class Request:
    method: str
    url: str
    answered: bool  # an HTTP answer came back (so the server received the request)

    @property
    def host(self) -> str:
        """`host:port` as the sandbox names a replica."""
        url = httpx.URL(self.url)
        return f"{url.host}:{url.port}"

    @property
    def key(self) -> str:
        """`METHOD /path[?query]`, as the sandbox's request accounting keys it."""
        return f"{self.method} {httpx.URL(self.url).raw_path.decode('ascii')}"


@dataclass
class Calls:
    # (service, operation), the ECS service named in brackets: "UpdateService(hokusai-mlflow)"
    aws: list[tuple[str, str]] = field(default_factory=list)
    http: list[Request] = field(default_factory=list)

    def mutating_aws(self) -> list[tuple[str, str]]:
        return [c for c in self.aws if not is_read_operation(c[1])]

    def mutating_http(self) -> list[Request]:
        return [
            r
            for r in self.http
            if r.method not in READ_METHODS
            and (r.method, httpx.URL(r.url).path) not in READ_ONLY_POSTS
        ]

    def reads(self) -> tuple[int, int]:
        """(AWS reads, HTTP reads) recorded: a recorder that saw nothing proves nothing."""
        return len(self.aws) - len(self.mutating_aws()), len(self.http) - len(self.mutating_http())


def _service_of(params: Any) -> str | None:
    """The ECS service a call names: `service`, or the service ARN of a tag call."""
    if not isinstance(params, dict):
        return None
    if isinstance(params.get("service"), str):
        return str(params["service"])
    arn = params.get("resourceArn")
    if isinstance(arn, str) and ":service/" in arn:
        return arn.rsplit("/", 1)[-1]
    return None


@contextmanager
def recording(monkeypatch: pytest.MonkeyPatch, ignore: tuple[str, ...]) -> Iterator[Calls]:
    """Record while inside; `ignore`: URL prefixes that are not the flows' requests."""
    calls = Calls()
    emit = botocore.hooks.HierarchicalEmitter.emit

    def emit_recorded(self: Any, event_name: str, **kwargs: Any) -> Any:
        if event_name.startswith("before-parameter-build.") and "model" in kwargs:
            model = kwargs["model"]
            service = _service_of(kwargs.get("params"))
            operation = f"{model.name}({service})" if service else model.name
            calls.aws.append((model.service_model.service_name, operation))
        return emit(self, event_name, **kwargs)

    monkeypatch.setattr(botocore.hooks.HierarchicalEmitter, "emit", emit_recorded)

    def note(request: httpx.Request, answered: bool) -> None:
        url = str(request.url)
        if not url.startswith(ignore):
            calls.http.append(Request(request.method, url, answered))

    async_send = httpx.AsyncClient.send
    sync_send = httpx.Client.send

    async def send_async(self: httpx.AsyncClient, request: httpx.Request, **kw: Any) -> Any:
        try:
            response = await async_send(self, request, **kw)
        except BaseException:
            note(request, False)
            raise
        note(request, True)
        return response

    def send_sync(self: httpx.Client, request: httpx.Request, **kw: Any) -> Any:
        try:
            response = sync_send(self, request, **kw)
        except BaseException:
            note(request, False)
            raise
        note(request, True)
        return response

    monkeypatch.setattr(httpx.AsyncClient, "send", send_async)
    monkeypatch.setattr(httpx.Client, "send", send_sync)
    try:
        yield calls
    finally:
        monkeypatch.setattr(botocore.hooks.HierarchicalEmitter, "emit", emit)
        monkeypatch.setattr(httpx.AsyncClient, "send", async_send)
        monkeypatch.setattr(httpx.Client, "send", sync_send)


def disagreements(
    calls: Calls, counted: Mapping[str, Mapping[str, int]], load_balancer: str
) -> list[str]:
    """Where the recorder and the registry replicas' own request counts disagree.

    `counted`: per replica (`host:port`), requests received by `METHOD /path[?query]`, since
    the recording began (sandbox `request_counts`, reset before). Requests sent to a replica
    directly are counted there: at least those answered, at most those sent. Requests sent
    through `load_balancer` (`host:port` of the API URL) land on some replica: together they
    bound what the replicas counted from above. A request no recorded call explains (a
    write the recorder missed, a client the recorder cannot see) is a disagreement.
    """
    sent: Counter[tuple[str, str]] = Counter()
    answered: Counter[tuple[str, str]] = Counter()
    via_lb: Counter[str] = Counter()
    for r in calls.http:
        if r.host == load_balancer:
            via_lb[r.key] += 1
        else:
            sent[(r.host, r.key)] += 1
            answered[(r.host, r.key)] += r.answered
    problems = []
    for (host, key), n in answered.items():
        if host in counted and counted[host].get(key, 0) < n:
            problems.append(f"{host} counted {counted[host].get(key, 0)} {key}, {n} answered")
    keys = {k for c in counted.values() for k in c} | set(via_lb)
    for key in sorted(keys):
        total = sum(c.get(key, 0) for c in counted.values())
        direct = sum(n for (host, k), n in sent.items() if k == key and host in counted)
        if total > direct + via_lb[key]:
            problems.append(
                f"replicas counted {total} {key}; recorded {direct} sent to them directly and "
                f"{via_lb[key]} through the load balancer"
            )
    return problems
