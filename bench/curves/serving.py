"""Serving a set of deployed pipelines at once: a drain and a fixed rate over all of them, and
what the worker holds in memory meanwhile."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from bench.curves.spread import longest_pause_s, run_spread
from bench.load import latencies_ms, percentiles, stalls
from bench.platform import BenchPlatform
from bench.scenarios import steady_rate

POOL = 200  # distinct records a pipeline: 100 pipelines' pools go to the sender process


def pools(platform: BenchPlatform, pipelines: Sequence[str]) -> list[list[bytes]]:
    """Each pipeline's records (its Avro schema is named after it)."""
    return [platform.payloads(p, POOL) for p in pipelines]


def output_offsets(platform: BenchPlatform, pipelines: Sequence[str]
                   ) -> dict[tuple[str, int], int]:
    """Where each output topic ends now: a tap reads only what comes after."""
    out: dict[tuple[str, int], int] = {}
    for p in pipelines:
        topic = platform.topic(p, "output")
        out.update({(topic, part): o for part, o in platform.ends(topic).items()})
    return out


def drain(platform: BenchPlatform, pipelines: Sequence[str], records: list[list[bytes]],
          count: int) -> dict[str, Any]:
    """A backlog of count records spread over the pipelines, served as fast as it goes."""
    keys, times, _, sent_at, _ = run_spread(
        platform.settings.bootstrap_servers, [platform.topic(p, "input") for p in pipelines],
        output_offsets(platform, pipelines), records, platform.folder, count, None, 180)
    rate, a, b = steady_rate(times, sent_at)
    return {"records": count, "received": len(keys), "unique": len(np.unique(keys)),
            "msgs_per_s": rate, "window_s": b - a, "longest_pause_s": longest_pause_s(times)}


def fixed_rate(platform: BenchPlatform, pipelines: Sequence[str], records: list[list[bytes]],
               rate: float, seconds: float) -> dict[str, Any]:
    """Records offered at `rate` in all over the pipelines: latency from scheduled send."""
    count = max(int(rate * seconds), 100)
    keys, times, start_at, _, generator = run_spread(
        platform.settings.bootstrap_servers, [platform.topic(p, "input") for p in pipelines],
        output_offsets(platform, pipelines), records, platform.folder, count, rate,
        seconds + 60)
    span = float(times.max() - start_at) if len(times) else float("nan")
    return {"offered_per_s": rate, "records": count, "received": len(keys),
            "unique": len(np.unique(keys)),
            "achieved_per_s": len(keys) / span if span else float("nan"),
            "longest_pause_s": longest_pause_s(times), "stalls": stalls(times),
            "generator": generator, **percentiles(latencies_ms(keys, times, start_at, rate))}


def rss_mb(pid: int) -> float | None:
    """Resident memory of a process (MB), from /proc; None when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None
