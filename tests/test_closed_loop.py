"""The monitoring loop closed, end to end: a worse model version swapped in under traffic, its
labels arriving late, a performance assay going from ok to alert as they arrive, and a rule
rolling the pipeline back exactly once, though the worker that ran the assays is killed -9
on the way and comes back."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid4

import numpy as np
import pytest
from sklearn.datasets import load_iris
from sklearn.metrics import accuracy_score

from control.config import Settings
from control.local.demo_models import build_onnx_classifier
from control.local.worker_process import WorkerProcess
from sinks.access import read_owner
from tests.helpers import wait_until
from tests.worker_platform import Namespace

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
WIDTH = timedelta(seconds=12)
ALERT_AT = 0.85  # accuracy at or below it alerts


def test_a_worse_version_is_rolled_back_once_as_its_late_labels_arrive(
        broker, tmp_path: Path) -> None:
    shared = tmp_path / "shared"  # both workers' data folder: one owns chDB and the schedules
    settings = Settings(bootstrap_servers=broker.bootstrap, namespace=f"loop{uuid4().hex[:8]}",
                        data_dir=shared, pipeline_partitions=1)
    ns = Namespace(settings, tmp_path)
    env = {"INFERSTREAM_ASSAY_TICK_S": "1", "INFERSTREAM_ASSAY_RESCORE_S": "1"}

    def worker(name: str) -> WorkerProcess:
        w = WorkerProcess(settings, name, tmp_path, data_dir=shared, env=env)
        ns.workers.append(w)
        return w

    try:
        client = ns.client
        client.upload_model("clf", build_onnx_classifier(tmp_path / "good.onnx"))
        # Regularised to near-uselessness: the same interface, about 70 % right on iris.
        client.upload_model("clf", build_onnx_classifier(tmp_path / "worse.onnx", C=1e-4))
        client.create_pipeline("iris")
        client.create_pipeline_version("iris", [{"model": "clf", "version": 1}])
        client.create_pipeline_version("iris", [{"model": "clf", "version": 2}])
        for name in ("w1", "w2"):
            worker(name).wait_ready()
        client.deploy("iris", 1, worker_wait=60)

        start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=2)
        client.create_assay(
            "accuracy", pipeline="iris", model="clf", io="output", field="label",
            metric="accuracy", prediction="value", width=WIDTH, first_window_start=start,
            alert_threshold=ALERT_AT)
        rule = client.create_rule("back", "iris", "rollback", assay="accuracy")

        # One window of traffic: the good version's records, then the swap, then the worse
        # version's. Every record has an id, and its true class waits to be labelled.
        x, y = load_iris(return_X_y=True)
        order = np.random.default_rng(0).permutation(len(y))
        first, second = order[:50], order[50:]
        wait_until(lambda: datetime.now(UTC) >= start, 10, "the window opens")
        served = _infer(client, x, first)
        client.deploy("iris", 2, worker_wait=60)
        served |= _infer(client, x, second)
        assert {v for v, _ in served.values()} == {1, 2}
        assert all(served[f"r{i}"][0] == 1 for i in first)
        wait_until(lambda: datetime.now(UTC) >= start + WIDTH, 30, "the window closes")
        wait_until(lambda: client.count_logs("iris") >= len(y), 60, "every log stored")

        # The good version's labels arrive first: the window is ok, on 50 labels.
        client.send_labels("iris", {f"r{i}": float(y[i]) for i in first})
        scored = wait_until(lambda: _window(client, start, labelled=len(first)), 60,
                            "the window scored on the first labels")
        assert scored.status == "ok"
        assert scored.score == pytest.approx(
            accuracy_score(y[first], [served[f"r{i}"][1] for i in first]), abs=1e-9)

        # The worker that runs the assays dies; the rest of the labels arrive meanwhile.
        owner = read_owner(settings)
        victim = next(w for w in ns.workers if w.process.pid == owner["pid"])
        victim.kill()
        client.send_labels("iris", {f"r{i}": float(y[i]) for i in second})
        ns.workers = [w for w in ns.workers if w is not victim]
        worker(victim.name).wait_ready()  # back, on the same folder

        # The other worker takes the folder and the schedules, re-scores the window on every
        # label: alert. The rule rolls the pipeline back to the good version.
        truth, predicted = y[order], [served[f"r{i}"][1] for i in order]
        expected = accuracy_score(truth, predicted)
        assert expected <= ALERT_AT
        alerted = wait_until(lambda: _window(client, start, labelled=len(y)), 90,
                             "the window re-scored on every label")
        assert alerted.status == "alert" and alerted.score == pytest.approx(expected, abs=1e-9)
        wait_until(lambda: client.registry().deployments[("lab", "iris")].version == 1, 60,
                   "the rule rolls iris back to v1")

        # Exactly once: both workers live and scoring again, the window still alert, one
        # rollback on the control topic, with the alert that caused it.
        settled = time.monotonic() + 5
        wait_until(lambda: time.monotonic() > settled and len(ns.workers) == 2
                   and all(w.health() for w in ns.workers), 30, "both workers up a while")
        rollbacks = [e for e in client.events() if e.type == "Rollback"]
        assert len(rollbacks) == 1, rollbacks
        cause = rollbacks[0].payload["cause"]
        assert (cause["rule"], cause["rule_id"], cause["status"], cause["window_start"]) == (
            "back", rule.rule_id, "alert", start)
        assert cause["score"] == pytest.approx(expected, abs=1e-9)
        assert cause["threshold"] == ALERT_AT and cause["metric"] == "accuracy"
        assert client.rule("back").fired_count == 1

        # The audit log: ann's two deploys, then the rollback, with the alert as its reason.
        changes = [e for e in client.events() if e.type in ("Deploy", "Rollback")]
        assert [e.type for e in changes] == ["Deploy", "Deploy", "Rollback"]
        # The registrar's status, not a worker's report that it serves the version (either
        # may come first on the status topic).
        status = next(s for s in client.statuses()
                      if s.event_id == rollbacks[0].event_id and "worker" not in s.result)
        assert status.accepted and status.result["version"] == "1"
        assert status.result["cause"].startswith("alert of assay accuracy-")
    finally:
        ns.close()


def _infer(client, x: np.ndarray, rows: np.ndarray) -> dict[str, tuple[int, int]]:
    """Serve `rows` of iris with their ids; each id's (pipeline version, predicted label)."""
    replies = client.infer("iris", [{"id": f"r{i}", "float_input": x[i].astype(np.float32)
                                     .tolist()} for i in rows])
    assert all(r.ok for r in replies), [r.body for r in replies if not r.ok][:3]
    return {r.body["id"]: (r.body["pipeline_version"], int(np.ravel(r.body["outputs"]["label"])[0]))
            for r in replies}


def _window(client, start: datetime, labelled: int):
    """The stored result of the window starting at `start` once it is over `labelled` labels."""
    found = [r for r in client.assay_results("accuracy") if r.window_start == start]
    return found[0] if found and found[0].labelled == labelled else None
