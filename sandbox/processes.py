"""Child-process hygiene: children die with the sandbox, even when it is killed."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time
from contextlib import suppress
from typing import Any

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """preexec_fn: ask Linux to SIGKILL this child when its parent thread exits.

    A clean shutdown stops every child itself; this covers the sandbox being killed with
    SIGKILL, so no replica outlives it.
    """
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def stop_group(proc: subprocess.Popen[Any], timeout: float = 20.0) -> None:
    """SIGTERM the process group `proc` leads; SIGKILL whatever is left after `timeout`."""
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc.poll()
        try:
            os.killpg(proc.pid, 0)  # anyone left in the group?
        except ProcessLookupError:
            break
        time.sleep(0.05)
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
