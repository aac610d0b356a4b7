"""What a worker measures: time per stage (StageMetrics) and, per pipeline, Prometheus series.

StageMetrics: cheap counters of where a worker's time goes, nanoseconds per stage, summed per
batch. Stages of a served batch: consume (waiting for the batch: fetching), decode, infer,
encode (results, dead letters, logs), produce (waiting for the last transaction to commit, and
queueing the sends) and commit (the transaction's commit, in a thread of its own while the next
batch is served: not on the serving thread's clock); the log sink adds sink (decoding and
inserting log rows). Two clock reads per stage per batch, not per record; served as JSON on
GET /metrics/stages (bench/ reads it) with the counts of records, micro-batches and
transactions, and histograms of the pauses that make a latency tail: each serving cycle (taking
a batch to handing its output to the producer), the wait for the last transaction's commit,
the commit itself, and the collector's pauses (gc.callbacks) of the whole process.

PipelineMetrics: records in, out and dead-lettered, batch latency, consumer lag, model load
failures and the deployed version, labelled by workspace and pipeline; records each validation
flagged and the batches it could not be evaluated in, labelled by check too (counted when the
batch is evaluated); served in Prometheus' text format on GET /metrics and summarised in the
worker's heartbeat (agents.heartbeat).
"""

from __future__ import annotations

import bisect
import contextlib
import gc
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

STAGES = ("consume", "decode", "infer", "encode", "produce", "commit", "sink")
# Upper bounds (ms) of the pause histograms' buckets; the last bucket has none.
PAUSE_BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 300, 500, 1000)
PAUSES = ("cycle", "settle", "commit", "gc")


class Pauses:
    """Counts of pauses by length (PAUSE_BUCKETS_MS), their total and the longest: cheap to
    add to (a bisect and two additions), read as differences of two snapshots."""

    __slots__ = ("counts", "longest_ns", "total_ns")

    def __init__(self) -> None:
        self.counts = [0] * (len(PAUSE_BUCKETS_MS) + 1)
        self.total_ns = 0
        self.longest_ns = 0

    def add(self, elapsed_ns: int) -> None:
        self.counts[bisect.bisect_left(PAUSE_BUCKETS_MS, elapsed_ns / 1e6)] += 1
        self.total_ns += elapsed_ns
        self.longest_ns = max(self.longest_ns, elapsed_ns)

    def snapshot(self) -> dict[str, Any]:
        return {"counts": list(self.counts), "total_ns": self.total_ns,
                "longest_ns": self.longest_ns}


class StageMetrics:
    """Totals since the worker started; read them twice and divide the differences."""

    def __init__(self) -> None:
        self.ns = dict.fromkeys(STAGES, 0)
        self.records = 0  # records served (results and dead letters)
        self.batches = 0
        self.transactions = 0  # committed ones
        self.sink_rows = 0
        self.pauses = {name: Pauses() for name in PAUSES}
        self._lock = threading.Lock()  # the sink's stage is added from a thread of its own

    def add(self, stage: str, started_ns: int) -> int:
        """Add the time since started_ns to stage; returns now, the next stage's start."""
        now = time.perf_counter_ns()
        self.ns[stage] += now - started_ns
        return now

    def served(self, records: int) -> None:
        self.records += records
        self.batches += 1

    def committed(self, elapsed_ns: int) -> None:
        """A transaction committed in elapsed_ns (from the commit thread)."""
        with self._lock:
            self.ns["commit"] += elapsed_ns
            self.transactions += 1
            self.pauses["commit"].add(elapsed_ns)

    def paused(self, what: str, elapsed_ns: int) -> None:
        """A pause of the serving thread (cycle, settle) or of the process (gc)."""
        self.pauses[what].add(elapsed_ns)

    def sunk(self, rows: int, elapsed_ns: int) -> None:
        with self._lock:
            self.ns["sink"] += elapsed_ns
            self.sink_rows += rows

    def snapshot(self) -> dict[str, Any]:
        return {"stages_ns": dict(self.ns), "records": self.records, "batches": self.batches,
                "transactions": self.transactions, "sink_rows": self.sink_rows,
                "pause_buckets_ms": list(PAUSE_BUCKETS_MS),
                "pauses": {name: p.snapshot() for name, p in self.pauses.items()}}


