"""force_new_deployment's retry rules with scripted AWS answers: a retry happens only where
the first attempt provably did not apply."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

from service_health.recovery import ActionResult, EntryStatus
from tasks import aws
from tasks.recovery import ActionContext, deployments
from tasks.recovery.deployments import DeploymentData
from tests.recovery.world import make_target


def answer(deployment_id: str) -> dict[str, Any]:
    return {
        "services": [
            {
                "serviceName": "reg",
                "status": "ACTIVE",
                "desiredCount": 2,
                "runningCount": 2,
                "deployments": [
                    {"id": deployment_id, "status": "PRIMARY", "rolloutState": "COMPLETED"}
                ],
            }
        ],
        "failures": [],
    }


def client_error(code: str, status: int) -> ClientError:
    response: Any = {
        "Error": {"Code": code, "Message": code},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(response, "UpdateService")


class FakeEcs:
    """Scripted: each describe_services returns the next id (the last one repeats); each
    update_service raises or returns the next scripted outcome."""

    def __init__(self, ids: list[str], writes: list[BaseException | str]) -> None:
        self.ids = ids
        self.writes = writes
        self.describes = 0
        self.updates = 0

    def describe_services(self, **_: Any) -> dict[str, Any]:
        deployment = self.ids[min(self.describes, len(self.ids) - 1)]
        self.describes += 1
        return answer(deployment)

    def update_service(self, **_: Any) -> dict[str, Any]:
        outcome = self.writes[self.updates]
        self.updates += 1
        if isinstance(outcome, BaseException):
            raise outcome
        return {"service": answer(outcome)["services"][0]}


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setattr(time, "sleep", lambda _s: None)  # the settling waits and backoff
    holder: dict[str, FakeEcs] = {}

    def install(ids: list[str], writes: list[BaseException | str]) -> FakeEcs:
        holder["ecs"] = FakeEcs(ids, writes)
        monkeypatch.setattr(aws, "ecs_client", lambda *a, **kw: holder["ecs"])
        monkeypatch.setattr(aws, "ecs_write_client", lambda *a, **kw: holder["ecs"])
        return holder["ecs"]

    yield install


def force(expected: str | None = "d1") -> ActionResult[DeploymentData]:
    target = make_target()
    writers = ActionContext(target).writers
    return asyncio.run(
        deployments.force_new_deployment.fn(target, "reg", expected, writers=writers)
    )


READ_TIMEOUT = ReadTimeoutError(endpoint_url="http://ecs")
NOT_SENT = EndpointConnectionError(endpoint_url="http://ecs")


def test_applied_at_once(fake: Any) -> None:
    ecs = fake(["d1"], ["d2"])
    result = force()
    assert result.success and result.data.applied is True and ecs.updates == 1
    assert result.data.deployment_id == "d2"


def test_throttled_is_refused_and_retried(fake: Any) -> None:
    ecs = fake(["d1"], [client_error("ThrottlingException", 400), "d2"])
    result = force()
    assert result.success and ecs.updates == 2
    assert "refused, not applied" in result.data.attempts[0]


def test_connection_never_made_is_retried(fake: Any) -> None:
    ecs = fake(["d1"], [NOT_SENT, "d2"])
    assert force().success and ecs.updates == 2


def test_read_timeout_that_applied_is_not_retried(fake: Any) -> None:
    ecs = fake(["d1", "d2"], [READ_TIMEOUT])  # the second read shows the new deployment
    result = force()
    assert result.success and result.data.applied is True and ecs.updates == 1
    assert result.data.deployment_id == "d2"
    assert "although UpdateService reported ReadTimeoutError" in result.entries[0].details


def test_server_error_that_applied_is_not_retried(fake: Any) -> None:
    ecs = fake(["d1", "d2"], [client_error("ServerException", 500)])
    assert force().success and ecs.updates == 1


def test_read_timeout_that_did_not_apply_is_retried_once_proven(fake: Any) -> None:
    ecs = fake(["d1"], [READ_TIMEOUT, "d2"])  # ECS keeps showing d1: it did not apply
    result = force()
    assert result.success and ecs.updates == 2
    assert "deployment unchanged, not applied" in result.data.attempts[0]


def test_definitive_errors_are_not_retried(fake: Any) -> None:
    ecs = fake(["d1"], [client_error("AccessDeniedException", 400)])
    result = force()
    assert not result.success and ecs.updates == 1
    assert result.entries[0].status == EntryStatus.FAILED
    assert "definitive, not retried" in result.entries[0].details


def test_unreadable_after_an_ambiguous_failure_is_not_retried(fake: Any) -> None:
    ecs = fake(["d1"], [READ_TIMEOUT, "d2"])
    calls = {"n": 0}
    original = ecs.describe_services

    def describe(**kw: Any) -> dict[str, Any]:
        calls["n"] += 1
        if calls["n"] > 1:
            raise client_error("AccessDeniedException", 400)
        return original(**kw)

    ecs.describe_services = describe
    result = force()
    assert not result.success and ecs.updates == 1 and result.data.applied is None
    assert "never restart twice" in result.entries[0].details


def test_gives_up_after_the_attempts(fake: Any) -> None:
    throttled = client_error("ThrottlingException", 400)
    ecs = fake(["d1"], [throttled] * 4)
    result = force()
    assert not result.success and ecs.updates == 4 and result.data.applied is False


def test_a_newer_deployment_than_diagnosed_is_left_alone(fake: Any) -> None:
    ecs = fake(["d2"], ["d3"])
    result = force(expected="d1")
    assert result.success and result.data.applied is False and ecs.updates == 0
