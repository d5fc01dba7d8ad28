"""What a running MLflow server refuses, and why: host validation, authentication, permission.

A refusing MLflow is not a down one. Since 3.5 `mlflow server` validates the Host header of
every API request (DNS rebinding protection) and answers 403 "Invalid Host header - possible
DNS rebinding attack detected" to names outside its allowed hosts, while `/health` and
`/version` stay exempt and green; with its auth app it answers 401 "You are not
authenticated" without credentials and 403 "Permission denied" without the permission.
Restarting MLflow or resetting the registry's breaker fixes none of these: each needs a
configuration change, so each is its own finding with its own recommendation.

The same words reach the registry's own view: its MLflow client quotes the response body in
the error it reports (MLflow's client: "API request to endpoint ... failed with error code
403 != 200. Response body: '...'"), which /ready's mlflow check and /health/mlflow carry.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from service_health.assessment.common import ResultBuilder
from service_health.observations import HttpObservation
from service_health.parsing import parse_mlflow_health, parse_ready

# mlflow/server/security_utils.py INVALID_HOST_MSG, and the phrase it rests on.
_HOST_VALIDATION_MARKERS = ("invalid host header", "dns rebinding")
# mlflow/server/auth make_basic_auth_response(). Its 403 "Permission denied" is told by the
# status alone: the words are too common to stand for MLflow's without one.
_AUTHENTICATION_MARKERS = ("you are not authenticated",)
# A status code inside an error text: "error code 403", "HTTP 401", "status 403"; failing
# that, a refusal's reason phrase: "403 Forbidden", "401 Client Error: Unauthorized".
_STATUS_IN_TEXT = re.compile(r"(?:error code|http|status(?: code)?)\s*[:=]?\s*(\d{3})\b", re.I)
_REFUSAL_PHRASE = re.compile(r"\b(401|403)\s+(?:forbidden|unauthorized|client error)", re.I)
_QUOTE_LIMIT = 200
# MLflow's client puts the server's answer after this in its exception text.
_RESPONSE_BODY = re.compile(r"response body:\s*(.*)", re.IGNORECASE | re.DOTALL)
_MLFLOW_CHECK_NAMES = ("mlflow", "mlflow_service", "mlflow_tracking")
# Detail key naming the refusal on the check that found it.
REFUSAL_DETAIL = "mlflow_refusal"


class RefusalKind(StrEnum):
    HOST_VALIDATION = "host_validation"
    AUTHENTICATION = "authentication"
    PERMISSION = "permission"


_WHAT = {
    RefusalKind.HOST_VALIDATION: "MLflow rejects the Host header it is reached by",
    RefusalKind.AUTHENTICATION: "MLflow requires authentication",
    RefusalKind.PERMISSION: "MLflow refuses the request as forbidden",
}
_RECOMMENDATION = {
    RefusalKind.HOST_VALIDATION: (
        "Add the load balancer's host name to MLflow's allowed hosts (mlflow server "
        "--allowed-hosts, or MLFLOW_SERVER_ALLOWED_HOSTS; MLflow 3.5+ accepts only localhost "
        "and private IPs by default); restarting MLflow or resetting the breaker will not help"
    ),
    RefusalKind.AUTHENTICATION: (
        "Give the registry MLflow credentials (MLFLOW_TRACKING_USERNAME and "
        "MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN) matching the server's auth "
        "(mlflow server --app-name basic-auth); restarting MLflow or resetting the breaker "
        "will not help"
    ),
    RefusalKind.PERMISSION: (
        "Grant the registry's MLflow user permission on the experiments it uses (MLflow auth "
        "permissions), or check the proxy in front of MLflow that answers 403; restarting "
        "MLflow or resetting the breaker will not help"
    ),
}


@dataclass(frozen=True)
class MlflowRefusal:
    kind: RefusalKind
    status_code: int | None
    quote: str  # the refusing answer's own words, shortened

    @property
    def what(self) -> str:
        return _WHAT[self.kind]

    @property
    def recommendation(self) -> str:
        return _RECOMMENDATION[self.kind]

    def describe(self, where: str) -> str:
        """ "MLflow rejects ... (HTTP 403 on POST /api/...: "Invalid Host header ...")"."""
        status = f"HTTP {self.status_code} " if self.status_code else ""
        quote = f': "{self.quote}"' if self.quote else ""
        return f"{self.what} ({status}on {where}{quote})"


def _status_in(text: str) -> int | None:
    # The status the text states comes first: an answer quoted after "error code 503" is a
    # 503's body, whatever it mentions.
    match = _STATUS_IN_TEXT.search(text) or _REFUSAL_PHRASE.search(text)
    return int(match.group(1)) if match else None


def _quote(text: str) -> str:
    """The server's own words: the response body a client's error text quotes, if any."""
    quoted = _RESPONSE_BODY.search(text)
    if quoted is not None:
        text = quoted.group(1).strip().strip("'\"")
    line = " ".join(text.split())
    return line if len(line) <= _QUOTE_LIMIT else line[: _QUOTE_LIMIT - 1] + "…"


def recognise_refusal(status_code: int | None, text: str | None) -> MlflowRefusal | None:
    """The refusal an MLflow answer (status and body) or an error text (status None: a
    registry's error message quoting MLflow) shows, or None.

    Only 401 and 403 are refusals: a 200 or a 500 whose text happens to mention a host
    header is something else.
    """
    body = text or ""
    lowered = body.lower()
    status = status_code if status_code is not None else _status_in(body)
    if status is not None and status not in (401, 403):
        return None
    if any(m in lowered for m in _HOST_VALIDATION_MARKERS) and status != 401:
        return MlflowRefusal(RefusalKind.HOST_VALIDATION, status, _quote(body))
    if status == 401 or any(m in lowered for m in _AUTHENTICATION_MARKERS):
        return MlflowRefusal(RefusalKind.AUTHENTICATION, status, _quote(body))
    # Without a status, "permission denied" alone may be a file-system error: not MLflow's.
    if status == 403:
        return MlflowRefusal(RefusalKind.PERMISSION, status, _quote(body))
    return None


def observed_refusal(obs: HttpObservation) -> MlflowRefusal | None:
    """The refusal in a direct answer from MLflow."""
    if not obs.answered:
        return None
    return recognise_refusal(obs.status_code, obs.body_text)


def registry_refusals(
    ready: HttpObservation | None, mlflow_health: list[HttpObservation]
) -> list[tuple[str, MlflowRefusal]]:
    """(evidence label, refusal) for each registry answer whose MLflow error text quotes a
    refusal: /ready's mlflow check, /health/mlflow's `error`."""
    found: list[tuple[str, MlflowRefusal]] = []
    if ready is not None and ready.answered:
        check = parse_ready(ready).check(*_MLFLOW_CHECK_NAMES)
        if check is not None and check.passed is False and check.error:
            refusal = recognise_refusal(None, check.error)
            if refusal is not None:
                found.append((ready.label, refusal))
    for obs in mlflow_health:
        if not obs.answered:
            continue
        error = parse_mlflow_health(obs).error
        refusal = recognise_refusal(None, error) if error else None
        if refusal is not None:
            found.append((obs.label, refusal))
    return found


def add_registry_refusal_findings(
    b: ResultBuilder, ready: HttpObservation | None, mlflow_health: list[HttpObservation]
) -> None:
    """One warning per kind of refusal the registry reports, quoting it and citing where.

    The registry's error text only shows the cause while its breaker still calls MLflow
    (CLOSED, or HALF_OPEN trials); once OPEN it says "circuit breaker open", and only the
    direct mlflow_service check still sees the refusal.
    """
    by_kind: dict[RefusalKind, list[tuple[str, MlflowRefusal]]] = {}
    for label, refusal in registry_refusals(ready, mlflow_health):
        by_kind.setdefault(refusal.kind, []).append((label, refusal))
    for kind, items in by_kind.items():
        labels = list(dict.fromkeys(label for label, _ in items))
        first_label, first = items[0]
        b.warning(
            f"The registry's MLflow calls are refused: {first.describe(first_label)}",
            first.recommendation,
            labels,
        )
        b.details.setdefault(REFUSAL_DETAIL, str(kind))
