"""Connections against real files, the real ClickHouse engine (chDB) and the real broker."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

from agents.connectors import count_hint, open_writer, read_batches
from control.config import Settings
from control.kafka import TopicSpec, ensure_topics, read_until_end
from control.registry.connections import ConnectionSpec, ConnectorError, masked, validate
from sinks.storage import Storage, StorageError

T0 = datetime(2024, 5, 1, 12, tzinfo=UTC)


def iris(n: int, start: int = 0) -> list[dict[str, Any]]:
    """Records like a pipeline's input: an id, a list-valued feature, scalars of each type."""
    return [{"id": f"r{i}", "float_input": [5.1 + i, 3.5, 1.4, 0.25 * i], "count": i,
             "score": i / 8, "flagged": i % 2 == 0, "customer": f"c{i % 3}"}
            for i in range(start, start + n)]


def read_all(connection: ConnectionSpec, settings: Settings, **kwargs: Any) -> list[dict[str, Any]]:
    return [r for batch in read_batches(connection, settings, **kwargs) for r in batch]


@pytest.fixture
def local(tmp_path: Path) -> Settings:
    """Settings for connections that need no broker."""
    return Settings(data_dir=tmp_path / "data")


def table_name() -> str:
    return f"t_{uuid4().hex[:10]}"


# ---- files -----------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", ["csv", "jsonl", "parquet"])
def test_a_file_written_in_batches_reads_back_equal(
    tmp_path: Path, local: Settings, suffix: str
) -> None:
    records = iris(7)
    conn = ConnectionSpec("scores", "file", {"path": str(tmp_path / f"out.{suffix}")})
    with open_writer(conn, local) as writer:
        writer.write(records[:3])
        writer.write([])
        writer.write(records[3:])
    batches = list(read_batches(conn, local, batch_size=3))
    assert [len(b) for b in batches] == [3, 3, 1]
    assert [r for b in batches for r in b] == records
    assert count_hint(conn, local) == (7 if suffix == "parquet" else None)


def test_a_glob_reads_every_matching_file_in_name_order(tmp_path: Path, local: Settings) -> None:
    for part in range(3):
        conn = ConnectionSpec("part", "file", {"path": str(tmp_path / f"in/part-{part}.parquet")})
        with open_writer(conn, local) as writer:
            writer.write(iris(3, start=3 * part))
    (tmp_path / "in" / "notes.txt").write_text("not matched")
    source = ConnectionSpec("parts", "file", {"path": str(tmp_path / "in" / "*.parquet")})
    batches = list(read_batches(source, local, batch_size=4))
    assert [len(b) for b in batches] == [4, 4, 1]  # batches span files
    assert [r for b in batches for r in b] == iris(9)
    assert count_hint(source, local) == 9


def test_csv_without_suffix_takes_the_format_detail(tmp_path: Path, local: Settings) -> None:
    path = tmp_path / "export.txt"
    path.write_text('id,float_input,note\nr1,"[1.5, 2.0]",[draft]\nr2,"[]",\n')
    conn = ConnectionSpec("export", "file", {"path": str(path), "format": "csv"})
    assert read_all(conn, local) == [{"id": "r1", "float_input": [1.5, 2.0], "note": "[draft]"},
                                     {"id": "r2", "float_input": [], "note": None}]


def test_destination_placeholders_come_from_arguments(tmp_path: Path, local: Settings) -> None:
    conn = ConnectionSpec("daily", "file",
                          {"path": str(tmp_path / "{date}" / "run-{run_id}.jsonl")})
    with open_writer(conn, local, arguments={"run_id": "42", "date": "2024-05-01"}) as writer:
        writer.write(iris(2))
    assert read_all(ConnectionSpec("back", "file", {"path": str(tmp_path / "*/run-42.jsonl")}),
                    local) == iris(2)
    with pytest.raises(ConnectorError, match="needs argument 'run_id'"):
        open_writer(conn, local)
    with pytest.raises(ConnectorError, match="cannot be part of a path"):
        open_writer(conn, local, arguments={"run_id": "../../etc"})


