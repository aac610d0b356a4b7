"""Batch workloads against the real broker and chDB: connections, orchestrations, tasks, runs."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from agents.runtimes import load_model
from agents.scheduling.task_scheduler import RunClaims
from control.config import Settings
from control.local.demo_models import build_keras_model, build_onnx_classifier, iris_rows
from control.local.worker_process import WorkerProcess
from schemas.errors import Rejected
from sinks.access import read_owner
from tests.helpers import wait_until
from tests.worker_platform import Namespace, own_settings

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
STALE_S = 6


class Lab(Namespace):
    def __init__(self, settings: Settings, tmp: Path) -> None:
        super().__init__(settings, tmp)
        self.clf = build_onnx_classifier(tmp / "clf.onnx")
        self.scorer = build_keras_model(tmp / "scorer", "savedmodel")
        self.client.upload_model("clf", self.clf)
        self.client.upload_model("scorer", self.scorer)
        for name, model in (("classify", "clf"), ("score", "scorer")):
            self.client.create_pipeline(name)
            self.client.create_pipeline_version(name, [{"model": model}])
        self.workers = [self.worker("w1")]
        self.workers[0].wait_ready()
        wait_until(lambda: read_owner(settings), 60, "w1 owns the storage")
        for name in ("classify", "score"):
            self.client.deploy(name, worker_wait=60)

    def worker(self, name: str) -> WorkerProcess:
        return WorkerProcess(self.settings, name, self.tmp, data_dir=self.settings.data_dir,
                             env={"INFERSTREAM_TASK_STALE_S": str(STALE_S),
                                  "INFERSTREAM_TASK_TICK_S": "0.5"})

    def rows(self, connection: str) -> list[dict]:
        """The rows of a ClickHouse connection's table, read through the worker that owns
        the storage (`connections preview`)."""
        return sorted(self.client.table_rows(connection, 100_000), key=lambda r: r["id"])


@pytest.fixture(scope="module")
def lab(broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    tmp = tmp_path_factory.mktemp("lab")
    lab = Lab(own_settings(broker.bootstrap, "o", tmp / "data", pipeline_partitions=2), tmp)
    yield lab
    lab.close()


def iris_parquet(path: Path, n: int = 150, bad: tuple[int, ...] = ()) -> Path:
    rows = np.resize(iris_rows(), (n, 4))
    inputs = [row.tolist()[:3] if i in bad else row.tolist() for i, row in enumerate(rows)]
    pq.write_table(pa.table({"id": [f"r{i:04d}" for i in range(n)], "float_input": inputs,
                             "customer": [f"c{i % 7}" for i in range(n)]}), path)
    return path


def test_run_once_chains_two_pipelines_into_a_clickhouse_table(lab: Lab) -> None:
    c = lab.client
    c.create_connection("iris-file", "file", {"path": str(iris_parquet(lab.tmp / "iris.parquet"))})
    c.create_connection("scores", "clickhouse", {"table": "scores"})
    c.create_connection("scores-inproc", "clickhouse", {"table": "scores_inproc"})
    c.create_orchestration("nightly", source="iris-file", pipelines=["classify", "score"],
                           destination="scores", carry=["id", "customer"], batch_size=40)
    c.create_orchestration("nightly-inproc", source="iris-file", pipelines=["classify", "score"],
                           destination="scores-inproc", carry=["id", "customer"],
                           batch_size=40, mode="in-process")
    for name in ("nightly", "nightly-inproc"):
        task = c.create_task(f"{name}-once", name)
        run = c.wait_for_run(task.event_id, 180)
        assert (run.status, run.records_in, run.records_out, run.records_bad) == \
            ("succeeded", 150, 150, 0), run
        assert run.pipeline_versions == {"classify": 1, "score": 1}
    want = load_model("tensorflow", lab.scorer).predict(
        load_model("onnx", lab.clf).predict({"float_input": iris_rows()}))["score"].ravel()
    for connection in ("scores", "scores-inproc"):
        rows = lab.rows(connection)
        assert [r["id"] for r in rows] == [f"r{i:04d}" for i in range(150)]
        assert rows[3]["customer"] == "c3"
        np.testing.assert_allclose([r["score"][0] for r in rows], want, rtol=1e-5)
    assert "succeeded: 150 in" in c.run_logs(task.event_id)[-1]["message"]


def test_destinations_carry_the_validations_each_row_failed(lab: Lab) -> None:
    c = lab.client
    c.create_pipeline("checked")
    c.create_pipeline_version("checked", [{"model": "clf"}],
                              validations={"virginica": "label == 2"})
    c.deploy("checked", worker_wait=60)
    c.create_connection("iris-all", "file", {"path": str(iris_parquet(lab.tmp / "all.parquet"))})
    want = load_model("onnx", lab.clf).predict({"float_input": iris_rows()})["label"] == 2
    assert 0 < want.sum() < len(want)
    for mode in ("topics", "in-process"):
        out = lab.tmp / f"checked-{mode}-{{run_id}}.jsonl"
        c.create_connection(f"checked-{mode}", "file", {"path": str(out)})
        c.create_orchestration(f"checked-{mode}", source="iris-all", pipelines=["checked"],
                               destination=f"checked-{mode}", carry=["id"], mode=mode)
        run = c.wait_for_run(c.create_task(f"checked-{mode}", f"checked-{mode}").event_id, 120)
        assert run.status == "succeeded", run
        rows = sorted((json.loads(line) for line in Path(str(out).replace(
            "{run_id}", run.run_id)).read_text().splitlines()), key=lambda r: r["id"])
        assert [r["anomalies"] for r in rows] == [["virginica"] if w else [] for w in want]


def test_bad_rows_end_partially_succeeded_with_reasons(lab: Lab) -> None:
    c = lab.client
    source = iris_parquet(lab.tmp / "some-bad.parquet", 30, bad=(4, 17))
    errors = lab.tmp / "errors-{run_id}.jsonl"
    c.create_connection("some-bad", "file", {"path": str(source)})
    c.create_connection("bad-rows", "file", {"path": str(errors)})
    c.create_connection("classes", "file", {"path": str(lab.tmp / "classes-{run_id}.jsonl")})
    c.create_orchestration("careful", source="some-bad", pipelines=["classify"],
                           destination="classes", errors="bad-rows", carry=["id"])
    task = c.create_task("careful-once", "careful")
    run = c.wait_for_run(task.event_id, 120)
    assert (run.status, run.records_out, run.records_bad) == ("partially succeeded", 28, 2)
    bad = [json.loads(line) for line in
           Path(str(errors).replace("{run_id}", task.event_id)).read_text().splitlines()]
    assert [b["id"] for b in bad] == ["r0004", "r0017"]
    assert all("float_input" in b["_error"] and "[1, 3]" in b["_error"] for b in bad)


def test_arguments_fill_parameters_and_bad_definitions_are_rejected(lab: Lab) -> None:
    c = lab.client
    with pytest.raises(Rejected, match="unknown orchestration 'ghost'"):
        c.create_task("x", "ghost")
    c.create_connection("by-day", "file", {"path": str(lab.tmp / "out-{day}.jsonl")})
    c.create_orchestration("daily", source="iris-file", pipelines=["classify"],
                           destination="by-day", carry=["id"], parameters={"day": None})
    with pytest.raises(Rejected, match=r"needs arguments \['day'\]"):
        c.create_task("no-day", "daily")
    with pytest.raises(Rejected, match="not a cron expression"):
        c.create_task("bad-cron", "daily", schedule="every day", arguments={"day": "1"})
    run = c.wait_for_run(c.create_task("day-1", "daily", arguments={"day": "d1"}).event_id, 120)
    assert run.status == "succeeded" and (lab.tmp / "out-d1.jsonl").exists()


def test_claims_let_exactly_one_worker_start_a_run(lab: Lab) -> None:
    a, b = RunClaims(lab.settings, "a"), RunClaims(lab.settings, "b")
    wins = [(a.claim(f"tick-{i}"), b.claim(f"tick-{i}")) for i in range(5)]
    assert all(x != y for x, y in wins)  # one of the two, never both, never neither
    assert b.claim("tick-0") == (not a.claim("tick-0"))  # and the verdict never changes


def test_cron_task_fires_once_per_tick_with_two_workers(lab: Lab) -> None:
    second = lab.worker("w2")
    lab.workers.append(second)
    second.wait_ready()
    c = lab.client
    c.create_connection("tiny", "file", {"path": str(iris_parquet(lab.tmp / "tiny.parquet", 5))})
    c.create_connection("ticks", "clickhouse", {"table": "ticks"})
    c.create_orchestration("every-2s", source="tiny", pipelines=["classify"],
                           destination="ticks", carry=["id"], mode="in-process")
    c.create_task("pulse", "every-2s", schedule="* * * * * */2")
    wait_until(lambda: len([r for r in c.runs("pulse") if r.finished]) >= 3, 90, "3 ticks ran")
    c.kill_task("pulse")
    runs = c.runs("pulse")
    ticks = [r.scheduled_for for r in runs]
    assert len(ticks) == len(set(ticks)), "a tick ran twice"
    finished = [r for r in runs if r.finished]
    assert all(r.status == "succeeded" and r.records_out == 5 for r in finished)
    assert len(lab.rows("ticks")) == 5 * len(runs)


def test_killing_a_running_task(lab: Lab) -> None:
    c = lab.client
    c.create_connection("big", "file", {"path": str(iris_parquet(lab.tmp / "big.parquet", 3000))})
    c.create_connection("sink", "file", {"path": str(lab.tmp / "big-{run_id}.jsonl")})
    c.create_orchestration("slow", source="big", pipelines=["classify"], destination="sink",
                           batch_size=10)
    task = c.create_task("slow-once", "slow")
    wait_until(lambda: (c.run(task.event_id) or None) and c.run(task.event_id).records_in > 0,
               60, "the run started")
    c.kill_task("slow-once")
    run = c.wait_for_run(task.event_id, 60)
    assert run.status == "killed" and 0 < run.records_in < 3000


def test_a_run_whose_worker_died_is_marked_failed_with_the_reason(lab: Lab) -> None:
    c = lab.client
    c.create_orchestration("doomed", source="big", pipelines=["classify"], destination="sink",
                           batch_size=10)
    task = c.create_task("doomed-once", "doomed")
    wait_until(lambda: (c.run(task.event_id) or None) and c.run(task.event_id).records_in > 0,
               60, "the run started")
    owner = next(w for w in lab.workers if w.name == c.run(task.event_id).worker)
    owner.kill(signal.SIGKILL)
    lab.workers.remove(owner)
    lab.workers.append(lab.worker(f"{owner.name}-again"))
    lab.workers[-1].wait_ready()
    run = c.wait_for_run(task.event_id, 120)
    assert run.status == "failed"
    assert f"worker {owner.name} stopped during the run" in run.error
