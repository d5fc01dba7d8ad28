"""The diagnose command line imports only what a run needs, when it needs it: the AWS,
database and Redis clients inside the tasks that use them, nothing of the sandbox without
`--sandbox` (README "Command line"). Structural: what a fresh interpreter has loaded."""

from __future__ import annotations

from tests.helpers import packages_loaded

HEAVY = {"boto3", "botocore", "s3transfer", "psycopg", "redis", "sandbox", "moto"}


def loaded(code: str) -> list[str]:
    return packages_loaded(code, HEAVY)


def test_importing_the_diagnose_flow_loads_no_client_and_no_sandbox() -> None:
    assert loaded("import flows.diagnose") == []


def test_the_command_line_loads_no_client_and_no_sandbox_before_its_run() -> None:
    # What the script holds when its run starts: its own module, its arguments, the flow.
    code = (
        "import scripts.diagnose_service_health as s\n"
        "s.parse_args(['--target', 'sandbox'])\n"
        "import flows.diagnose"
    )
    assert loaded(code) == []
