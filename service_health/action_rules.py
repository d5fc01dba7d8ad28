"""What the recovery actions conclude from what they saw. Pure: no I/O.

The tasks in tasks/recovery/ make the calls; the judgements on the answers are here, where
they can be tested without a service: why a breaker reset failed, whether a target group
is healthy, and whether a failed ECS write may have been applied.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from enum import StrEnum

from pydantic import BaseModel

from service_health.assessment.common import THROTTLING_CODES
from service_health.aws_responses import TargetHealthEntry

# --- breaker resets -------------------------------------------------------------------------


def reset_refusal(
    status_code: int | None, detail: object, key_configured: bool, failure: str
) -> str:
    """Why POST /health/mlflow/reset did not succeed, for the recovery log.

    `detail` is the answer's `detail` field (any JSON value, or None); `failure` says what
    happened when there was no answer at all. A 401/403 is definitive: never retried.
    """
    if status_code == 401:
        return (
            "HTTP 401: the service requires the API key"
            + ("" if key_configured else " and none is configured (API_KEY or a Secret block)")
            + "; not retried"
        )
    if status_code == 403:
        return "HTTP 403: the API key was rejected (wrong key for this service); not retried"
    if status_code is not None:
        return f"HTTP {status_code}" + (f": {str(detail)[:200]}" if detail else "")
    return f"no answer ({failure})"


# --- ECS deployments ------------------------------------------------------------------------


class WriteFailure(StrEnum):
    """What a failed UpdateService says about whether it was applied."""

    NOT_APPLIED = "not_applied"  # refused before processing, or never sent: retry
    AMBIGUOUS = "ambiguous"  # may have been applied: ECS itself must say
    DEFINITIVE = "definitive"  # refused for good (permission, unknown service): stop


def classify_write_failure(code: str, http_status: int | None, *, sent: bool) -> WriteFailure:
    """The ambiguous-write rule of the forced deployment.

    `code` is AWS's error code (or the client error's class name), `http_status` that of
    AWS's answer (None: no answer), `sent` whether the request left the worker at all.
    Throttling is refused before processing, and a request never sent cannot apply: retry.
    A 5xx answer, or no answer to a request that left (a read timeout, a dropped
    connection), may have been applied. Any other answer is definitive.
    """
    if code in THROTTLING_CODES or not sent:
        return WriteFailure.NOT_APPLIED
    if http_status is None or http_status >= 500:
        return WriteFailure.AMBIGUOUS
    return WriteFailure.DEFINITIVE


def applied_after_ambiguity(before: str, current: str | None) -> bool | None:
    """After an ambiguous failure, what the service's primary deployment id says: a new one
    means the write applied (True), the same one that it did not (False), None unknown."""
    if current is None:
        return None
    return current != before


# --- target groups --------------------------------------------------------------------------


class GroupHealth(BaseModel):
    """One target group's health as the ALB check and the stabilisation wait judge it."""

    healthy: int
    total: int
    states: dict[str, int]  # state ("unknown" where none was given) -> how many targets
    unhealthy: list[str]  # "address (reason)" of each target neither healthy nor draining

    @classmethod
    def of(cls, targets: Sequence[TargetHealthEntry]) -> GroupHealth:
        states = dict(Counter(t.state or "unknown" for t in targets))
        return cls(
            healthy=states.get("healthy", 0),
            total=len(targets),
            states=states,
            unhealthy=[
                f"{t.address or t.id} ({t.reason or t.state})"
                for t in targets
                if t.state not in ("healthy", "draining")
            ],
        )

    @property
    def all_healthy(self) -> bool:
        """The verdict: targets registered, at least one healthy, none failing (a draining
        one is on its way out)."""
        return self.total > 0 and self.healthy > 0 and not self.unhealthy
