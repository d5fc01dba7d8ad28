"""What a real MLflow server refuses: recognised in its own answers and in the registry's
error text, each kind its own finding, distinct from MLflow down or erroring.

The texts are MLflow's own (mlflow/server/security_utils.py INVALID_HOST_MSG, the auth app's
make_basic_auth_response / make_forbidden_response, the client's verify_rest_response);
tests/sandbox/test_real_mlflow.py checks them against a running server.
"""

from __future__ import annotations

from typing import Any

import pytest

from service_health.assessment import assess_circuit_breaker, assess_mlflow
from service_health.assessment.mlflow_refusals import (
    RefusalKind,
    recognise_refusal,
    registry_refusals,
)
from service_health.models import CheckStatus
from service_health.observations import HttpObservation
from tests.domain import bodies as b
from tests.domain.helpers import messages

SEARCH = "/api/2.0/mlflow/experiments/search"
HOST_MSG = "Invalid Host header - possible DNS rebinding attack detected"
AUTH_MSG = (
    "You are not authenticated. Please see "
    "https://www.mlflow.org/docs/latest/auth/index.html#authenticating-to-mlflow "
    "on how to authenticate."
)
CLIENT_HOST_ERROR = (
    f"MlflowException: API request to endpoint {SEARCH} failed with error code 403 != 200. "
    f"Response body: '{HOST_MSG}'"
)
MLFLOW_OK = b.http("/health", 200, text="OK", content_type="text/plain")
ALLOWED_HOSTS_ADVICE = "add the load balancer's host name to mlflow's allowed hosts"


def search(status: int, text: str) -> HttpObservation:
    return b.http(SEARCH, status, text=text, method="POST", content_type="text/plain")


@pytest.mark.parametrize(
    ("status", "text", "kind"),
    [
        (403, HOST_MSG, RefusalKind.HOST_VALIDATION),
        (401, AUTH_MSG, RefusalKind.AUTHENTICATION),
        (401, "", RefusalKind.AUTHENTICATION),
        (403, "Permission denied", RefusalKind.PERMISSION),
        (403, "<html>403 Forbidden</html>", RefusalKind.PERMISSION),  # a proxy's own 403
        # The registry's error texts (status unknown): MLflow's client quotes the body.
        (None, CLIENT_HOST_ERROR, RefusalKind.HOST_VALIDATION),
        (None, f"MlflowHttpError: {HOST_MSG}", RefusalKind.HOST_VALIDATION),
        (None, "MlflowHttpError: MLflow answered HTTP 401", RefusalKind.AUTHENTICATION),
        (None, "401 Client Error: Unauthorized for url", RefusalKind.AUTHENTICATION),
        (None, "failed with error code 403 != 200. Response body: 'x'", RefusalKind.PERMISSION),
    ],
)
def test_recognised(status: int | None, text: str, kind: RefusalKind) -> None:
    refusal = recognise_refusal(status, text)
    assert refusal is not None and refusal.kind is kind


@pytest.mark.parametrize(
    ("status", "text"),
    [
        (200, HOST_MSG),  # only 401 and 403 are refusals
        (500, HOST_MSG),
        (404, "Not Found"),
        (None, "ConnectError: All connection attempts failed"),
        (None, "Circuit breaker is OPEN - MLflow unavailable (retry in 12s)"),
        (None, "PermissionError: [Errno 13] Permission denied: '/srv/cache'"),  # not MLflow's
        # A 503's body that mentions a refusal is still a 503.
        (None, "failed with error code 503 != 200. Response body: '<h1>401 Unauthorized</h1>'"),
        (None, "ConnectError: https://mlflow.internal:403/ unreachable"),
        (None, None),
    ],
)
def test_not_a_refusal(status: int | None, text: str | None) -> None:
    assert recognise_refusal(status, text) is None


def test_quote_is_the_servers_words_not_the_clients_wrapping() -> None:
    refusal = recognise_refusal(None, CLIENT_HOST_ERROR)
    assert refusal is not None
    assert refusal.quote == HOST_MSG
    assert refusal.status_code == 403