def test_a_failed_write_leaves_no_file(tmp_path: Path, local: Settings) -> None:
    conn = ConnectionSpec("scores", "file", {"path": str(tmp_path / "out.parquet")})
    with pytest.raises(RuntimeError), open_writer(conn, local) as writer:
        writer.write(iris(3))
        raise RuntimeError("the run was killed")
    assert list(tmp_path.iterdir()) == []
    with open_writer(conn, local) as writer, pytest.raises(ConnectorError, match="'extra'"):
        writer.write(iris(1))
        writer.write([{**iris(1)[0], "extra": 1}])


def test_unreadable_files_are_named(tmp_path: Path, local: Settings) -> None:
    (tmp_path / "bad.jsonl").write_text('{"id": "r1"}\n[1, 2]\n')
    with pytest.raises(ConnectorError, match=r"bad.jsonl as jsonl: line 2 is not a JSON object"):
        read_all(ConnectionSpec("bad", "file", {"path": str(tmp_path / "bad.jsonl")}), local)
    with pytest.raises(ConnectorError, match="no file matches"):
        read_all(ConnectionSpec("none", "file", {"path": str(tmp_path / "*.csv")}), local)


# ---- ClickHouse ------------------------------------------------------------------------------

def make_events(storage: Storage) -> str:
    table = table_name()
    storage.command(f"CREATE TABLE {table} (time DateTime64(6, 'UTC'), id String, "
                    "float_input Array(Float64), score Float64) ENGINE = MergeTree ORDER BY time")
    storage.insert(table, [{"time": T0 + timedelta(hours=h), "id": f"r{h}",
                            "float_input": [float(h), 1.0], "score": h / 10} for h in range(6)])
    return table


def test_a_table_source_reads_every_row(chdb: Storage, local: Settings) -> None:
    table = make_events(chdb)
    conn = ConnectionSpec("events", "clickhouse", {"table": f"default.{table}"})
    rows = read_all(conn, local, storage=chdb, batch_size=4)
    assert sorted(r["id"] for r in rows) == [f"r{h}" for h in range(6)]
    assert rows[0] == {"time": T0, "id": "r0", "float_input": [0.0, 1.0], "score": 0.0}
    assert count_hint(conn, local, storage=chdb) == 6


def test_a_query_source_binds_the_task_arguments(chdb: Storage, local: Settings) -> None:
    table = make_events(chdb)
    conn = ConnectionSpec("window", "clickhouse", {"query": (
        f"SELECT id, score FROM {table} WHERE time >= {{start:DateTime64(6,'UTC')}} "
        f"AND time < {{end:DateTime64(6, 'UTC')}} AND id != {{skip:String}} ORDER BY time")})
    arguments = {"start": "2024-05-01T13:00:00Z", "end": "2024-05-01 17:00:00", "skip": "r2"}
    assert read_all(conn, local, storage=chdb, arguments=arguments) == [
        {"id": "r1", "score": 0.1}, {"id": "r3", "score": 0.3}, {"id": "r4", "score": 0.4}]
    # A value is bound by the engine, never pasted into the SQL: pasted, this would match
    # all six rows; bound, it is just an id that no row has.
    injected = {**arguments, "skip": "r2' OR '1' = '1"}
    assert len(read_all(conn, local, storage=chdb, arguments=injected)) == 4
    assert count_hint(conn, local, storage=chdb, arguments=arguments) is None
    with pytest.raises(ConnectorError, match=r"needs argument 'end' \(DateTime64"):
        read_all(conn, local, storage=chdb, arguments={"start": "2024-05-01", "skip": "r2"})


