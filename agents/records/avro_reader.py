"""A fast reader of the common Avro input record: an optional id and nested arrays of floats.

fastavro builds a Python list of Python floats per row, which numpy then copies back into an
array; here each block of floats or doubles becomes a numpy view of the message bytes. Any
other shape of input (ints, text, ragged rows, several blocks of rows, trailing bytes) returns
None, and the caller reads the record with fastavro, which also explains what is wrong with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from control.registry.tensors import TensorSpec
from schemas.codec import read_long

Plan = tuple[tuple[str, int, np.dtype], ...]  # (Avro field, array depth, item dtype)
_ITEMS = {"float32": np.dtype("<f4"), "float64": np.dtype("<f8")}


def plan_for(fields: Sequence[tuple[str, TensorSpec]]) -> Plan | None:
    """How to read records of these (Avro field, spec) pairs, or None if not only floats."""
    plan = []
    for avro_name, spec in fields:
        item = _ITEMS.get(spec.dtype)
        if item is None:
            return None
        plan.append((avro_name, max(len(spec.shape), 1), item))
    return tuple(plan)


def read_body(raw: bytes, plan: Plan, start: int = 10) -> dict[str, Any] | None:
    """The record after the single-object header as {"id": ..., field: ndarray}, or None."""
    try:
        branch, pos = read_long(raw, start)
        if branch == 0:
            record_id = None
        elif branch == 1:
            size, pos = read_long(raw, pos)
            if size < 0 or pos + size > len(raw):
                return None
            record_id = raw[pos:pos + size].decode()
            pos += size
        else:
            return None
        doc: dict[str, Any] = {"id": record_id}
        for name, depth, item in plan:
            array, pos = _nested(raw, pos, depth, item)
            if array is None:
                return None
            doc[name] = array
    except (IndexError, UnicodeDecodeError):
        return None
    return doc if pos == len(raw) else None


def _nested(buf: bytes, pos: int, depth: int, item: np.dtype) -> tuple[np.ndarray | None, int]:
    count, pos = read_long(buf, pos)
    if count <= 0:  # empty, or a block with a byte size: rare, leave it to fastavro
        return None, pos
    if depth == 1:
        end = pos + count * item.itemsize
        if end >= len(buf) or buf[end] != 0:  # one block, then the 0 that ends the array
            return None, pos
        return np.frombuffer(buf, item, count, pos), end + 1
    rows = []
    for _ in range(count):
        row, pos = _nested(buf, pos, depth - 1, item)
        if row is None or (rows and row.shape != rows[0].shape):
            return None, pos
        rows.append(row)
    if pos >= len(buf) or buf[pos] != 0:
        return None, pos
    return (rows[0][np.newaxis] if count == 1 else np.stack(rows)), pos + 1
