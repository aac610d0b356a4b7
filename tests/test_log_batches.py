"""Logs stored as the Avro or the blocks they arrive in make the rows that decoding them in Python
makes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agents.records.avro_logs import LOG_MESSAGE_BYTES, LogWriter
from agents.records.inference import Call
from control.config import Settings
from schemas.codec import codec
from schemas.errors import DecodeError
from sinks.log_batches import (
    BATCH_STRUCTURE,
    INSERT,
    INSERT_BATCHES,
    STRUCTURE,
    container,
    decode_logs,
    logs_in,
)
from sinks.log_blocks import block_table, decode_block
from sinks.log_sink import LogSink
from sinks.storage import Storage
from sinks.tables import LOG_BLOCKS, LOG_ROWS, KafkaPosition, batch_token, log_rows

pytestmark = pytest.mark.chdb_and_server  # `storage`: a fresh, migrated database
RNG = np.random.default_rng(3)


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
    storage.command(f"CREATE TABLE decoded AS {LOG_ROWS}")
    records = [(log, p) for v, p in messages for log in decode_logs(v)]
    storage.insert("decoded", log_rows([r for r, _ in records], [p for _, p in records]))
    order = " ORDER BY kafka_offset, record_id, step"
    got = storage.query("SELECT * FROM inference_logs" + order)
    assert len(got) == 40 and sum(logs_in(v) for v, _ in messages) == 40
    assert got == storage.query("SELECT * FROM decoded" + order)


def blocks(start: int = 0) -> list[tuple[bytes, KafkaPosition]]:
    """InferenceLogBlock messages of calls of every kind of number: one row or two per record,
    a record subset, a model without outputs, a step's shadow; and where each was read."""
    writer = LogWriter("fraud", "scoring ü", 3, "host:1")
    x = RNG.normal(size=(12, 4)).astype(np.float32)
    calls = [
        (Call({"float_input": x}, list(range(13)),
              {"label": np.arange(12) % 3, "p": RNG.random((12, 3)),
               "ok": np.arange(12) % 2 == 0, "small": np.arange(12, dtype=np.int8)},
              list(range(13))), [f"r{i}" for i in range(12)], None, False),
        (Call({"float_input": x[:6]}, [0, 2, 4, 6], {"score": x[:6, :1].astype(np.float16)},
              [0, 2, 4, 6]), ["s0", "s1", "s2"], None, True),
        (Call({"float_input": x}, list(range(13)), {"y": np.zeros((12, 0))}, list(range(13))),
         ["t3", "t7"], [3, 7], False),
        (Call({"x": x[0]}, None, {}, None), ["u"], None, False),
    ]
    out = []
    for step, (call, ids, records, shadow) in enumerate(calls, 1):
        for value in writer.blocks(1_795_559_347_813_123 + step, step, "clf", 2, shadow,
                                   90 + step, call, ids, records):
            out.append((value, KafkaPosition("ns.logs", 0, start + len(out))))
    return out


def test_log_blocks_make_the_rows_decoding_makes(storage: Storage) -> None:
    messages = blocks()
    table = block_table([(decode_block(v), p) for v, p in messages])
    assert storage.insert_arrow(LOG_BLOCKS, table) == len(messages)
    storage.command(f"CREATE TABLE decoded AS {LOG_ROWS}")
    records = [(log, p) for v, p in messages for log in decode_logs(v)]
    storage.insert("decoded", log_rows([r for r, _ in records], [p for _, p in records]))
    order = " ORDER BY step, record_id"
    got = storage.query("SELECT * FROM inference_logs" + order)  # the view
    assert len(got) == 12 + 3 + 2 + 1
    assert got == storage.query("SELECT * FROM decoded" + order)
    first = got[0]
    assert first["inputs"]["float_input"] == pytest.approx(records[0][0]["inputs"][0]["values"])
    assert first["output_dtypes"] == {"label": "int64", "p": "float64", "ok": "bool",
                                      "small": "int8"}
    assert [r["input_shapes"]["float_input"] for r in got if r["step"] == 2] == [[2, 4]] * 3
    # Float32 where it holds every value (float32 inputs, float16 scores), else Float64
    # (step 1's doubles): the rows above are the exact doubles either way.
    kinds = storage.query(f"SELECT step, notEmpty(input_values) AS in32, "
                          f"notEmpty(output_values) AS out32 FROM {LOG_BLOCKS} ORDER BY step")
    assert [(k["in32"], k["out32"]) for k in kinds] == [(True, False), (True, True),
                                                         (True, True), (True, True)]


