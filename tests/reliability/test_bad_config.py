"""Bad configuration: each command line says what is wrong in one line and exits 64.

The cases, recorded on the session's Prefect server: an unknown target, invalid URLs (a
password in one masked), malformed targets files, bad thresholds, and the AWS side (no
credentials, a credentials block that does not exist, a permission refused, credentials
AWS does not know, an unknown or malformed region) against a real moto server with IAM
authentication switched on. Six cases, covering the three commands, run the real command
line as a subprocess (its whole stderr must be that one line); the others run the
command's own `run()` in this process. The AWS cases still print and
write the whole report (the failures are findings in it); the exit code says that the
configuration, not the service, is at fault. A network failure towards AWS is not a
configuration problem: it keeps the seed's exit codes.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest

from tests.helpers import wait_for
from tests.reliability.figures import record

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = {
    "diagnose": ROOT / "scripts" / "diagnose_service_health.py",
    "recover": ROOT / "scripts" / "recover_service.py",
    "contract": ROOT / "scripts" / "test_enhanced_health_checks.py",
}
# Environment variables a target reads: none may leak in from the developer's shell.
TARGET_VARS = {
    "API_URL", "API_KEY", "MLFLOW_TRACKING_URI", "DATABASE_URL", "POSTGRES_URI", "REDIS_URL",
    "REDIS_HOST", "REDIS_PORT", "REDIS_PASSWORD", "ECS_CLUSTER", "ECS_SERVICES",
    "MLFLOW_ECS_SERVICE", "ALB_NAMES", "TARGET_GROUPS", "MLFLOW_TARGET_GROUPS", "RDS_INSTANCES",
    "ALARM_PREFIX", "REPLICA_DISCOVERY", "HOKUSAI_TARGETS_FILE",
}  # fmt: skip
DB_CANARY = "canary-PW-cfg-51c2"
SECTION = "Bad configuration"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Case:
    name: str
    script: str
    args: list[str]
    expect: str  # words the one line on stderr must contain
    env: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # targets files to write, by name
    code: int = 64
    aws: bool = False  # the whole report is printed and written, AWS failures in it
    cli: bool = False  # through a real command line (else the command's run(), in process)
    slow: bool = False  # waits on the network (DNS lookups, AWS retries)


@dataclass
class Ran:
    case: Case
    proc: subprocess.CompletedProcess[str]
    output: Path
    seconds: float


@pytest.fixture(scope="module")
def moto_with_iam(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A moto server that checks IAM: a user without any policy, and its access key."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "2"},  # the two calls below
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:

        def up() -> bool:
            try:
                return httpx.get(f"{url}/moto-api/", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, 30, "moto to listen")
        iam = boto3.client(
            "iam",
            endpoint_url=url,
            region_name="us-east-1",
            aws_access_key_id="bootstrap",
            aws_secret_access_key="bootstrap",
        )
        iam.create_user(UserName="no-permissions")
        key = iam.create_access_key(UserName="no-permissions")["AccessKey"]
        # moto loads each service's backend on first use (seconds): do it now, meanwhile.
        threading.Thread(target=_warm, args=(url,), daemon=True).start()
        yield {"url": url, "key": key["AccessKeyId"], "secret": key["SecretAccessKey"]}
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def _warm(url: str) -> None:
    session: Any = boto3.Session(aws_access_key_id="warm", aws_secret_access_key="warm")
    calls = {"ecs": "list_clusters", "elbv2": "describe_load_balancers",
             "rds": "describe_db_instances", "cloudwatch": "describe_alarms"}  # fmt: skip
    for service, call in calls.items():
        client = session.client(service, endpoint_url=url, region_name="us-east-1")
        with contextlib.suppress(Exception):  # refused, as every call here: loaded anyway
            getattr(client, call)()


def cases(moto: dict[str, str]) -> list[Case]:
    """Through a real command line (`cli`) for one case of each kind; the variants run the
    same code in this process (`run()` of the command, on the same Prefect server)."""
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens: the API is unreachable
    aws_target = {
        "API_URL": closed,
        "ECS_CLUSTER": "hokusai",
        "ECS_SERVICES": "hokusai-registry",
        "TARGET_GROUPS": "registry-tg",
        "RDS_INSTANCES": "registry-db",
        "ALARM_PREFIX": "hokusai-",
        "AWS_REGION": "us-east-1",
    }
    with_moto = {**aws_target, "AWS_ENDPOINT_URL": moto["url"]}
    no_permission = {
        **with_moto, "AWS_ACCESS_KEY_ID": moto["key"], "AWS_SECRET_ACCESS_KEY": moto["secret"]
    }  # fmt: skip
    fake_keys = {"AWS_ACCESS_KEY_ID": "AKIAFAKEFAKEFAKE", "AWS_SECRET_ACCESS_KEY": "fake"}
    unreachable = {**aws_target, **fake_keys, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}
    return [
        # -- real command lines: one of each kind ----------------------------------------
        Case("unknown target", "diagnose", ["--target", "nope"], "unknown target 'nope'",
             cli=True),
        Case("API URL unparseable", "contract", ["--api-url", "http://[::1"],
             "is not a valid URL", cli=True),
        Case("targets file not YAML", "diagnose", ["--target", "t"], "not valid YAML",
             files={"targets.yaml": "targets: [unclosed\n  t: {"}),
        Case("AWS permission refused (AccessDenied)", "diagnose", [], "AWS permission:",
             env=no_permission, aws=True, cli=True),
        Case("no AWS credentials (recover)", "recover", ["--dry-run"],
             "AWS credentials: none usable", env=with_moto, aws=True, cli=True),
        Case("unknown AWS region", "diagnose", ["--aws-region", "us-east-99"],
             "AWS region: AWS region 'us-east-99' is not a region botocore knows",
             env={**aws_target, **fake_keys}, aws=True, cli=True, slow=True),
        Case("AWS endpoint unreachable: the network, not the configuration", "diagnose",
             ["--deadline", "4"], "", code=2, env=unreachable, aws=True, cli=True, slow=True),
        # -- the same code paths, in this process ------------------------------------------
        Case("unknown target (contract)", "contract", ["--target", "nope"], "unknown target"),
        Case("no API URL at all", "diagnose", [], "api_url is not set"),
        Case("API URL without a scheme", "diagnose", ["--api-url", "registry:8000"],
             "must use http:// or https://"),
        Case("API URL without a host", "contract", ["--api-url", "http://"], "has no host"),
        Case("database URL of another scheme, password masked", "diagnose", [],
             "must use postgres:// or postgresql://",
             env={"API_URL": closed, "DATABASE_URL": f"mysql://app:{DB_CANARY}@db/app"}),
        Case("database URL missing its scheme, password masked", "diagnose", [],
             "must use postgres:// or postgresql://",
             env={"API_URL": closed, "DATABASE_URL": f"app:{DB_CANARY}@db:5432/app"}),
        Case("targets file missing", "diagnose", ["--target", "t"], "not found",
             env={"HOKUSAI_TARGETS_FILE": "/nonexistent/targets.yaml"}),
        Case("targets file is a directory", "diagnose", ["--target", "t"], "cannot be read",
             env={"HOKUSAI_TARGETS_FILE": "/"}),
        Case("targets file not a mapping", "contract", ["--target", "t"],
             "must be a mapping", files={"targets.yaml": "- t\n- u\n"}),
        Case("targets file with an unknown field", "diagnose", ["--target", "t"],
             "colour: unknown field",
             files={"targets.yaml": "targets:\n  t: {api_url: 'http://x', colour: blue}\n"}),
        Case("targets file with a threshold of the wrong type", "contract", ["--target", "t"],
             "thresholds.deadline_s",
             files={"targets.yaml": "targets:\n  t:\n    api_url: http://x\n"
                                    "    thresholds: {deadline_s: soon}\n"}),
        Case("negative deadline", "diagnose", ["--api-url", closed, "--deadline", "-5"],
             "deadline_s: Input should be greater than 0"),
        Case("request timeout not a number", "contract", ["--api-url", closed, "--timeout", "nan"],
             "request_timeout_s"),
        Case("no AWS credentials", "diagnose", [], "AWS credentials: none usable",
             env=with_moto, aws=True),
        Case("AWS credentials unknown to AWS (InvalidClientTokenId)", "diagnose", [],
             "AWS credentials: rejected", env={**with_moto, **fake_keys}, aws=True),
        Case("malformed AWS region", "diagnose", ["--aws-region", "us east 1"],
             "AWS region:", env={**aws_target, **fake_keys}, aws=True),
        Case("AWS credentials block that does not exist", "diagnose", [],
             "AWS credentials: none usable", aws=True,
             env={**with_moto, **fake_keys, "AWS_CREDENTIALS_BLOCK": "no-such-block"}),
    ]  # fmt: skip


def clean_env(home: Path, prefect_api: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("AWS_") and k not in TARGET_VARS and k != "PYTEST_CURRENT_TEST"
    }
    env.update(
        {
            "PREFECT_API_URL": prefect_api,
            "HOME": str(home),  # no ~/.aws here
            "PREFECT_HOME": os.environ.get("PREFECT_HOME", str(Path.home() / ".prefect")),
            "AWS_CONFIG_FILE": str(home / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(home / "no-aws-credentials"),
            "AWS_EC2_METADATA_DISABLED": "true",  # no instance-role lookup on a laptop
        }
    )
    return env


def _case_dir(case: Case, base: Path) -> tuple[Path, dict[str, str]]:
    here = base / case.name.replace(" ", "-").replace("/", "-").replace(":", "")
    here.mkdir(parents=True)
    extra = dict(case.env)
    for name, text in case.files.items():
        (here / name).write_text(text)
        extra["HOKUSAI_TARGETS_FILE"] = str(here / name)
    return here, extra


def run_command_line(case: Case, base: Path, env: dict[str, str]) -> Ran:
    here, extra = _case_dir(case, base)
    output = here / "out.json"
    args = [*case.args, "--output", str(output)] if case.aws else case.args
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS[case.script]), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**env, **extra},
        cwd=here,
    )
    return Ran(case, proc, output, round(time.monotonic() - started, 1))


def run_in_process(case: Case, base: Path, env: dict[str, str]) -> Ran:
    """The command's own `run(args)` (what main() calls after its environment set-up)."""
    here, extra = _case_dir(case, base)
    output = here / "out.json"
    args = [*case.args, "--output", str(output)] if case.aws else case.args
    module = importlib.import_module(f"scripts.{SCRIPTS[case.script].stem}")
    out, err = io.StringIO(), io.StringIO()
    started = time.monotonic()
    with pytest.MonkeyPatch.context() as mp:
        for key in os.environ:
            if key.startswith("AWS_") or key in TARGET_VARS:
                mp.delenv(key)
        for key, value in {**env, **extra}.items():
            if key != "PREFECT_API_URL":  # the harness already points this process at it
                mp.setenv(key, value)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = module.run(module.parse_args(args))
    proc = subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())
    return Ran(case, proc, output, round(time.monotonic() - started, 1))


