"""What a run leaves behind, built in one place and redacted there: its final state (name,
message, data: what notifications, the run list and the command lines' JSON show) and its
artifacts. The flows build neither themselves (tests/flows/test_publishing.py holds them to
it), so no exit path can skip the redactor: the one over every secret this process has met
(tasks/redacting.py), with URL credentials masked in any case.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefect.artifacts import (
    acreate_link_artifact,
    acreate_markdown_artifact,
    acreate_table_artifact,
)
from prefect.states import Cancelled, Completed, Failed, State
from pydantic import BaseModel

from service_health.redaction import Redactor
from tasks.redacting import redactor

StateKind = Callable[..., State[Any]]


def _redacted(data: Any, r: Redactor) -> Any:
    if data is None:
        return None
    if isinstance(data, BaseModel):
        return type(data).model_validate(r.obj(data.model_dump(mode="json")))
    if isinstance(data, BaseException):
        text = str(data)
        clean = r.text(text)
        if clean == text:
            return data
        try:
            return type(data)(clean)
        except Exception:  # an exception type built otherwise: its text is the message
            return RuntimeError(clean)
    return r.obj(data)


def final(kind: StateKind, name: str, message: str, data: Any = None) -> State[Any]:
    """The run's final state, message and data redacted."""
    r = redactor()
    return kind(name=name, message=r.text(message), data=_redacted(data, r))


def completed(name: str, message: str, data: Any = None) -> State[Any]:
    return final(Completed, name, message, data)


def failed(name: str, message: str, data: Any = None) -> State[Any]:
    return final(Failed, name, message, data)


def cancelled(name: str, message: str) -> State[Any]:
    return final(Cancelled, name, message)


async def markdown(key: str, text: str, description: str | None = None) -> None:
    r = redactor()
    await acreate_markdown_artifact(
        key=key, markdown=r.text(text), description=r.text(description or "") or None
    )


async def table(key: str, rows: Any, description: str | None = None) -> None:
    r = redactor()
    await acreate_table_artifact(
        key=key, table=r.obj(rows), description=r.text(description or "") or None
    )


async def link(key: str, url: str, text: str, description: str | None = None) -> None:
    r = redactor()
    await acreate_link_artifact(
        key=key,
        link=r.text(url),
        link_text=r.text(text),
        description=r.text(description or "") or None,
    )
