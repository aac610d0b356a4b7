"""The demo's realistic chain, as `inferstream up` runs it: raw records -> a Python step ->
gradient-boosted trees converted from scikit-learn on upload -> a Python step's decision."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from control.client import Client
from control.local.demo import DECISIONS, DEMO_USER, DEMO_WORKSPACE, run_decisions_demo
from control.local.worker_process import WorkerProcess
from control.registrar import Registrar
from tests.worker_platform import own_settings


@pytest.mark.kafka
@pytest.mark.slow
def test_the_demo_turns_raw_records_into_decisions(broker, tmp_path: Path) -> None:
    settings = own_settings(broker.bootstrap, "demo", tmp_path / "data")
    registrar = Registrar(settings).start()
    worker = WorkerProcess(settings, "w1", tmp_path)
    try:
        with Client(settings, user=DEMO_USER, workspace=DEMO_WORKSPACE) as client:
            client.create_user(DEMO_USER, admin=True)
            client.create_workspace(DEMO_WORKSPACE)
            worker.wait_ready()
            console = Console(record=True, width=200, file=io.StringIO())
            run_decisions_demo(settings, console)
            text = console.export_text()
            # The trees were converted on upload, checked against scikit-learn, and kept.
            assert "converted sklearn GradientBoostingClassifier to ONNX" in text
            trees = client.model("iris-trees").latest
            assert trees.framework == "onnx"
            assert [name for name, _ in trees.files] == ["original.joblib"]
            assert [client.model(m).latest.framework for m in ("iris-features", "iris-decision")
                    ] == ["python", "python"]
            # Raw records in cm and mm get the same decisions; an unknown unit is dead-lettered
            # with the step's reason.
            rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
                    for line in text.splitlines() if line.startswith("│ raw-")}
            assert rows["raw-0"] == ["cm", "setosa", rows["raw-0"][2], "accept", "0"]
            assert rows["raw-1"][:2] == ["mm", "setosa"]
            assert rows["raw-4"][1] == "virginica"
            assert "dead letter raw-inches: step 1 (iris-features v1): ValueError: unit 'in' is " \
                   "neither 'cm' nor 'mm'" in text
            version = client.pipeline(DECISIONS).versions[-1]
            assert version.result_steps == (2, 3)
    finally:
        worker.stop()
        registrar.stop()