def test_a_destination_table_is_created_then_appended(chdb: Storage, local: Settings) -> None:
    table = table_name()
    conn = ConnectionSpec("results", "clickhouse", {"table": table})
    first = [{**r, "time": T0, "note": None if r["count"] else "first",
              "outputs": {"probabilities": [[0.1, 0.9]]}} for r in iris(3)]
    with open_writer(conn, local, storage=chdb) as writer:
        writer.write(first)
        writer.write([{**r, "time": "2024-05-01T13:00:00+00:00"} for r in iris(2, start=3)])
    types = {r["name"]: r["type"] for r in chdb.query(
        "SELECT name, type FROM system.columns WHERE table = {t:String}", {"t": table})}
    assert types == {"id": "String", "float_input": "Array(Float64)", "count": "Int64",
                     "score": "Float64", "flagged": "Bool", "customer": "String",
                     "time": "DateTime64(6, 'UTC')", "note": "Nullable(String)",
                     "outputs": "String"}
    assert "MergeTree" in chdb.query(f"SHOW CREATE TABLE {table}")[0]["statement"]
    with open_writer(conn, local, storage=chdb) as writer:  # an existing table: appended to
        writer.write(iris(1, start=5))
        with pytest.raises(ConnectorError, match=r"fields \['extra'\] are not columns"):
            writer.write([{"id": "x", "extra": 1}])
    rows = read_all(conn, local, storage=chdb)
    assert sorted(r["id"] for r in rows) == [f"r{i}" for i in range(6)]
    by_id = {r["id"]: r for r in rows}
    assert by_id["r0"]["outputs"] == '{"probabilities":[[0.1,0.9]]}'
    assert by_id["r4"]["time"] == T0 + timedelta(hours=1)
    assert by_id["r2"]["float_input"] == iris(3)[2]["float_input"]


def test_text_that_is_no_time_is_refused_by_name(chdb: Storage, local: Settings) -> None:
    conn = ConnectionSpec("results", "clickhouse", {"table": table_name()})
    with open_writer(conn, local, storage=chdb) as writer:
        writer.write([{"id": "r0", "time": T0}])
        with pytest.raises(ConnectorError, match=r"cannot insert into .*yesterday"):
            writer.write([{"id": "r1", "time": "yesterday"}])


def test_a_query_is_no_destination(chdb: Storage, local: Settings) -> None:
    conn = ConnectionSpec("q", "clickhouse", {"query": "SELECT 1"})
    with pytest.raises(ConnectorError, match="destination needs 'table'"):
        open_writer(conn, local, storage=chdb)


# ---- Kafka -----------------------------------------------------------------------------------

@pytest.mark.kafka
def test_a_topic_round_trip_keeps_records_and_keys(settings: Settings) -> None:
    topic = settings.topic("scores")
    ensure_topics(settings, {topic: TopicSpec(3)})
    conn = ConnectionSpec("scores", "kafka", {"topic": topic, "key_field": "customer"})
    records = [{**r, "time": T0} for r in iris(10)]
    with open_writer(conn, settings) as writer:
        writer.write(records[:4])
        writer.write(records[4:])
    assert count_hint(conn, settings) == 10
    got = read_all(conn, settings, batch_size=3)
    expected = [{**r, "time": "2024-05-01T12:00:00+00:00"} for r in records]
    assert sorted(got, key=lambda r: r["id"]) == sorted(expected, key=lambda r: r["id"])
    keys = {m.value(): m.key() for m in read_until_end(settings, topic)}
    assert sorted(set(keys.values())) == [b"c0", b"c1", b"c2"]


@pytest.mark.kafka
def test_a_topic_source_stops_at_the_end_as_of_the_start(settings: Settings) -> None:
    conn = ConnectionSpec("live", "kafka", {"topic": settings.topic("live")})
    with open_writer(conn, settings) as writer:
        writer.write(iris(5))
        batches = read_batches(conn, settings, batch_size=2)
        first = next(batches)
        writer.write(iris(5, start=5))  # produced after the read began: not part of it
    assert [r["id"] for r in first + [r for b in batches for r in b]] == [
        f"r{i}" for i in range(5)]
    assert count_hint(conn, settings) == 10


