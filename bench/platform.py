"""The platform under test: a broker, a registrar, the models uploaded, pipelines, workers.

Everything a user would do, through the public client: a namespace of its own, the bench
models uploaded, one pipeline per scenario (so no scenario reads another's records), and
workers started as `inferstream worker` processes.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import numpy as np

from agents.records.formats import avro_input, input_schema_name
from bench.models import INPUT, BenchModels, chain_steps
from control.client import Client
from control.config import Settings
from control.kafka import end_offsets, ensure_topics, pipeline_topics
from control.local.brokers import LocalBroker, start_local_broker
from control.local.worker_process import WorkerProcess
from control.registrar import Registrar

WORKSPACE = "bench"


@contextlib.contextmanager
def broker(folder: Path) -> Iterator[tuple[str, LocalBroker | None]]:
    """INFERSTREAM_BOOTSTRAP_SERVERS when set, else an Apache Kafka broker of our own."""
    external = os.environ.get("INFERSTREAM_BOOTSTRAP_SERVERS")
    if external:
        yield external, None
        return
    with start_local_broker(folder, kind="kafka") as local:
        yield local.bootstrap, local


class BenchPlatform:
    """A namespace with the bench models registered; pipelines are added per scenario."""

    def __init__(self, bootstrap: str, folder: Path, models: BenchModels,
                 record_format: str) -> None:
        self.folder, self.models, self.record_format = folder, models, record_format
        self.settings = Settings(bootstrap_servers=bootstrap, namespace=f"b{uuid4().hex[:8]}",
                                 data_dir=folder / "cli", pipeline_partitions=4)
        self.registrar = Registrar(self.settings).start()
        self.client = Client(self.settings, user="bench", workspace=WORKSPACE)
        self.client.create_user("bench")
        self.client.create_workspace(WORKSPACE)
        self.client.upload_model("gbt", models.gbt)
        for name, path in zip(("chain-gbt", "chain-mlp", "chain-linear"), models.chain,
                              strict=True):
            self.client.upload_model(name, path)
        self.workers: list[WorkerProcess] = []

    def pipeline(self, name: str, chain: bool = False) -> None:
        """Create a pipeline: the GBT alone, or the three-model chain; and its topics."""
        steps = (chain_steps(("chain-gbt", "chain-mlp", "chain-linear")) if chain
                 else [{"model": "gbt", "version": 1}])
        self.client.create_pipeline(name)
        self.client.create_pipeline_version(name, steps)
        ensure_topics(self.settings, pipeline_topics(self.settings, WORKSPACE, name))

    def payloads(self, pipeline: str, n: int = 1000) -> list[bytes]:
        """n distinct input records of a pipeline, in the bench's format (Avro or JSON)."""
        rows = np.resize(self.models.rows, (n, self.models.rows.shape[1]))
        if self.record_format == "json":
            # One decimal place short of float32 precision is still ~280 bytes: JSON is wordy.
            return [json.dumps({"id": f"r{i}", INPUT: np.round(row, 3).tolist()},
                               separators=(",", ":")).encode() for i, row in enumerate(rows)]
        specs = self.client.model("gbt" if pipeline != "chain" else "chain-gbt").version(1).inputs
        avro = avro_input(specs, input_schema_name(WORKSPACE, pipeline))
        return [avro.encode({"id": f"r{i}", INPUT: row[np.newaxis]}) for i, row in enumerate(rows)]

    def worker(self, name: str, sink: bool) -> WorkerProcess:
        """Start `inferstream worker` with the log sink on or off; wait until it is ready."""
        saved = os.environ.get("INFERSTREAM_LOG_SINK")
        os.environ["INFERSTREAM_LOG_SINK"] = "true" if sink else "false"
        try:
            w = WorkerProcess(self.settings, name, self.folder)
        finally:
            if saved is None:
                os.environ.pop("INFERSTREAM_LOG_SINK")
            else:
                os.environ["INFERSTREAM_LOG_SINK"] = saved
        self.workers.append(w)
        w.wait_ready()
        return w

    def deploy(self, w: WorkerProcess, pipeline: str, batch_size: int, wait_ms: int) -> None:
        self.client.deploy(pipeline, batch_size=batch_size, batch_wait_ms=wait_ms,
                           worker_wait=60)
        w.wait_ready(f"{WORKSPACE}/{pipeline}", timeout=60)

    def undeploy(self, w: WorkerProcess, pipeline: str) -> None:
        self.client.undeploy(pipeline)
        deadline = time.monotonic() + 30
        while f"{WORKSPACE}/{pipeline}" in (w.health() or {}).get("serving", {}):
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker {w.name} still serves {pipeline} after 30s")
            time.sleep(0.1)

    def topic(self, pipeline: str, kind: str) -> str:
        return self.settings.pipeline_topic(WORKSPACE, pipeline, kind)

    def ends(self, topic: str) -> dict[int, int]:
        return end_offsets(self.settings, topic)

    def close(self) -> None:
        for w in self.workers:
            w.stop()
        self.client.close()
        self.registrar.stop()


def metrics(w: WorkerProcess) -> dict[str, Any] | None:
    """The worker's stage counters (GET /metrics/stages), or None when it has none."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{w.port}/metrics/stages",
                                    timeout=5) as r:
            return json.loads(r.read())
    except OSError:
        return None
