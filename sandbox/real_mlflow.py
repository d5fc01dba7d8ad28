"""A real `mlflow server` as the sandbox's MLflow ECS task, configured as an operator would
configure it behind a load balancer.

MLflow 3.5+ validates the Host header of every API request (DNS rebinding protection) and,
by default, accepts only localhost, 127.0.0.1 and the private IPv4 ranges; `/health` and
`/version` are exempt. In the sandbox the "VPC" is 127.0.0.0/8, which MLflow does not count
as private, so with the defaults every API call arriving through the MLflow load balancer is
refused with 403 while `/health` stays green (issue 17). The allowed hosts are therefore:

- the load balancer's host name (``host:port`` of ``mlflow_url``): a real ALB forwards the
  client's Host header, so this is the name MLflow sees in production;
- the task address range (``127.0.*``): task addresses change with every deployment, so an
  operator allows the subnet (as MLflow's own ``10.*`` default does) rather than each
  address; it also covers proxies that rewrite Host to the upstream address, as the
  sandbox's load balancer stand-in does.

They are passed as ``MLFLOW_SERVER_ALLOWED_HOSTS`` rather than ``--allowed-hosts``: servers
older than 3.5 (the ``mlflow`` extra admits them) have no such option and would refuse to
start, while they ignore the variable and do no host validation at all. An
``MLFLOW_SERVER_ALLOWED_HOSTS`` already in ``up``'s environment wins, so a misconfigured
production server can be reproduced on purpose. CORS is left at MLflow's defaults: the
registry calls MLflow server to server, without an Origin header, which CORS never blocks.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from urllib.parse import urlsplit

ALLOWED_HOSTS_ENV = "MLFLOW_SERVER_ALLOWED_HOSTS"
# The range ecs.py hands task addresses out of.
TASK_ADDRESS_PATTERN = "127.0.*"
# MLflow's job runner (GenAI evaluation and scorer jobs) starts seven huey consumer
# processes next to the server; the registry only reads experiments, and the sandbox shares
# two cores with whatever else runs.
TASK_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def allowed_hosts(mlflow_url: str) -> str:
    """The Host header values the server accepts: the load balancer's, the tasks'."""
    return ",".join([urlsplit(mlflow_url).netloc, TASK_ADDRESS_PATTERN])


def server_argv(store: Path, host: str, port: int) -> list[str]:
    return [
        sys.executable, "-m", "mlflow", "server", "--host", host, "--port", str(port),
        "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
        "--default-artifact-root", str(store / "artifacts"),
        # One worker: each ECS task is one small process, and the sandbox shares two cores.
        "--workers", "1",
    ]  # fmt: skip


def real_mlflow_launcher(
    store: Path, mlflow_url: str
) -> tuple[Callable[[str, int], list[str]], dict[str, str]]:
    """(argv for a task at host:port, the task's environment) for the ECS simulation."""
    store.mkdir(parents=True, exist_ok=True)
    env = {
        **TASK_ENV,
        ALLOWED_HOSTS_ENV: os.environ.get(ALLOWED_HOSTS_ENV) or allowed_hosts(mlflow_url),
    }

    def argv(host: str, port: int) -> list[str]:
        return [
            sys.executable, "-m", "sandbox.real_mlflow",
            "--host", host, "--port", str(port), "--store", str(store),
        ]  # fmt: skip

    return argv, env


# -- the task itself ------------------------------------------------------------------------
#
# `mlflow server` is not one process: it spawns uvicorn (and, unless disabled, a job runner)
# and forwards SIGTERM to it, but a SIGKILL of the CLI leaves uvicorn serving, orphaned. An
# ECS task is a container: when it stops or crashes, every process in it goes. This wrapper
# is that container boundary: the server runs in its own process group, and a watchdog
# kills the whole group as soon as the wrapper is gone, however it went.


def _killpg(group: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # the group is already gone
        os.killpg(group, sig)


def _watchdog(group: int, read_end: int) -> None:
    """In a forked child: block until the wrapper's end of the pipe closes, then kill."""
    try:
        while os.read(read_end, 1):
            pass
    finally:
        _killpg(group, signal.SIGKILL)
        os._exit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="mlflow server as one ECS task")
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--store", type=Path, required=True)
    args = parser.parse_args(argv)

    server = subprocess.Popen(server_argv(args.store, args.host, args.port), start_new_session=True)
    read_end, write_end = os.pipe()
    if os.fork() == 0:
        os.close(write_end)
        _watchdog(server.pid, read_end)
    os.close(read_end)

    def stop(signum: int, _frame: FrameType | None) -> None:
        # A graceful stop (ECS StopTask): the whole group gets SIGTERM, as `docker stop` does.
        _killpg(server.pid, signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    code = server.wait()
    _killpg(server.pid, signal.SIGKILL)  # a uvicorn worker may outlive the CLI
    return code


if __name__ == "__main__":
    sys.exit(main())
