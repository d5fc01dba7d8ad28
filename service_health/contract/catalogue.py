"""The read-only contract tests: which endpoints each one reads and which judge decides.
Pure data; tasks/contract.py runs any of them with one generic task.

The two reset probes (the only requests that could change the service) are not here: they
POST, with credentials chosen by the flow, and run apart (see flows/verify_contract.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from service_health.contract import breaker, judges
from service_health.contract.models import MUTATING_TESTS, READ_ONLY_TESTS, Judgment
from service_health.endpoints import (
    HEALTH,
    HEALTH_DETAILED,
    HEALTH_MLFLOW,
    HEALTH_STATUS,
    LIVE,
    METRICS,
    READY,
)


@dataclass(frozen=True)
class ContractTest:
    """One read-only test: `judge` is called with one observation per path, in order."""

    name: str
    paths: tuple[str, ...]
    judge: Callable[..., Judgment]
    # The answers are read at slightly different moments, so a dependency that flickers
    # between them looks like a disagreement: a failed judgment is confirmed on a second,
    # simultaneous reading before it is reported.
    read_twice: bool = False


READ_ONLY: tuple[ContractTest, ...] = (
    ContractTest("basic_health", (HEALTH,), judges.judge_basic_health),
    ContractTest("detailed_health", (HEALTH_DETAILED,), judges.judge_detailed_health),
    ContractTest("readiness", (READY,), judges.judge_readiness),
    ContractTest("liveness", (LIVE,), judges.judge_liveness),
    ContractTest("mlflow_health", (HEALTH_MLFLOW,), breaker.judge_mlflow_health),
    ContractTest(
        "circuit_breaker_details", (HEALTH_MLFLOW,), breaker.judge_circuit_breaker_details
    ),
    ContractTest("service_status", (HEALTH_STATUS,), judges.judge_service_status),
    ContractTest("metrics", (METRICS,), judges.judge_metrics),
    ContractTest(
        "graceful_degradation",
        (HEALTH, READY, HEALTH_MLFLOW, METRICS),
        breaker.judge_graceful_degradation,
        read_twice=True,
    ),
)
assert tuple(t.name for t in READ_ONLY) == READ_ONLY_TESTS, "READ_ONLY follows DESCRIPTIONS"


@dataclass(frozen=True)
class ResetProbe:
    """One POST /health/mlflow/reset the contract wants refused."""

    name: str
    credentials: str  # as the judgment words them
    wrong_key: bool  # send a random wrong key (else no key at all)


RESET_PROBES: tuple[ResetProbe, ...] = (
    ResetProbe("reset_without_key_refused", "without a key", wrong_key=False),
    ResetProbe("reset_with_wrong_key_refused", "with a wrong key", wrong_key=True),
)
assert tuple(p.name for p in RESET_PROBES) == MUTATING_TESTS, "RESET_PROBES follow DESCRIPTIONS"
