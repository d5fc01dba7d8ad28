"""CPU seconds spent by groups of processes (the Prefect server, a worker, the sandbox)."""

from __future__ import annotations

import threading
from collections.abc import Callable

import psutil

Key = tuple[int, float]  # pid, create time: a pid reused later is another process


def tree(pid: int | None) -> list[psutil.Process]:
    """A process and all its descendants (empty when it is gone)."""
    if pid is None:
        return []
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


class CpuMeter:
    """Samples the CPU time of each group's processes every `interval_s` in a thread.

    A process that exits between two samples keeps its last sampled time, so a flow-run
    process that ends with the run still counts (minus at most one interval).
    """

    def __init__(
        self, groups: dict[str, Callable[[], list[psutil.Process]]], interval_s: float = 0.2
    ) -> None:
        self._groups = groups
        self._interval = interval_s
        self._start: dict[Key, float] = {}
        self._last: dict[Key, float] = {}
        self._group_of: dict[Key, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-meter", daemon=True)

    def _sample(self) -> None:
        for group, processes in self._groups.items():
            for p in processes():
                try:
                    with p.oneshot():
                        key = (p.pid, p.create_time())
                        times = p.cpu_times()
                except psutil.Error:
                    continue
                self._last[key] = times.user + times.system
                self._group_of[key] = group

    def __enter__(self) -> CpuMeter:
        self._sample()
        self._start = dict(self._last)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._sample()

    def seconds(self) -> dict[str, float]:
        """CPU seconds per group between entering and leaving."""
        spent = {group: 0.0 for group in self._groups}
        for key, last in self._last.items():
            spent[self._group_of[key]] += last - self._start.get(key, 0.0)
        return spent
