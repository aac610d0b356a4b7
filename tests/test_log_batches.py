"""Logs stored as the Avro they arrive in make the rows that decoding them in Python makes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import numpy as np
import pytest

from agents.avro_writer import LogWriter
from agents.log_sink import LogSink
from control.config import Settings
from schemas.codec import codec
from sinks.log_batches import INSERT, STRUCTURE, container
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
    finally:
        if sink.storage is not None:
            sink.storage.close()