def test_host_validation_is_its_own_finding() -> None:
    # MLflow exempts /health from host validation: it stays green while the API refuses.
    result = assess_mlflow(MLFLOW_OK, search(403, HOST_MSG))
    assert result.status is CheckStatus.DEGRADED  # not UNHEALTHY: no restart is planned
    [finding] = [f for f in result.findings if f.severity != "info"]
    assert "MLflow rejects the Host header it is reached by" in finding.message
    assert HOST_MSG in finding.message and f"POST {SEARCH}" in finding.message
    assert finding.recommendation is not None
    assert ALLOWED_HOSTS_ADVICE in finding.recommendation.lower()
    assert finding.evidence == [f"POST {SEARCH}"]
    assert result.details["mlflow_refusal"] == "host_validation"
    assert "refusing" in (result.summary or "")
    assert "unreachable" not in messages(result) and "partly failing" not in messages(result)


def test_authentication_is_its_own_finding() -> None:
    result = assess_mlflow(MLFLOW_OK, search(401, AUTH_MSG))
    assert result.status is CheckStatus.DEGRADED
    [finding] = [f for f in result.findings if f.severity != "info"]
    assert finding.message.startswith("MLflow requires authentication (HTTP 401")
    assert finding.recommendation is not None
    assert "MLFLOW_TRACKING_USERNAME" in finding.recommendation
    assert "allowed hosts" not in finding.recommendation
    assert result.details["mlflow_refusal"] == "authentication"


def test_permission_is_its_own_finding() -> None:
    result = assess_mlflow(MLFLOW_OK, search(403, "Permission denied"))
    [finding] = [f for f in result.findings if f.severity != "info"]
    assert finding.message.startswith("MLflow refuses the request as forbidden (HTTP 403")
    assert result.details["mlflow_refusal"] == "permission"


@pytest.mark.parametrize(
    ("health", "search_obs", "words"),
    [
        (b.no_answer("/health"), b.no_answer(SEARCH), "unreachable or failing"),
        (MLFLOW_OK, search(500, "Internal Server Error"), "partly failing"),
    ],
)
def test_down_or_erroring_is_not_a_refusal(
    health: HttpObservation, search_obs: HttpObservation, words: str
) -> None:
    result = assess_mlflow(health, search_obs)
    assert words in messages(result)
    assert "mlflow_refusal" not in result.details
    assert ALLOWED_HOSTS_ADVICE not in " ".join(
        (f.recommendation or "").lower() for f in result.findings
    )


def _ready_with_mlflow_error(error: str) -> HttpObservation:
    body: dict[str, Any] = {
        "ready": False,
        "can_serve_traffic": True,
        "degraded_mode": True,
        "checks": [
            b.ready_check("database", True, True),
            b.ready_check("mlflow", False, False, error, True),
        ],
    }
    return b.http("/ready", 200, body)


def _closed_but_failing(replica: str, error: str) -> HttpObservation:
    obs = b.mlflow_health(failure_count=1, replica=replica, code=503)
    body: dict[str, Any] = obs.json_body()[0]
    body["connected"] = False
    body["error"] = error
    return b.http("/health/mlflow", 503, body, replica=replica)


def test_registry_view_quotes_and_attributes_the_refusal() -> None:
    a, c = "10.0.1.5:8000", "10.0.2.7:8000"
    ready = _ready_with_mlflow_error(CLIENT_HOST_ERROR)
    replicas = {
        a: _closed_but_failing(a, CLIENT_HOST_ERROR),
        c: _closed_but_failing(c, CLIENT_HOST_ERROR),
    }
    result = assess_circuit_breaker(replicas, ready)
    refused = [f for f in result.findings if "registry's MLflow calls are refused" in f.message]
    assert len(refused) == 1, messages(result)
    [finding] = refused
    assert "MLflow rejects the Host header it is reached by (HTTP 403 on GET /ready" in (
        finding.message
    )
    assert HOST_MSG in finding.message
    assert finding.evidence == ["GET /ready", f"GET {a}/health/mlflow", f"GET {c}/health/mlflow"]
    assert finding.recommendation is not None
    assert ALLOWED_HOSTS_ADVICE in finding.recommendation.lower()
    assert result.details["mlflow_refusal"] == "host_validation"


def test_registry_view_without_a_refusal_adds_nothing() -> None:
    ready = b.ready(breaker_open=True)
    replicas = {"10.0.1.5:8000": b.mlflow_health("OPEN", time_until_retry=5, replica="x")}
    assert registry_refusals(ready, list(replicas.values())) == []
    result = assess_circuit_breaker(replicas, ready)
    assert "refused" not in messages(result)
    assert "mlflow_refusal" not in result.details