def test_a_block_reads_as_the_logs_it_stands_for() -> None:
    x = RNG.normal(size=(3, 2)).astype(np.float32)
    writer = LogWriter("ws", "p", 1, "w")
    call = Call({"x": x}, [0, 1, 2, 3], {"y": x * 2}, [0, 1, 2, 3])
    (block,) = writer.blocks(5, 1, "m", 1, False, 7, call, ["a", "b", "c"])
    one_by_one = [decode_logs(writer.encode(5, rid, 1, "m", 1, False, {"x": x[i:i + 1]},
                                            {"y": x[i:i + 1] * 2}, 7, None))[0]
                  for i, rid in enumerate("abc")]
    assert decode_logs(block) == one_by_one
    # Text, ragged records or a 0-d tensor are not a block: the caller writes rows.
    assert writer.blocks(5, 1, "m", 1, False, 7, Call({"x": np.array(["a"])}, None, {}, None),
                         ["a"]) is None
    assert writer.blocks(5, 1, "m", 1, False, 7, Call({"x": x}, [0, 1, 3], {}, [0, 1, 3]),
                         ["a", "b"]) is None
    assert writer.blocks(5, 1, "m", 1, False, 7, Call({"x": np.float32(1)}, None, {}, None),
                         ["a"]) is None


def test_blocks_keep_under_the_size_limit() -> None:
    writer = LogWriter("ws", "p", 1, "w")
    x = np.zeros((40, 10_000), np.float32)  # 40 kB a record: 22 records a message
    call = Call({"x": x}, list(range(41)), {"y": x[:, :1]}, list(range(41)))
    messages = writer.blocks(5, 1, "m", 1, False, 7, call, [f"r{i}" for i in range(40)])
    assert [len(decode_block(m)["record_id_ends"]) for m in messages] == [22, 18]
    assert all(len(m) <= LOG_MESSAGE_BYTES for m in messages)
    assert [log["record_id"] for m in messages for log in decode_logs(m)] == [
        f"r{i}" for i in range(40)]


def test_a_block_that_does_not_add_up_is_refused() -> None:
    (value, _), *_ = blocks()
    block = codec("InferenceLogBlock").decode(value)
    short = {**block, "inputs": [{**block["inputs"][0], "data": block["inputs"][0]["data"][:-4]}]}
    with pytest.raises(DecodeError, match="holds 188 bytes; 12 records of shape \\[1, 4\\]"):
        decode_block(codec("InferenceLogBlock").encode(short))
    odd = {**block, "outputs": [{**block["outputs"][0], "dtype": "complex64"}]}
    with pytest.raises(DecodeError, match="dtype 'complex64'"):
        decode_block(codec("InferenceLogBlock").encode(odd))


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
    storage.command(f"CREATE TABLE decoded AS {LOG_ROWS}")
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
    assert storage.query(f"SELECT count() AS n FROM {LOG_ROWS}")[0]["n"] == 10  # no FINAL


def test_the_sink_skips_what_it_cannot_read_and_stores_the_rest(tmp_path: Path) -> None:
    sink = LogSink(Settings(data_dir=tmp_path / "data", clickhouse_url=None), "http://x")
    batch = logs(5)
    garbage = (b"\xc3\x01" + b"\x00" * 8 + b"not a log", KafkaPosition("ns.logs", 0, 1))
    try:
        assert sink.write([*batch[:2], garbage, *batch[2:]]) == 5
        assert sink.undecodable == 1
        assert sink.write(batch) == 5  # the same offsets again: all Avro now
        assert sink.open().query(f"SELECT count() AS n FROM {LOG_ROWS}")[0]["n"] == 5
        # logs, batches, blocks and garbage
        mixed = [*batch, *batches(12, per_message=5), *blocks(100), garbage]
        assert sink.write(mixed) == 17 + 18
        assert sink.write(mixed) == 17 + 18  # replayed: nothing added
        # Without FINAL: logs(12) repeats the ids of logs(5), which FINAL would fold.
        rows = sink.open().query(f"SELECT count() AS n FROM {LOG_ROWS}")[0]["n"]
        assert rows == 5 + 12
        logged = sink.open().query(f"SELECT sum(length(record_ids)) AS n FROM {LOG_BLOCKS}")
        assert logged[0]["n"] == 18
        assert sink.open().query("SELECT count() AS n FROM inference_logs")[0]["n"] == 12 + 18
    finally:
        if sink.storage is not None:
            sink.storage.close()