@pytest.mark.kafka
def test_a_missing_topic_is_named(settings: Settings) -> None:
    conn = ConnectionSpec("gone", "kafka", {"topic": settings.topic("nothing-here")})
    with pytest.raises(ConnectorError, match="no such topic"):
        read_all(conn, settings)


def test_the_platform_tables_are_all_guarded(chdb: Storage) -> None:
    from control.registry.source_queries import PLATFORM_TABLES
    from sinks.tables import migrate

    migrate(chdb)
    made = {r["name"] for r in chdb.query("SELECT name FROM system.tables WHERE database = "
                                          "currentDatabase()") if not r["name"].startswith("t_")}
    assert made == PLATFORM_TABLES


def test_chdb_refuses_table_functions_and_settings_even_if_asked(chdb: Storage,
                                                                 local: Settings) -> None:
    # The second wall: every query on chDB runs with readonly=1.
    for sql in ("SELECT * FROM file('/etc/hostname', 'LineAsString')",
                "SELECT * FROM url('http://127.0.0.1:9/x', 'LineAsString')",
                "SELECT 1 SETTINGS readonly = 0"):
        with pytest.raises(StorageError, match="READONLY"):
            chdb.query(sql)
    # A connection registered before a rule existed is checked again when it runs.
    sneaky = ConnectionSpec("old", "clickhouse", {"query": "SELECT * FROM file('/etc/hostname')"})
    with pytest.raises(ConnectorError, match="table function"):
        read_all(sneaky, local, storage=chdb)


# ---- validate and masked (pure) ------------------------------------------------------------

@pytest.mark.parametrize(("kind", "details", "message"), [
    ("ftp", {"path": "x"}, "unknown type 'ftp'; allowed: file, clickhouse, kafka"),
    ("file", {}, "'path' is missing"),
    ("file", {"path": "data.xlsx"}, "format must be one of csv, jsonl, parquet"),
    ("file", {"path": "data.csv", "format": "xml"}, "format 'xml'"),
    ("file", {"path": "out/{run id}.csv"}, "not a placeholder"),
    ("file", {"path": "a.csv", "table": "t"}, "unknown detail 'table' for a file connection"),
    ("clickhouse", {}, "exactly one of 'table'"),
    ("clickhouse", {"table": "t", "query": "SELECT 1"}, "exactly one of 'table'"),
    ("clickhouse", {"table": "t; DROP TABLE x"}, "is not a table name"),
    ("clickhouse", {"query": "DROP TABLE logs"}, "query must be a SELECT"),
    ("clickhouse", {"table": "t", "url": "localhost:8123"}, "not a ClickHouse server URL"),
    # One plain SELECT over tables: no table functions, files, settings or second statements.
    ("clickhouse", {"query": "SELECT * FROM file('/etc/passwd', 'LineAsString')"},
     "query reads the table function \"file('/etc/passwd', 'LineAsString')\""),
    ("clickhouse", {"query": "SELECT * FROM t WHERE x IN url('http://h/x', CSV)"},
     "calls the table function 'url'"),
    ("clickhouse", {"query": "SELECT * FROM t JOIN remote('h', db.t) USING id"},
     "table function"),
    ("clickhouse", {"query": "SELECT * FROM executable('x.sh', 'CSV', 'a String')"},
     "table function"),
    ("clickhouse", {"query": "SELECT 1; SELECT 2"}, "query has 2 statements"),
    ("clickhouse", {"query": "SELECT * FROM t INTO OUTFILE '/tmp/x'"}, "not one plain SELECT"),
    ("clickhouse", {"query": "SELECT * FROM t SETTINGS readonly = 0"}, "a SETTINGS clause"),
    ("clickhouse", {"query": "SELECT * FROM t FORMAT CSV"}, "a FORMAT clause"),
    # The platform's tables hold every workspace's logs and runs.
    ("clickhouse", {"query": "SELECT * FROM inference_logs"}, "belongs to the platform"),
    ("clickhouse", {"query": "SELECT * FROM t WHERE id IN (SELECT record_id FROM "
                             "default.inference_log_blocks)"}, "belongs to the platform"),
    ("clickhouse", {"table": "task_runs"}, "'task_runs' belongs to the platform"),
    ("clickhouse", {"table": "system.users"}, "belongs to the platform"),
    ("kafka", {}, "'topic' is missing"),
    ("kafka", {"topic": "a topic"}, "not a Kafka topic name"),
    ("kafka", {"topic": "t", "security_protocol": "TLS"}, "security_protocol 'TLS'"),
    ("kafka", {"topic": "t", "security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN",
               "sasl_username": "u"}, "'sasl_password' is missing"),
    ("kafka", {"topic": "t", "sasl_mechanism": "PLAIN", "sasl_username": "u",
               "sasl_password": "p"}, "needs security_protocol SASL_"),
    ("kafka", {"topic": "t", "sasl_password": "p"}, "need sasl_mechanism"),
])
def test_validate_names_the_bad_detail(kind: str, details: dict[str, str], message: str) -> None:
    with pytest.raises(ConnectorError, match="connection 'c'") as raised:
        validate(ConnectionSpec("c", kind, details))
    assert message in str(raised.value)


