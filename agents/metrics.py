"""Cheap counters of where a worker's time goes: nanoseconds per stage, summed per batch.

Stages of a served batch: consume (waiting for the batch: fetching, and whatever else the event
loop ran meanwhile), decode, infer, encode (results, dead letters, logs), produce (queueing the
sends and waiting for the broker's acks) and ack; the log sink adds sink (decoding and inserting
log rows). Two clock reads per stage per batch, not per record; served on GET /metrics.
"""

from __future__ import annotations

import threading
import time
from typing import Any

STAGES = ("consume", "decode", "infer", "encode", "produce", "ack", "sink")


class StageMetrics:
    """Totals since the worker started; read them twice and divide the differences."""

    def __init__(self) -> None:
        self.ns = dict.fromkeys(STAGES, 0)
        self.records = 0  # records served (results and dead letters)
        self.batches = 0
        self.sink_rows = 0
        self._lock = threading.Lock()  # the sink's stage is added from an executor thread

    def add(self, stage: str, started_ns: int) -> int:
        """Add the time since started_ns to stage; returns now, the next stage's start."""
        now = time.perf_counter_ns()
        self.ns[stage] += now - started_ns
        return now

    def served(self, records: int) -> None:
        self.records += records
        self.batches += 1

    def sunk(self, rows: int, elapsed_ns: int) -> None:
        with self._lock:
            self.ns["sink"] += elapsed_ns
            self.sink_rows += rows

    def snapshot(self) -> dict[str, Any]:
        return {"stages_ns": dict(self.ns), "records": self.records, "batches": self.batches,
                "sink_rows": self.sink_rows}


def per_record_us(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
    """µs per served record of each stage between two snapshots (sink: per log row too)."""
    records = max(after["records"] - before["records"], 1)
    rows = after["sink_rows"] - before["sink_rows"]
    out = {stage: (after["stages_ns"][stage] - before["stages_ns"][stage]) / records / 1000
           for stage in STAGES}
    out["sink_per_log_row"] = ((after["stages_ns"]["sink"] - before["stages_ns"]["sink"])
                               / rows / 1000) if rows else 0.0
    out["batch_size"] = records / max(after["batches"] - before["batches"], 1)
    return out
