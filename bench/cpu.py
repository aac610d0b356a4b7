"""Counters of other processes sampled on a timeline: CPU seconds from /proc (worker, broker,
relay) and the worker's own counters, to read off any time window afterwards."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

import numpy as np

_TICK = os.sysconf("SC_CLK_TCK")
Series = Callable[[], float | None]


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of every thread of pid so far; None where /proc cannot tell."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime (fields 14, 15)


def cpu_of(pids: dict[str, int | None]) -> dict[str, Series]:
    """CPU-seconds series of the named pids that exist (an external broker has none)."""
    return {name: (lambda pid=pid: cpu_seconds(pid)) for name, pid in pids.items() if pid}


class Timeline:
    """Samples named series every `every` seconds while in a with-block."""

    def __init__(self, series: dict[str, Series], every: float = 0.1) -> None:
        self.series = series
        self.every = every
        self.times: list[float] = []
        self.samples: dict[str, list[float]] = {name: [] for name in series}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="timeline", daemon=True)

    def __enter__(self) -> Timeline:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            self._sample()
            if self._stop.wait(self.every):
                self._sample()
                return

    def _sample(self) -> None:
        values = {name: read() for name, read in self.series.items()}
        if any(v is None for v in values.values()):
            return
        self.times.append(time.time())
        for name, value in values.items():
            self.samples[name].append(value)  # type: ignore[arg-type]

    def used(self, start: float, end: float) -> dict[str, float]:
        """How much each series grew between two wall-clock times (interpolated)."""
        if len(self.times) < 2:
            return {}
        return {name: float(np.interp(end, self.times, values)
                            - np.interp(start, self.times, values))
                for name, values in self.samples.items()}

    def slope(self, name: str, start: float, end: float) -> float:
        """Least-squares growth per second of a series between two times: for a counter that
        grows in steps (a sink stores a batch a second), steadier than end minus start."""
        t = np.array(self.times)
        inside = (t >= start) & (t <= end)
        if inside.sum() < 3:
            return float("nan")
        return float(np.polyfit(t[inside], np.array(self.samples[name])[inside], 1)[0])

    def when(self, name: str, reached: float) -> float | None:
        """The first sampled time at which series `name` had reached a value, if it did."""
        for t, value in zip(self.times, self.samples[name], strict=True):
            if value >= reached:
                return t
        return None
