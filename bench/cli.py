"""`python -m bench`: start the sandbox and a Prefect server, run the benchmarks, report.

Prints one table (median, min, max of every figure), the targets met or not, and writes
the figures as JSON with --json. Exit code 0 when every selected benchmark ran (a target
not met is a figure, not a failure), 1 when one could not run, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from bench.environment import BenchEnv, RunOptions, stop_signals
from bench.harness import BenchResult, machine, render_markdown, render_text, say, write_json

Bench = Callable[[BenchEnv, RunOptions], list[BenchResult]]

# Its measurements run on a worker, not here: with --profile it profiles an in-process run
# of its own instead of being wrapped in one profiler.
SELF_PROFILING = {"fleet"}
# name -> (module, function, what it measures); run in this order.
BENCHMARKS: dict[str, tuple[str, str, str]] = {
    "latency": ("bench.diagnosis", "bench_latency", "1. diagnosis under 300 ms latency"),
    "hung": ("bench.diagnosis", "bench_hung", "2. diagnosis with a hung registry"),
    "recovery": ("bench.recovery", "bench_recovery", "3. time to recover"),
    "fleet": ("bench.fleet", "bench_fleet", "4. fleet of 1, 10, 50 targets"),
    "cost": ("bench.cost", "bench_cost", "5. Prefect overhead per task, peak RSS"),
    "cli": ("bench.command", "bench_command", "6. the diagnose command against the seed's"),
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="benchmarks: " + "; ".join(f"{k} ({v[2]})" for k, v in BENCHMARKS.items()),
    )
    p.add_argument("--quick", action="store_true", help="one repetition each, smaller sizes")
    p.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME",
        help="run only these benchmarks (repeatable, or comma separated)",
    )
    p.add_argument("--json", type=Path, metavar="FILE", help="write the figures as JSON")
    p.add_argument("--markdown", action="store_true", help="also print the table as markdown")
    p.add_argument("--repeat", type=int, metavar="N", help="repetitions of every measurement")
    p.add_argument(
        "--work-dir", type=Path, help="logs and state (default: a temporary directory, removed)"
    )
    p.add_argument(
        "--sandbox-state",
        type=Path,
        metavar="DIR",
        help="use the sandbox already running with this state directory instead of starting one",
    )
    p.add_argument(
        "--prefect-db",
        choices=["sqlite", "postgres"],
        default="sqlite",
        help="database of the Prefect server the harness starts (default: sqlite, as "
        "`prefect server start` out of the box; postgres: a throwaway PostgreSQL cluster)",
    )
    p.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="profile each benchmark with pyinstrument into DIR (timings then include its cost)",
    )
    return p


def _selected(only: list[str]) -> list[str]:
    names = [n.strip() for item in only for n in item.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise SystemExit(
            f"unknown benchmark(s): {', '.join(unknown)} (known: {', '.join(BENCHMARKS)})"
        )
    return [n for n in BENCHMARKS if not names or n in names]


def _run_one(
    name: str, env: BenchEnv, options: RunOptions, profile_dir: Path | None
) -> list[BenchResult]:
    module, function, _ = BENCHMARKS[name]
    bench: Bench = getattr(importlib.import_module(module), function)
    started = time.perf_counter()
    try:
        if profile_dir is None or name in SELF_PROFILING:
            results = bench(env, options)
        else:
            from pyinstrument import Profiler

            profiler = Profiler(async_mode="enabled", interval=0.002)
            profiler.start()
            try:
                results = bench(env, options)
            finally:
                profiler.stop()
                profile_dir.mkdir(parents=True, exist_ok=True)
                (profile_dir / f"{name}.txt").write_text(
                    profiler.output_text(unicode=True, show_all=False)
                )
                (profile_dir / f"{name}.html").write_text(profiler.output_html())
                say(f"{name}: profile written to {profile_dir / name}.txt and .html")
            for r in results:
                r.note("profiled with pyinstrument: timings include the profiler's cost")
    except Exception as exc:
        say(traceback.format_exc())
        failed = BenchResult(name, BENCHMARKS[name][2])
        failed.error = f"{type(exc).__name__}: {exc}"[:500]
        results = [failed]
        try:
            env.heal()
        except Exception as heal_exc:
            say(f"could not heal the sandbox after {name}: {heal_exc}")
    elapsed = time.perf_counter() - started
    for r in results:
        r.seconds = elapsed
        r.judge()
    say(f"{name}: done in {elapsed:.0f} s")
    return results


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    names = _selected(args.only)
    options = RunOptions(quick=args.quick, repeat=args.repeat, profile_dir=args.profile)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    started = datetime.now(UTC)
    info = {
        "machine": machine(),
        "quick": args.quick,
        "repeat": args.repeat,
        "selected": names,
        "command": "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    results: list[BenchResult] = []
    interrupted = False
    with tempfile.TemporaryDirectory(prefix="hokusai-bench-", ignore_cleanup_errors=True) as tmp:
        work = (args.work_dir or Path(tmp)).resolve()
        try:
            with (
                stop_signals(),
                BenchEnv(
                    work,
                    sandbox_state=args.sandbox_state,
                    prefect_url=os.environ.get("PREFECT_API_URL") or None,
                    prefect_db=args.prefect_db,
                ) as env,
            ):
                info["prefect_server"] = (
                    f"started by the harness, {env.prefect_db} database"
                    if env.prefect
                    else "existing (PREFECT_API_URL)"
                )
                for name in names:
                    say(f"== {name}: {BENCHMARKS[name][2]} ==")
                    results += _run_one(name, env, options, args.profile)
                    if args.json:
                        write_json(args.json, results, info, started)
        except KeyboardInterrupt:
            interrupted = True
            say("interrupted: every process started by the harness was stopped")
    if results:
        print(render_text(results), flush=True)
        if args.markdown:
            print()
            print(render_markdown(results), flush=True)
    info["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    if args.json:
        write_json(args.json, results, {**info, "interrupted": interrupted}, started)
    if interrupted:
        return 130
    return 1 if any(r.error for r in results) else 0
