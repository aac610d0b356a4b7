"""Load generation and output taps, each in a process of its own (their own GIL and core share).

Records are keyed by their sequence number. A fixed-rate run schedules record i at
t0 + i / rate and stamps that as the record's create time, so a producer that falls behind
(or a worker that backs up) shows as latency instead of being hidden by a slower send; the
tap reads the output topic and takes each result's latency from its key's scheduled time.
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import numpy as np
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

TICK_S = 0.001  # a fixed-rate generator sends what is due every millisecond
_SPAWN = mp.get_context("spawn")  # fresh interpreters: no librdkafka threads forked mid-flight


@dataclass(frozen=True)
class Send:
    """What a load process sends: `count` records cycling through `pool`, keyed 0, 1, ..."""

    bootstrap: str
    topic: str
    pool: Sequence[bytes]
    count: int
    rate: float | None  # records per second; None: as fast as the producer goes
    headers: tuple[tuple[str, bytes], ...] = ()  # on every record (MLServer routes by them)
    first_key: int = 0  # keys first_key, first_key + 1, ...: results of other runs tell apart


@dataclass(frozen=True)
class Tap:
    """What a tap reads: a topic from given offsets until `expected` records or the deadline."""

    bootstrap: str
    topic: str
    offsets: dict[int, int]
    expected: int
    deadline_s: float
    out: Path  # .npz with keys (int64) and receipt times (float64, time.time())


def producer_config(bootstrap: str) -> dict[str, object]:
    """A latency-minded producer: small linger, acks from every replica. Not idempotent: its
    producer id would be fetched on the first send, adding ~0.5 s to the first latencies."""
    return {"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": False,
            "linger.ms": 1, "batch.num.messages": 10000, "queue.buffering.max.messages": 1000000,
            "queue.buffering.max.kbytes": 1048576, "partitioner": "murmur2_random"}


def send(job: Send, report: Any) -> None:
    """Produce the records on schedule (or at full speed), wait until all are delivered, and
    put (record 0's scheduled time, time the last was sent, the generator's own figures) on
    the report queue (see on_schedule)."""
    p = Producer(producer_config(job.bootstrap))
    p.list_topics(job.topic, timeout=10)  # connected before the clock starts
    pool, n, topic = job.pool, len(job.pool), job.topic
    extra = {"headers": list(job.headers)} if job.headers else {}

    def record(i: int) -> tuple[str, bytes, bytes]:
        return topic, pool[i % n], str(job.first_key + i).encode()

    report.put(on_schedule(p, job.count, job.rate, record, extra))


def on_schedule(p: Producer, count: int, rate: float | None,
                record: Callable[[int], tuple[str, bytes, bytes]],
                extra: dict[str, Any] | None = None) -> tuple[float, float, dict[str, float]]:
    """Produce records 0 .. count-1 (record(i): topic, value, key), record i at
    t0 + i / rate (or at full speed), stamped with that time; wait until all are delivered.

    Returns t0, when the last was sent, and the generator's own figures: how far behind
    schedule it ever was when it woke (its lag: the scheduled time of the first record not
    yet sent; a record's latency counts from its schedule either way, so a lagging generator
    shows as latency, not as a lighter load), and the share of a core it took."""
    extra = extra or {}
    i = 0
    start_at = time.time() + 0.01
    cpu_began, lags = time.process_time(), []
    while i < count:
        now = time.time()
        due = count if rate is None else min(count, int((now - start_at) * rate) + 1)
        if rate is not None and due > i:
            lags.append(now - (start_at + i / rate))
        if due <= i:
            # Ticks of 1 ms: waking for every record would cost the generator a third of a
            # core at 8k records/s, taken from the worker and broker on a small machine.
            time.sleep(TICK_S)
            continue
        while i < due:
            stamp = now if rate is None else start_at + i / rate
            topic, value, key = record(i)
            try:
                p.produce(topic, value, key, timestamp=int(stamp * 1000), **extra)
            except BufferError:  # the local queue is full: let librdkafka drain it
                p.poll(0.01)
                continue
            i += 1
        p.poll(0)
    sent_at = time.time()
    cpu = time.process_time() - cpu_began
    if p.flush(60):
        raise KafkaException(f"{len(p)} records were not delivered in 60s")
    lag_ms = np.array(lags or [0.0]) * 1000
    return start_at, sent_at, {
        "cpu_cores": cpu / max(sent_at - start_at, 1e-9),
        "lag_p99_ms": float(np.percentile(lag_ms, 99)), "lag_max_ms": float(lag_ms.max())}


def tap(job: Tap) -> None:
    """Read the topic and write each record's key and receipt time to job.out."""
    tap_partitions(job.bootstrap, [TopicPartition(job.topic, p, o) for p, o in job.offsets.items()],
                   job.expected, job.deadline_s, job.out)


