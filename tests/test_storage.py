"""Storage against the real ClickHouse engine: chDB in-process, and a server when Docker answers.

The same tests run on both transports; the server ones are skipped, with the reason, when
no Docker engine answers.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from control.config import Settings
from sinks.storage import (
    ChdbStorage,
    ServerStorage,
    Storage,
    StorageError,
    StorageLocked,
    open_storage,
)
from sinks.tables import (
    LOG_ROWS,
    MIGRATIONS,
    SCHEMA_VERSION,
    KafkaPosition,
    applied_versions,
    batch_token,
    log_rows,
    migrate,
)

REPO = Path(__file__).resolve().parents[1]
T0 = datetime(2024, 5, 1, 12, tzinfo=UTC)


pytestmark = pytest.mark.chdb_and_server  # `storage`: a fresh database on each transport


@pytest.fixture
def storage_migrated() -> bool:
    """Each test starts from a fresh, unmigrated database."""
    return False


def log_record(record_id: str, time: datetime, score: float = 0.5, **extra: Any) -> dict[str, Any]:
    """A decoded InferenceLog record, as fastavro gives it."""
    record = {
        "time": time,
        "record_id": record_id,
        "workspace": "fraud",
        "pipeline": "scoring",
        "pipeline_version": 3,
        "step": 0,
        "model": "clf",
        "model_version": 2,
        "shadow": False,
        "inputs": [
            {
                "name": "float_input",
                "dtype": "float32",
                "shape": [1, 4],
                "values": [5.1, 3.5, 1.4, 0.2],
                "strings": [],
            }
        ],
        "outputs": [
            {"name": "score", "dtype": "float64", "shape": [1, 2], "values": [score, 1 - score]},
            {"name": "label", "dtype": "string", "shape": [1], "values": [], "strings": ["ok"]},
        ],
        "elapsed_us": 1234,
        "worker": "w1",
        "error": None,
    }
    return record | extra


def batch(n: int, first_offset: int = 0) -> tuple[list[dict[str, Any]], list[KafkaPosition]]:
    records = [log_record(f"r{i}", T0 + timedelta(seconds=i), score=i / 10) for i in range(n)]
    positions = [KafkaPosition("inferstream.logs", 0, first_offset + i) for i in range(n)]
    return records, positions


def test_migrations_are_applied_once(storage: Storage) -> None:
    assert migrate(storage) == [m.version for m in MIGRATIONS]
    assert migrate(storage) == []  # a second run finds everything done
    assert applied_versions(storage) == [m.version for m in MIGRATIONS]
    tables = storage.query(
        "SELECT name FROM system.tables WHERE database = currentDatabase() ORDER BY name"
    )
    assert [t["name"] for t in tables] == [
        "assay_results", "inference_log_blocks", "inference_log_rows", "inference_logs",
        "labelled_logs", "labels", "schema_version", "task_run_logs", "task_runs"]


def test_logs_stored_before_the_blocks_stay_readable(storage: Storage) -> None:
    # A database of migrations 1-3, whose inference_logs was the table of rows.
    storage.command(SCHEMA_VERSION)
    for migration in MIGRATIONS[:3]:
        for statement in migration.statements:
            storage.command(statement)
        storage.insert("schema_version", [{"version": migration.version, "name": migration.name,
                                           "applied_at": T0}])
    records, positions = batch(3)
    # Rows as that release wrote them: without the anomalies (migration 6) and replay (7)
    # columns.
    storage.insert("inference_logs", [{k: v for k, v in row.items()
                                       if k not in ("anomalies", "replay")}
                                      for row in log_rows(records, positions)])
    assert migrate(storage) == [4, 5, 6, 7]
    engines = {t["name"]: t["engine"] for t in storage.query(
        "SELECT name, engine FROM system.tables WHERE database = currentDatabase()")}
    assert engines["inference_logs"] == "View"
    assert engines[LOG_ROWS] == "ReplacingMergeTree"
    rows = storage.query("SELECT record_id, anomalies, replay FROM inference_logs "
                         "ORDER BY record_id")
    # Logs from before replays are live traffic.
    assert [(r["record_id"], r["anomalies"], r["replay"]) for r in rows] == [
        ("r0", [], ""), ("r1", [], ""), ("r2", [], "")]


def test_one_element_of_one_field_is_selectable(storage: Storage) -> None:
    migrate(storage)
    records, positions = batch(3)
    records[2]["error"] = "model failed"
    storage.insert(LOG_ROWS, log_rows(records, positions))
    rows = storage.query(
        """SELECT record_id, time, inputs['float_input'][3] AS petal, outputs['score'][2] AS other,
                  output_shapes['score'] AS shape, output_strings['label'][1] AS label,
                  input_dtypes['float_input'] AS dtype, kafka_offset, error
           FROM inference_logs
           WHERE pipeline = {pipeline:String} AND time >= {since:DateTime64(6, 'UTC')}
           ORDER BY time""",
        {"pipeline": "scoring", "since": T0 + timedelta(seconds=1)},
    )
    assert [r["record_id"] for r in rows] == ["r1", "r2"]
    assert rows[0]["time"] == T0 + timedelta(seconds=1)
    assert rows[0]["petal"] == pytest.approx(1.4)
    assert rows[1]["other"] == pytest.approx(0.8)
    assert rows[0]["shape"] == [1, 2]
    assert rows[0]["label"] == "ok"
    assert rows[0]["dtype"] == "float32"
    assert [r["kafka_offset"] for r in rows] == [1, 2]
    assert [r["error"] for r in rows] == [None, "model failed"]


def test_parameters_are_bound_not_pasted(storage: Storage) -> None:
    tricky = "x'); DROP TABLE schema_version; --\\"
    rows = storage.query(
        "SELECT {s:String} AS s, {v:Array(Float64)} AS v",
        {"s": tricky, "v": [0.1 + 0.2, 4.800000000000001, 1e-310]},
    )
    assert rows == [{"s": tricky, "v": [0.1 + 0.2, 4.800000000000001, 1e-310]}]  # bit for bit


def count_logs(storage: Storage, final: bool) -> int:
    sql = f"SELECT count() AS n FROM {LOG_ROWS} {'FINAL' if final else ''}"
    return storage.query(sql)[0]["n"]


def test_replaying_a_batch_does_not_duplicate_rows(storage: Storage) -> None:
    migrate(storage)
    # No background merge may hide a duplicate before we count the rows written.
    storage.command(f"SYSTEM STOP MERGES {LOG_ROWS}")
    records, positions = batch(50)
    rows = log_rows(records, positions)
    token = batch_token(positions)
    storage.insert(LOG_ROWS, rows, dedup_token=token)
    storage.insert(LOG_ROWS, rows, dedup_token=token)  # the same offsets, replayed
    assert count_logs(storage, final=False) == 50  # the second insert was not even written

    # A replay cut into different batches has other tokens: the rows are written again,
    # and the ReplacingMergeTree key makes every read path (FINAL) see each inference once.
    storage.insert(LOG_ROWS, rows[:20], dedup_token=batch_token(positions[:20]))
    storage.insert(LOG_ROWS, rows[10:], dedup_token=batch_token(positions[10:]))
    assert count_logs(storage, final=False) == 50 + 20 + 40
    assert count_logs(storage, final=True) == 50
    assert storage.query("SELECT count() AS n FROM inference_logs")[0]["n"] == 50  # the view
    storage.command(f"SYSTEM START MERGES {LOG_ROWS}")
    storage.command(f"OPTIMIZE TABLE {LOG_ROWS} FINAL")
    assert count_logs(storage, final=False) == 50


def test_shadow_and_other_steps_are_separate_rows(storage: Storage) -> None:
    migrate(storage)
    records = [
        log_record("r1", T0),
        log_record("r1", T0, model="clf-next", shadow=True),
        log_record("r1", T0, step=1, model="scorer"),
    ]
    storage.insert(LOG_ROWS, log_rows(records))
    assert count_logs(storage, final=True) == 3


HOLDER = """
import sys
from sinks.storage import ChdbStorage
storage = ChdbStorage(sys.argv[1])
print("ready", flush=True)
sys.stdin.read()  # hold the folder until the test closes our stdin
storage.close()
"""


def test_a_second_process_is_told_the_folder_is_taken(tmp_path: Path) -> None:
    folder = tmp_path / "chdb"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder)],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "ready\n", (
            holder.stderr.read() if holder.stderr else ""
        )
        with pytest.raises(StorageLocked) as caught:
            ChdbStorage(folder)
        message = str(caught.value)
        assert f"PID {holder.pid}" in message
        assert "one process" in message and "INFERSTREAM_CLICKHOUSE_URL" in message
    finally:
        holder.communicate(input="", timeout=60)
    with ChdbStorage(folder) as storage:  # free again once the holder is gone
        assert storage.query("SELECT 1 AS one") == [{"one": 1}]


def test_one_process_opens_one_folder(tmp_path: Path) -> None:
    with ChdbStorage(tmp_path / "a") as first:
        with ChdbStorage(tmp_path / "a") as again:  # the same folder shares the engine
            again.command("CREATE TABLE t (x UInt8) ENGINE = MergeTree ORDER BY x")
        assert first.query("SELECT count() AS n FROM t") == [{"n": 0}]
        with pytest.raises(StorageLocked, match="already has chDB open"):
            ChdbStorage(tmp_path / "b")
    with ChdbStorage(tmp_path / "b"):  # fine once the first is closed
        pass


def test_an_unreachable_server_is_named_without_its_password() -> None:
    with socket.socket() as probe:  # a port nothing listens on once the probe closes
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(StorageError, match="INFERSTREAM_CLICKHOUSE_URL") as caught:
        ServerStorage(f"http://default:s3cret@127.0.0.1:{port}")
    assert "s3cret" not in str(caught.value) and f"127.0.0.1:{port}" in str(caught.value)


def test_open_storage_uses_chdb_under_the_data_dir(tmp_path: Path) -> None:
    with open_storage(Settings(data_dir=tmp_path / "data", clickhouse_url=None)) as storage:
        assert isinstance(storage, ChdbStorage)
        assert storage.path == (tmp_path / "data" / "chdb").resolve()
