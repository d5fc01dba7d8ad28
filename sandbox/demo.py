"""`python -m sandbox demo`: the whole story in one command, narrated for a first-time operator.

Start the sandbox, diagnose it healthy, inject a recoverable fault, diagnose it again (the
fault is caught), show the dry-run recovery plan, recover, diagnose once more (healthy
again), stop everything, recap.

The scripts run as subprocesses against the sandbox's environment, exactly as an operator
would run them: the sandbox is a black box to them, and this module never imports flows/ or
tasks/. Without PREFECT_API_URL one temporary Prefect server serves the whole demo. Every
child process is stopped at the end, also on Ctrl-C or SIGTERM. Secrets are never printed:
the scripts redact their own output, and the demo masks the sandbox's secret values in
whatever it relays, as a second line of defence.

Exit codes: 0 the story went as expected (healthy -> caught -> recovered -> healthy), 1 a
step diverged (named in the recap), 64 a fault the demo cannot use, 130/143 interrupted.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any
from urllib.parse import urlsplit

import httpx

from sandbox.client import SandboxProcess
from sandbox.ports import free_port
from sandbox.processes import die_with_parent, stop_group
from sandbox.statefiles import env_lines

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_FAULT = "breaker-stuck-open"
EXIT_OK, EXIT_DIVERGED, EXIT_USAGE = 0, 1, 64
PREFECT_STARTUP_TIMEOUT_S = 180.0
SCRIPT_TIMEOUT_S = 600.0
ALB_SETTLE_S = 1.0
INDENT = "    "
WIDTH = 96  # narration wraps here; the scripts' own lines are relayed as they are
MASK = "***"

_URL_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://)[^\s/@]+@")


@dataclass(frozen=True)
class DemoFault:
    """A fault the recovery flow can undo, and what the demo expects of it."""

    what: str  # what the fault does, in the operator's words
    caught: tuple[int, ...]  # the diagnosis' exit codes that count as "caught"
    recovery: str  # what the recovery is expected to do


RECOVERABLE: dict[str, DemoFault] = {
    "breaker-stuck-open": DemoFault(
        what=(
            "MLflow itself stays fine, but the MLflow circuit breaker of every registry "
            "replica is forced OPEN with its recovery attempts exhausted (time_until_retry "
            "null): it will not retry by itself. The service keeps serving in degraded mode, "
            "MLflow-dependent features off, until someone resets the breaker."
        ),
        caught=(1,),
        recovery=(
            "reset the breaker on exactly the OPEN replicas (POST /health/mlflow/reset with "
            "the API key, addressed to each replica), then check they read CLOSED"
        ),
    ),
    "ecs-tasks-crashed": DemoFault(
        what=(
            "One registry ECS task process is killed: ECS reports running < desired and its "
            "ALB target turns unhealthy. The sandbox's ECS scheduler does not replace it by "
            "itself (as when replacements keep failing to start)."
        ),
        caught=(1, 2),
        recovery=(
            "force a new ECS deployment of the registry service, then wait for the rollout, "
            "the services_stable waiter, healthy targets and healthy /health answers"
        ),
    ),
    "mlflow-down": DemoFault(
        what=(
            "The MLflow ECS task process is killed: the MLflow URL answers 503, and the "
            "registry's breaker opens as its MLflow calls fail."
        ),
        caught=(1, 2),
        recovery=(
            "force a new deployment of the MLflow ECS service first, wait for MLflow to "
            "answer, then reset the breaker on the affected replicas"
        ),
    ),
    "registry-wedged": DemoFault(
        what=(
            "Every registry process answers HTTP 500 to everything: the ALB marks the targets "
            "unhealthy and answers 503. A new deployment cures it."
        ),
        caught=(2,),
        recovery="force a new ECS deployment of the registry service and wait for it",
    ),
    "registry-hung": DemoFault(
        what=(
            "Every registry process accepts requests and never answers: the ALB's health "
            "checks time out, no target is healthy, and the API is unavailable."
        ),
        caught=(2,),
        recovery=(
            "force a new ECS deployment of the registry service (the hung tasks are replaced) "
            "and wait for it"
        ),
    ),
    "alb-targets-unhealthy": DemoFault(
        what=(
            "The current registry targets fail their ALB health checks: the load balancer "
            "has no healthy target and answers 503. New tasks are not affected."
        ),
        caught=(2,),
        recovery="force a new ECS deployment of the registry service and wait for it",
    ),
}

NOT_RECOVERABLE: dict[str, str] = {
    "postgres-down": (
        "the recovery escalates a database outage to a human and takes no automatic action, "
        "since new registry tasks would fail the same way"
    ),
    "redis-down": "the recovery escalates Redis being down to a human, with no automatic action",
    "mlflow-slow": "a slow MLflow answer is not something a restart or a reset cures",
    "mlflow-errors": "MLflow answering 500 survives a new MLflow deployment in the sandbox",
    "aws-throttling": "throttling is an AWS condition the recovery retries through, not a fault",
    "latency": "no restart removes added latency",
    "bad-deploy": "a bad release needs a rollback to the last good revision, not a restart",
}

TITLES = {
    1: "Start the sandbox",
    2: "Healthy diagnosis",
    3: "Inject a fault",
    4: "Diagnosis that catches it",
    5: "Dry-run recovery plan",
    6: "Recovery",
    7: "Diagnosis that confirms it",
    8: "Stop the sandbox",
}


class Interrupted(BaseException):
    """Ctrl-C, SIGTERM or SIGHUP: stop every child process and leave."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class Diverged(Exception):
    """A step did not go as the story expects."""


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class SignalGuard:
    """Ctrl-C, SIGTERM and SIGHUP: the first one, while armed, raises Interrupted in the main
    thread; any other is only recorded, so cleanup never leaves children half-stopped."""

    def __init__(self) -> None:
        self.armed = True
        self.received: list[int] = []

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signum)
        if self.armed:
            self.armed = False
            raise Interrupted(signum)

    @contextmanager
    def installed(self) -> Iterator[SignalGuard]:
        previous = {sig: signal.signal(sig, self._handler) for sig in _STOP_SIGNALS}
        try:
            yield self
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)


