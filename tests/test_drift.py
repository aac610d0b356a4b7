"""Drift end to end: a worker's scheduled assay over drifted traffic publishes an alert."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid4

import numpy as np
import pytest
from confluent_kafka import TopicPartition

from agents.runtimes import load_model
from control.cli import main
from control.client import Client
from control.config import Settings
from control.kafka import consumer
from control.local.demo_models import build_onnx_classifier, iris_rows
from control.local.worker_process import WorkerProcess
from control.registrar import Registrar
from schemas.codec import codec
from sinks.access import read_owner
from tests.helpers import wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def test_drifted_traffic_raises_an_alert_that_assays_results_shows(
        broker, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = Settings(bootstrap_servers=broker.bootstrap, namespace=f"d{uuid4().hex[:8]}",
                        data_dir=tmp_path / "data", pipeline_partitions=1)
    registrar = Registrar(settings).start()
    worker = WorkerProcess(settings, "w1", tmp_path, data_dir=settings.data_dir,
                           env={"INFERSTREAM_ASSAY_TICK_S": "1"})
    try:
        client = Client(settings, user="ann", workspace="lab")
        client.create_user("ann")
        client.create_workspace("lab")
        clf = build_onnx_classifier(tmp_path / "clf.onnx")
        client.upload_model("clf", clf)
        client.create_pipeline("iris")
        client.create_pipeline_version("iris", [{"model": "clf"}])
        worker.wait_ready()
        wait_until(lambda: read_owner(settings), 60, "w1 owns the storage")
        client.deploy("iris", worker_wait=60)

        # Baseline: the virginica probability over the whole (balanced) iris set.
        normal = load_model("onnx", clf).predict({"float_input": iris_rows()})
        start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=2)
        client.create_assay(
            "virginica", pipeline="iris", model="clf", io="output", field="probabilities",
            index=2, baseline_values=tuple(float(v) for v in normal["probabilities"][:, 2]),
            width=timedelta(seconds=4), first_window_start=start, bins=5,
            warning_threshold=0.1, alert_threshold=0.25)
        alerts = consumer(settings)
        alerts.assign([TopicPartition(settings.topic("alerts"), 0, 0)])

        # Drifted traffic: only virginica-like flowers, for the whole first window.
        drifted = iris_rows()[100:150] * np.float32(1.1)
        while datetime.now(UTC) < start + timedelta(seconds=4):
            client.infer("iris", [{"float_input": row.tolist()} for row in drifted[:10]])
            time.sleep(0.2)

        def alert() -> dict | None:
            msg = alerts.poll(0.5)
            return codec("AssayAlert").decode(msg.value()) if msg and not msg.error() else None

        got = wait_until(alert, 90, "an alert on the alerts topic")
        assert (got["status"], got["workspace"], got["pipeline"], got["field"]) == (
            "alert", "lab", "iris", "probabilities")
        assert got["score"] >= 0.25 and got["window_start"] == start

        argv = ["--bootstrap-servers", settings.bootstrap_servers, "--namespace",
                settings.namespace, "--data-dir", str(settings.data_dir), "--user", "ann",
                "--workspace", "lab", "assays", "results", "virginica", "--json",
                "--plot", str(tmp_path / "drift.png")]
        try:
            main(argv)
        except SystemExit as exited:
            assert exited.code in (0, None), capsys.readouterr()
        printed = capsys.readouterr().out
        results = json.loads(printed[printed.index("["):printed.rindex("]") + 1])
        assert results[0]["status"] == "alert"
        assert (tmp_path / "drift.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        alerts.close()
    finally:
        worker.stop()
        registrar.stop()
