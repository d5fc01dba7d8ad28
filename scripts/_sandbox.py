"""`--sandbox`: the sandbox started through its command line, never imported.

Scripts sit outside the sandbox (the layering in pyproject.toml): this runs
`python -m sandbox up --state-dir DIR` as a child process, waits for it to be ready
(`sandbox.json` appears, after `sandbox.env`), reads the settings from `sandbox.env`, and
stops it (SIGTERM: it stops its own children and removes its state files) on the way out.
"""

from __future__ import annotations

import contextlib
import ctypes
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
READY, ENV = "sandbox.json", "sandbox.env"  # the sandbox's own file names (sandbox/statefiles)


class SandboxError(RuntimeError):
    """The sandbox did not start; the message ends with its log's tail."""


def _term_with_parent() -> None:
    # Linux: SIGTERM the sandbox if this process dies without stopping it (killed outright);
    # SIGTERM, not SIGKILL, so that it still stops its own servers and removes its files.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def read_env(path: Path) -> dict[str, str]:
    """The `export NAME=value` lines of sandbox.env (shell-quoted values)."""
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        words = shlex.split(line)
        if len(words) == 2 and words[0] == "export" and "=" in words[1]:
            name, value = words[1].split("=", 1)
            out[name] = value
    return out


def _stop(proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def running_sandbox(startup_timeout: float = 300.0) -> Iterator[dict[str, str]]:
    """A sandbox for the duration of the block: the environment its `sandbox.env` sets."""
    with tempfile.TemporaryDirectory(prefix="hokusai-sandbox-") as state:
        state_dir = Path(state)
        log_path = state_dir / "sandbox.log"
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "sandbox", "up", "--state-dir", str(state_dir)],
                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                preexec_fn=_term_with_parent,  # before any thread of ours starts
            )  # fmt: skip
        try:
            deadline = time.monotonic() + startup_timeout
            while not (state_dir / READY).exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    tail = log_path.read_text(errors="replace")[-3000:]
                    raise SandboxError(f"the sandbox did not start:\n{tail}")
                time.sleep(0.1)
            yield read_env(state_dir / ENV)
        finally:
            _stop(proc)
