"""Avro bodies of what a worker writes per record, byte for byte as fastavro would write them.

A served record costs one InferenceResult (Avro inputs) and one inference log per model that
ran it. Through fastavro each took a validate() and a dict of Python floats per tensor; here the
parts that never change within a pipeline version (names, versions, tensor headers) are encoded
once, and tensor values go from numpy to little-endian bytes in one call. A predict call's logs
are one InferenceLogBlock (records.avro_logs): its tensors as they came out of the model, a
column each, so a log costs its record id and its values.
Avro binary encoding: ints and longs are zigzag varints, strings and bytes are a length and the
bytes, an array is one block (count, items) and a 0, a union is the branch index and the value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import lru_cache

import numpy as np

from control.registry.tensors import STRING
from schemas.codec import MARKER, avro_long, codec

# A call's tensor, column-wise: the header of one record's part, all values as doubles, and
# how many bytes of them are one record's.
_Column = tuple[bytes, bytes, int]

EMPTY = b"\x00"  # an empty array, or the null branch of ["null", ...]
SECOND_BRANCH = b"\x02"
_DOUBLES = np.dtype("<f8")
_SMALL = [bytes([n << 1]) for n in range(64)]  # zigzag varints of 0..63: one byte each


def long(n: int) -> bytes:
    """An Avro int or long; the small ones (most counts and lengths) from a table."""
    return _SMALL[n] if 0 <= n < 64 else avro_long(n)


def string(text: str) -> bytes:
    data = text.encode()
    return long(len(data)) + data


@lru_cache(maxsize=1024)
def names(items: tuple[str, ...]) -> bytes:
    """An Avro array of strings: a record's anomalies (few combinations, so cached)."""
    return long(len(items)) + b"".join(string(s) for s in items) + EMPTY if items else EMPTY


def dims(shape: tuple[int, ...]) -> bytes:
    """A shape as an Avro array of longs."""
    return long(len(shape)) + b"".join(long(d) for d in shape) + EMPTY if shape else EMPTY


# Cached by the dtype object: numpy builds dtype.name anew on every call (~2 µs); bounded for
# shapes that vary from record to record.
@lru_cache(maxsize=4096)
def _header(name: str, dtype: np.dtype, shape: tuple[int, ...]) -> tuple[bytes, bool]:
    """What comes before a Tensor's values, which repeats from record to record: its name,
    dtype and shape, and for numbers the count of values; and whether it holds numbers."""
    numeric = dtype.kind in "biuf"
    head = string(name) + string(dtype.name if numeric else STRING) + dims(shape)
    size = math.prod(shape)
    if numeric and size:
        head += long(size)
    return head, numeric


_NUMBERS_END = EMPTY + EMPTY  # the end of the values, and no strings


def timestamp_texts(a: np.ndarray) -> list[str]:
    """Times (datetime64, UTC) as text, row-major, in the one form results and logs use, JSON's:
    ISO-8601 without a zone ('2024-05-01T12:00:00', '.250000' when there are microseconds);
    NaT (no time) as 'NaT'."""
    texts = np.datetime_as_string(a.astype("datetime64[us]"), unit="us").ravel().tolist()
    return [t.removesuffix(".000000") for t in texts]


def tensor_texts(a: np.ndarray) -> list[str]:
    """A tensor that is not numbers as the text a Tensor's strings hold, row-major."""
    if a.dtype.kind == "M":
        return timestamp_texts(a)
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
            for v in a.ravel().tolist()]


def tensors(arrays: Mapping[str, np.ndarray]) -> bytes:
    """An array of inferstream.data.Tensor, as records.formats.tensor_records describes them."""
    if not arrays:
        return EMPTY
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
            add(EMPTY)  # no values
            texts = tensor_texts(a)
            if texts:
                parts += (long(len(texts)), *(string(t) for t in texts), EMPTY)
            else:
                add(EMPTY)
    add(EMPTY)
    return b"".join(parts)


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
        self._longs = LastLongs()

    def encode(self, record_id: str, key: bytes | None,
               models: Sequence[tuple[int, str, int, str]], outputs: Mapping[str, np.ndarray],
               elapsed_us: int, time_us: int, anomalies: tuple[str, ...] = ()) -> bytes:
        """One single-object encoded InferenceResult."""
        used = self._used(models)
        return b"".join((
            self._prefix, string(record_id),
            EMPTY if key is None else SECOND_BRANCH + long(len(key)) + key,
            self._pipeline, used, tensors(outputs), self._longs.elapsed(elapsed_us),
            self._longs.time(time_us), self._worker, names(anomalies)))

    def _used(self, models: Sequence[tuple[int, str, int, str]]) -> bytes:
        which = tuple(tuple(m) for m in models)
        used = self._models.get(which)  # type: ignore[arg-type]
        if used is None:
            used = self._models[which] = (long(len(which)) + b"".join(  # type: ignore[index]
                long(s) + string(m) + long(v) + string(r) for s, m, v, r in which)
                + EMPTY if which else EMPTY)
        return used

    def encode_rows(self, record_ids: Sequence[str], keys: Sequence[bytes | None],
                    models: Sequence[tuple[int, str, int, str]], outputs: Mapping[str, np.ndarray],
                    elapsed_us: int, time_us: int,
                    anomalies: Sequence[tuple[str, ...]] | None = None) -> list[bytes] | None:
        """The results of records that own one row each of outputs, in order, as encode()
        writes them (anomalies: each record's, none when None); None unless the outputs are
        numbers."""
        n = len(record_ids)
        columns = _columns(outputs, list(range(n + 1)) if n > 1 else None)
        if columns is None:
            return None
        used = self._used(models)
        tail = self._longs.elapsed(elapsed_us) + self._longs.time(time_us) + self._worker
        fixed, width = _matrix(n, [self._pipeline + used, *_tensor_segments(columns), tail])
        prefix, no_key = self._prefix, EMPTY
        flags = [EMPTY] * n if anomalies is None else [names(a) for a in anomalies]
        return [b"".join((prefix, string(record_id),
                          no_key if key is None else SECOND_BRANCH + long(len(key)) + key,
                          fixed[r * width:(r + 1) * width], flags[r]))
                for r, (record_id, key) in enumerate(zip(record_ids, keys, strict=True))]


_Segment = bytes | tuple[bytes, int]  # the same bytes in every row, or (column, bytes a row)


def _tensor_segments(columns: list[_Column]) -> list[_Segment]:
    """A row's array of Tensors made from columns: one block and a 0, or just 0."""
    if not columns:
        return [EMPTY]
    out: list[_Segment] = [long(len(columns))]
    for head, values, size in columns:
        out += (head, (values, size), _NUMBERS_END)
    out.append(EMPTY)
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


class LastLongs:
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
