"""Child-process hygiene: children die with the sandbox, even when it is killed."""

from __future__ import annotations

import ctypes
import signal

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """preexec_fn: ask Linux to SIGKILL this child when its parent thread exits.

    A clean shutdown stops every child itself; this covers the sandbox being killed with
    SIGKILL, so no replica outlives it.
    """
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
