"""What the fault suites share: a steady flow of records with ids, and the check that every one
of them came out exactly once (tests/test_faults.py, tests/test_cluster_faults.py)."""

from __future__ import annotations

import itertools
import json
import os
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from uuid import uuid4

from agents.records.avro_input import avro_input, input_schema_name
from control.config import Settings
from control.kafka import consumer, end_offsets, producer, read_until_end
from control.local.demo_models import iris_rows
from control.local.worker_process import WorkerProcess
from control.registry.tensors import TensorSpec
from schemas.codec import decode
from sinks.log_batches import decode_logs
from tests.helpers import wait_until
from tests.worker_platform import Platform

ROWS = iris_rows()
IRIS = (TensorSpec("float_input", "float32", (-1, 4)),)  # the inputs of the models under test


@dataclass
class Flow:
    """Records sent at a steady rate by a thread, keyed by their id; every 25th is malformed."""

    settings: Settings
    pipeline: str
    count: int
    rate: float
    good: set[str] = field(default_factory=set)
    bad: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.tag = uuid4().hex[:6]
        self._thread = threading.Thread(target=self._send, daemon=True)

    def start(self) -> Flow:
        self._thread.start()
        return self

    def join(self, timeout: float = 120.0) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the records were not all sent"

    def _send(self) -> None:
        p = producer(self.settings)
        topic = self.settings.pipeline_topic("lab", self.pipeline, "input")
        avro = avro_input(IRIS, input_schema_name("lab", self.pipeline))
        started = time.monotonic()
        for i in range(self.count):
            wait = started + i / self.rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)  # a fixed-rate producer, not a test waiting on a condition
            rid = f"{self.tag}-{i}"
            if i % 25 == 7:
                value = json.dumps({"id": rid, "float_input": [1.0, 2.0]}).encode()
                self.bad.add(rid)
            else:
                value = avro.encode({"id": rid, "float_input": ROWS[i % len(ROWS)][None]})
                self.good.add(rid)
            p.produce(topic, key=rid.encode(), value=value)
            p.poll(0)
        assert p.flush(60) == 0


def progress(settings: Settings, pipeline: str) -> int:
    """About how many results are out (end offsets: commit markers count too)."""
    return sum(end_offsets(settings, settings.pipeline_topic("lab", pipeline, "output"))
               .values())


@dataclass
class Outcome:
    results: Counter[str]
    dead: Counter[str]
    logs: Counter[str]
    bodies: dict[str, dict]


def outcome(settings: Settings, pipeline: str, tag: str) -> Outcome:
    """What a read_committed consumer sees of one flow: results, dead letters and logs."""
    topic = lambda kind: settings.pipeline_topic("lab", pipeline, kind)  # noqa: E731
    results: Counter[str] = Counter()
    bodies = {}
    for m in read_until_end(settings, topic("output"), timeout=60):
        if m.key().decode().startswith(tag):
            results[m.key().decode()] += 1
            bodies[m.key().decode()] = decode("InferenceResult", m.value())
    dead = Counter(m.key().decode() for m in read_until_end(settings, topic("dead"), timeout=60)
                   if m.key().decode().startswith(tag))
    logs = Counter(log["record_id"]
                   for m in read_until_end(settings, settings.topic("logs"), timeout=60)
                   for log in decode_logs(m.value()) if log["record_id"].startswith(tag))
    return Outcome(results, dead, logs, bodies)


def exactly_once(settings: Settings, flow: Flow, timeout: float = 180.0) -> Outcome:
    """Wait until every record of the flow is answered; then none may be answered twice."""
    wanted = flow.good | flow.bad

    def answered() -> Outcome | None:
        seen = outcome(settings, flow.pipeline, flow.tag)
        return seen if wanted <= set(seen.results) | set(seen.dead) else None

    seen = wait_until(answered, timeout, f"all {len(wanted)} records of {flow.pipeline} served")
    assert set(seen.results) == flow.good and set(seen.dead) == flow.bad
    assert [k for k, n in (seen.results + seen.dead).items() if n > 1] == []
    assert set(seen.logs) == flow.good
    assert [k for k, n in seen.logs.items() if n > 1] == []
    return seen


class FaultPlatform(Platform):
    def restart(self, name: str) -> WorkerProcess:
        """A worker of the same name (same data folder, same transactional id) started anew."""
        self.workers = [w for w in self.workers if w.name != name]
        w = self.worker(name)
        w.wait_ready()
        return w

    def worker(self, name: str, data_dir: Path | None = None) -> WorkerProcess:
        """A worker; with `data_dir`, on that data folder (workers may share one)."""
        w = WorkerProcess(self.settings, name, self.tmp, data_dir=data_dir)
        self.workers.append(w)
        return w

    def kill(self, name: str) -> None:
        next(w for w in self.workers if w.name == name).kill(signal.SIGKILL)


class Watch:
    """A downstream consumer of a pipeline's results (read_committed), noting when each result
    of a flow arrives: the longest gap between two arrivals is the pause a consumer saw."""

    def __init__(self, settings: Settings, pipeline: str, tag: str) -> None:
        self.settings, self.tag = settings, tag
        self.topic = settings.pipeline_topic("lab", pipeline, "output")
        self.arrivals: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Watch:
        self._thread.start()
        return self

    def stop(self) -> float:
        """Stop watching; the longest pause in seconds."""
        self._stop.set()
        self._thread.join(30)
        return max((b - a for a, b in itertools.pairwise(self.arrivals)), default=0.0)

    def _run(self) -> None:
        c = consumer(self.settings, group=f"{self.settings.namespace}.watch.{self.tag}",
                     **{"enable.partition.eof": False})
        c.subscribe([self.topic])
        try:
            while not self._stop.is_set():
                for m in c.consume(500, 0.2):
                    if m.error() is None and m.key() and m.key().decode().startswith(self.tag):
                        self.arrivals.append(time.monotonic())
        finally:
            c.close()


def note_pause(case: str, seconds: float) -> None:
    """Add a case's longest pause to $INFERSTREAM_FAULT_REPORT (JSON), when it is set."""
    report = os.environ.get("INFERSTREAM_FAULT_REPORT")
    if report:
        path = Path(report)
        pauses = json.loads(path.read_text()) if path.exists() else {}
        path.write_text(json.dumps({**pauses, case: round(seconds, 1)}, indent=2,
                                   sort_keys=True) + "\n")
