"""CPU seconds of other processes (worker, broker, relay) from /proc, sampled on a timeline."""

from __future__ import annotations

import os
import threading
import time

import numpy as np

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of every thread of pid so far; None where /proc cannot tell."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime (fields 14, 15)


class CpuSampler:
    """Samples the CPU seconds of named pids every `every` s, to read off any time window."""

    def __init__(self, pids: dict[str, int | None], every: float = 0.1) -> None:
        self.pids = {name: pid for name, pid in pids.items() if pid}
        self.every = every
        self.times: list[float] = []
        self.samples: dict[str, list[float]] = {name: [] for name in self.pids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)

    def __enter__(self) -> CpuSampler:
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
        values = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        if any(v is None for v in values.values()):
            return
        self.times.append(time.time())
        for name, value in values.items():
            self.samples[name].append(value)  # type: ignore[arg-type]

    def used(self, start: float, end: float) -> dict[str, float]:
        """CPU seconds each pid used between two wall-clock times (interpolated)."""
        if len(self.times) < 2:
            return {}
        return {name: float(np.interp(end, self.times, series)
                            - np.interp(start, self.times, series))
                for name, series in self.samples.items()}