@dataclass
class Step:
    number: int
    title: str
    expected: str = ""
    outcome: str = ""
    seconds: float = 0.0
    ok: bool = False
    problem: str = ""


@dataclass
class Demo:
    fault: str
    state_dir: Path | None = None
    out: IO[str] = field(default_factory=lambda: sys.stdout)
    steps: list[Step] = field(default_factory=list)
    secrets: list[str] = field(default_factory=list)
    masked: int = 0
    sandbox: SandboxProcess | None = None
    prefect: subprocess.Popen[bytes] | None = None
    prefect_url: str | None = None
    child: subprocess.Popen[str] | None = None  # the script running now
    script_env: dict[str, str] = field(default_factory=dict)
    guard: SignalGuard = field(default_factory=SignalGuard)

    # -- output -----------------------------------------------------------------------------

    def say(self, text: str = "", indent: str = "") -> None:
        for line in text.splitlines() or [""]:
            print(f"{indent}{self.mask(line)}".rstrip(), file=self.out, flush=True)

    def tell(self, text: str) -> None:
        """Narration, wrapped for a terminal."""
        self.say(textwrap.fill(text, WIDTH, break_on_hyphens=False, break_long_words=False))

    def heading(self, number: int, suffix: str = "") -> None:
        title = TITLES[number] + (f": {suffix}" if suffix else "")
        self.say()
        self.say(f"== {number}. {title} ==")

    def mask(self, line: str) -> str:
        """The line with the sandbox's secret values and any URL credentials masked."""
        for secret in self.secrets:
            if secret in line:
                line = line.replace(secret, MASK)
                self.masked += 1
        return _URL_USERINFO.sub(lambda m: f"{m.group(1)}{MASK}@", line)

    # -- steps ------------------------------------------------------------------------------

    @contextmanager
    def step(self, number: int, suffix: str = "", expected: str = "") -> Iterator[Step]:
        self.heading(number, suffix)
        step = Step(number, TITLES[number], expected=expected)
        self.steps.append(step)
        started = time.monotonic()
        try:
            yield step
            step.ok = True
        except Diverged as exc:
            step.problem = str(exc)
            raise
        except Interrupted:
            step.problem = step.outcome = "interrupted"
            raise
        except Exception as exc:
            step.problem = f"{type(exc).__name__}: {exc}"
            raise Diverged(step.problem) from exc
        finally:
            step.seconds = time.monotonic() - started
            if step.problem and step.problem != "interrupted":
                self.say(f"DIVERGED: {step.problem}")

    def run(self) -> int:
        with tempfile.TemporaryDirectory(prefix="hokusai-demo-", ignore_cleanup_errors=True) as tmp:
            work = Path(tmp)
            state_dir = (self.state_dir or work / "sandbox").resolve()
            started = time.monotonic()
            result = EXIT_DIVERGED
            try:
                self.start(work, state_dir)
                self.diagnose(2, expected=(0,))
                self.inject()
                self.diagnose(4, expected=RECOVERABLE[self.fault].caught)
                self.dry_run()
                self.recover()
                self.diagnose(7, expected=(0,))
                result = EXIT_OK
            except Diverged:
                result = EXIT_DIVERGED
            except Interrupted as exc:
                self.say()
                self.say(f"Interrupted ({exc}): stopping everything.")
            finally:
                self.guard.armed = False  # from here on, signals are only recorded
                stopped = self.stop_all()
            if result == EXIT_OK and not stopped:
                result = EXIT_DIVERGED
            if self.guard.received:
                result = 128 + self.guard.received[0]
            self.recap(time.monotonic() - started, result)
            return result

    def start(self, work: Path, state_dir: Path) -> None:
        with self.step(1, expected="ready") as step:
            self.tell(
                "Starting the whole production system on loopback, as child processes of "
                "this demo: PostgreSQL, Redis, MLflow, the registry replicas as ECS tasks "
                f"behind an ALB stand-in, and AWS (moto). State: {state_dir}"
            )
            external = os.environ.get("PREFECT_API_URL")
            if external:
                self.prefect_url = external
            else:
                # Started first: it boots while the sandbox does.
                self.start_prefect(work)
            self.sandbox = SandboxProcess(state_dir)
            self.sandbox.start()
            info = self.sandbox.info
            self.secrets = _secret_values(info)
            if not external:
                self.wait_prefect(work)
            assert self.prefect_url is not None
            self.script_env = {
                **os.environ,
                **env_lines(info),
                "PREFECT_API_URL": self.prefect_url,
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            }
            self.say()
            self.say("Running:")
            for name, value in self.describe(info):
                self.say(f"{name:<26}{value}", indent=INDENT)
            self.say()
            if external:
                self.tell(f"Prefect: flow runs are recorded on your server, {_host(external)}.")
            else:
                self.tell(
                    f"Prefect: one temporary server for the whole demo, {self.prefect_url} "
                    "(every flow run below is recorded there; it stops with the demo)."
                )
            self.tell(
                "The scripts below run as an operator would run them, with the sandbox's "
                "settings in their environment (secrets included, never printed) and the "
                "sandbox target of targets.yaml."
            )
            step.outcome = "ready"

    def describe(self, info: dict[str, Any]) -> list[tuple[str, str]]:
        assert self.sandbox is not None
        services = self.sandbox.client.status()["services"]

        def svc(name: str) -> str:
            s = services.get(name, {})
            replicas = ", ".join(r["address"] for r in s.get("replicas", []) if r.get("alive"))
            return f"{name}: {s.get('running')}/{s.get('desired')} running ({replicas})"

        registry = [n for n in info["ecs_services"] if n != info["mlflow_ecs_service"]]
        return [
            ("API (ALB stand-in)", info["api_url"]),
            ("registry ECS service", "; ".join(svc(n) for n in registry)),
            ("MLflow (load balancer)", info["mlflow_url"]),
            ("MLflow ECS service", svc(info["mlflow_ecs_service"])),
            ("PostgreSQL", _host(info["database_url"]) + " (credentials hidden)"),
            ("Redis", _host(info["redis_url"])),
            (
                "AWS (moto)",
                f"{info['aws_endpoint_url']}: ECS cluster {info['ecs_cluster']}, "
                f"ALB {', '.join(info['alb_names'])}, RDS {', '.join(info['rds_instances'])}, "
                f"alarms {info['alarm_prefix']}-*",
            ),
            ("registry flavour", str(info.get("registry_flavor", "contract"))),
        ]

    def diagnose(self, number: int, expected: tuple[int, ...]) -> None:
        with self.step(number, expected=_exits(expected)) as step:
            if number == 2:
                self.say("A first diagnosis of every component: the baseline, expected healthy.")
            elif number == 4:
                self.say(f"The same diagnosis, now that {self.fault} is in effect.")
            else:
                self.say("A last diagnosis, independent of the recovery's own verification.")
            code = self.script(step, "diagnose_service_health.py")
            if code not in expected:
                raise Diverged(f"the diagnosis exited {code}, expected {step.expected}")

    def inject(self) -> None:
        fault = RECOVERABLE[self.fault]
        assert self.sandbox is not None
        with self.step(3, self.fault, expected="injected") as step:
            self.tell(fault.what)
            self.tell(
                f"Expected: the diagnosis catches it with {_exits(fault.caught)}; the recovery "
                f"should {fault.recovery}."
            )
            result = self.sandbox.client.fault(self.fault)
            details = [
                f"{key}: {', '.join(map(str, v)) if isinstance(v, list) else v}"
                for key, v in result.items()
                if key != "fault"
            ]
            self.tell(f"Injected {self.fault}" + (f" ({'; '.join(details)})." if details else "."))
            # The ALB stand-in flips a target after two probes 0.25 s apart: let it settle.
            time.sleep(ALB_SETTLE_S)
            self.tell(f"The sandbox now says: {self.ground_truth()}")
            step.outcome = "injected"

    def dry_run(self) -> None:
        assert self.sandbox is not None
        with self.step(5, expected="exit 1 (work planned), nothing changed") as step:
            self.tell(
                "The recovery with --dry-run: it diagnoses, derives the plan by fixed rules "
                "and shows it, and changes nothing (no POST, no AWS write). It exits 1 "
                "because the service is not healthy and nothing was done."
            )
            before = _deployments(self.sandbox.client.status())
            code = self.script(step, "recover_service.py", "--dry-run")
            after = _deployments(self.sandbox.client.status())
            if code != 1:
                raise Diverged(f"the dry run exited {code}, expected 1 (a plan with work to do)")
            if before != after:
                raise Diverged("the dry run changed the ECS deployments")
            self.say("ECS deployments unchanged by the dry run.")

    def recover(self) -> None:
        with self.step(6, expected="exit 0") as step:
            self.tell(
                "The recovery for real: the same plan, applied step by step, each action "
                "verified, then a final diagnosis. Exit 0 only if the service ends healthy."
            )
            code = self.script(step, "recover_service.py")
            self.tell(f"The sandbox now says: {self.ground_truth()}")
            if code != 0:
                raise Diverged(f"the recovery exited {code}, expected 0 (service healthy)")

    def script(self, step: Step, name: str, *extra: str) -> int:
        """Run one script against the sandbox, its output relayed indented; its exit code."""
        argv = [sys.executable, str(ROOT / "scripts" / name), "--target", "sandbox", *extra]
        self.say(f"$ scripts/{name} --target sandbox{''.join(' ' + e for e in extra)}")
        started = time.monotonic()
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=self.script_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            preexec_fn=die_with_parent,
        )
        self.child = proc
        watchdog = threading.Timer(SCRIPT_TIMEOUT_S, proc.terminate)  # a silent hang too
        watchdog.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                self.say(line.rstrip("\n"), indent=INDENT)
            code = proc.wait()
        finally:
            watchdog.cancel()
            _terminate(proc)
            self.child = None
        if time.monotonic() - started >= SCRIPT_TIMEOUT_S:
            step.outcome = "timed out"
            raise Diverged(f"scripts/{name} was stopped after {SCRIPT_TIMEOUT_S:.0f} s")
        step.outcome = f"exit {code}"
        self.say(f"-> exit code {code} in {time.monotonic() - started:.1f} s")
        return code

    def ground_truth(self) -> str:
        """What the sandbox itself says: processes, ALB target health, deployments."""
        assert self.sandbox is not None
        status = self.sandbox.client.status()
        parts = []
        for name, s in status["services"].items():
            replicas = s["replicas"]
            healthy = sum(1 for r in replicas if r.get("health") == "healthy")
            rolling = any(d.get("rollout_state") != "COMPLETED" for d in s["deployments"])
            parts.append(
                f"{name} {s['running']}/{s['desired']} tasks running, "
                f"{healthy}/{len(replicas)} ALB targets healthy, "
                f"{len(s['deployments'])} deployment(s)" + (" rolling" if rolling else "")
            )
        parts.append(f"PostgreSQL {status['postgres']}, Redis {status['redis']}")
        return "; ".join(parts)

    # -- Prefect ----------------------------------------------------------------------------

    def start_prefect(self, work: Path) -> None:
        home = work / "prefect"
        home.mkdir(parents=True, exist_ok=True)
        port = free_port()
        self.prefect_url = f"http://127.0.0.1:{port}/api"
        uv = os.environ.get("UV") or shutil.which("uv")
        base = [uv, "run", "prefect"] if uv else [sys.executable, "-m", "prefect"]
        argv = [*base, "server", "start", "--host", "127.0.0.1", "--port", str(port)]
        env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
        env |= {
            "PREFECT_HOME": str(home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
        }
        log = (work / "prefect-server.log").open("ab")
        try:
            self.prefect = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own group: stopped as a whole, last
                preexec_fn=die_with_parent,
            )
        finally:
            log.close()

    def wait_prefect(self, work: Path) -> None:
        assert self.prefect is not None and self.prefect_url is not None
        deadline = time.monotonic() + PREFECT_STARTUP_TIMEOUT_S
        with httpx.Client(timeout=2.0) as http:
            while time.monotonic() < deadline:
                if self.prefect.poll() is not None:
                    break
                try:
                    if http.get(f"{self.prefect_url}/health").status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.25)
        tail = (work / "prefect-server.log").read_text(errors="replace")[-1500:]
        raise Diverged(f"the temporary Prefect server did not become healthy:\n{tail}")

    # -- the end ----------------------------------------------------------------------------

    def stop_all(self) -> bool:
        """Stop the running script, the sandbox, then Prefect; True if the sandbox stopped well."""
        if self.child is not None:
            _terminate(self.child)
        ok = True
        if self.sandbox is not None and self.sandbox.proc is not None:
            try:
                with self.step(8, expected="stopped, exit 0") as step:
                    self.say("Stopping every process of the sandbox (SIGTERM, as Ctrl-C would).")
                    code = self.sandbox.stop()
                    step.outcome = f"stopped, exit {code}"
                    self.say(f"Sandbox stopped, exit code {code}.")
                    if code != 0 and not self.guard.received:  # interrupted: any code
                        raise Diverged(f"the sandbox exited {code} when stopped, expected 0")
            except Diverged:
                ok = False
        if self.prefect is not None:
            stop_group(self.prefect, timeout=15.0)
            self.say("Temporary Prefect server stopped.")
        return ok

    def recap(self, seconds: float, result: int) -> None:
        self.say()
        self.say("== Recap ==")
        phrases = [
            f"{s.number}. {s.title.lower()}: {s.outcome or 'no outcome'}"
            f"{'' if s.ok else ' (expected ' + s.expected + ')'} in {s.seconds:.1f} s"
            for s in self.steps
        ]
        done = {s.number for s in self.steps}
        skipped = [str(n) for n in TITLES if n not in done]
        text = "; ".join(phrases) + "."
        if skipped:
            text += f" {'Step' if len(skipped) == 1 else 'Steps'} {', '.join(skipped)} did not run."
        if result == EXIT_OK:
            text += (
                f" The story went as expected: healthy -> {self.fault} caught -> recovered -> "
                f"healthy, in {seconds:.0f} s; the demo exits 0."
            )
        elif result == EXIT_DIVERGED:
            failed = next((s for s in self.steps if not s.ok), None)
            where = f"step {failed.number} ({failed.title})" if failed else "an unknown step"
            why = f": {failed.problem.splitlines()[0]}" if failed and failed.problem else ""
            text += f" The story diverged at {where}{why}; the demo exits 1."
            if self.state_dir is None:
                text += " Rerun with --state-dir DIR to keep the sandbox's logs."
            else:
                text += f" The sandbox's logs are in {self.state_dir.resolve()}."
        else:
            text += f" Interrupted after {seconds:.0f} s; everything was stopped."
        if self.masked:
            text += (
                f" Note: the demo masked {self.masked} secret value(s) in the scripts' output, "
                "which should have redacted them."
            )
        self.tell(text)


