"""InferenceLogBlock messages into `inference_log_blocks`, a row per block, through Arrow.

A block holds one predict call's logs: what they share written once, and each tensor as one
column of every record's values. It becomes one row of `inference_log_blocks` (its record ids
and each record's tensor values in arrays; the view `inference_logs` shows a row per log):
numpy lays out a whole insert's values record by record and ClickHouse reads the Arrow table
at memory speed. No Python object is made per log but its record id. Decoding each log in
Python and handing rows to clickhouse-connect cost ~60 µs a log, ClickHouse parsing row-wise
Avro into a row per log ~7, a block's logs as a row ~2.5.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa

from schemas.codec import MARKER, codec
from schemas.errors import DecodeError
from sinks.log_layout import SHARED
from sinks.tables import KafkaPosition

Block = dict[str, Any]  # a decoded InferenceLogBlock
# The numbers a block may hold, by the names numpy gives them (TensorColumn.dtype).
DTYPES = {np.dtype(t).name: np.dtype(t).newbyteorder("<") for t in (
    "float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16",
    "uint32", "uint64", "bool")}
_IO = ("inputs", "outputs")
_EPOCH, _MICROSECOND = datetime(1970, 1, 1, tzinfo=UTC), timedelta(microseconds=1)
_NAMES = pa.list_(pa.string())
_FLOAT32, _FLOAT64 = np.dtype("<f4"), np.dtype("<f8")
# Items float32 holds exactly whatever their values; other dtypes are checked block by block.
_EXACT_IN_FLOAT32 = {"float16", "float32", "int8", "int16", "uint8", "uint16", "bool"}
# The columns of sinks.tables.INFERENCE_LOG_BLOCKS, a row per block.
_SHARED_TYPES = {
    "time": pa.timestamp("us", "UTC"), "workspace": pa.string(), "pipeline": pa.string(),
    "pipeline_version": pa.uint32(), "step": pa.uint16(), "model": pa.string(),
    "model_version": pa.uint32(), "shadow": pa.bool_(), "elapsed_us": pa.int64(),
    "worker": pa.string(), "replay": pa.string(),
}
SCHEMA = pa.schema([
    *((name, _SHARED_TYPES[name]) for name in SHARED), ("record_ids", _NAMES),
    *((f"{io}_{part}", kind) for io in ("input", "output") for part, kind in (
        ("names", _NAMES), ("dtypes", _NAMES), ("shapes", pa.list_(pa.list_(pa.int64()))),
        ("values", pa.list_(pa.list_(pa.list_(pa.float32())))),
        ("values64", pa.list_(pa.list_(pa.list_(pa.float64())))))),
    ("record_anomalies", pa.list_(_NAMES)),
    ("kafka_topic", pa.string()), ("kafka_partition", pa.int32()), ("kafka_offset", pa.int64()),
])


def current_block_prefix() -> bytes:
    """The first 10 bytes of an InferenceLogBlock of the current schema."""
    return MARKER + codec("InferenceLogBlock").fingerprint


def decode_block(value: bytes) -> Block:
    """An InferenceLogBlock, checked to add up; raises DecodeError. Its record_id_ends become
    an array of int32."""
    block = codec("InferenceLogBlock").decode(value)
    ends, ids = block["record_id_ends"], block["record_ids"]
    if len(ends) % 4:
        raise DecodeError(f"InferenceLogBlock record_id_ends holds {len(ends)} bytes; expected "
                          "four a record")
    block["record_id_ends"] = ends = np.frombuffer(ends, "<i4")
    starts = np.concatenate(([0], ends))
    if (np.diff(starts) < 0).any() or starts[-1] != len(ids):
        raise DecodeError(f"InferenceLogBlock record_id_ends do not cut its {len(ids)} bytes "
                          "of record ids: they must rise to the last byte")
    n = len(ends)
    if len(block.get("anomalies") or ()) not in (0, n):
        raise DecodeError(f"InferenceLogBlock anomalies has {len(block['anomalies'])} items "
                          f"for {n} records; expected one a record, or none")
    for io in _IO:
        for column in block[io]:
            dtype = DTYPES.get(column["dtype"])
            if dtype is None:
                raise DecodeError(f"InferenceLogBlock column {column['name']!r} has dtype "
                                  f"{column['dtype']!r}; expected one of {', '.join(DTYPES)}")
            expected = n * math.prod(column["shape"]) * dtype.itemsize
            if len(column["data"]) != expected or min(column["shape"], default=0) < 0:
                raise DecodeError(
                    f"InferenceLogBlock column {column['name']!r} holds {len(column['data'])} "
                    f"bytes; {n} records of shape {column['shape']} in {column['dtype']} are "
                    f"{expected}")
    return block


def record_ids(block: Block) -> list[str]:
    """A decoded block's record ids; raises DecodeError if one is not UTF-8."""
    data, starts = block["record_ids"], [0, *block["record_id_ends"].tolist()]
    try:
        return [data[a:b].decode() for a, b in itertools.pairwise(starts)]
    except UnicodeDecodeError as exc:
        raise DecodeError(f"an InferenceLogBlock record id is not UTF-8: {exc}") from exc


def _items(column: dict[str, Any]) -> np.ndarray:
    """A column's data as its dtype's items (no copy)."""
    return np.frombuffer(column["data"], DTYPES[column["dtype"]])


def values(column: dict[str, Any], records: int) -> np.ndarray:
    """A column's values as doubles, a row per record."""
    return _items(column).reshape(records, math.prod(column["shape"])).astype(np.float64)


