"""Logs stored as the Avro they arrive in make the rows that decoding them in Python makes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import numpy as np
import pytest

from agents.avro_writer import LOG_MESSAGE_BYTES, LogWriter
from agents.log_sink import LogSink
from control.config import Settings
from schemas.codec import codec
from sinks.log_batches import (
    BATCH_STRUCTURE,
    INSERT,
    INSERT_BATCHES,
    STRUCTURE,
    container,
    decode_logs,
    logs_in,
)
from sinks.storage import ChdbStorage, ServerStorage, Storage
from sinks.tables import KafkaPosition, batch_token, log_rows, migrate
from tests.test_storage import clickhouse_server  # noqa: F401 - the server fixture

RNG = np.random.default_rng(3)


@pytest.fixture(params=["chdb", "server"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    """A fresh, migrated database on each transport."""
    if request.param == "chdb":
        opened: Storage = ChdbStorage(tmp_path / "chdb")
    else:
        admin_url = request.getfixturevalue("clickhouse_server")
        database = f"t{uuid4().hex[:12]}"
        with ServerStorage(admin_url) as admin:
            admin.command(f"CREATE DATABASE {database}")
        opened = ServerStorage(f"{admin_url}/{database}")
    try:
        migrate(opened)
        yield opened
    finally:
        opened.close()


def logs(n: int) -> list[tuple[bytes, KafkaPosition]]:
    """Current-schema logs: shadows, errors, text and empty tensors, and where each was read."""
    writer = LogWriter("fraud", "scoring ü", 3, "host:1")
    out = []
    for i in range(n):
        inputs = {"float_input": RNG.normal(size=(1 + i % 2, 4)).astype(np.float32),
                  "country": np.array(["de", "fr ü"][: 1 + i % 2])}
        outputs = {} if i % 5 == 4 else {"label": np.array([i % 3]),
                                         "probabilities": RNG.random((1, 3)).astype(np.float32)}
        value = writer.encode(1_795_559_347_813_123 + i, f"r{i}", 1 + i % 3, "clf", 2,
                              i % 4 == 0, inputs, outputs, 100 + i,
                              "step 1 (clf v2): boom" if i % 5 == 4 else None)
        out.append((value, KafkaPosition("ns.logs", i % 2, 1000 + i)))
    return out


def batches(n: int, per_message: int = 7) -> list[tuple[bytes, KafkaPosition]]:
    """The logs of logs(n) as InferenceLogBatch messages, each read at one position."""
    writer = LogWriter("fraud", "scoring ü", 3, "host:1")
    bodies = [value[10:] for value, _ in logs(n)]
    return [(writer.pack(bodies[i:i + per_message])[0], KafkaPosition("ns.logs", 1, 5000 + i))
            for i in range(0, n, per_message)]


def test_log_batch_messages_make_the_rows_decoding_makes(storage: Storage) -> None:
    messages = batches(40)
    data = container(*zip(*messages, strict=True), batches=True)
    storage.insert_select(INSERT_BATCHES, data, "Avro", BATCH_STRUCTURE,
                          dedup_token=batch_token([p for _, p in messages]))
    storage.command("CREATE TABLE decoded AS inference_logs")
    records = [(log, p) for v, p in messages for log in decode_logs(v)]
    storage.insert("decoded", log_rows([r for r, _ in records], [p for _, p in records]))
    order = " ORDER BY kafka_offset, record_id, step"
    got = storage.query("SELECT * FROM inference_logs" + order)
    assert len(got) == 40 and sum(logs_in(v) for v, _ in messages) == 40
    assert got == storage.query("SELECT * FROM decoded" + order)


def test_pack_keeps_messages_under_the_size_limit() -> None:
    writer = LogWriter("ws", "p", 1, "w")
    bodies = [bytes(300_000)] * 7 + [bytes(LOG_MESSAGE_BYTES + 5)] + [bytes(10)]
    messages = writer.pack(bodies)
    assert [logs_in(m) for m in messages] == [3, 3, 1, 1, 1]  # a log over the limit: alone
    assert all(len(m) < LOG_MESSAGE_BYTES + 100 for m in messages[:2])
    assert writer.pack([]) == []


def test_avro_batches_make_the_rows_decoding_makes(storage: Storage) -> None:
    batch = logs(60)
    storage.insert_select(INSERT, container(*zip(*batch, strict=True)), "Avro", STRUCTURE,
                          dedup_token=batch_token([p for _, p in batch]))
    storage.command("CREATE TABLE decoded AS inference_logs")
    storage.insert("decoded", log_rows([codec("InferenceLog").decode(v) for v, _ in batch],
                                       [p for _, p in batch]))
    order = " ORDER BY kafka_partition, kafka_offset"
    got = storage.query("SELECT * FROM inference_logs" + order)
    assert len(got) == 60
    assert got == storage.query("SELECT * FROM decoded" + order)


def test_a_replayed_avro_batch_adds_no_rows(storage: Storage) -> None:
    batch = logs(10)
    token = batch_token([p for _, p in batch])
    for _ in range(2):
        storage.insert_select(INSERT, container(*zip(*batch, strict=True)), "Avro", STRUCTURE,
                              dedup_token=token)
    assert storage.query("SELECT count() AS n FROM inference_logs")[0]["n"] == 10


def test_the_sink_skips_what_it_cannot_read_and_stores_the_rest(tmp_path: Path) -> None:
    sink = LogSink(Settings(data_dir=tmp_path / "data", clickhouse_url=None), "http://x")
    batch = logs(5)
    garbage = (b"\xc3\x01" + b"\x00" * 8 + b"not a log", KafkaPosition("ns.logs", 0, 1))
    try:
        assert sink.write([*batch[:2], garbage, *batch[2:]]) == 5
        assert sink.undecodable == 1
        assert sink.write(batch) == 5  # the same offsets again: all Avro now
        assert sink.open().query("SELECT count() AS n FROM inference_logs FINAL")[0]["n"] == 5
        mixed = [*batch, *batches(12, per_message=5), garbage]  # logs, batches, garbage
        assert sink.write(mixed) == 17
        assert sink.write(mixed) == 17  # replayed: nothing added
        rows = sink.open().query("SELECT count() AS n FROM inference_logs")[0]["n"]
        assert rows == 5 + 12  # logs(12) repeats the ids of logs(5): FINAL would fold them
    finally:
        if sink.storage is not None:
            sink.storage.close()