def pauses_between(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Each pause histogram between two snapshots: counts by bucket, total ms; the longest is
    the longest since the worker started (not only in between)."""
    out = {}
    for name, b in after.get("pauses", {}).items():
        a = before.get("pauses", {}).get(name, {"counts": [0] * len(b["counts"]),
                                                "total_ns": 0})
        out[name] = {"counts": [x - y for x, y in zip(b["counts"], a["counts"], strict=True)],
                     "total_ms": (b["total_ns"] - a["total_ns"]) / 1e6,
                     "longest_ever_ms": b["longest_ns"] / 1e6}
    return out


class GcPauses:
    """Times the collector's pauses of this process into a StageMetrics (gc.callbacks)."""

    def __init__(self, metrics: StageMetrics) -> None:
        self.metrics = metrics
        self._began = 0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._began = time.perf_counter_ns()
        elif self._began:
            self.metrics.paused("gc", time.perf_counter_ns() - self._began)
            self._began = 0

    def install(self) -> GcPauses:
        gc.callbacks.append(self)
        return self

    def remove(self) -> None:
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self)


def per_record_us(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
    """µs per served record of each stage between two snapshots (sink: per log row too)."""
    records = max(after["records"] - before["records"], 1)
    rows = after["sink_rows"] - before["sink_rows"]
    out = {stage: (after["stages_ns"][stage] - before["stages_ns"][stage]) / records / 1000
           for stage in STAGES}
    out["sink_per_log_row"] = ((after["stages_ns"]["sink"] - before["stages_ns"]["sink"])
                               / rows / 1000) if rows else 0.0
    out["batch_size"] = records / max(after["batches"] - before["batches"], 1)
    out["transaction_size"] = records / max(
        after.get("transactions", 0) - before.get("transactions", 0), 1)
    return out


# -- Prometheus series ---------------------------------------------------------------------------

# The text format Prometheus scrapes (prometheus_client's newest default may be another one).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# A micro-batch takes from about a millisecond (small models, small batches) to seconds.
BATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LABELS = ("workspace", "pipeline")
CHECK_LABELS = (*LABELS, "check")
# Which sample of the exposition feeds which field of a pipeline's snapshot.
_SNAPSHOT = {
    "inferstream_records_in_total": "in",
    "inferstream_records_out_total": "out",
    "inferstream_records_dead_lettered_total": "dead",
    "inferstream_model_load_failures_total": "load_failures",
    "inferstream_consumer_lag_records": "lag",
    "inferstream_deployed_version": "version",
    "inferstream_batch_seconds_count": "batches",
    "inferstream_batch_seconds_sum": "batch_seconds",
}


@dataclass(frozen=True)
class _Counters:
    """One pipeline's counter children, looked up once: labels() costs a lock and a check."""

    records_in: Any
    records_out: Any
    dead: Any
    batch: Any
    load_failures: Any


class PipelineMetrics:
    """Per-pipeline Prometheus series of one worker, in a registry of its own.

    Its own registry, not the process-global one, so that several workers (tests run them in
    one process) keep separate counts.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self._in = Counter("inferstream_records_in", "Records taken from the input topic",
                           LABELS, registry=r)
        self._out = Counter("inferstream_records_out", "Results published to the output topic",
                            LABELS, registry=r)
        self._dead = Counter("inferstream_records_dead_lettered",
                             "Records published to the dead-letter topic", LABELS, registry=r)
        self._batch = Histogram("inferstream_batch_seconds", "Time to serve one micro-batch",
                                LABELS, buckets=BATCH_BUCKETS, registry=r)
        self._load_failures = Counter("inferstream_model_load_failures",
                                      "Deployed versions this worker could not load", LABELS,
                                      registry=r)
        self._lag = Gauge("inferstream_consumer_lag_records",
                          "Records waiting in the input partitions this worker holds", LABELS,
                          registry=r)
        self._version = Gauge("inferstream_deployed_version",
                              "The pipeline version this worker serves", LABELS, registry=r)
        self._anomalies = Counter("inferstream_anomalies",
                                  "Records a validation flagged (its expression was true)",
                                  CHECK_LABELS, registry=r)
        self._check_errors = Counter("inferstream_validation_errors",
                                     "Micro-batches in which a validation could not be "
                                     "evaluated (it flagged none of their records)",
                                     CHECK_LABELS, registry=r)
        self._counters: dict[tuple[str, str], _Counters] = {}

    def _of(self, workspace: str, pipeline: str) -> _Counters:
        found = self._counters.get((workspace, pipeline))
        if found is None:
            labels = (workspace, pipeline)
            found = _Counters(self._in.labels(*labels), self._out.labels(*labels),
                              self._dead.labels(*labels), self._batch.labels(*labels),
                              self._load_failures.labels(*labels))
            self._counters[(workspace, pipeline)] = found
        return found

    def records_in(self, workspace: str, pipeline: str, n: int) -> None:
        self._of(workspace, pipeline).records_in.inc(n)

    def records_out(self, workspace: str, pipeline: str, n: int) -> None:
        self._of(workspace, pipeline).records_out.inc(n)

    def dead_lettered(self, workspace: str, pipeline: str, n: int) -> None:
        self._of(workspace, pipeline).dead.inc(n)

    def checked(self, workspace: str, pipeline: str, flagged: Mapping[str, int],
                errors: Iterable[str]) -> None:
        """A batch's validations: records each flagged, and the checks that failed to run."""
        for check, n in flagged.items():
            self._anomalies.labels(workspace, pipeline, check).inc(n)
        for check in errors:
            self._check_errors.labels(workspace, pipeline, check).inc()

    def batch_seconds(self, workspace: str, pipeline: str, seconds: float) -> None:
        """One micro-batch served in `seconds`."""
        self._of(workspace, pipeline).batch.observe(seconds)

    def model_load_failure(self, workspace: str, pipeline: str) -> None:
        self._of(workspace, pipeline).load_failures.inc()

    def set_lag(self, workspace: str, pipeline: str, lag: int) -> None:
        """Records waiting in the pipeline's input partitions that this worker holds."""
        self._lag.labels(workspace, pipeline).set(lag)

    def set_version(self, workspace: str, pipeline: str, version: int) -> None:
        """The pipeline version this worker serves now."""
        self._version.labels(workspace, pipeline).set(version)

    def forget(self, workspace: str, pipeline: str) -> None:
        """Drop an undeployed pipeline's gauges; its counters keep their totals."""
        for gauge in (self._lag, self._version):
            with contextlib.suppress(KeyError):  # never set (older prometheus_client raises)
                gauge.remove(workspace, pipeline)

    def render(self) -> bytes:
        """Every series in Prometheus' text format (CONTENT_TYPE)."""
        return generate_latest(self.registry)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Totals per "workspace/pipeline": in, out, dead, load_failures, lag and version (None
        when not set), batches and mean_batch_ms."""
        out: dict[str, dict[str, Any]] = {}
        for metric in self.registry.collect():
            for sample in metric.samples:
                field = _SNAPSHOT.get(sample.name)
                if field is None:
                    continue
                name = f"{sample.labels['workspace']}/{sample.labels['pipeline']}"
                entry = out.setdefault(name, {
                    "in": 0, "out": 0, "dead": 0, "load_failures": 0, "lag": None,
                    "version": None, "batches": 0, "batch_seconds": 0.0})
                entry[field] = sample.value if field == "batch_seconds" else int(sample.value)
        for entry in out.values():
            seconds = entry.pop("batch_seconds")
            entry["mean_batch_ms"] = seconds / entry["batches"] * 1000 if entry["batches"] else 0.0
        return out


class _Families:
    """Metric families made at scrape time, in the shape generate_latest reads."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self.families


def worker_exposition(stages: StageMetrics, live: bool, ready: bool, refused: int) -> bytes:
    """Worker-wide series for GET /metrics: seconds per stage, log rows sunk, and health."""
    snap = stages.snapshot()
    seconds = CounterMetricFamily("inferstream_stage_seconds",
                                  "Time spent per stage of serving since the worker started",
                                  labels=["stage"])
    for stage, ns in snap["stages_ns"].items():
        seconds.add_metric([stage], ns / 1e9)
    return generate_latest(_Families([
        seconds,
        CounterMetricFamily("inferstream_sink_rows", "Inference-log rows stored by this worker",
                            value=snap["sink_rows"]),
        GaugeMetricFamily("inferstream_worker_live",
                          "1 while the worker takes records from its input topics",
                          value=int(live)),
        GaugeMetricFamily("inferstream_worker_ready",
                          "1 once the registry is replayed and every deployment is served",
                          value=int(ready)),
        GaugeMetricFamily("inferstream_deployments_refused",
                          "Deployments this worker could not load", value=refused),
    ]))
