"""py-spy on the worker during a fixed-rate run: where its threads were, sample by sample.

`python3 -m bench --py-spy` records the worker of the GBT scenario (sink off) during the runs
the bar is about (25 and 50 % of saturation) in py-spy's speedscope format, time-ordered per
thread (open it on speedscope.app), without pausing the worker (--nonblocking: a sampler that
stops the process would make stalls of its own), idle threads included (a thread waiting for a
commit or a fetch is what a stall looks like).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

RATE_HZ = 250
LOADS = ("25", "50")


@contextlib.contextmanager
def py_spy(pid: int, out: Path | None, seconds: float) -> Iterator[None]:
    """Record pid for `seconds` (a few more: the run's tail) into out; nothing without out."""
    if out is None:
        yield
        return
    binary = shutil.which("py-spy")
    if binary is None:
        raise RuntimeError("--py-spy needs py-spy on PATH: python3 -m pip install py-spy")
    recording = subprocess.Popen(
        [binary, "record", "--pid", str(pid), "--nonblocking", "--idle", "--threads",
         "--rate", str(RATE_HZ), "--duration", str(round(seconds + 3)),
         "--format", "speedscope", "--output", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield
    finally:
        try:
            _, err = recording.communicate(timeout=seconds + 60)
        except subprocess.TimeoutExpired:
            recording.kill()
            _, err = recording.communicate()
        if recording.returncode != 0 or not out.exists():
            raise RuntimeError(f"py-spy failed ({recording.returncode}): "
                               f"{err.decode(errors='replace')[-500:]}")
