"""`python -m bench.peak_rss OUT SCRIPT [ARGS...]`: run SCRIPT as __main__, then write this
process's peak resident set (VmHWM, KiB) to OUT when the interpreter exits.

The kernel's ru_maxrss of a child also counts the parent's pages copied at fork time, so a
benchmark process full of imports would inflate it; VmHWM belongs to the new program alone.
"""

from __future__ import annotations

import atexit
import runpy
import sys
from pathlib import Path


def _vm_hwm_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def main() -> None:
    out, script, *args = sys.argv[1:]
    atexit.register(lambda: Path(out).write_text(f"{_vm_hwm_kib()}\n"))
    sys.argv = [script, *args]
    if script == "-c":
        code = args[0] if args else ""
        sys.argv = ["-c", *args[1:]]
        exec(compile(code, "<string>", "exec"), {"__name__": "__main__"})  # noqa: S102
        return
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
