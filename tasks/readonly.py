"""Read-only clients: every mutating call is refused before it leaves the process.

First, do no harm, by construction rather than by an `if dry_run:`. Every AWS and HTTP
client the diagnosis, a dry run, the recovery's reads and the contract's read-only tests
use is built read-only (tasks/aws.py, tasks/http.py); it raises `MutationRefused` at the
first call that could change something, before any byte is sent:

- botocore: a `before-call` handler registered on the client's own event system allows
  only operations named Describe*, List* or Get*;
- httpx: a request event hook allows only GET and HEAD, plus MLflow's experiment search
  (a POST in MLflow's REST API that changes nothing).

The clients that may write are built apart (tasks/aws.py `ecs_write_client`,
tasks/http.py `write_client`) and reached only through the recovery's `ActionContext`
(tasks/recovery/registry.py), which exists only on the apply path, and through the
contract's two reset probes when the run is not read-only.
tests/recovery/test_read_only.py checks both the refusals and who may build a writer.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING, Any

import httpx

from service_health.endpoints import MLFLOW_SEARCH

if TYPE_CHECKING:
    from botocore.client import BaseClient

READ_OPERATIONS = ("Describe", "List", "Get")
READ_METHODS = frozenset({"GET", "HEAD"})
# (method, path) allowed to read-only HTTP clients besides GET and HEAD.
READ_ONLY_POSTS = frozenset({("POST", MLFLOW_SEARCH)})

Write = tuple[str, str]  # (method, path) a write client may send besides the reads


class MutationRefused(Exception):
    """A read-only client was asked to make a call that could change something.

    Never a transient failure and never turned into an observation: it is a bug in the
    caller, and it surfaces as one."""


def is_read_operation(operation: str) -> bool:
    """Whether a botocore operation name (`DescribeServices`) only reads."""
    return operation.startswith(READ_OPERATIONS)


def _refuse_writes(model: Any, **_: Any) -> None:
    if not is_read_operation(model.name):
        service = model.service_model.service_name
        raise MutationRefused(
            f"{service}:{model.name} refused: this AWS client is read-only "
            f"(only {'/'.join(f'{p}*' for p in READ_OPERATIONS)} operations)"
        )


def read_only_aws(client: BaseClient) -> BaseClient:
    """`client`, refusing every operation but Describe*/List*/Get* (waiters and paginators
    call through the client, so they are covered too). Returns the same client."""
    client.meta.events.register("before-call", _refuse_writes, unique_id="hokusai-read-only")
    return client


def http_guard(allow: Collection[Write] = ()) -> Any:
    """An httpx request event hook: GET, HEAD, MLflow's search POST and `allow` pass; any
    other request raises MutationRefused before it is sent."""
    allowed = READ_ONLY_POSTS | frozenset((m.upper(), p) for m, p in allow)

    async def check(request: httpx.Request) -> None:
        method = request.method.upper()
        if method in READ_METHODS or (method, request.url.path) in allowed:
            return
        raise MutationRefused(
            f"{method} {request.url.path} refused: this HTTP client is read-only "
            "(only GET and HEAD)"
        )

    return check
