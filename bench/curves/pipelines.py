"""Deployed pipelines: 1, 10, 100 pipelines on one worker at the same total offered rate.

The pipelines are added one by one (the GBT alone, sink off); at each size the worker drains a
backlog spread evenly over all their input topics (throughput), then serves a fixed total rate
spread the same way (p50/p99), and its resident memory is read. The time to deploy the last one
runs from the Deploy event to the worker reporting that it serves it, with the others deployed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from agents.metrics import pauses_between
from bench.curves.serving import drain, fixed_rate, pools, rss_mb
from bench.platform import WORKSPACE, BenchPlatform, metrics


def curve(platform: BenchPlatform, sizes: Sequence[int], drain_s: float, load_pct: float,
          latency_s: float, batch: tuple[int, int], say: Callable[[str], None]
          ) -> dict[str, Any]:
    """The curve over `sizes` (ascending): a point per number of deployed pipelines."""
    w = platform.worker("w-pipelines", sink=False)
    names: list[str] = []
    points: list[dict[str, Any]] = []
    rate = count = None
    try:
        for size in sizes:
            deploy_s = 0.0
            while len(names) < size:
                name = f"curve-p{len(names)}"
                platform.pipeline(name)
                started = time.monotonic()
                platform.deploy(w, name, *batch)
                deploy_s = time.monotonic() - started
                names.append(name)
            records = pools(platform, names)
            if count is None:  # sized by the first (smallest) set, then the same for all
                probe = drain(platform, names, records, 20_000)
                count = int(max(probe["msgs_per_s"] * drain_s, 20_000))
            say(f"pipelines {size}: drain {count:,} records")
            sat = drain(platform, names, records, count)
            if rate is None:  # the same total offered rate at every size
                rate = sat["msgs_per_s"] * load_pct / 100
            say(f"pipelines {size}: {rate:,.0f}/s in all for {latency_s:g}s")
            before = metrics(w)
            lat = fixed_rate(platform, names, records, rate, latency_s)
            if before and (after := metrics(w)):  # cycles, waits for commits, commits
                lat["worker_pauses"] = pauses_between(before, after)
            points.append({"pipelines": size, "deploy_last_s": deploy_s,
                           "worker_rss_mb": rss_mb(w.process.pid), "saturation": sat,
                           "latency": lat})
        for name in names:
            platform.client.undeploy(name)
    finally:
        w.stop()
    return {"what": f"GBT pipelines on one worker in workspace {WORKSPACE}, sink off; "
                    f"fixed rate {load_pct:g}% of the first size's drain",
            "offered_per_s": rate, "points": points}
