"""The measurements: drain a backlog (saturation), fixed offered rates (latency), the relay."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import uuid4

import numpy as np

from agents.metrics import pauses_between, per_record_us
from bench.cpu import Timeline, cpu_of
from bench.jvm import gc_pauses
from bench.load import (
    Send,
    Tap,
    latencies_ms,
    percentiles,
    queue,
    read_tap,
    send,
    stalls,
    start,
    tap,
    throughput,
)
from bench.platform import BenchPlatform, metrics
from bench.profile import py_spy
from bench.relay import Relay, relay
from control.kafka import TopicSpec, ensure_topics
from control.local.worker_process import WorkerProcess


@dataclass(frozen=True)
class Flow:
    """Records in at one topic, out at another."""

    bootstrap: str
    source: str
    sink: str
    pool: list[bytes]
    folder: Path
    headers: tuple[tuple[str, bytes], ...] = ()  # on every record sent


def run_flow(flow: Flow, offsets: dict[int, int], count: int, rate: float | None,
             deadline_s: float, first_key: int = 0
             ) -> tuple[np.ndarray, np.ndarray, float, float, dict[str, float]]:
    """Send count records (at rate, or all at once) and tap them at the other end.

    Returns keys and receipt times of what came out, record 0's scheduled time, when the
    last record was sent, and the generator's own figures (see load.send).
    """
    out = flow.folder / f"tap-{uuid4().hex[:8]}.npz"
    tapping = start(tap, Tap(flow.bootstrap, flow.sink, offsets, count, deadline_s, out))
    _wait_for(out.with_suffix(".ready"), tapping)
    report = queue()
    sending = start(send, Send(flow.bootstrap, flow.source, flow.pool, count, rate,
                                         flow.headers, first_key), report)
    start_at, sent_at, generator = report.get(timeout=deadline_s + 60)
    sending.join(30)
    tapping.join(deadline_s + 30)
    keys, times = read_tap(out)
    return keys, times, start_at, sent_at, generator


def _wait_for(path: Path, process: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if not process.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the tap did not start (exit code {process.exitcode})")
        time.sleep(0.02)


def steady_rate(times: np.ndarray, sent_at: float) -> tuple[float, float, float]:
    """Throughput of a drain, from when the sender was done (or 20 % out) to 95 % out."""
    rate, a, b = throughput(times)
    if sent_at > a:
        inside = (times >= sent_at) & (times <= b)
        a = sent_at
        rate = float(inside.sum() / (b - a)) if b > a else float("nan")
    return rate, a, b


def saturation(platform: BenchPlatform, w: WorkerProcess, pipeline: str, pool: list[bytes],
               count: int, broker_pid: int | None, logs_per_record: int = 1,
               sink: bool = False) -> dict[str, Any]:
    """Drain a backlog of count records through the worker: throughput, CPU, stage times.

    With the sink on, also how fast the sink stored the logs over the same window: served
    and stored is what the worker sustains (the slower one sets the pace once buffers fill).
    """
    flow = Flow(platform.settings.bootstrap_servers, platform.topic(pipeline, "input"),
                platform.topic(pipeline, "output"), pool, platform.folder)
    before = metrics(w)
    series = cpu_of({"worker": w.process.pid, "broker": broker_pid})
    if sink:
        series["sink_rows"] = lambda: (metrics(w) or {}).get("sink_rows")
    with Timeline(series) as timeline:
        keys, times, _, sent_at, _ = run_flow(flow, platform.ends(flow.sink), count, None,
                                           deadline_s=180)
        if sink:  # until every log row is stored
            rows = before["sink_rows"] + count * logs_per_record if before else 0
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and (timeline.samples["sink_rows"] or [0])[-1] < rows:
                time.sleep(0.1)
    after = metrics(w)
    rate, a, b = steady_rate(times, sent_at)
    records = rate * (b - a)
    used = timeline.used(a, b)
    out = {
        "records": int(count), "received": len(keys), "msgs_per_s": rate, "window_s": b - a,
        "cpu_s_per_10k": {name: used[name] * 10_000 / records for name in ("worker", "broker")
                          if name in used},
        "cpu_cores": {name: used[name] / (b - a) for name in ("worker", "broker") if name in used},
        "stages_us": per_record_us(before, after) if before and after else None,
    }
    if sink and before:
        stored = timeline.slope("sink_rows", a, b) / logs_per_record
        done = timeline.when("sink_rows", before["sink_rows"] + count * logs_per_record)
        out["stored_per_s"] = stored
        out["served_and_stored_per_s"] = min(rate, stored)
        out["sink_done_after_last_result_s"] = None if done is None else done - float(times.max())
    return out


def latency(platform: BenchPlatform, pipeline: str, pool: list[bytes], rate: float,
            seconds: float, worker: WorkerProcess | None = None,
            broker_gc_log: Path | None = None, profile: Path | None = None) -> dict[str, Any]:
    """Offer records at a fixed rate for `seconds`: latency percentiles from scheduled send,
    the output's stalls, the generator's lag and CPU, and (given the worker and the broker's
    GC log) the worker's pauses and the broker's; with profile, py-spy's samples of the worker
    written there (bench.profile)."""
    flow = Flow(platform.settings.bootstrap_servers, platform.topic(pipeline, "input"),
                platform.topic(pipeline, "output"), pool, platform.folder)
    count = max(int(rate * seconds), 100)
    before = metrics(worker) if worker else None
    with py_spy(worker.process.pid if worker else 0, profile if worker else None, seconds):
        keys, times, start_at, _, generator = run_flow(flow, platform.ends(flow.sink), count,
                                                       rate, deadline_s=seconds + 60)
    after = metrics(worker) if worker else None
    lat = latencies_ms(keys, times, start_at, rate)
    span = float(times.max() - start_at) if len(times) else float("nan")
    out = {"offered_per_s": rate, "records": count, "received": len(keys),
           "achieved_per_s": len(keys) / span if span else float("nan"), **percentiles(lat),
           "stalls": stalls(times), "generator": generator}
    if before and after:
        out["worker_pauses"] = pauses_between(before, after)
    if len(times) and (broker := gc_pauses(broker_gc_log, start_at, float(times.max()))):
        out["broker_gc"] = broker
    return out


def transport(platform: BenchPlatform, pool: list[bytes], count: int,
              broker_pid: int | None, run: int = 0) -> dict[str, Any]:
    """The plain relay over a preloaded backlog: msgs/s and CPU per 10k records."""
    source = platform.settings.topic(f"relay{run}.input")
    sink = platform.settings.topic(f"relay{run}.output")
    many = TopicSpec(platform.settings.pipeline_partitions)
    ensure_topics(platform.settings, {source: many, sink: many})
    flow = Flow(platform.settings.bootstrap_servers, source, sink, pool, platform.folder)
    report = queue()
    loading = start(send, Send(flow.bootstrap, source, pool, count, None), report)
    report.get(timeout=120)
    loading.join(30)
    out = platform.folder / f"tap-{uuid4().hex[:8]}.npz"
    tapping = start(tap, Tap(flow.bootstrap, sink, platform.ends(sink), count, 120, out))
    _wait_for(out.with_suffix(".ready"), tapping)
    relaying = start(relay, Relay(flow.bootstrap, source, sink, count,
                                  group=f"{platform.settings.namespace}.relay{run}"))
    with Timeline(cpu_of({"relay": relaying.pid, "broker": broker_pid})) as cpu:
        tapping.join(150)
    relaying.join(60)
    keys, times = read_tap(out)
    rate, a, b = throughput(times)
    records = rate * (b - a)
    used = cpu.used(a, b)
    return {"records": count, "received": len(keys), "msgs_per_s": rate, "window_s": b - a,
            "cpu_s_per_10k": {name: s * 10_000 / records for name, s in used.items()},
            "cpu_cores": {name: s / (b - a) for name, s in used.items()}}
