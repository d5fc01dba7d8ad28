"""Against the legacy flavour (docs/health-contract.md "Observed in a deployed version"):
every deviation is flagged by the test it concerns, with a readable diff."""

from __future__ import annotations

import httpx

from sandbox.client import SandboxProcess
from tests.contract.conftest import diffs, failed, verify


def replicas(sandbox: SandboxProcess) -> list[str]:
    return [
        r["address"] for r in sandbox.client.status()["services"]["hokusai-registry"]["replicas"]
    ]


def assert_flagged(report_diffs: dict[str, str], expectations: list[tuple[str, str, str]]) -> None:
    for deviation, test, words in expectations:
        assert words in report_diffs.get(test, ""), (
            f"{deviation!r}: {test} should say {words!r}; it says {report_diffs.get(test)!r}"
        )


def test_legacy_deviations_while_healthy(legacy: SandboxProcess) -> None:
    for address in replicas(legacy):
        # One MLflow call through each breaker, so that last_success_time is set.
        httpx.get(f"http://{address}/ready", timeout=15)
    state, report = verify(target="sandbox")
    assert state.name == "Failed" and state.is_failed()
    by_test = {name: "\n".join(r.diff) for name, r in report.tests.items()}
    assert_flagged(
        by_test,
        [
            ("/health is lightweight", "basic_health", "lightweight answer"),
            ("timestamps carry no time zone", "basic_health", "(no time zone)"),
            ("/health?detailed=true answers 500", "detailed_health",
             "HTTP status: expected 200 or 503; got HTTP 500"),
            ("/health/status answers 500 with its validation error", "service_status",
             "HTTP status: expected 200; got HTTP 500"),
            ("/health/status returns the validation error's text", "service_status",
             "validation error"),
            ("/ready has a failed non-critical check without degraded mode", "readiness",
             "non-critical check(s) model_warmup failed"),
            ("/live has no timestamp", "liveness", "`timestamp`: missing"),
            ("/health/mlflow timestamps carry no time zone", "mlflow_health", "(no time zone)"),
            ("time_until_retry 0 while CLOSED", "circuit_breaker_details",
             "`circuit_breaker_details.time_until_retry`: expected null while CLOSED; got 0"),
            ("epoch seconds in breaker details", "circuit_breaker_details",
             "`circuit_breaker_details.last_success_time`: expected ISO 8601"),
            ("/metrics without http_requests_total", "metrics", "`http_requests_total` missing"),
            ("/metrics without recovery attempts", "metrics",
             "`mlflow_circuit_breaker_recovery_attempts`: missing"),
            ("reset succeeds without credentials", "reset_without_key_refused",
             "the reset was accepted without a key"),
            ("reset succeeds with any key", "reset_with_wrong_key_refused",
             "the reset was accepted with a wrong key"),
        ],
    )  # fmt: skip
    # Consistent answers are not blamed: while healthy, the endpoints agree.
    assert "graceful_degradation" not in failed(report), diffs(report)


def test_legacy_deviations_with_the_breaker_open(legacy: SandboxProcess) -> None:
    legacy.client.fault("mlflow-down")
    for address in replicas(legacy):
        # The probe without the breaker leaves the MLflow error in /metrics' info label.
        assert httpx.get(f"http://{address}/api/health/mlflow", timeout=15).status_code == 503
    legacy.client.fault("breaker-stuck-open")
    state, report = verify(target="sandbox", read_only=True)  # a reset would close it
    assert state.name == "Failed"
    by_test = {name: "\n".join(r.diff) for name, r in report.tests.items()}
    assert_flagged(
        by_test,
        [
            ("/health/mlflow answers 500 once OPEN", "mlflow_health",
             "HTTP status: expected 200 or 503; got HTTP 500"),
            ("/health/mlflow says UNKNOWN once OPEN", "mlflow_health",
             "`circuit_breaker_state`: expected CLOSED, OPEN or HALF_OPEN; got 'UNKNOWN'"),
            ("no breaker details once OPEN", "circuit_breaker_details",
             "`circuit_breaker_details`: missing"),
            ("/health says healthy whatever the dependencies do", "graceful_degradation",
             "GET /health status: expected 'degraded' because the breaker is OPEN"),
            ("/ready says ready: false while it serves", "readiness",
             "`ready`: expected true, as can_serve_traffic"),
            ("an error message inside a label of mlflow_info_info", "metrics",
             "`mlflow_info_info`: expected bounded label values"),
        ],
    )  # fmt: skip
    assert report.summary.skipped == 2


def test_a_contract_run_leaves_an_open_breaker_open(legacy: SandboxProcess) -> None:
    """The deployed version accepts a keyless reset and really resets: the reset probes
    must not be sent where a reset would change something, read-only or not."""
    opened = legacy.client.force_breaker("OPEN")
    assert set(legacy.client.breaker_states().values()) == {"OPEN"}
    legacy.client.reset_request_counts()
    _, report = verify(target="sandbox")  # not read-only
    for name in ("reset_without_key_refused", "reset_with_wrong_key_refused"):
        result = report.tests[name]
        assert result.outcome.value == "skipped", result
        assert "does not read CLOSED" in result.actual["skipped"], result.actual
    states = legacy.client.breaker_states()
    assert [states[a] for a in opened] == ["OPEN"] * len(opened), states
    counts = legacy.client.request_counts()
    assert not any(c.get("POST /health/mlflow/reset") for c in counts.values()), counts
