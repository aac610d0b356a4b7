"""Inference logs into ClickHouse (chDB owned by the worker): exactly once through a crash."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from uuid import uuid4

import pytest

from control.client import Client
from control.config import Settings
from control.kafka import producer
from control.local.demo_models import build_onnx_classifier, iris_rows
from control.local.worker_process import WorkerProcess
from control.registrar import Registrar
from sinks.access import RemoteReader, open_reader, read_owner
from tests.helpers import wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def test_log_sink_killed_mid_stream_keeps_every_log_exactly_once(broker, tmp_path: Path) -> None:
    settings = Settings(bootstrap_servers=broker.bootstrap, namespace=f"s{uuid4().hex[:8]}",
                        data_dir=tmp_path / "data", pipeline_partitions=2)
    registrar = Registrar(settings).start()
    worker = WorkerProcess(settings, "w1", tmp_path, data_dir=settings.data_dir)
    try:
        client = Client(settings, user="ann", workspace="lab")
        client.create_user("ann")
        client.create_workspace("lab")
        client.upload_model("clf", build_onnx_classifier(tmp_path / "clf.onnx"))
        client.create_pipeline("p")
        client.create_pipeline_version("p", [{"model": "clf"}])
        worker.wait_ready()
        client.deploy("p", worker_wait=60)

        topic = settings.pipeline_topic("lab", "p", "input")
        p = producer(settings)
        rows = iris_rows()

        def send(start: int, n: int) -> None:
            for i in range(start, start + n):
                record = {"id": f"r{i}", "float_input": rows[i % len(rows)].tolist()}
                p.produce(topic, key=record["id"].encode(), value=json.dumps(record).encode())
            p.flush(10)

        def logged() -> int:
            return client.count_logs("p")

        send(0, 1500)
        wait_until(lambda: read_owner(settings), 60, "the worker owns the chDB folder")
        assert isinstance(open_reader(settings), RemoteReader)  # the CLI reads through it
        wait_until(lambda: logged() > 0, 60, "some logs stored")
        worker.kill(signal.SIGKILL)  # mid-stream: records and logs in flight
        send(1500, 1500)
        worker = WorkerProcess(settings, "w1", tmp_path, data_dir=settings.data_dir)
        worker.wait_ready("lab/p")
        wait_until(lambda: logged() == 3000, 120, "all 3000 logs stored")
        logs = client.logs("p", limit=None)
        assert sorted(r["record_id"] for r in logs) == sorted(f"r{i}" for i in range(3000))
        one = next(r for r in logs if r["record_id"] == "r7")
        assert one["inputs"]["float_input"][2] == pytest.approx(float(rows[7][2]))
    finally:
        worker.stop()
        registrar.stop()