@pytest.mark.parametrize(("kind", "details"), [
    ("file", {"path": "data/*.parquet"}),
    ("file", {"path": "out/{date}/{run_id}.jsonl"}),
    ("file", {"path": "dump", "format": "csv"}),
    ("clickhouse", {"table": "analytics.scores", "url": "https://u:p@ch.example:8443/db"}),
    # On a server of its own, a connection may name any table there.
    ("clickhouse", {"query": "SELECT * FROM inference_logs", "url": "http://ch.example:8123"}),
    # Literal values in a query are the owner's SQL; only task arguments are bound.
    ("clickhouse", {"query": "-- daily\nWITH 1 AS x SELECT * FROM t WHERE d >= '2024-01-01'"}),
    ("kafka", {"topic": "in.scores", "key_field": "customer", "bootstrap_servers": "b:9093",
               "security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
               "sasl_username": "svc", "sasl_password": "hunter2-long"}),
])
def test_validate_accepts_good_connections(kind: str, details: dict[str, str]) -> None:
    validate(ConnectionSpec("c", kind, details))


def test_validating_imports_no_data_library() -> None:
    # The registry's fold calls validate(): importing it must not pull pyarrow, Kafka or chDB.
    probe = ("import sys, agents.connectors; print(sorted(m for m in sys.modules if m.split('.')[0]"
             " in {'pyarrow', 'confluent_kafka', 'clickhouse_connect', 'chdb', 'sinks'}))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("secret", ["hunter2-hunter2", "pw", "s3cr3t!x"])
def test_masked_never_shows_a_secret(secret: str) -> None:
    details = {
        "sasl_password": secret, "api_token": secret, "client_secret": secret,
        "access_key": secret, "url": f"http://admin:{secret}@ch:8123/db",
        "query": f"SELECT * FROM url('https://u:{secret}@h/x.csv', CSV)",
        "dsn": f"clickhouse://h:9000/db?user=u&password={secret}",
        "key_field": "customer", "sasl_username": "svc",
    }
    shown = masked(details)
    assert all(secret not in value for value in shown.values())
    assert secret not in repr(ConnectionSpec("c", "kafka", details))
    assert shown["key_field"] == "customer" and shown["sasl_username"] == "svc"
    assert shown["url"].startswith("http://admin:****") and shown["url"].endswith("@ch:8123/db")
    assert shown["sasl_password"] == ("****" + secret[-2:] if len(secret) >= 8 else "****")
