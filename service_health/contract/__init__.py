"""The health contract (docs/health-contract.md), judged. Pure: no I/O, no Prefect.

- models: what each test verifies (DESCRIPTIONS), one test's `Judgment` and result, the
  `ContractReport` under the seed's JSON names;
- judging: the `Judge` collecting expected/actual/diff, and the helpers judges share
  (the common opening: a status code the contract allows, then a JSON object);
- judges: the tests of one endpoint each (/health, /health?detailed=true, /ready, /live,
  /health/status, /metrics);
- breaker: the tests of the circuit breaker (/health/mlflow and its details, graceful
  degradation across endpoints, the reset refused) and when the reset probes are safe;
- catalogue: which endpoints each read-only test reads and which judge decides;
- rendering: the table artifact, markdown and terminal text.
"""

from service_health.contract.breaker import (
    judge_circuit_breaker_details,
    judge_graceful_degradation,
    judge_mlflow_health,
    judge_reset_refused,
    reset_probes_unsafe,
)
from service_health.contract.catalogue import READ_ONLY, RESET_PROBES, ContractTest, ResetProbe
from service_health.contract.judges import (
    judge_basic_health,
    judge_detailed_health,
    judge_liveness,
    judge_metrics,
    judge_readiness,
    judge_service_status,
)
from service_health.contract.models import (
    DESCRIPTIONS,
    MUTATING_TESTS,
    READ_ONLY_TESTS,
    ContractOutcome,
    ContractReport,
    ContractSummary,
    ContractTestResult,
    Judgment,
    build_contract_report,
)
from service_health.contract.rendering import contract_markdown, contract_text, tests_table

__all__ = [
    "DESCRIPTIONS",
    "MUTATING_TESTS",
    "READ_ONLY",
    "READ_ONLY_TESTS",
    "RESET_PROBES",
    "ContractOutcome",
    "ContractReport",
    "ContractSummary",
    "ContractTest",
    "ContractTestResult",
    "Judgment",
    "ResetProbe",
    "build_contract_report",
    "contract_markdown",
    "contract_text",
    "judge_basic_health",
    "judge_circuit_breaker_details",
    "judge_detailed_health",
    "judge_graceful_degradation",
    "judge_liveness",
    "judge_metrics",
    "judge_mlflow_health",
    "judge_readiness",
    "judge_reset_refused",
    "judge_service_status",
    "reset_probes_unsafe",
    "tests_table",
]
