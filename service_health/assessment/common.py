"""Building blocks shared by the assessment rules."""

from __future__ import annotations

from typing import Any

from service_health.details import CheckFacts
from service_health.models import (
    CheckResult,
    CheckStatus,
    Finding,
    Severity,
    worst_status,
)
from service_health.observations import AwsObservation

_STATUS_OF: dict[Severity, CheckStatus] = {
    "critical": CheckStatus.UNHEALTHY,
    "warning": CheckStatus.DEGRADED,
    "info": CheckStatus.HEALTHY,
}


class ResultBuilder:
    """Collects findings and evidence; the status is the worst implied by what was added."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.findings: list[Finding] = []
        self.evidence: list[str] = []
        self.facts: CheckFacts | None = None
        self.details: dict[str, Any] = {}
        self.configuration_problem: str | None = None
        self.statuses: list[CheckStatus] = []

    def cite(self, *labels: str) -> None:
        for label in labels:
            if label not in self.evidence:
                self.evidence.append(label)

    def add(
        self,
        severity: Severity,
        message: str,
        recommendation: str | None = None,
        evidence: list[str] | None = None,
        status: CheckStatus | None = None,
    ) -> Finding:
        finding = Finding(
            severity=severity,
            message=message,
            recommendation=recommendation,
            evidence=list(evidence or []),
        )
        self.findings.append(finding)
        self.cite(*finding.evidence)
        if status is not None or severity != "info":
            # Info findings explain; they never move the status.
            self.statuses.append(status or _STATUS_OF[severity])
        return finding

    def critical(
        self, message: str, recommendation: str | None = None, evidence: list[str] | None = None
    ) -> Finding:
        return self.add("critical", message, recommendation, evidence)

    def warning(
        self,
        message: str,
        recommendation: str | None = None,
        evidence: list[str] | None = None,
        status: CheckStatus | None = CheckStatus.DEGRADED,
    ) -> Finding:
        return self.add("warning", message, recommendation, evidence, status)

    def info(self, message: str, evidence: list[str] | None = None) -> Finding:
        return self.add("info", message, None, evidence)

    def mark(self, status: CheckStatus) -> None:
        """Record a status without a finding (e.g. unhealthy already explained elsewhere)."""
        self.statuses.append(status)

    def build(
        self,
        summary: str,
        *,
        latency_ms: float | None = None,
        duration_ms: float | None = None,
        error: str | None = None,
        partial: bool = False,
        default: CheckStatus = CheckStatus.HEALTHY,
    ) -> CheckResult:
        status = worst_status(self.statuses) if self.statuses else default
        return CheckResult(
            name=self.name,
            status=status,
            duration_ms=duration_ms,
            latency_ms=latency_ms,
            facts=self.facts,
            details=self.details,
            configuration_problem=self.configuration_problem,
            error=error,
            evidence=self.evidence,
            findings=self.findings,
            partial=partial,
            summary=summary,
        )


DEGRADING = frozenset(
    {CheckStatus.DEGRADED, CheckStatus.RECOVERING, CheckStatus.ERROR, CheckStatus.UNHEALTHY}
)


def unexplained(name: str, check: CheckResult) -> Finding | None:
    """A warning for a degrading status that no finding explains (e.g. a check that ran out
    of time, built by the flow), so that it still reaches the warnings."""
    if check.status not in DEGRADING or any(f.severity != "info" for f in check.findings):
        return None
    cause = f": {check.error}" if check.error else ""
    return Finding(severity="warning", message=f"{name} is {check.status}{cause}")


def seconds(ms: float | None) -> str:
    return "?" if ms is None else f"{ms / 1000:.2f} s"


def plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


THROTTLING_CODES = {
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestLimitExceeded",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "SlowDown",
}
CREDENTIAL_CODES = {
    "NoCredentials",
    "NoCredentialsError",
    "PartialCredentials",
    "AccessDenied",
    "AccessDeniedException",
    "UnauthorizedOperation",
    "UnauthorizedException",
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "ExpiredToken",
    "ExpiredTokenException",
    "AuthFailure",
    "SignatureDoesNotMatch",
    "InvalidSignatureException",
}
# Credentials that could not be found or loaded, and clients that could not be set up.
MISSING_CREDENTIAL_CODES = {
    "NoCredentials",
    "NoCredentialsError",
    "PartialCredentials",
    "PartialCredentialsError",
    "ProfileNotFound",
    "ClientSetupError",  # e.g. the target's AwsCredentials block cannot be loaded
}
PERMISSION_CODES = {
    "AccessDenied",
    "AccessDeniedException",
    "UnauthorizedOperation",
    "UnauthorizedException",
}
REGION_CODES = {"UnknownRegion", "InvalidRegionError", "NoRegionError"}
ENDPOINT_CODES = {
    "EndpointConnectionError",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "ConnectionClosedError",
    "ProxyConnectionError",
}


def _said(text: str | None, limit: int = 160) -> str:
    words = " ".join((text or "").split())
    return words if len(words) <= limit else words[: limit - 3] + "..."


def configuration_problem(obs: AwsObservation) -> str | None:
    """One line naming the configuration mistake behind a failed AWS call, or None when the
    failure says something else (throttling, network, the resource itself)."""
    code = obs.error_code or ""
    if code in REGION_CODES:
        return f"AWS region: {_said(obs.error_message) or code} (calling {obs.label})"
    if code in MISSING_CREDENTIAL_CODES:
        return (
            f"AWS credentials: none usable for {obs.label} ({code}: {_said(obs.error_message)}); "
            "set them in the environment, a profile, the worker's IAM role or the target's "
            "AwsCredentials block"
        )
    if code in PERMISSION_CODES or (obs.http_status == 403 and code not in CREDENTIAL_CODES):
        return (
            f"AWS permission: {obs.label} refused to these credentials ({code or 'HTTP 403'}); "
            f"grant {obs.label} to the worker's IAM role or the target's AwsCredentials block"
        )
    if code in CREDENTIAL_CODES:
        return (
            f"AWS credentials: rejected by {obs.label} ({code}: {_said(obs.error_message)}); "
            "check the access key, secret and session token"
        )
    return None


def aws_error(builder: ResultBuilder, obs: AwsObservation, what: str) -> str | None:
    """Turn a failed AWS call into an `error` status with a warning; the error ("code:
    message"), or None when the call succeeded.

    The call failing says nothing about the resource's health, so it is never critical.
    """
    if obs.error_code is None and obs.response is not None:
        return None
    code = obs.error_code or "NoResponse"
    detail = f"{code}: {obs.error_message}" if obs.error_message else code
    evidence = [obs.label]
    if code in THROTTLING_CODES:
        builder.warning(
            f"AWS throttled {obs.label} while checking {what}; its state is unknown ({detail})",
            "Re-run later; if throttling persists, lower the diagnosis frequency or "
            "raise the API rate quota",
            evidence,
            CheckStatus.ERROR,
        )
    elif code in REGION_CODES:
        builder.warning(
            f"AWS region misconfigured for {obs.label}; {what} not checked ({detail})",
            "Set aws_region (AWS_REGION or --aws-region) to the region the service runs in",
            evidence,
            CheckStatus.ERROR,
        )
    elif code in CREDENTIAL_CODES | MISSING_CREDENTIAL_CODES or obs.http_status == 403:
        builder.warning(
            f"No AWS credentials or permission for {obs.label}; {what} not checked ({detail})",
            f"Give the worker's IAM role (or the target's AwsCredentials block) {obs.label}",
            evidence,
            CheckStatus.ERROR,
        )
    elif code in ENDPOINT_CODES:
        builder.warning(
            f"AWS API unreachable for {obs.label}; {what} not checked ({detail})",
            "Check the worker's network path to the AWS endpoint and the configured region",
            evidence,
            CheckStatus.ERROR,
        )
    else:
        builder.warning(
            f"{obs.label} failed while checking {what} ({detail})",
            "Check the resource names in the target configuration and the AWS console",
            evidence,
            CheckStatus.ERROR,
        )
    builder.details["aws_error"] = detail
    if builder.configuration_problem is None:
        builder.configuration_problem = configuration_problem(obs)
    return detail