# --- helpers --------------------------------------------------------------------------------


_VERDICTS = {0: "healthy", 1: "degraded", 2: "critical"}


def _exits(codes: tuple[int, ...]) -> str:
    """'exit 1 or 2 (degraded or critical)': a diagnosis' expected exit codes."""
    meaning = " or ".join(_VERDICTS.get(c, "?") for c in codes)
    return f"exit {' or '.join(str(c) for c in codes)} ({meaning})"


def _host(url: str) -> str:
    """scheme://host:port/path without credentials."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def _secret_values(info: dict[str, Any]) -> list[str]:
    values = [info.get("api_key"), info.get("aws_secret_access_key")]
    for key in ("database_url", "redis_url"):
        url = info.get(key)
        if isinstance(url, str) and url:
            password = urlsplit(url).password
            values += [url if password else None, password]
    # Short values ("testing", moto's dummy credentials) would mask ordinary words.
    return sorted({v for v in values if isinstance(v, str) and len(v) >= 8}, key=len, reverse=True)


def _deployments(status: dict[str, Any]) -> dict[str, list[str]]:
    return {
        name: sorted(d["id"] for d in s["deployments"]) for name, s in status["services"].items()
    }


def _terminate(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def run_demo(fault: str = DEFAULT_FAULT, state_dir: Path | None = None) -> int:
    """The demo's command line entry point; its exit code."""
    if fault not in RECOVERABLE:
        why = NOT_RECOVERABLE.get(fault, "it is not one of the faults the demo knows")
        print(
            f"demo: {fault} is not recoverable automatically: {why}. The demo needs a "
            f"recoverable fault: {', '.join(RECOVERABLE)}.",
            file=sys.stderr,
        )
        return EXIT_USAGE
    guard = SignalGuard()
    with guard.installed():
        return Demo(fault=fault, state_dir=state_dir, guard=guard).run()
