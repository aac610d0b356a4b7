"""Inference logs into `inference_log_rows` as the Avro they arrive in, parsed by ClickHouse.

Decoding each log in Python (fastavro: 30 µs a row) and handing rows to clickhouse-connect
(another 30 µs) cost the worker as much CPU as serving the record did. Instead, a batch of
single-object encoded InferenceLog messages becomes one Avro object container file: each
message body, behind three fields of where it was read (topic, partition, offset), in one
block under a schema that is the log's own with those three fields first. ClickHouse reads it
with its Avro input format, off the GIL, and maps the tensors into the table's columns in
the same INSERT ... SELECT; the rows are those sinks.tables.log_rows would make.

Messages written with an older InferenceLog schema are left to the caller (decode them).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from functools import cache
from typing import Any

from schemas.codec import (
    AVRO_DIR,
    MARKER,
    avro_long,
    avro_string,
    codec,
    read_long,
    writer_schemas,
)
from sinks.log_blocks import block_logs, decode_block
from sinks.log_layout import COLUMNS as LOG_COLUMNS
from sinks.log_layout import FIELDS, POSITION, READ_AS, TENSOR_PARTS, TENSORS
from sinks.tables import LOG_ROWS, KafkaPosition

WHERE = ", ".join(f"{name} {kind}" for name, kind in POSITION)
LOG = ", ".join(f"{name} {kind}" for name, kind in READ_AS)
STRUCTURE = f"{WHERE}, {LOG}"  # a row per InferenceLog message
BATCH_STRUCTURE = f"{WHERE}, logs Array(Tuple({LOG}))"  # a row per InferenceLogBatch message


def _as_map(tensors: str, field: str, only_text: bool = False) -> str:
    picked = f"arrayFilter(t -> notEmpty(t.strings), {tensors})" if only_text else tensors
    return f"mapFromArrays(arrayMap(t -> t.name, {picked}), arrayMap(t -> t.{field}, {picked}))"


def _source(column: str) -> str:
    """What a column of the table is made of: a field as it is, or one part of a tensor field
    (inputs, input_shapes, ... from the Avro field `inputs`) as a map by tensor name."""
    for field in TENSORS:
        for suffix, part in TENSOR_PARTS:
            if column == field[:-1] + suffix:
                return _as_map(field, part, part == "strings")
    return column


COLUMNS = {column: _source(column) for column in LOG_COLUMNS}
# The engine need not merge duplicates within a batch as it writes it (half of the insert's
# CPU): readers use FINAL, and a replayed batch is dropped by its deduplication token.
# Storing logs is background work beside serving records, on the same machine with chDB: one
# thread, at a low priority (nice 10), so that it takes the CPU serving leaves.
INSERT_SETTINGS = {"optimize_on_insert": 0, "max_insert_threads": 1, "max_threads": 1,
                   "os_thread_priority": 10}
# {source} is where the rows come from: input(...) on a server, file(...) on chDB.
INSERT = (f"INSERT INTO {LOG_ROWS} ({', '.join(COLUMNS)}) "
          f"SELECT {', '.join(COLUMNS.values())} FROM {{source}}")
# The same from InferenceLogBatch messages: a row per log of each.
INSERT_BATCHES = INSERT.replace("{source}", (
    "(SELECT kafka_topic, kafka_partition, kafka_offset, "
    f"{', '.join(f'log.{f} AS {f}' for f in FIELDS)} FROM {{source}} ARRAY JOIN logs AS log)"))


@cache
def _header(batches: bool) -> tuple[bytes, bytes]:
    """The container file's header and sync marker, for the current InferenceLog schema: a
    row per log, or (batches) a row per InferenceLogBatch holding its logs."""
    tensor = json.loads((AVRO_DIR / "inferstream.data.Tensor.avsc").read_text())
    log = json.loads((AVRO_DIR / "inferstream.data.InferenceLog.avsc").read_text())
    fields, named = [], False
    for f in log["fields"]:
        if f["type"] == {"type": "array", "items": "inferstream.data.Tensor"}:
            # The first use defines the named type; later ones refer to it by name.
            f = {**f, "type": {"type": "array",
                               "items": "inferstream.data.Tensor" if named else tensor}}
            named = True
        fields.append(f)
    if batches:
        fields = [{"name": "logs", "type": {"type": "array", "items": {**log, "fields": fields}}}]
    schema = {"type": "record", "name": "LogRow", "namespace": "inferstream.sink",
              "fields": [{"name": "kafka_topic", "type": "string"},
                         {"name": "kafka_partition", "type": "int"},
                         {"name": "kafka_offset", "type": "long"}, *fields]}
    sync = os.urandom(16)
    meta = {"avro.schema": json.dumps(schema).encode(), "avro.codec": b"null"}
    header = (b"Obj\x01" + avro_long(len(meta))
              + b"".join(avro_string(k) + avro_long(len(v)) + v for k, v in meta.items())
              + b"\x00" + sync)
    return header, sync


def current_prefix() -> bytes:
    """The first 10 bytes of a log written with the current schema (marker, fingerprint)."""
    return MARKER + codec("InferenceLog").fingerprint


def current_batch_prefix() -> bytes:
    """The first 10 bytes of an InferenceLogBatch of the current schema."""
    return MARKER + codec("InferenceLogBatch").fingerprint


def container(values: Sequence[bytes], positions: Sequence[KafkaPosition],
              batches: bool = False) -> bytes:
    """An Avro object container file of current-schema messages (logs, or batches of logs)
    and where each was read."""
    header, sync = _header(batches)
    topics: dict[str, bytes] = {}
    bodies = []
    for value, (topic, partition, offset) in zip(values, positions, strict=True):
        where = topics.get(topic)
        if where is None:
            where = topics[topic] = avro_string(topic)
        bodies.append(where + avro_long(partition) + avro_long(offset) + value[10:])
    block = b"".join(bodies)
    return header + avro_long(len(bodies)) + avro_long(len(block)) + block + sync


def logs_in(batch: bytes) -> int:
    """How many logs an InferenceLogBatch message holds (its array's first block's count:
    our writers write one block)."""
    try:
        return abs(read_long(batch, 10)[0])
    except IndexError:
        return 0


def decode_logs(value: bytes) -> list[dict[str, Any]]:
    """The logs in a message of the logs topic (an InferenceLogBlock, an InferenceLogBatch or
    one InferenceLog, of any schema version) as InferenceLog records; raises DecodeError."""
    writer = writer_schemas().get(bytes(value[2:10]))
    name = writer["name"] if writer is not None else None
    if name == codec("InferenceLogBlock").full_name:
        return block_logs(decode_block(value))
    if name == codec("InferenceLogBatch").full_name:
        return codec("InferenceLogBatch").decode(value)["logs"]
    return [codec("InferenceLog").decode(value)]
