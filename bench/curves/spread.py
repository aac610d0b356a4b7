"""Load over many topics: records 0, 1, ... sent round robin to the input topics of several
pipelines, and one tap over all their output topics.

The same clock as bench.load: record i is scheduled at t0 + i / rate and stamped with that time,
so a latency counts from when the record was due, not from when a busy sender got to it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import uuid4

import numpy as np
from confluent_kafka import Producer, TopicPartition

from bench.load import on_schedule, producer_config, queue, read_tap, start, tap_partitions


@dataclass(frozen=True)
class SpreadSend:
    """`count` records, record i to topics[i % len(topics)] from that topic's pool (each
    pipeline's Avro records name its own schema)."""

    bootstrap: str
    topics: tuple[str, ...]
    pools: tuple[Sequence[bytes], ...]
    count: int
    rate: float | None  # records per second in all; None: as fast as the producer goes


@dataclass(frozen=True)
class SpreadTap:
    """Read (topic, partition) -> offset until `expected` records or the deadline."""

    bootstrap: str
    offsets: dict[tuple[str, int], int]
    expected: int
    deadline_s: float
    out: Path


def send_spread(job: SpreadSend, report: Any) -> None:
    """Produce on schedule over the topics; report (record 0's scheduled time, last sent, the
    generator's own figures: bench.load.on_schedule)."""
    p = Producer(producer_config(job.bootstrap))
    for topic in job.topics:
        p.list_topics(topic, timeout=10)  # metadata of every topic before the clock starts
    pools, topics, k = job.pools, job.topics, len(job.topics)

    def record(i: int) -> tuple[str, bytes, bytes]:
        pool = pools[i % k]
        return topics[i % k], pool[i // k % len(pool)], str(i).encode()

    report.put(on_schedule(p, job.count, job.rate, record))


def tap_spread(job: SpreadTap) -> None:
    """Read every output topic; write each record's key and receipt time to job.out."""
    tap_partitions(job.bootstrap, [TopicPartition(t, p, o) for (t, p), o in job.offsets.items()],
                   job.expected, job.deadline_s, job.out)


def run_spread(bootstrap: str, sources: Sequence[str], offsets: dict[tuple[str, int], int],
               pools: Sequence[Sequence[bytes]], folder: Path, count: int, rate: float | None,
               deadline_s: float
               ) -> tuple[np.ndarray, np.ndarray, float, float, dict[str, float]]:
    """Send over sources, tap the outputs from offsets: keys, receipt times, t0, last sent,
    and the generator's own figures."""
    out = folder / f"tap-{uuid4().hex[:8]}.npz"
    tapping = start(tap_spread, SpreadTap(bootstrap, offsets, count, deadline_s, out))
    deadline = time.monotonic() + 60
    while not out.with_suffix(".ready").exists():
        if not tapping.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the tap did not start (exit code {tapping.exitcode})")
        time.sleep(0.02)
    report = queue()
    job = SpreadSend(bootstrap, tuple(sources), tuple(pools), count, rate)
    sending = start(send_spread, job, report)
    start_at, sent_at, generator = report.get(timeout=deadline_s + 60)
    sending.join(30)
    tapping.join(deadline_s + 30)
    keys, times = read_tap(out)
    return keys, times, start_at, sent_at, generator


def longest_pause_s(times: np.ndarray) -> float:
    """The longest time a downstream consumer waited between two results."""
    return float(np.diff(np.sort(times)).max()) if len(times) > 1 else float("nan")
