"""`inferstream assays` and `inferstream logs` end to end: the real broker, chDB in tmp.

The test opens the chDB folder of the CLI's data dir itself, to write inference logs with
controlled timestamps; the CLI runs in the same process, so its reader shares that open
handle (chDB opens one folder per process, and a second open of it shares the engine).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from registry_events import tensor_spec, upload_model

from control.client import Client
from control.config import Settings
from sinks.access import LocalReader, open_reader
from sinks.assays import run_window, save_result
from sinks.labels import Label, label_row
from sinks.log_queries import LogFilter
from sinks.reads import CountLogs
from sinks.storage import ChdbStorage, Storage
from sinks.tables import LOG_ROWS, log_rows

pytestmark = pytest.mark.kafka

HOUR = timedelta(hours=1)
T0 = datetime(2024, 3, 1, tzinfo=UTC)  # the baseline hour
T1 = T0 + HOUR  # the first window
V1_BASELINE = list(range(1, 21))
V1_WINDOW = [1, 2, 3, 4, 5, 6, 6, 7, 8, 8, 9, 10, 11, 12, 13, 15, 16, 17, 19, 20]
SIX = 5e-7  # ASSAYS.md's numbers are rounded to 6 places


@pytest.fixture
def storage_folder(settings: Settings) -> Path:
    """`storage` is the chDB folder under the CLI's data dir, open in this process."""
    return settings.data_dir / "chdb"


@pytest.fixture
def cli(storage: Storage, cli: Callable[..., str]) -> Callable[..., str]:
    """The CLI, once `storage` is open, as ann in her workspace fraud."""
    cli("users", "create", "ann")
    cli("workspaces", "create", "fraud")
    return cli


def log_record(record_id: str, time: datetime, *, pipeline: str = "scoring",
               model: str = "clf", value: float = 0.0, **extra: Any) -> dict[str, Any]:
    """A decoded InferenceLog of one record: output score is [-1, value]."""
    return {
        "time": time, "record_id": record_id, "workspace": "fraud", "pipeline": pipeline,
        "pipeline_version": 1, "step": 0, "model": model, "model_version": 1,
        "shadow": False,
        "inputs": [{"name": "x", "dtype": "float64", "shape": [1, 1], "values": [value]}],
        "outputs": [{"name": "score", "dtype": "float64", "shape": [1, 2],
                     "values": [-1.0, value]}],
        "elapsed_us": 250, "worker": "w1", "error": None,
    } | extra


def log_values(storage: Storage, start: datetime, values: list[float]) -> None:
    """One log of pipeline scoring, model clf per value, a second apart from `start`."""
    records = [log_record(f"{start:%H%M}-{i}", start + i * timedelta(seconds=1), value=v)
               for i, v in enumerate(values)]
    storage.insert(LOG_ROWS, log_rows(records))


def register_pipeline(cli, settings: Settings) -> None:
    """Model clf (input x, output score of 2 per record) in pipeline scoring (no artifact
    loading is needed to register it, so the model is described by hand)."""
    scores = upload_model("clf", inputs=[tensor_spec("x", "float64", [-1, 1])],
                          outputs=[tensor_spec("score", "float64", [-1, 2])])
    with Client(settings, user="ann", workspace="fraud") as client:
        client.send(*scores)
        client.send(*upload_model("other", b"other", outputs=["y"]))
    cli("pipelines", "create", "scoring")
    cli("pipelines", "version", "scoring", "--step", "clf")


def test_open_reader_shares_the_handle_open_in_this_process(
    settings: Settings, storage: Storage
) -> None:
    log_values(storage, T0, [1.0, 2.0])
    where = LogFilter(workspace="fraud", pipeline="scoring")
    with open_reader(settings) as reader:
        assert isinstance(reader, LocalReader) and isinstance(reader.storage, ChdbStorage)
        assert reader.read("count_logs", CountLogs(where=where)) == 2
    assert storage.query("SELECT count() AS n FROM inference_logs") == [{"n": 2}]


