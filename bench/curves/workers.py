"""Workers: one and two workers on the same input topic (its partitions shared by their group).

On two cores a second worker is not expected to add throughput; the bar is that nothing is lost
or duplicated and no consumer downstream stalls: for one worker, while a second one joins (the
group rebalances under a fixed rate), and for two, the drain's throughput, the fixed rate's
latency, and the longest pause between two results on the output topic.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from bench.curves.serving import drain, fixed_rate, pools
from bench.platform import WORKSPACE, BenchPlatform
from control.local.worker_process import WorkerProcess

PIPELINE = "curve-workers"
JOIN_EXTRA_S = 15.0  # seconds of the join run beyond --latency-s: a replay took 1-30 s


def curve(platform: BenchPlatform, drain_s: float, load_pct: float, latency_s: float,
          batch: tuple[int, int], say: Callable[[str], None]) -> dict[str, Any]:
    """Points for 1 worker, a second joining, and 2 workers."""
    names = [PIPELINE]
    platform.pipeline(PIPELINE)
    first = platform.worker("w-one", sink=False)
    started = [first]
    try:
        platform.deploy(first, PIPELINE, *batch)
        records = pools(platform, names)
        probe = drain(platform, names, records, 20_000)
        count = int(max(probe["msgs_per_s"] * drain_s, 20_000))
        say(f"workers 1: drain {count:,} records")
        one = drain(platform, names, records, count)
        rate = one["msgs_per_s"] * load_pct / 100
        say(f"workers 1: {rate:,.0f}/s for {latency_s:g}s")
        points = [{"workers": 1, "saturation": one,
                   "latency": fixed_rate(platform, names, records, rate, latency_s)}]
        say("workers 1 -> 2: a second worker joins under the fixed rate")
        # Long enough for the second worker to replay, join the group and take partitions.
        joining = _joining(platform, names, records, rate, latency_s + JOIN_EXTRA_S, started)
        second = started[-1]
        second.wait_ready(f"{WORKSPACE}/{PIPELINE}", timeout=60)
        say(f"workers 2: drain {count:,} records")
        two = drain(platform, names, records, count)
        points.append({"workers": 2, "saturation": two,
                       "latency": fixed_rate(platform, names, records, rate, latency_s)})
        platform.client.undeploy(PIPELINE)
    finally:
        for w in started:
            w.stop()
    return {"what": "one GBT pipeline, sink off; fixed rate "
                    f"{load_pct:g}% of one worker's drain", "offered_per_s": rate,
            "points": points, "join": joining}


def _joining(platform: BenchPlatform, names: list[str], records: list[list[bytes]],
             rate: float, seconds: float, started: list[Any]) -> dict[str, Any]:
    """A fixed-rate run during which a second worker replays, joins and takes partitions.

    The run starts once the second worker answers on HTTP (it is replaying then): when the
    run began earlier, a slow start on a busy machine made it join after the run had ended.
    """
    second = WorkerProcess(platform.settings, "w-two", platform.folder,
                           env={"INFERSTREAM_LOG_SINK": "false"})
    platform.workers.append(second)
    started.append(second)
    launched = time.monotonic()
    while second.health() is None:
        if second.process.poll() is not None or time.monotonic() - launched > 120:
            raise RuntimeError(f"worker w-two did not come up; its log: {second.log_path}")
        time.sleep(0.05)
    result: dict[str, Any] = {}
    run = threading.Thread(target=lambda: result.update(
        fixed_rate(platform, names, records, rate, seconds)))
    began = time.monotonic()
    run.start()
    second.wait_ready(timeout=300)
    ready_s = time.monotonic() - began
    run.join()
    # A join after the run's end would measure nothing: say so in the JSON.
    return {**result, "seconds": seconds, "second_up_before_run_s": began - launched,
            "second_ready_into_run_s": ready_s, "second_ready_within_run": ready_s < seconds}
