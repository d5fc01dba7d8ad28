"""Benchmark 6: the diagnose command line as a user runs it, against the seed's.

Each figure is a whole process, start to exit, measured side by side repetition by
repetition on the healthy sandbox:

- imports: `import flows.diagnose` against the smallest flow module (Prefect imported,
  one `@flow` and one `@task` defined: decorating a flow is what makes Prefect import
  pydantic.v1 and more, a cost of every flow module, not of ours);
- the command: `scripts/diagnose_service_health.py --target sandbox --output F` against
  the seed-style command (`bench.seed_command`: the seed's checks one after another, one
  blocking request at a time), with each one's check phase read from its own output.

Every process runs with bytecode caches, as an installed package does (pip, and uv with
`--compile-bytecode`, write them at install; Python writes them at first import): the
harness's own PYTHONPYCACHEPREFIX (the installed tree is left as it is), filled by one
untimed run of each command before the measured ones. Without them each process compiles
every module it imports from source, which measures the compiler rather than the imports
(PYTHONDONTWRITEBYTECODE, if set, is dropped for these processes for that reason).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.environment import ROOT, BenchEnv, RunOptions
from bench.harness import BenchResult, ratio, say

SEED_TIMEOUT_S = 10.0
# The smallest flow module: what any flow's process imports before its own code.
PREFECT_IMPORT = (
    "from prefect import flow, task\n@task\ndef t() -> None: ...\n@flow\ndef f() -> None: ..."
)
OUR_IMPORT = "import flows.diagnose"


def _timed(argv: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    started = time.perf_counter()
    done = subprocess.run(
        argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    return time.perf_counter() - started, done


def _python(code: str, env: dict[str, str]) -> float:
    seconds, done = _timed([sys.executable, "-c", code], env)
    if done.returncode != 0:
        raise RuntimeError(f"{code!r} failed: {done.stderr[-500:]}")
    return seconds


def _ours(env: dict[str, str], out: Path) -> tuple[float, float]:
    """(the command's seconds, its check phase) on the healthy sandbox."""
    argv = [sys.executable, "scripts/diagnose_service_health.py", "--target", "sandbox"]
    seconds, done = _timed([*argv, "--output", str(out)], env)
    if done.returncode != 0:
        raise RuntimeError(f"diagnose exited {done.returncode}: {done.stdout[-800:]}")
    report: dict[str, Any] = json.loads(out.read_text())
    return seconds, float(report["diagnostic_duration_seconds"])


def _seed(env: dict[str, str], info_file: Path) -> tuple[float, float]:
    argv = [sys.executable, "-m", "bench.seed_command", str(info_file), str(SEED_TIMEOUT_S)]
    seconds, done = _timed(argv, env)
    if done.returncode != 0:
        raise RuntimeError(f"seed-style command failed: {done.stderr[-500:]}")
    return seconds, float(json.loads(done.stdout)["check_phase_s"])


def bench_command(env: BenchEnv, options: RunOptions) -> list[BenchResult]:
    result = BenchResult("cli", "The diagnose command (process start to exit) against the seed's")
    result.figure(
        "prefect_import_s",
        "s",
        "process running the smallest flow module (`from prefect import flow, task`, one "
        "@flow and one @task defined)",
    )
    result.figure("diagnose_import_s", "s", f"process running `{OUR_IMPORT}`")
    result.figure("import_over_prefect_s", "s", "diagnose_import_s - prefect_import_s")
    result.figure("command_s", "s", "diagnose_service_health.py --target sandbox, whole process")
    result.figure("seed_command_s", "s", "the seed-style sequential command, whole process")
    result.figure("command_ratio", "x", "command_s / seed_command_s, per repetition")
    result.figure("check_phase_s", "s", "our check phase (the report's diagnostic duration)")
    result.figure("seed_check_phase_s", "s", "the seed-style command's checks")
    result.figure("check_phase_ratio", "x", "check_phase_s / seed_check_phase_s")
    result.goal("import flows.diagnose <= Prefect + 0.4 s", "import_over_prefect_s", "<=", 0.4)
    result.goal("command <= 0.8x the seed's", "command_ratio", "<=", 0.8)

    env.heal()
    child_env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    child_env |= {
        **env.flow_env(),
        "PYTHONPATH": str(ROOT),
        "PYTHONPYCACHEPREFIX": str(env.work / "pycache"),
    }
    info_file = env.work / "seed-info.json"
    # The seed command reads the sandbox's settings, secrets included: owner-only.
    info_file.touch(mode=0o600)
    info_file.write_text(json.dumps(env.info))
    out = env.work / "cli-diagnosis.json"
    # Untimed: fills the bytecode caches (and the file cache) for every process measured.
    _python(PREFECT_IMPORT, child_env)
    _python(OUR_IMPORT, child_env)
    _ours(child_env, out)
    _seed(child_env, info_file)
    for rep in range(options.reps(5, 2)):
        # Alternate which goes first, so that neither always runs on a warmer machine.
        pair = [lambda: _python(PREFECT_IMPORT, child_env), lambda: _python(OUR_IMPORT, child_env)]
        first_ours = rep % 2 == 1
        if first_ours:
            ours_import, prefect_import = pair[1](), pair[0]()
        else:
            prefect_import, ours_import = pair[0](), pair[1]()
        result.add("prefect_import_s", prefect_import)
        result.add("diagnose_import_s", ours_import)
        result.add("import_over_prefect_s", ours_import - prefect_import)
        if first_ours:
            (command, phase), (seed, seed_phase) = (
                _ours(child_env, out),
                _seed(child_env, info_file),
            )
        else:
            (seed, seed_phase), (command, phase) = (
                _seed(child_env, info_file),
                _ours(child_env, out),
            )
        result.add("command_s", command)
        result.add("seed_command_s", seed)
        result.add("command_ratio", ratio(command, seed))
        result.add("check_phase_s", phase)
        result.add("seed_check_phase_s", seed_phase)
        result.add("check_phase_ratio", ratio(phase, seed_phase))
        say(
            f"cli: repetition {rep + 1}: imports {ours_import:.2f} s vs Prefect "
            f"{prefect_import:.2f} s; command {command:.2f} s vs seed {seed:.2f} s "
            f"(checks {phase:.2f} s vs {seed_phase:.2f} s)"
        )
    result.note(
        "every process runs with bytecode caches (PYTHONPYCACHEPREFIX in the harness's work "
        "directory, filled by an untimed run of each), as an installed package does"
    )
    result.note(
        "the command reports to the benchmark's Prefect server (PREFECT_API_URL), as a "
        "worker or an operator's shell would; the seed reports nowhere"
    )
    return [result]
