"""Inference logs to files: CSV, JSON lines or Parquet, split into numbered parts when large.

`LogExport(path, split_rows, split=True)` writes FILE-0001.ext, FILE-0002.ext, ... of at
most `split_rows` rows each; with split=False everything goes to FILE.ext. Nested values
(the inputs and outputs maps) stay typed in Parquet and become JSON text in CSV.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Protocol

import pyarrow as pa
import pyarrow.parquet as pq

from schemas.errors import InferstreamError
from sinks.log_queries import LOG_COLUMNS

FORMATS = (".csv", ".jsonl", ".parquet")

_FLOATS, _INTS, _STRINGS = pa.list_(pa.float64()), pa.list_(pa.int64()), pa.list_(pa.string())
_PARQUET_TYPES = dict([
    ("time", pa.timestamp("us", tz="UTC")),
    ("record_id", pa.string()),
    ("workspace", pa.string()),
    ("pipeline", pa.string()),
    ("pipeline_version", pa.int64()),
    ("step", pa.int32()),
    ("model", pa.string()),
    ("model_version", pa.int64()),
    ("shadow", pa.bool_()),
    ("inputs", pa.map_(pa.string(), _FLOATS)),
    ("input_shapes", pa.map_(pa.string(), _INTS)),
    ("input_dtypes", pa.map_(pa.string(), pa.string())),
    ("input_strings", pa.map_(pa.string(), _STRINGS)),
    ("outputs", pa.map_(pa.string(), _FLOATS)),
    ("output_shapes", pa.map_(pa.string(), _INTS)),
    ("output_dtypes", pa.map_(pa.string(), pa.string())),
    ("output_strings", pa.map_(pa.string(), _STRINGS)),
    ("elapsed_us", pa.int64()),
    ("worker", pa.string()),
    ("error", pa.string()),
    ("anomalies", _STRINGS),
    ("replay", pa.string()),
    ("kafka_topic", pa.string()),
    ("kafka_partition", pa.int32()),
    ("kafka_offset", pa.int64()),
])
PARQUET_SCHEMA = pa.schema([(c, _PARQUET_TYPES[c]) for c in LOG_COLUMNS])


class _File(Protocol):
    def write(self, rows: Sequence[Mapping[str, Any]]) -> None: ...
    def close(self) -> None: ...


def json_value(value: Any) -> Any:
    """A value of a log row as JSON (times in ISO-8601)."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_value(v) for v in value]
    return value


class _Jsonl:
    def __init__(self, path: Path) -> None:
        self._out: IO[str] = path.open("w", encoding="utf-8")

    def write(self, rows: Sequence[Mapping[str, Any]]) -> None:
        for row in rows:
            self._out.write(json.dumps(json_value(row), allow_nan=True) + "\n")

    def close(self) -> None:
        self._out.close()


class _Csv:
    def __init__(self, path: Path) -> None:
        self._out: IO[str] = path.open("w", encoding="utf-8", newline="")
        self._writer = csv.writer(self._out)
        self._writer.writerow(LOG_COLUMNS)

    def write(self, rows: Sequence[Mapping[str, Any]]) -> None:
        for row in rows:
            self._writer.writerow([_cell(row.get(c)) for c in LOG_COLUMNS])

    def close(self) -> None:
        self._out.close()


def _cell(value: Any) -> Any:
    if isinstance(value, Mapping | list | tuple):
        return json.dumps(json_value(value))
    if isinstance(value, datetime):
        return value.isoformat()
    return "" if value is None else value


class _Parquet:
    def __init__(self, path: Path) -> None:
        self._writer = pq.ParquetWriter(path, PARQUET_SCHEMA, compression="zstd")

    def write(self, rows: Sequence[Mapping[str, Any]]) -> None:
        columns = {c: [_parquet_value(row.get(c)) for row in rows] for c in LOG_COLUMNS}
        self._writer.write_table(pa.Table.from_pydict(columns, schema=PARQUET_SCHEMA))

    def close(self) -> None:
        self._writer.close()


def _parquet_value(value: Any) -> Any:
    return list(value.items()) if isinstance(value, Mapping) else value


_WRITERS = {".csv": _Csv, ".jsonl": _Jsonl, ".parquet": _Parquet}


class LogExport:
    """Writes pages of log rows to one file, or to numbered parts of `split_rows` rows."""

    def __init__(self, path: Path, split_rows: int, split: bool) -> None:
        if path.suffix not in _WRITERS:
            raise InferstreamError(
                f"cannot export to {path.name!r}: name a file ending in {', '.join(FORMATS)}"
            )
        if split_rows <= 0:
            raise InferstreamError(f"--split-rows {split_rows} must be positive")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.split_rows, self.split = path, split_rows, split
        self.files: list[Path] = []
        self.rows = 0
        self._file: _File | None = None
        self._in_file = 0

    def write(self, rows: Sequence[Mapping[str, Any]]) -> None:
        while rows:
            if self._file is None or (self.split and self._in_file >= self.split_rows):
                self._next_file()
            assert self._file is not None
            room = self.split_rows - self._in_file if self.split else len(rows)
            chunk, rows = rows[:room], rows[room:]
            self._file.write(chunk)
            self._in_file += len(chunk)
            self.rows += len(chunk)

    def close(self) -> list[Path]:
        """Finish the last file (an empty export still writes one, with no rows)."""
        if self._file is None:
            self._next_file()
        assert self._file is not None
        self._file.close()
        self._file = None
        return self.files

    def _next_file(self) -> None:
        if self._file is not None:
            self._file.close()
        if self.split:
            name = f"{self.path.stem}-{len(self.files) + 1:04d}{self.path.suffix}"
            target = self.path.with_name(name)
        else:
            target = self.path
        self._file = _WRITERS[self.path.suffix](target)
        self.files.append(target)
        self._in_file = 0


def outputs_text(row: Mapping[str, Any], width: int = 80) -> str:
    """A log row's outputs on one line, cut to `width` characters."""
    values = {**(row.get("outputs") or {}), **(row.get("output_strings") or {})}
    text = " ".join(f"{k}={json.dumps(v, separators=(',', ':'))}"
                    for k, v in sorted(values.items()))
    return text if len(text) <= width else text[: width - 1] + "…"
