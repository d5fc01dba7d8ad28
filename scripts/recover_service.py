#!/usr/bin/env -S uv run
"""Recover the Hokusai registry service (seed-compatible command line).

Diagnoses, plans the recovery by fixed rules, prints the plan and applies it (with
--dry-run: only shows it; nothing is changed).

Exit codes: 0 the service ends healthy (or already was), 1 otherwise (including a dry run
that found work to do), 64 usage or configuration error (including AWS credentials missing
or refused and an unknown AWS region, met by the diagnosis; the log is still printed).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts._common import (
    EXIT_CONFIG,
    configuration_exit,
    prepare_environment,
    run_flow,
    say,
    write_json,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from service_health.settings import COOLDOWN_S, STABILIZATION_TIMEOUT_S

    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--dry-run", action="store_true", help="show the plan; change nothing")
    p.add_argument("--api-url", help="API base URL (default: target or API_URL)")
    p.add_argument("--api-key", help="API key (default: API_KEY); never stored or printed")
    p.add_argument("--aws-region", help="AWS region (default: target or AWS_REGION)")
    p.add_argument("--output", type=Path, help="write the recovery log as JSON to this file")
    p.add_argument("--verbose", action="store_true", help="show Prefect and task logs")
    p.add_argument("--target", help="target name from targets.yaml (default: environment only)")
    p.add_argument(
        "--stabilization-timeout",
        type=float,
        default=STABILIZATION_TIMEOUT_S,
        help="longest wait for the service to stabilise, seconds (default %(default)g)",
    )
    p.add_argument(
        "--cooldown",
        type=float,
        default=COOLDOWN_S,
        help="do not restart an ECS service restarted less than this many seconds ago "
        "(default %(default)g)",
    )
    p.add_argument(
        "--approve-rollback",
        action="store_true",
        help="the operator running this command approves a rollback the plan contains "
        "(otherwise it waits for approval on the Prefect server)",
    )
    try:
        return p.parse_args(argv)
    except SystemExit as exc:
        raise SystemExit(EXIT_CONFIG if exc.code else 0) from None


async def _recover(args: argparse.Namespace) -> Any:
    from flows.recover import recover_service

    return await recover_service(
        target=args.target or "env",
        dry_run=args.dry_run,
        require_approval=False,
        stabilization_timeout_seconds=args.stabilization_timeout,
        cooldown_seconds=args.cooldown,
        api_url=args.api_url,
        aws_region=args.aws_region,
        return_state=True,
    )


def approve_rollback_here() -> None:
    """The operator at the terminal is the approver: the target allows this run's rollback.

    Set in this process's environment, where the target's settings are read from, so the
    flow's one approval rule decides as for a target that allows automatic rollback."""
    os.environ["ALLOW_AUTOMATIC_ROLLBACK"] = "true"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    prepare_environment(verbose=args.verbose, api_key=args.api_key)
    if args.approve_rollback:
        approve_rollback_here()
    from service_health.recovery import RecoveryResult
    from service_health.recovery_rendering import result_text

    result = run_flow(lambda: _recover(args), RecoveryResult, "recovery", 1)
    if isinstance(result, int):
        return result
    say(result_text(result))  # the plan, the recovery log and the outcome
    if args.output:
        write_json(args.output, result.to_seed_json())
        say(f"\nRecovery log written to {args.output}")
    configuration = configuration_exit(result.configuration_problems)
    return result.exit_code if configuration is None else configuration


if __name__ == "__main__":
    sys.exit(main())