@pytest.fixture(scope="module")
def runs(
    prefect_server: str, moto_with_iam: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Ran]:
    """Every case: the command lines a few at a time, the in-process ones meanwhile."""
    base = tmp_path_factory.mktemp("bad-config")
    env = clean_env(base, prefect_server)
    all_cases = cases(moto_with_iam)
    # The command lines waiting on the network (DNS, AWS retries) go first.
    clis_first = sorted((c for c in all_cases if c.cli), key=lambda c: not c.slow)
    # Four at a time: two of them mostly wait on the network.
    with ThreadPoolExecutor(max_workers=4) as pool:
        clis = [pool.submit(run_command_line, c, base, env) for c in clis_first]
        done = [run_in_process(c, base, env) for c in all_cases if not c.cli]
        done += [future.result() for future in clis]
    return {ran.case.name: ran for ran in done}


NAMES = [c.name for c in cases({"url": "", "key": "", "secret": ""})]


@pytest.mark.parametrize("name", NAMES)
def test_bad_configuration_is_one_line_and_exit_64(name: str, runs: dict[str, Ran]) -> None:
    ran = runs[name]
    case, proc = ran.case, ran.proc
    shown = f"exit {proc.returncode}\nout:\n{proc.stdout[-2000:]}\nerr:\n{proc.stderr[-2000:]}"
    assert proc.returncode == case.code, shown
    assert "Traceback" not in proc.stdout + proc.stderr, shown
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    if case.code == 64:
        said = [line for line in lines if line.startswith("configuration error: ")]
        # A command line prints that one line only; in process, Prefect's console logs of
        # the run (which main() keeps off the terminal) are in the same stream.
        assert len(said) == 1 and (len(lines) == 1 or not case.cli), shown
        assert case.expect in said[0], shown
        assert len(said[0]) <= 400, shown
    assert DB_CANARY not in proc.stdout + proc.stderr
    if case.aws:
        # The report (or recovery log) is still printed and written, the failures in it.
        assert proc.stdout.strip(), shown
        data = json.loads(ran.output.read_text())
        text = json.dumps(data)
        if case.code == 64:
            assert "configuration_problem" in text, text[:2000]
        if case.script == "diagnose":
            assert data["checks"]["aws_infrastructure"]["status"] == "error", text[:2000]
            assert data["warnings"], text[:2000]


def test_figures(runs: dict[str, Ran]) -> None:
    """Record what was tried (after the cases above, which share the same runs)."""
    config = [r for r in runs.values() if r.case.code == 64]
    clis = sum(1 for r in runs.values() if r.case.cli)
    record(
        "bad configurations tried",
        len(runs),
        section=SECTION,
        detail=f"{clis} through real command lines, the others through the command's run() "
        "in process: unknown target, invalid URLs, malformed targets files, bad thresholds, "
        "no AWS credentials, a missing credentials block, AccessDenied, unknown AWS keys, "
        "unknown and malformed regions, an unreachable AWS endpoint (not a configuration "
        "problem: exit 2)",
    )
    said_once = [
        r
        for r in config
        if r.proc.returncode == 64
        and sum(line.startswith("configuration error: ") for line in r.proc.stderr.splitlines())
        == 1
    ]
    record(
        "configuration mistakes answered with exit 64 and one line",
        len(said_once),
        section=SECTION,
        detail=f"of {len(config)}; no traceback in any output; the AWS ones still print and "
        "write the whole report, the failures in it as findings",
    )