def test_assay_lifecycle(cli, settings: Settings, storage: Storage, tmp_path: Path) -> None:
    register_pipeline(cli, settings)
    log_values(storage, T0, V1_BASELINE)
    log_values(storage, T1, V1_WINDOW)
    log_values(storage, T1 + HOUR, V1_BASELINE)  # the second window looks like the baseline

    created = json.loads(cli(
        "assays", "create", "drift", "--pipeline", "scoring", "--model", "clf",
        "--output", "score", "--index", "1", "--baseline-from", T0.isoformat(),
        "--baseline-to", "2024-03-01T01:00", "--width", "1h", "--binning", "equal",
        "--warning", "0.05", "--alert", "1", "--json"))
    assert created["assay_id"].startswith("drift-") and created["active"] is True
    config = created["config"]
    assert (config["io"], config["field"], config["index"], config["width"]) == (
        "output", "score", 1, 3600.0)
    assert config["first_window_start"] == T1.isoformat()
    assert "drift" in cli("assays", "list")
    [listed] = json.loads(cli("assays", "list", "--json"))
    assert listed["assay_id"] == created["assay_id"]

    # ASSAYS.md vector V1 through the preview path, by name and by flags.
    preview = json.loads(cli("assays", "preview", "drift", "--from", T1.isoformat(),
                             "--to", (T1 + HOUR).isoformat(), "--json"))["results"]
    assert len(preview) == 1
    assert preview[0]["psi"] == pytest.approx(0.069315, abs=SIX)
    assert preview[0]["status"] == "warning"
    assert preview[0]["edges"] == pytest.approx([1, 4.8, 8.6, 12.4, 16.2, 20], abs=SIX)
    values = tmp_path / "baseline.json"
    values.write_text(json.dumps(V1_BASELINE))
    table = cli("assays", "preview", "--pipeline", "scoring", "--model", "clf", "--output",
                "score", "--index", "1", "--baseline-values", str(values), "--binning",
                "equal", "--width", "1h", "--from", T1.isoformat(), "--to",
                (T1 + 2 * HOUR).isoformat())
    assert "0.069315" in table and "0.000000" in table  # two windows: V1, then baseline-like
    sumdiff = json.loads(cli("assays", "preview", "drift", "--metric", "sumdiff", "--from",
                             T1.isoformat(), "--to", (T1 + HOUR).isoformat(), "--json"))
    assert sumdiff["results"][0]["score"] == pytest.approx(0.1, abs=SIX)
    assert "no windows in that range" in cli("assays", "preview", "drift", "--from",
                                             T1.isoformat(), "--to", (T1 + HOUR / 2).isoformat())

    # Results are stored by the scheduler; store two windows as it would.
    with Client(settings, user="ann", workspace="fraud") as client:
        assay = client.assay_config("drift")
    for start in (T1, T1 + HOUR):
        save_result(storage, run_window(storage, assay, start))
    results = json.loads(cli("assays", "results", "drift", "--json"))["results"]
    assert [(r["window_start"], r["status"]) for r in results] == [
        (T1.isoformat(), "warning"), ((T1 + HOUR).isoformat(), "ok")]
    assert results[0]["window"]["count"] == 20
    later = json.loads(cli("assays", "results", "drift", "--from", (T1 + HOUR).isoformat(),
                           "--json"))["results"]
    assert [r["status"] for r in later] == ["ok"]

    plot = tmp_path / "plots" / "drift.png"
    printed = cli("assays", "results", "drift", "--plot", str(plot), "--window",
                  T1.isoformat())
    assert f"plot written to {plot.resolve()}" in printed
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000
    assert "no window starts at or before" in cli(
        "assays", "results", "drift", "--plot", str(plot), "--window", T0.isoformat(),
        ok=False)

    assert "paused assay drift" in cli("assays", "pause", "drift")
    assert json.loads(cli("assays", "list", "--json"))[0]["active"] is False
    assert "assay 'drift' is already paused" in cli("assays", "pause", "drift", ok=False)
    assert json.loads(cli("assays", "resume", "drift", "--json"))["active"] is True
    cli("assays", "delete", "drift")
    assert json.loads(cli("assays", "list", "--json")) == []
    assert "unknown assay 'drift'" in cli("assays", "results", "drift", ok=False)