def block_logs(block: Block) -> list[dict[str, Any]]:
    """The InferenceLog records a block stands for, as InferenceLog decodes them."""
    ids = record_ids(block)
    shared = {k: block[k] for k in SHARED}
    tensors = {io: [(c, values(c, len(ids)).tolist()) for c in block[io]] for io in _IO}
    anomalies = block.get("anomalies") or [[] for _ in ids]
    return [{**shared, "record_id": record_id, "error": None, "anomalies": anomalies[i],
             **{io: [{"name": c["name"], "dtype": c["dtype"], "shape": c["shape"],
                      "values": rows[i], "strings": []} for c, rows in tensors[io]]
                for io in _IO}}
            for i, record_id in enumerate(ids)]


def block_table(blocks: Sequence[tuple[Block, KafkaPosition]]) -> pa.Table:
    """The `inference_log_blocks` rows of decoded blocks (see SCHEMA), a row per block."""
    columns: dict[str, Any] = {f: [block[f] for block, _ in blocks] for f in SHARED}
    columns["time"] = [(t - _EPOCH) // _MICROSECOND for t in columns["time"]]
    counts = [len(block["record_id_ends"]) for block, _ in blocks]
    columns["record_ids"] = _ids(blocks, counts)
    for io, prefix in zip(_IO, ("input", "output"), strict=True):
        for part in ("name", "dtype", "shape"):
            columns[f"{prefix}_{part}s"] = [[c[part] for c in block[io]] for block, _ in blocks]
        exact = [all(_exact_in_float32(c) for c in block[io]) for block, _ in blocks]
        columns[f"{prefix}_values"] = _record_major(
            blocks, io, [n if e else 0 for n, e in zip(counts, exact, strict=True)], _FLOAT32)
        columns[f"{prefix}_values64"] = _record_major(
            blocks, io, [0 if e else n for n, e in zip(counts, exact, strict=True)], _FLOAT64)
    # An empty list when no record of the block failed a check: the view pads it.
    columns["record_anomalies"] = [block.get("anomalies") or [] for block, _ in blocks]
    for i, part in enumerate(("topic", "partition", "offset")):
        columns[f"kafka_{part}"] = [position[i] for _, position in blocks]
    return pa.Table.from_arrays([columns[f.name] if isinstance(columns[f.name], pa.Array)
                                 else pa.array(columns[f.name], f.type) for f in SCHEMA],
                                schema=SCHEMA)


def _ids(blocks: Sequence[tuple[Block, KafkaPosition]], counts: Sequence[int]) -> pa.Array:
    """Each block's record ids, as a list of strings, from the blocks' bytes as they are."""
    data = b"".join(block["record_ids"] for block, _ in blocks)
    at = np.cumsum([0, *(len(block["record_ids"]) for block, _ in blocks)])
    ends = np.concatenate([block["record_id_ends"] + base for (block, _), base
                           in zip(blocks, at[:-1], strict=True)] or [np.empty(0, np.int32)])
    offsets = np.concatenate(([0], ends)).astype("<i4")
    strings = pa.StringArray.from_buffers(len(ends), pa.py_buffer(offsets.tobytes()),
                                          pa.py_buffer(data))
    return pa.ListArray.from_arrays(_starts(np.asarray(counts)), strings)


def _exact_in_float32(column: dict[str, Any]) -> bool:
    """Whether float32 holds every value of a column as it is (NaN and infinities too)."""
    if column["dtype"] in _EXACT_IN_FLOAT32:
        return True
    data = _items(column)
    with np.errstate(over="ignore", invalid="ignore"):
        narrow = data.astype(_FLOAT32)
        return bool(np.array_equal(narrow.astype(data.dtype), data, equal_nan=True)) if (
            data.dtype.kind == "f") else bool(
            np.array_equal(narrow.astype(np.float64), data.astype(np.float64)))


def _record_major(blocks: Sequence[tuple[Block, KafkaPosition]], io: str,
                  counts: Sequence[int], dtype: np.dtype) -> pa.Array:
    """The blocks' tensor columns of inputs or outputs as [block][record][tensor][value]: the
    values of counts[b] records of block b (all of them, or none: the other column has
    them), record after record, cast once into one array of dtype, and the offsets of the
    three levels (a few numpy calls per run of blocks of one layout)."""
    sizes = [[math.prod(c["shape"]) for c in block[io]] if n else []
             for (block, _), n in zip(blocks, counts, strict=True)]
    values = np.empty(sum(n * sum(s) for n, s in zip(counts, sizes, strict=True)), dtype)
    at = 0
    for (block, _), n, widths in zip(blocks, counts, sizes, strict=True):
        if not n:
            continue
        rows = values[at:at + n * sum(widths)].reshape(n, sum(widths))
        column = 0
        for c, width in zip(block[io], widths, strict=True):
            rows[:, column:column + width] = _items(c).reshape(n, width)
            column += width
        at += rows.size
    per_tensor, per_record = [], []
    for _, run in itertools.groupby(zip(sizes, counts, strict=True), key=lambda e: e[0]):
        run = list(run)
        widths, n = run[0][0], sum(count for _, count in run)
        per_tensor.append(np.tile(np.array(widths, np.int64), n))
        per_record.append(np.full(n, len(widths), np.int64))
    items = pa.array(values)
    for lengths in (per_tensor, per_record, [counts]):  # values a tensor, tensors a record, records
        items = pa.ListArray.from_arrays(_starts(np.concatenate(lengths)), items)
    return items


def _starts(lengths: np.ndarray) -> pa.Array:
    """List offsets for these lengths: where each list begins, and the end."""
    return pa.array(np.concatenate(([0], np.cumsum(lengths, dtype=np.int64))).astype(np.int32))
