"""The seed's diagnose command as a process, for the command-line benchmark: its clients
imported at start as the seed script does, then `bench.baselines.sequential_diagnosis`
(every check one after another, one blocking request at a time), the result printed as
JSON. `python -m bench.seed_command INFO_JSON TIMEOUT_S`; INFO_JSON is the sandbox's
sandbox.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bench.baselines import sequential_diagnosis


def main(argv: list[str]) -> int:
    info = json.loads(Path(argv[0]).read_text())
    run = sequential_diagnosis(info, float(argv[1]))
    print(json.dumps({"check_phase_s": run.total_s, "requests": run.requests}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
