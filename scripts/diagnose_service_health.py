#!/usr/bin/env -S uv run
"""Diagnose the Hokusai registry service (seed-compatible command line).

Exit codes: 0 healthy, 1 degraded or warnings, 2 critical, 64 usage or configuration error
(including AWS credentials missing or refused and an unknown AWS region: the report is still
printed and written, with them as findings).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts._common import (
    EXIT_CONFIG,
    configuration_exit,
    exit_with,
    imports_without_gc,
    prepare_environment,
    run_flow,
    say,
    write_json,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--api-url", help="API base URL (default: target or API_URL)")
    p.add_argument("--api-key", help="API key (default: API_KEY); never stored or printed")
    p.add_argument("--aws-region", help="AWS region (default: target or AWS_REGION)")
    p.add_argument("--output", type=Path, help="write the JSON report to this file")
    p.add_argument("--verbose", action="store_true", help="show Prefect and check logs")
    p.add_argument("--target", help="target name from targets.yaml (default: environment only)")
    p.add_argument(
        "--sandbox", action="store_true", help="start the embedded sandbox and diagnose it"
    )
    p.add_argument("--deadline", type=float, help="deadline for the check phase, seconds")
    try:
        return p.parse_args(argv)
    except SystemExit as exc:  # bad flags are a usage error: 64, as the seed tools' callers expect
        raise SystemExit(EXIT_CONFIG if exc.code else 0) from None


async def _diagnose(args: argparse.Namespace) -> Any:
    from flows.diagnose import diagnose_service_health

    return await diagnose_service_health(
        target=args.target or "env",
        api_url=args.api_url,
        aws_region=args.aws_region,
        deadline_seconds=args.deadline,
        return_state=True,
    )


def run(args: argparse.Namespace) -> int:
    with imports_without_gc():
        import flows.diagnose  # noqa: F401  (what the run needs, loaded here: see the helper)
        from service_health.models import DiagnosticReport
        from service_health.rendering import diagnosis_text

    report = run_flow(lambda: _diagnose(args), DiagnosticReport, "diagnosis", 2)
    if isinstance(report, int):
        return report
    say(diagnosis_text(report))
    if args.output:
        write_json(args.output, report.to_seed_json())
        say(f"\nReport written to {args.output}")
    # The report carries AWS configuration mistakes as findings; the exit code says them.
    configuration = configuration_exit(report.configuration_problems())
    return report.overall_status.exit_code if configuration is None else configuration


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    prepare_environment(verbose=args.verbose, api_key=args.api_key)
    if not args.sandbox:
        return run(args)
    from scripts._sandbox import SandboxError, running_sandbox

    say("Starting the sandbox (PostgreSQL, Redis, MLflow, registry replicas, AWS)...")
    # SIGTERM ends the run through the usual exceptions, so the sandbox is stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    try:
        with running_sandbox() as env:
            os.environ.update(env)
            args.target = args.target or "sandbox"
            return run(args)
    except SandboxError as exc:
        say(str(exc), err=True)
        return 2


if __name__ == "__main__":
    exit_with(main())