def test_rejected_assays_exit_1_with_the_reason(cli, settings: Settings) -> None:
    register_pipeline(cli, settings)
    base = ["assays", "create", "drift", "--pipeline", "scoring", "--baseline-from",
            T0.isoformat(), "--baseline-to", T1.isoformat(), "--width", "1h"]
    assert "model 'clf' has no output 'nope'" in cli(*base, "--model", "clf", "--output",
                                                     "nope", ok=False)
    assert "model 'other' is not used by any version of pipeline 'scoring'" in cli(
        *base, "--model", "other", "--output", "y", ok=False)
    assert "index 2 is past the end of output 'score'" in cli(
        *base, "--model", "clf", "--output", "score", "--index", "2", ok=False)
    ghost = [a if a != "scoring" else "ghost" for a in base]
    assert "unknown pipeline 'ghost'" in cli(*ghost, "--model", "clf", "--output", "score",
                                             ok=False)
    assert "expected a JSON list of numbers" in cli(
        "assays", "create", "drift", "--pipeline", "scoring", "--model", "clf", "--output",
        "score", "--baseline-values", __file__, ok=False)
    assert "warning threshold 2.0 is above alert threshold 1.0" in cli(
        *base, "--model", "clf", "--output", "score", "--warning", "2", "--alert", "1",
        ok=False)
    assert "missing --model" in cli("assays", "create", "drift", "--pipeline", "scoring",
                                    "--output", "score", ok=False)
    assert "'1x' is not a duration" in cli(*base, "--model", "clf", "--output", "score",
                                           "--interval", "1x", ok=False)
    assert "unknown assay 'ghost'" in cli("assays", "pause", "ghost", ok=False)
    assert json.loads(cli("assays", "list", "--json")) == []


# -- logs ------------------------------------------------------------------------------------


def payments_logs(storage: Storage) -> None:
    """25 logs of pipeline payments: records r00..r11 a minute apart, each through clf
    (step 0) and scorer (step 1) at the same time; r06.. by version 2; three failures; and
    r11 also through a shadow challenger."""
    records = []
    for i in range(12):
        at, rid = T0 + timedelta(minutes=i), f"r{i:02d}"
        version = 1 if i < 6 else 2
        records.append(log_record(rid, at, pipeline="payments", value=i,
                                  pipeline_version=version,
                                  error="model failed" if i == 9 else None))
        records.append(log_record(rid, at, pipeline="payments", model="scorer", value=i,
                                  step=1, pipeline_version=version,
                                  error="bad input" if i in (3, 7) else None))
    records.append(log_record("r11", T0 + timedelta(minutes=11), pipeline="payments",
                              model="clf-next", shadow=True, pipeline_version=2))
    storage.insert(LOG_ROWS, log_rows(records))


def keys(rows: list[dict[str, Any]]) -> list[tuple[str, int, str]]:
    return [(r["record_id"], r["step"], r["model"]) for r in rows]


def test_logs_filters_and_json(cli, settings: Settings, storage: Storage) -> None:
    payments_logs(storage)
    every = json.loads(cli("logs", "payments", "--json"))
    assert len(every) == 25
    assert [r["time"] for r in every] == sorted(r["time"] for r in every)
    assert every[0]["outputs"] == {"score": [-1.0, 0.0]}
    newest = json.loads(cli("logs", "payments", "--limit", "3", "--json"))
    assert keys(newest) == [("r11", 0, "clf"), ("r11", 0, "clf-next"), ("r11", 1, "scorer")]
    assert len(json.loads(cli("logs", "payments", "--version", "2", "--json"))) == 13
    assert len(json.loads(cli("logs", "payments", "--model", "scorer", "--json"))) == 12
    failed = json.loads(cli("logs", "payments", "--failures", "--json"))
    assert [(r["record_id"], r["error"]) for r in failed] == [
        ("r03", "bad input"), ("r07", "bad input"), ("r09", "model failed")]
    window = json.loads(cli("logs", "payments", "--from", "2024-03-01T00:03:00",
                            "--to", "2024-03-01T00:06:00+00:00", "--json"))
    assert sorted({r["record_id"] for r in window}) == ["r03", "r04", "r05"]

    table = cli("logs", "payments", "--failures")
    assert "r09" in table and "failed" in table and "r04" not in table
    assert "no inference logs" in cli("logs", "nothing")
    assert "not before" in cli("logs", "payments", "--from", "2024-03-02", "--to",
                               "2024-03-01", ok=False)


