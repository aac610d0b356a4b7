"""The Avro bodies of inference logs, byte for byte as fastavro would write them: a predict
call's logs are one InferenceLogBlock (its numeric tensors a column each, the record ids back
to back) or, when they cannot be columns, InferenceLog rows; either in messages under
LOG_MESSAGE_BYTES. The encoding primitives are records.avro_writer's."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from agents.records.avro_writer import (
    EMPTY,
    SECOND_BRANCH,
    LastLongs,
    dims,
    long,
    names,
    string,
    tensors,
)
from schemas.codec import MARKER, codec

if TYPE_CHECKING:
    from agents.records.inference import Call, InferenceLogEntry


@lru_cache(maxsize=4096)
def _column_header(name: str, dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """What comes before a TensorColumn's data: its name, dtype and one record's shape."""
    return string(name) + string(dtype.name) + dims(shape)


# Logs per message at most, in bytes: under librdkafka's and the brokers' default 1 MB limit.
LOG_MESSAGE_BYTES = 900_000


class LogWriter:
    """InferenceLog records of one pipeline version served by one worker.

    `replay` names the replay (pipelines replay) whose logs these are; '' for live traffic.
    A served batch's logs go to the logs topic (messages): the logs of each predict call whose
    tensors are numbers with as many rows per record as one InferenceLogBlock (blocks), the
    others packed into InferenceLogBatch messages (pack); either kind is at most
    LOG_MESSAGE_BYTES. The body methods write one log without the single-object header, as it
    sits in a batch; encode() writes one standalone log.
    """

    def __init__(self, workspace: str, pipeline: str, pipeline_version: int, worker: str,
                 replay: str = "") -> None:
        self._prefix = MARKER + codec("InferenceLog").fingerprint
        self._batch_prefix = MARKER + codec("InferenceLogBatch").fingerprint
        self._block_prefix = MARKER + codec("InferenceLogBlock").fingerprint
        self._pipeline = string(workspace) + string(pipeline) + long(pipeline_version)
        self._worker = string(worker)
        self._replay = string(replay)  # '' for live traffic: a replay's logs name the replay
        self._models: dict[tuple[int, str, int, bool], bytes] = {}
        self._longs = LastLongs()

    def encode(self, time_us: int, record_id: str, step: int, model: str, model_version: int,
               shadow: bool, inputs: Mapping[str, np.ndarray],
               outputs: Mapping[str, np.ndarray], elapsed_us: int, error: str | None,
               anomalies: tuple[str, ...] = ()) -> bytes:
        """One single-object encoded InferenceLog."""
        return self._prefix + self.body(time_us, record_id, step, model, model_version, shadow,
                                        inputs, outputs, elapsed_us, error, anomalies)

    def body(self, time_us: int, record_id: str, step: int, model: str, model_version: int,
             shadow: bool, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray],
             elapsed_us: int, error: str | None, anomalies: tuple[str, ...] = ()) -> bytes:
        """One InferenceLog's Avro body."""
        longs = self._longs
        return b"".join((
            longs.time(time_us), string(record_id), self._pipeline,
            self._served_by(step, model, model_version, shadow),
            tensors(inputs), tensors(outputs), longs.elapsed(elapsed_us), self._worker,
            EMPTY if error is None else SECOND_BRANCH + string(error), names(anomalies),
            self._replay))

    def _served_by(self, step: int, model: str, model_version: int, shadow: bool) -> bytes:
        which = (step, model, model_version, shadow)
        found = self._models.get(which)
        if found is None:
            found = self._models[which] = (long(step) + string(model) + long(model_version)
                                           + (b"\x01" if shadow else b"\x00"))
        return found

    def encode_all(self, time_us: int, entries: Sequence[InferenceLogEntry]) -> list[bytes]:
        """The logs of a batch, in order, each a single-object encoded InferenceLog."""
        return [self._prefix + body for body in self.bodies(time_us, entries)]

    def bodies(self, time_us: int, entries: Sequence[InferenceLogEntry]) -> list[bytes]:
        """The bodies of a batch's logs, in order."""
        return [self.body(time_us, e.record_id, e.step, e.model, e.model_version, e.shadow,
                          e.inputs, e.outputs, e.elapsed_us, e.error, e.anomalies)
                for e in entries]

    def messages(self, time_us: int, entries: Sequence[InferenceLogEntry]) -> list[bytes]:
        """A batch's logs as messages of the logs topic: a block per predict call that can be
        one (see blocks), the rest in InferenceLogBatch messages."""
        out: list[bytes] = []
        rows: list[InferenceLogEntry] = []
        start, n = 0, len(entries)
        while start < n:
            first = entries[start]
            end = start + 1
            while end < n and first.call is not None and entries[end].call is first.call:
                end += 1
            group = entries[start:end]
            blocks = None if first.call is None else self.blocks(
                time_us, first.step, first.model, first.model_version, first.shadow,
                first.elapsed_us, first.call, [e.record_id for e in group],
                [e.row for e in group], [e.anomalies for e in group])
            if blocks is None:
                rows += group
            else:
                out += blocks
            start = end
        return out + self.pack(self.bodies(time_us, rows))

    def pack(self, bodies: Sequence[bytes]) -> list[bytes]:
        """Log bodies as InferenceLogBatch messages of at most LOG_MESSAGE_BYTES (a log over
        that is a message of its own), in order."""
        messages, start, size = [], 0, 0
        for i, body in enumerate(bodies):
            if i > start and size + len(body) > LOG_MESSAGE_BYTES:
                messages.append(self._batch(bodies[start:i]))
                start, size = i, 0
            size += len(body)
        if start < len(bodies):
            messages.append(self._batch(bodies[start:]))
        return messages

    def _batch(self, bodies: Sequence[bytes]) -> bytes:
        return b"".join((self._batch_prefix, long(len(bodies)), *bodies, EMPTY))

    def blocks(self, time_us: int, step: int, model: str, model_version: int, shadow: bool,
               elapsed_us: int, call: Call, record_ids: Sequence[str],
               records: Sequence[int] | None = None,
               anomalies: Sequence[tuple[str, ...]] | None = None) -> list[bytes] | None:
        """The logs of one predict call that served no error, as InferenceLogBlock messages
        (more than one only past LOG_MESSAGE_BYTES): record_ids[i] owns the call's record
        records[i] (every record in order when None) and failed the checks anomalies[i]
        (none when None). None unless its tensors are numbers with as many rows per record."""
        ins = _tensor_columns(call.inputs, call.input_offsets, records)
        outs = (None if ins is None
                else _tensor_columns(call.outputs, call.output_offsets, records))
        if ins is None or outs is None:
            return None
        head = b"".join((self._block_prefix, long(time_us), self._pipeline,
                         self._served_by(step, model, model_version, shadow), long(elapsed_us),
                         self._worker))
        # Record ids are short: 64 bytes a record bounds a block's share of them.
        per_record = 64 + sum(matrix[0].nbytes for _, matrix in ins + outs if len(matrix))
        size = max(1, (LOG_MESSAGE_BYTES - len(head)) // per_record)
        flagged = anomalies is not None and any(anomalies)
        return [b"".join((head, _record_ids(record_ids[at:at + size]),
                          _tensor_column_array(ins, at, at + size),
                          _tensor_column_array(outs, at, at + size),
                          _anomalies(anomalies[at:at + size]) if flagged  # type: ignore[index]
                          else EMPTY, self._replay))
                for at in range(0, len(record_ids), size)]


# A TensorColumn before its data (name, dtype, shape: the same for every call of a step), and
# its records' values, a row per record.
_TensorColumn = tuple[bytes, np.ndarray]


def _tensor_columns(arrays: Mapping[str, np.ndarray], offsets: list[int] | None,
                    records: Sequence[int] | None) -> list[_TensorColumn] | None:
    """The call's tensors as columns of the given records (all when None), or None unless
    numbers with as many rows per record."""
    n = len(offsets) - 1 if offsets else 1
    rows = offsets[1] - offsets[0] if offsets and n else None
    if offsets and (not rows or offsets != list(range(0, offsets[-1] + 1, rows))):
        return None
    columns = []
    for name, a in arrays.items():
        if a.ndim == 0 or a.dtype.kind not in "biuf" or (offsets and len(a) != offsets[-1]):
            return None
        shape = a.shape if rows is None else (rows, *a.shape[1:])
        head = _column_header(name, a.dtype, shape)
        matrix = a.reshape(n, math.prod(shape))
        if records is not None:
            matrix = matrix[np.asarray(records)]
        columns.append((head, matrix.astype(a.dtype.newbyteorder("<"), copy=False)))
    return columns


def _tensor_column_array(columns: list[_TensorColumn], start: int, end: int) -> bytes:
    """An array of TensorColumn holding records start:end of each column."""
    if not columns:
        return EMPTY
    parts = [long(len(columns))]
    for head, matrix in columns:
        data = matrix[start:end].tobytes()
        parts += (head, long(len(data)), data)
    parts.append(EMPTY)
    return b"".join(parts)


def _anomalies(flags: Sequence[tuple[str, ...]]) -> bytes:
    """A block's anomalies: an array of each record's array of check names."""
    return long(len(flags)) + b"".join(names(f) for f in flags) + EMPTY if flags else EMPTY


def _record_ids(ids: Sequence[str]) -> bytes:
    """A block's record_ids and record_id_ends: the ids' UTF-8 back to back, and where each
    ends (little-endian int32)."""
    lengths = np.fromiter(map(len, ids), np.int64, len(ids))
    data = "".join(ids).encode()
    if len(data) != lengths.sum():  # not all ASCII: a character may take several bytes
        encoded = [i.encode() for i in ids]
        data = b"".join(encoded)
        lengths = np.fromiter(map(len, encoded), np.int64, len(ids))
    ends = np.cumsum(lengths).astype("<i4").tobytes()
    return long(len(data)) + data + long(len(ends)) + ends