def tap_partitions(bootstrap: str, partitions: list[TopicPartition], expected: int,
                   deadline_s: float, out: Path) -> None:
    """Read the partitions from their offsets until `expected` records or the deadline; write
    each record's key and receipt time to out (.npz), and touch out.ready once fetching."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-tap",
                  "enable.auto.commit": False, "fetch.wait.max.ms": 5,
                  "fetch.message.max.bytes": 4_000_000})
    c.assign(partitions)
    c.consume(1, 0.5)  # fetching before the sender starts, so no record waits for the tap
    out.with_suffix(".ready").touch()
    keys = np.zeros(expected, dtype=np.int64)
    times = np.zeros(expected, dtype=np.float64)
    got, deadline = 0, time.monotonic() + deadline_s
    try:
        while got < expected and time.monotonic() < deadline:
            batch = c.consume(5000, 0.002)  # returns early: ≤ 2 ms added to a latency
            now = time.time()
            for m in batch:
                if m.error() or got >= expected:
                    continue
                keys[got], times[got] = int(m.key()), now
                got += 1
    finally:
        c.close()
    np.savez(out, keys=keys[:got], times=times[:got])


def start(target: Callable[..., None], *args: Any) -> BaseProcess:
    """Run send, tap or the relay in a process of its own."""
    process = _SPAWN.Process(target=target, args=args, daemon=True)  # type: ignore[attr-defined]
    process.start()
    return process


def queue() -> Any:
    """A queue the processes of start() can report on."""
    return _SPAWN.Queue()


def read_tap(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Keys and receipt times a tap wrote, in receipt order."""
    with np.load(path) as data:
        return data["keys"], data["times"]


def latencies_ms(keys: np.ndarray, times: np.ndarray, start_at: float, rate: float
                 ) -> np.ndarray:
    """Each record's latency from its scheduled send time, in milliseconds."""
    return (times - (start_at + keys / rate)) * 1000.0


def percentiles(values: np.ndarray) -> dict[str, float]:
    """p50, p99, p99.9 and max of latencies (ms)."""
    if not len(values):
        return {"p50_ms": float("nan"), "p99_ms": float("nan"), "p999_ms": float("nan"),
                "max_ms": float("nan")}
    p50, p99, p999 = np.percentile(values, [50, 99, 99.9])
    return {"p50_ms": float(p50), "p99_ms": float(p99), "p999_ms": float(p999),
            "max_ms": float(values.max())}


STALL_MS = 50  # a gap in a fixed-rate run's output this long is a stall
STALL_BUCKETS_MS = (100, 200, 300, 500, 1000)  # upper bounds; the last bucket has none


def stalls(times: np.ndarray) -> dict[str, Any]:
    """The gaps of over STALL_MS between results of a fixed-rate run (the output stood still
    while records were due), by length: how many, bucketed, the longest, and their share of
    the run's time."""
    gaps = np.diff(np.sort(times)) * 1000 if len(times) > 1 else np.zeros(0)
    long = gaps[gaps > STALL_MS]
    edges = (STALL_MS, *STALL_BUCKETS_MS)
    labels = [f"{a}-{b}" for a, b in itertools.pairwise(edges)] + [f">{edges[-1]}"]
    counts = np.histogram(long, bins=[*edges, np.inf])[0] if len(long) else [0] * len(labels)
    span = float(times.max() - times.min()) * 1000 if len(times) > 1 else 0.0
    return {"count": len(long), "by_ms": dict(zip(labels, map(int, counts), strict=True)),
            "longest_ms": float(long.max()) if len(long) else 0.0,
            "share_of_time": float(long.sum() / span) if span else 0.0}


def throughput(times: np.ndarray, low: float = 0.2, high: float = 0.95) -> tuple[float, float,
                                                                              float]:
    """Steady-state rate of a drained backlog: records between the low and high quantiles of
    arrival over the time between them; returns (rate, window start, window end)."""
    times = np.sort(times)
    a, b = int(len(times) * low), max(int(len(times) * high) - 1, 0)
    span = times[b] - times[a]
    return ((b - a) / span if span > 0 else float("nan")), float(times[a]), float(times[b])
