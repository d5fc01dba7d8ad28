"""The benchmark harness runs end to end (figures produced, not their values judged)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

from sandbox.client import SandboxProcess

ROOT = Path(__file__).resolve().parents[2]


def test_quick_latency_benchmark_produces_figures(
    prefect_server: str, healed: SandboxProcess, tmp_path: Path
) -> None:
    out = tmp_path / "bench.json"
    env = {**os.environ, "PREFECT_API_URL": prefect_server}
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", "latency", "--json", str(out),
         "--sandbox-state", str(healed.state_dir), "--work-dir", str(tmp_path / "work")],
        capture_output=True, text=True, timeout=240, cwd=ROOT, env=env,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["machine"]["cpus"] and data["quick"] is True
    latency = data["benchmarks"]["latency"]
    assert latency["error"] is None
    figures = latency["figures"]
    assert {"check_phase_s", "sequential_s", "speedup_x", "phase_vs_bound"} <= set(figures)
    for name, figure in figures.items():
        assert figure["n"] == 1, name
        assert isinstance(figure["median"], float) and math.isfinite(figure["median"]), name
    assert latency["targets"] and all(t["met"] in (True, False) for t in latency["targets"])
    # The table is printed too, with the targets under it.
    assert "check_phase_s" in run.stdout and "Targets:" in run.stdout