def test_logs_pages_neither_skip_nor_repeat(cli, settings: Settings, storage: Storage) -> None:
    payments_logs(storage)  # `cli` made ann and workspace fraud: logs are read by members
    with Client(settings, user="ann", workspace="fraud") as client:
        pages = list(client.iter_logs("payments", page_size=4))
        assert [len(p) for p in pages] == [4, 4, 4, 4, 4, 4, 1]
        assert keys([r for p in pages for r in p]) == keys(client.logs("payments", limit=None))
        newest = [r for p in client.iter_logs("payments", limit=5, page_size=2) for r in p]
        assert keys(newest) == keys(client.logs("payments", limit=5))
        assert client.count_logs("payments", only_failures=True) == 3


def test_logs_export(cli, storage: Storage, tmp_path: Path) -> None:
    payments_logs(storage)
    jsonl = tmp_path / "logs.jsonl"
    assert "exported 25 inference logs" in cli("logs", "payments", "--export", str(jsonl))
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len(lines) == 25 and lines[0]["inputs"] == {"x": [0.0]}

    summary = json.loads(cli("logs", "payments", "--export", str(tmp_path / "logs.csv"),
                             "--split-rows", "10", "--json"))
    assert summary["rows"] == 25
    assert [Path(f).name for f in summary["files"]] == [
        "logs-0001.csv", "logs-0002.csv", "logs-0003.csv"]
    counts = []
    for name in summary["files"]:
        with open(name, newline="") as f:
            counts.append(len(list(csv.DictReader(f))))
    assert counts == [10, 10, 5]

    parquet = tmp_path / "out" / "logs.parquet"
    cli("logs", "payments", "--model", "scorer", "--export", str(parquet), "--split-rows", "5")
    parts = sorted(parquet.parent.glob("logs-*.parquet"))
    assert [p.name for p in parts] == [f"logs-000{i}.parquet" for i in range(1, 4)]
    tables = [pq.read_table(p) for p in parts]
    assert [t.num_rows for t in tables] == [5, 5, 2]
    first = tables[0].to_pylist()[0]
    assert (first["record_id"], first["model"], first["time"]) == ("r00", "scorer", T0)
    assert first["outputs"] == [("score", [-1.0, 0.0])]

    whole = tmp_path / "newest.parquet"
    cli("logs", "payments", "--limit", "7", "--export", str(whole))
    assert pq.read_table(whole).num_rows == 7
    assert "name a file ending in .csv, .jsonl, .parquet" in cli(
        "logs", "payments", "--export", str(tmp_path / "logs.txt"), ok=False)


def test_performance_assay_through_the_cli(cli, settings: Settings, storage: Storage,
                                           tmp_path: Path) -> None:
    """An accuracy assay (lower is worse) created, previewed, stored and plotted by the CLI;
    its labels sit in the labels table, as the label sink stores them."""
    register_pipeline(cli, settings)
    log_values(storage, T1, [0.9, 0.8, 0.2, 0.7, 0.1])  # record ids 0100-0 ... 0100-4
    storage.insert("labels", [label_row(Label(f"0100-{i}", y, T1), "fraud", "scoring",
                                        "l", 0, i) for i, y in enumerate([1, 1, 1, 0])])
    created = json.loads(cli(
        "assays", "create", "acc", "--pipeline", "scoring", "--model", "clf", "--output",
        "score", "--index", "1", "--metric", "accuracy", "--prediction", "threshold",
        "--start", T1.isoformat(), "--width", "1h", "--warning", "0.9", "--alert", "0.6",
        "--label-wait", "2d", "--json"))
    assert created["config"]["baseline_values"] is None
    [listed] = json.loads(cli("assays", "list", "--json"))
    assert (listed["config"]["metric"], listed["config"]["label_wait"]) == ("accuracy", 172800)
    [window] = json.loads(cli("assays", "preview", "acc", "--from", T1.isoformat(), "--to",
                              (T1 + HOUR).isoformat(), "--json"))["results"]
    assert (window["score"], window["labelled"], window["status"]) == (0.5, 4, "alert")
    assert "warning threshold 0.5 is below alert threshold 0.6" in cli(
        "assays", "create", "bad", "--pipeline", "scoring", "--model", "clf", "--output",
        "score", "--metric", "f1", "--start", T1.isoformat(), "--warning", "0.5", "--alert",
        "0.6", ok=False)

    with Client(settings, user="ann", workspace="fraud") as client:
        save_result(storage, run_window(storage, client.assay_config("acc"), T1))
    table = cli("assays", "results", "acc")
    assert "0.500000" in table and "alert" in table
    plot = tmp_path / "acc.png"
    cli("assays", "results", "acc", "--plot", str(plot))
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000
