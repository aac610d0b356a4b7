"""Validations through a real worker and broker: results carry the checks each record failed
(JSON on the record path, Avro on the columnar fast path), the inference logs in chDB hold
them and `inferstream logs --anomalies` filters by them, /metrics counts them per check, and a
check that cannot run reports its error while every result still goes out."""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from agents.records.formats import avro_input
from agents.runtimes import load_model
from control.cli import main
from control.kafka import read_until_end
from control.local.demo_models import build_onnx_classifier
from control.local.worker_process import WorkerProcess
from sinks.access import read_owner
from tests.helpers import wait_until
from tests.worker_platform import Namespace, json_records, own_settings, rows

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

CHECKS = {
    "setosa": "probabilities[0] > 0.5",
    "long-sepal": "float_input[0] > 6.5 and label != 0",
    "vip": 'key == "vip" or id == "avro-3"',
    "broken": "float_input[9] > 1",  # a record holds 4 values: cannot run
}
N = 30  # records per format


class Lab(Namespace):
    """A namespace whose worker w1 owns the chDB storage the client reads the logs from."""

    def __init__(self, settings, tmp: Path) -> None:  # type: ignore[no-untyped-def]
        super().__init__(settings, tmp)
        self.clf = build_onnx_classifier(tmp / "clf.onnx", seed=0)
        self.client.upload_model("clf", self.clf)
        self.w1 = WorkerProcess(settings, "w1", tmp, data_dir=settings.data_dir)
        self.workers.append(self.w1)
        self.w1.wait_ready()
        wait_until(lambda: read_owner(settings), 60, "w1 owns the storage")

    def cli(self, capsys: pytest.CaptureFixture[str], *args: str) -> str:
        s = self.settings
        with pytest.raises(SystemExit) as exit_info:
            main(["--bootstrap-servers", s.bootstrap_servers, "--namespace", s.namespace,
                  "--data-dir", str(s.data_dir), "--user", "ann", "--workspace", "lab", *args])
            raise SystemExit(0)
        out = capsys.readouterr()
        assert exit_info.value.code == 0, out.err + out.out
        return out.out


@pytest.fixture(scope="module")
def lab(broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    tmp = tmp_path_factory.mktemp("validations")
    delivery = "exactly-once" if broker.supports_transactions else "at-least-once"
    platform = Lab(own_settings(broker.bootstrap, "val", tmp / "data", pipeline_partitions=1,
                                delivery=delivery), tmp)
    try:
        yield platform
    finally:
        platform.close()


def expected(lab: Lab, x: np.ndarray, ids: list[str], keys: list[str | None]
             ) -> dict[str, tuple[str, ...]]:
    """Each record's failed checks, from the model run here and the checks in plain Python."""
    out = load_model("onnx", lab.clf).predict({"float_input": x})
    flags = {}
    for i, record_id in enumerate(ids):
        p, label = out["probabilities"][i], int(out["label"][i])
        flags[record_id] = tuple(name for name, failed in [
            ("setosa", p[0] > 0.5), ("long-sepal", x[i, 0] > 6.5 and label != 0),
            ("vip", keys[i] == "vip" or record_id == "avro-3")] if failed)
    return flags


def metric(lab: Lab, name: str, check: str) -> float:
    with urllib.request.urlopen(f"{lab.w1.url}/metrics", timeout=10) as r:
        text = r.read().decode()
    pattern = (rf'^{name}\{{(?=[^}}]*check="{re.escape(check)}")(?=[^}}]*pipeline="val")'
               rf'[^}}]*\}} (\S+)$')
    found = re.search(pattern, text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_results_logs_cli_and_metrics_carry_the_failed_checks(
        lab: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    c = lab.client
    c.create_pipeline("val")
    c.create_pipeline_version("val", [{"model": "clf"}], validations=CHECKS)
    c.deploy("val", batch_size=64, batch_wait_ms=50, worker_wait=60)
    lab.w1.wait_ready("lab/val")
    shown = json.loads(lab.cli(capsys, "pipelines", "get", "val", "--json"))
    assert shown["versions"][0]["validations"][0] == {
        "name": "setosa", "expression": CHECKS["setosa"]}

    # JSON records (the record path), then Avro records of one row (the columnar path).
    x = rows(2 * N)
    json_ids = [f"r{i}" for i in range(N)]
    avro_ids = [f"avro-{i}" for i in range(N)]
    specs = c.model("clf").version(1).inputs
    avro = avro_input(specs, "inferstream.input.lab.val")
    json_replies = c.infer("val", json_records(N))
    avro_replies = c.infer("val", [avro.encode({"id": rid, "float_input": [x[N + i].tolist()]})
                                   for i, rid in enumerate(avro_ids)])
    assert all(r.ok for r in json_replies + avro_replies), "a check that cannot run dead-letters"
    want = expected(lab, x, json_ids + avro_ids, [None] * (2 * N))
    got = {r.body["id"]: tuple(r.body["anomalies"]) for r in json_replies}
    got |= {r.body["record_id"]: tuple(r.body["anomalies"]) for r in avro_replies}
    assert got == want
    flagged = {rid for rid, flags in want.items() if flags}
    assert 0 < len(flagged) < 2 * N and "avro-3" in flagged  # the test can fail both ways
    dead = read_until_end(lab.settings, lab.settings.pipeline_topic("lab", "val", "dead"))
    assert list(dead) == []

    # The logs in chDB, and the CLI's filters over them.
    wait_until(lambda: c.count_logs("val") >= 2 * N, 60, "the logs are stored")
    logs = {r["record_id"]: tuple(r["anomalies"]) for r in c.logs("val", limit=None)}
    assert logs == want
    cli_rows = json.loads(lab.cli(capsys, "logs", "val", "--anomalies", "--json", "--limit",
                                  "1000"))
    assert {r["record_id"]: tuple(r["anomalies"]) for r in cli_rows} == {
        rid: want[rid] for rid in flagged}
    setosa = json.loads(lab.cli(capsys, "logs", "val", "--anomaly", "setosa", "--json",
                                "--limit", "1000"))
    assert sorted(r["record_id"] for r in setosa) == sorted(
        rid for rid, flags in want.items() if "setosa" in flags)
    long_sepal = sum("long-sepal" in flags for flags in want.values())
    assert f"inference logs of val ({long_sepal})" in lab.cli(
        capsys, "logs", "val", "--anomaly", "long-sepal")

    # The worker's metrics: records flagged per check; the broken check's batches.
    for check in ("setosa", "long-sepal", "vip"):
        assert metric(lab, "inferstream_anomalies_total", check) == sum(
            check in flags for flags in want.values()), check
    assert metric(lab, "inferstream_validation_errors_total", "broken") >= 2
    assert metric(lab, "inferstream_anomalies_total", "broken") == 0
    assert "validation 'broken' could not be evaluated" in lab.w1.tail(400)
