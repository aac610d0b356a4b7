"""Avro bodies of what a worker writes per record, byte for byte as fastavro would write them.

A served record costs one InferenceResult (Avro inputs) and one inference log per model that
ran it. Through fastavro each took a validate() and a dict of Python floats per tensor; here the
parts that never change within a pipeline version (names, versions, tensor headers) are encoded
once, and tensor values go from numpy to little-endian bytes in one call. A predict call's logs
are one InferenceLogBlock: its tensors as they came out of the model, a column each, so a log
costs its record id and its values.
Avro binary encoding: ints and longs are zigzag varints, strings and bytes are a length and the
bytes, an array is one block (count, items) and a 0, a union is the branch index and the value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from control.registry.tensors import STRING
from schemas.codec import MARKER, avro_long, codec

if TYPE_CHECKING:
    from agents.records.inference import Call, InferenceLogEntry

# A call's tensor, column-wise: the header of one record's part, all values as doubles, and
# how many bytes of them are one record's.
_Column = tuple[bytes, bytes, int]

_EMPTY = b"\x00"  # an empty array, or the null branch of ["null", ...]
_SECOND_BRANCH = b"\x02"
_DOUBLES = np.dtype("<f8")
_SMALL = [bytes([n << 1]) for n in range(64)]  # zigzag varints of 0..63: one byte each


def long(n: int) -> bytes:
    """An Avro int or long; the small ones (most counts and lengths) from a table."""
    return _SMALL[n] if 0 <= n < 64 else avro_long(n)


def string(text: str) -> bytes:
    data = text.encode()
    return long(len(data)) + data


def _dims(shape: tuple[int, ...]) -> bytes:
    """A shape as an Avro array of longs."""
    return long(len(shape)) + b"".join(long(d) for d in shape) + _EMPTY if shape else _EMPTY


# Cached by the dtype object: numpy builds dtype.name anew on every call (~2 µs); bounded for
# shapes that vary from record to record.
@lru_cache(maxsize=4096)
def _header(name: str, dtype: np.dtype, shape: tuple[int, ...]) -> tuple[bytes, bool]:
    """What comes before a Tensor's values, which repeats from record to record: its name,
    dtype and shape, and for numbers the count of values; and whether it holds numbers."""
    numeric = dtype.kind in "biuf"
    head = string(name) + string(dtype.name if numeric else STRING) + _dims(shape)
    size = math.prod(shape)
    if numeric and size:
        head += long(size)
    return head, numeric


@lru_cache(maxsize=4096)
def _column_header(name: str, dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """What comes before a TensorColumn's data: its name, dtype and one record's shape."""
    return string(name) + string(dtype.name) + _dims(shape)


_NUMBERS_END = _EMPTY + _EMPTY  # the end of the values, and no strings


def timestamp_texts(a: np.ndarray) -> list[str]:
    """Times (datetime64, UTC) as text, row-major, in the one form results and logs use, JSON's:
    ISO-8601 without a zone ('2024-05-01T12:00:00', '.250000' when there are microseconds);
    NaT (no time) as 'NaT'."""
    texts = np.datetime_as_string(a.astype("datetime64[us]"), unit="us").ravel().tolist()
    return [t.removesuffix(".000000") for t in texts]


def tensors(arrays: Mapping[str, np.ndarray]) -> bytes:
    """An array of inferstream.data.Tensor, as records.formats.tensor_records describes them."""
    if not arrays:
        return _EMPTY
    parts = [long(len(arrays))]
    add = parts.append
    for name, array in arrays.items():
        a = array if type(array) is np.ndarray else np.asarray(array)
        header, numeric = _header(name, a.dtype, a.shape)
        add(header)
        if numeric:
            if a.size:
                add(a.astype(_DOUBLES, copy=False).tobytes())
                add(_NUMBERS_END)
            else:
                add(_NUMBERS_END)  # an empty array of values, and no strings
        else:
            add(_EMPTY)  # no values
            texts = timestamp_texts(a) if a.dtype.kind == "M" else [
                v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
                for v in a.ravel().tolist()]
            if texts:
                parts += (long(len(texts)), *(string(t) for t in texts), _EMPTY)
            else:
                add(_EMPTY)
    add(_EMPTY)
    return b"".join(parts)


# Logs per message at most, in bytes: under librdkafka's and the brokers' default 1 MB limit.
LOG_MESSAGE_BYTES = 900_000


class LogWriter:
    """InferenceLog records of one pipeline version served by one worker.

    A served batch's logs go to the logs topic (messages): the logs of each predict call whose
    tensors are numbers with as many rows per record as one InferenceLogBlock (blocks), the
    others packed into InferenceLogBatch messages (pack); either kind is at most
    LOG_MESSAGE_BYTES. The body methods write one log without the single-object header, as it
    sits in a batch; encode() writes one standalone log.
    """

    def __init__(self, workspace: str, pipeline: str, pipeline_version: int, worker: str) -> None:
        self._prefix = MARKER + codec("InferenceLog").fingerprint
        self._batch_prefix = MARKER + codec("InferenceLogBatch").fingerprint
        self._block_prefix = MARKER + codec("InferenceLogBlock").fingerprint
        self._pipeline = string(workspace) + string(pipeline) + long(pipeline_version)
        self._worker = string(worker)
        self._models: dict[tuple[int, str, int, bool], bytes] = {}
        self._longs = _LastLongs()

    def encode(self, time_us: int, record_id: str, step: int, model: str, model_version: int,
               shadow: bool, inputs: Mapping[str, np.ndarray],
               outputs: Mapping[str, np.ndarray], elapsed_us: int, error: str | None) -> bytes:
        """One single-object encoded InferenceLog."""
        return self._prefix + self.body(time_us, record_id, step, model, model_version, shadow,
                                        inputs, outputs, elapsed_us, error)

    def body(self, time_us: int, record_id: str, step: int, model: str, model_version: int,
             shadow: bool, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray],
             elapsed_us: int, error: str | None) -> bytes:
        """One InferenceLog's Avro body."""
        longs = self._longs
        return b"".join((
            longs.time(time_us), string(record_id), self._pipeline,
            self._served_by(step, model, model_version, shadow),
            tensors(inputs), tensors(outputs), longs.elapsed(elapsed_us), self._worker,
            _EMPTY if error is None else _SECOND_BRANCH + string(error)))

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
                          e.inputs, e.outputs, e.elapsed_us, e.error) for e in entries]

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
                [e.row for e in group])
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
        return b"".join((self._batch_prefix, long(len(bodies)), *bodies, _EMPTY))

    def blocks(self, time_us: int, step: int, model: str, model_version: int, shadow: bool,
               elapsed_us: int, call: Call, record_ids: Sequence[str],
               records: Sequence[int] | None = None) -> list[bytes] | None:
        """The logs of one predict call that served no error, as InferenceLogBlock messages
        (more than one only past LOG_MESSAGE_BYTES): record_ids[i] owns the call's record
        records[i] (every record in order when None). None unless its tensors are numbers
        with as many rows per record."""
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
        return [b"".join((head, _record_ids(record_ids[at:at + size]),
                          _tensor_column_array(ins, at, at + size),
                          _tensor_column_array(outs, at, at + size)))
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
        return _EMPTY
    parts = [long(len(columns))]
    for head, matrix in columns:
        data = matrix[start:end].tobytes()
        parts += (head, long(len(data)), data)
    parts.append(_EMPTY)
    return b"".join(parts)


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


def _columns(arrays: Mapping[str, np.ndarray], offsets: list[int] | None
             ) -> list[_Column] | None:
    """The call's tensors column-wise, or None unless numbers with as many rows per record."""
    rows = offsets[1] - offsets[0] if offsets else None
    if offsets and offsets != list(range(0, offsets[-1] + 1, rows)):  # type: ignore[arg-type]
        return None
    columns = []
    for name, a in arrays.items():
        if a.ndim == 0:
            return None
        shape = a.shape if rows is None else (rows, *a.shape[1:])
        head, numeric = _header(name, a.dtype, shape)
        if not numeric or not a.size:
            return None
        columns.append((head, a.astype(_DOUBLES, copy=False).tobytes(),
                        math.prod(shape) * _DOUBLES.itemsize))
    return columns


class ResultWriter:
    """InferenceResult records (the answer to an Avro input) of one pipeline version."""

    def __init__(self, workspace: str, pipeline: str, pipeline_version: int, worker: str) -> None:
        self._prefix = MARKER + codec("InferenceResult").fingerprint
        self._pipeline = string(workspace) + string(pipeline) + long(pipeline_version)
        self._worker = string(worker)
        self._models: dict[tuple[tuple[int, str, int, str], ...], bytes] = {}
        self._longs = _LastLongs()

    def encode(self, record_id: str, key: bytes | None,
               models: Sequence[tuple[int, str, int, str]], outputs: Mapping[str, np.ndarray],
               elapsed_us: int, time_us: int) -> bytes:
        """One single-object encoded InferenceResult."""
        used = self._used(models)
        return b"".join((
            self._prefix, string(record_id),
            _EMPTY if key is None else _SECOND_BRANCH + long(len(key)) + key,
            self._pipeline, used, tensors(outputs), self._longs.elapsed(elapsed_us),
            self._longs.time(time_us), self._worker))

    def _used(self, models: Sequence[tuple[int, str, int, str]]) -> bytes:
        which = tuple(tuple(m) for m in models)
        used = self._models.get(which)  # type: ignore[arg-type]
        if used is None:
            used = self._models[which] = (long(len(which)) + b"".join(  # type: ignore[index]
                long(s) + string(m) + long(v) + string(r) for s, m, v, r in which)
                + _EMPTY if which else _EMPTY)
        return used

    def encode_rows(self, record_ids: Sequence[str], keys: Sequence[bytes | None],
                    models: Sequence[tuple[int, str, int, str]], outputs: Mapping[str, np.ndarray],
                    elapsed_us: int, time_us: int) -> list[bytes] | None:
        """The results of records that own one row each of outputs, in order, as encode()
        writes them; None unless the outputs are numbers."""
        n = len(record_ids)
        columns = _columns(outputs, list(range(n + 1)) if n > 1 else None)
        if columns is None:
            return None
        used = self._used(models)
        tail = self._longs.elapsed(elapsed_us) + self._longs.time(time_us) + self._worker
        fixed, width = _matrix(n, [self._pipeline + used, *_tensor_segments(columns), tail])
        prefix, no_key = self._prefix, _EMPTY
        return [b"".join((prefix, string(record_id),
                          no_key if key is None else _SECOND_BRANCH + long(len(key)) + key,
                          fixed[r * width:(r + 1) * width]))
                for r, (record_id, key) in enumerate(zip(record_ids, keys, strict=True))]


_Segment = bytes | tuple[bytes, int]  # the same bytes in every row, or (column, bytes a row)


def _tensor_segments(columns: list[_Column]) -> list[_Segment]:
    """A row's array of Tensors made from columns: one block and a 0, or just 0."""
    if not columns:
        return [_EMPTY]
    out: list[_Segment] = [long(len(columns))]
    for head, values, size in columns:
        out += (head, (values, size), _NUMBERS_END)
    out.append(_EMPTY)
    return out


def _matrix(n: int, segments: Sequence[_Segment]) -> tuple[bytes, int]:
    """n rows of the segments in order, row-major, and the bytes of a row: numpy writes all
    rows in one pass per segment instead of a join of slices per row."""
    width = sum(len(s) if isinstance(s, bytes) else s[1] for s in segments)
    out = np.empty((n, width), np.uint8)
    at = 0
    for s in segments:
        if isinstance(s, bytes):
            out[:, at:at + len(s)] = np.frombuffer(s, np.uint8)
            at += len(s)
        else:
            column, size = s
            out[:, at:at + size] = np.frombuffer(column, np.uint8, n * size).reshape(n, size)
            at += size
    return out.tobytes(), width


class _LastLongs:
    """The encoding of the last time and elapsed time written: a batch's records share them."""

    __slots__ = ("_elapsed", "_time")

    def __init__(self) -> None:
        self._time: tuple[int, bytes] = (0, long(0))
        self._elapsed: tuple[int, bytes] = (0, long(0))

    def time(self, n: int) -> bytes:
        last = self._time  # read once: another thread may swap in its own pair meanwhile
        if last[0] != n:
            last = self._time = (n, long(n))
        return last[1]

    def elapsed(self, n: int) -> bytes:
        last = self._elapsed
        if last[0] != n:
            last = self._elapsed = (n, long(n))
        return last[1]
