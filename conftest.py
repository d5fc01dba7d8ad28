"""The project's root conftest: what the whole suite needs, whatever paths are run."""

import os
import sys
from pathlib import Path

# Figures kept only when their test passed (tests/reliability/figures.py).
pytest_plugins = ["tests.reliability.figures_plugin"]

# The suite starts hundreds of Python processes (the sandbox's replicas on every restart,
# command lines, Prefect servers and workers, and pytest-xdist's workers). Where the
# environment says not to write bytecode, each of them compiled every module it imports
# from source, every time (about 0.7 s a process here). They share one cache in the
# build directory instead, which is never a tracked file.
PYCACHE = Path(__file__).resolve().parent / "build" / "pycache"
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
os.environ.setdefault("PYTHONPYCACHEPREFIX", str(PYCACHE))
sys.dont_write_bytecode = False
sys.pycache_prefix = os.environ["PYTHONPYCACHEPREFIX"]
