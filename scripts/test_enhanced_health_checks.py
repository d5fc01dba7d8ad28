#!/usr/bin/env -S uv run
"""Verify that the Hokusai registry service honours its health contract (seed-compatible).

Runs the flow test-enhanced-health-checks: the seed's eight tests (strict), liveness, and
two security tests (POST /health/mlflow/reset without a key and with a wrong key must be
refused). --read-only skips the security tests, the only requests that could change the
service.

Exit codes: 0 every test passed, 1 any test failed, 64 usage or configuration error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, NoReturn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts._common import EXIT_CONFIG, prepare_environment, run_flow, say, write_json


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """A usage error exits with 64, like any other configuration error."""
        self.print_usage(sys.stderr)
        self.exit(EXIT_CONFIG, f"{self.prog}: error: {message}\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = _Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--api-url", help="API base URL (default: target or API_URL)")
    p.add_argument("--api-key", help="API key (default: API_KEY); never stored or printed")
    p.add_argument("--output", type=Path, help="write the JSON results to this file")
    p.add_argument(
        "--verbose", action="store_true", help="show Prefect logs and what each passed test saw"
    )
    p.add_argument("--target", help="target name from targets.yaml (default: environment only)")
    p.add_argument(
        "--read-only",
        action="store_true",
        help="skip the two reset tests (POST /health/mlflow/reset), e.g. in production",
    )
    p.add_argument("--timeout", type=float, help="timeout of one request, seconds (default 5)")
    p.add_argument("--deadline", type=float, help="deadline for the read-only tests, seconds")
    return p.parse_args(argv)


async def _verify(args: argparse.Namespace) -> Any:
    from flows.verify_contract import verify_contract

    return await verify_contract(
        target=args.target or "env",
        api_url=args.api_url,
        read_only=args.read_only,
        deadline_seconds=args.deadline,
        request_timeout_seconds=args.timeout,
        return_state=True,
    )


def run(args: argparse.Namespace) -> int:
    from service_health.contract import ContractReport, contract_text

    report = run_flow(lambda: _verify(args), ContractReport, "contract tests", 1)
    if isinstance(report, int):
        return report
    say(contract_text(report, verbose=args.verbose))
    if args.output:
        write_json(args.output, report.to_seed_json())
        say(f"Results written to {args.output}")
    return report.exit_code


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    prepare_environment(verbose=args.verbose, api_key=args.api_key)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
