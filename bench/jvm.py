"""The broker's collector pauses over a run, from the JVM's GC log
(`-Xlog:gc,gc+phases:...:time`).

With ZGC (the local broker's) a pause reads `[2026-12-05T03:03:19.404+0000] GC(0) Pause Mark
Start 0.008ms`, and a thread that allocates faster than ZGC frees waits in an `Allocation Stall
(thread) 1.234ms`; with G1, `GC(5) Pause Young (Normal) (G1 Evacuation Pause) 51M->9M(1024M)
3.456ms`. A pause stops the whole broker, and every record in flight waits it out.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Any

_PAUSE = re.compile(
    r"^\[(?P<time>[^\]]+)\].*\b(?:Pause|Allocation Stall)\b.*?(?P<ms>\d+(?:\.\d+)?)ms\s*$")


def gc_pauses(log: Path | None, start: float, end: float) -> dict[str, Any] | None:
    """The broker's pauses that ended between start and end (time.time()): how many, their
    total and the longest (ms); None without a log."""
    if log is None or not log.exists():
        return None
    pauses = []
    for path in sorted(log.parent.glob(f"{log.name}*")):  # the log and its rotated files
        for line in path.read_text(errors="replace").splitlines():
            match = _PAUSE.match(line)
            if not match:
                continue
            try:
                at = datetime.strptime(match["time"], "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()
            except ValueError:
                continue
            if start <= at <= end:
                pauses.append(float(match["ms"]))
    return {"count": len(pauses), "total_ms": sum(pauses),
            "longest_ms": max(pauses, default=0.0)}
