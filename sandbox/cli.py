"""`python -m sandbox`: up, fault, heal, status, requests, breaker, demo."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from sandbox import statefiles
from sandbox.faultnames import BAD_DEPLOY_MODES, FAULTS, LATENCY_COMPONENTS

DEFAULT_STATE_DIR = Path(os.environ.get("SANDBOX_STATE_DIR", ".sandbox"))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sandbox", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start the whole system in the foreground")
    up.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    up.add_argument("--registry-flavor", choices=["contract", "legacy"], default="contract")
    up.add_argument("--mlflow", choices=["stub", "real"], default="stub")
    up.add_argument("--replicas", type=int, default=2, help="registry replicas (ECS desired)")

    def control(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
        sp.add_argument("--control-url", default=os.environ.get("SANDBOX_CONTROL_URL"))

    fault = sub.add_parser("fault", help="inject a fault")
    fault.add_argument("name", choices=FAULTS)
    fault.add_argument("--replica", type=int, help="one registry replica only (0-based)")
    fault.add_argument("--all", action="store_true", help="ecs-tasks-crashed: every replica")
    fault.add_argument("--ms", type=int, help="latency: milliseconds to add")
    fault.add_argument("--component", choices=LATENCY_COMPONENTS, help="latency: where")
    fault.add_argument(
        "--mode", choices=BAD_DEPLOY_MODES, help="bad-deploy: how the new revision's tasks fail"
    )
    control(fault)

    heal = sub.add_parser("heal", help="heal one fault, or all of them")
    heal.add_argument("name", nargs="?", choices=FAULTS)
    control(heal)

    status = sub.add_parser("status", help="faults, services, replicas")
    control(status)

    requests = sub.add_parser(
        "requests",
        help="per registry replica: requests received, MLflow-touching requests in flight "
        "at most, MLflow calls admitted and refused by the breaker",
    )
    requests.add_argument("--reset", action="store_true", help="then reset every counter")
    control(requests)

    breaker = sub.add_parser("breaker", help="put the registry breakers in a state directly")
    breaker.add_argument("state", choices=["CLOSED", "OPEN", "HALF_OPEN"])
    breaker.add_argument("--replica", type=int, help="one registry replica only (0-based)")
    control(breaker)

    demo = sub.add_parser(
        "demo",
        help="the whole story, narrated: healthy, fault, caught, plan, recovery, healthy",
    )
    demo.add_argument(
        "--fault", choices=FAULTS, default="breaker-stuck-open", help="a recoverable fault"
    )
    demo.add_argument(
        "--state-dir", type=Path, default=None, help="sandbox state (default: a temporary dir)"
    )
    return p


def _client(args: argparse.Namespace) -> Any:
    from sandbox.client import SandboxClient

    url = args.control_url
    if not url:
        try:
            url = statefiles.read(args.state_dir)["control_url"]
        except FileNotFoundError:
            sys.exit(f"no running sandbox in {args.state_dir} (start one with: up)")
    return SandboxClient(url)


async def _up(args: argparse.Namespace) -> int:
    from sandbox.control import create_control_app
    from sandbox.system import Sandbox, SandboxOptions

    state_dir: Path = args.state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, before anything runs
    statefiles.remove(state_dir)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    sandbox = Sandbox(
        SandboxOptions(
            state_dir=state_dir,
            registry_flavor=args.registry_flavor,
            mlflow=args.mlflow,
            registry_replicas=args.replicas,
        )
    )
    try:
        starting = asyncio.create_task(sandbox.start())
        waiting = asyncio.create_task(stop.wait())
        await asyncio.wait({starting, waiting}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            starting.cancel()
            return 1
        starting.result()
        info: dict[str, Any] = {}
        port = await sandbox.serve_app(create_control_app(sandbox, info))
        info.update(sandbox.info(f"http://127.0.0.1:{port}"))
        statefiles.write(state_dir, info)
        print(f"sandbox ready: source {state_dir / statefiles.ENV_NAME}", flush=True)
        await waiting
        return 0
    finally:
        statefiles.remove(state_dir)
        await sandbox.stop()
        print("sandbox stopped", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    if args.command == "up":
        return asyncio.run(_up(args))
    if args.command == "demo":
        from sandbox.demo import run_demo

        return run_demo(fault=args.fault, state_dir=args.state_dir)
    client = _client(args)
    try:
        if args.command == "fault":
            result = client.fault(
                args.name, args.replica, args.all, args.ms, args.component, args.mode
            )
        elif args.command == "heal":
            result = {"healed": client.heal(args.name)}
        elif args.command == "requests":
            result = {"replicas": client.request_stats()}
            if args.reset:
                client.reset_request_counts()
        elif args.command == "breaker":
            result = {"replicas": client.force_breaker(args.state, args.replica)}
        else:
            result = client.status()
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 64
    print(json.dumps(result, indent=2))
    return 0
