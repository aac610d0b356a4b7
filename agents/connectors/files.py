"""File connections: a path or glob of CSV, JSON Lines or Parquet files, read and written."""

from __future__ import annotations

import csv
import glob
import os
import re
from collections.abc import Iterator, Mapping
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from agents.connectors import _JSON, Record, _BaseWriter, _columns_of, _json_default, _loads
from control.config import Settings
from control.registry.connections import PLACEHOLDER, ConnectionSpec, ConnectorError, file_format

if TYPE_CHECKING:
    from sinks.storage import Storage


def records(connection: ConnectionSpec, settings: Settings, storage: Storage | None,
            arguments: Mapping[str, str]) -> Iterator[list[Record]]:
    """The files' records, file after file in path order."""
    import pyarrow as pa
    fmt = file_format(connection.details)
    for path in _files(connection, arguments):
        try:
            yield from {"csv": _read_csv, "jsonl": _read_jsonl, "parquet": _read_parquet}[fmt](path)
        except (OSError, ValueError, pa.ArrowException) as exc:
            raise ConnectorError(f"connection {connection.name!r}: cannot read {path} as "
                                  f"{fmt}: {exc}") from exc


def count_hint(connection: ConnectionSpec, settings: Settings, storage: Storage | None,
               arguments: Mapping[str, str]) -> int | None:
    """The row count of Parquet files (from their metadata); None for other formats."""
    if file_format(connection.details) != "parquet":
        return None
    import pyarrow as pa
    import pyarrow.parquet as pq
    try:
        return sum(pq.ParquetFile(p).metadata.num_rows for p in _files(connection, arguments))
    except (OSError, pa.ArrowException) as exc:
        raise ConnectorError(f"connection {connection.name!r}: {exc}") from exc


def open_writer(connection: ConnectionSpec, settings: Settings, storage: Storage | None,
                arguments: Mapping[str, str]) -> _FileWriter:
    """A writer of one file at the path, its placeholders filled from the arguments."""
    return _FileWriter(connection, Path(os.path.expanduser(_fill(connection, arguments))))


def _files(connection: ConnectionSpec, arguments: Mapping[str, str]) -> list[str]:
    pattern = os.path.expanduser(_fill(connection, arguments))
    if glob.has_magic(pattern):
        found = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
    else:
        found = [pattern] if os.path.isfile(pattern) else []
    if not found:
        raise ConnectorError(f"connection {connection.name!r}: no file matches {pattern!r}")
    return found


def _read_csv(path: str) -> Iterator[list[Record]]:
    import pyarrow.csv as pacsv
    # Types are inferred from the first block, so make it large.
    reader = pacsv.open_csv(path, read_options=pacsv.ReadOptions(block_size=8 << 20),
                            convert_options=pacsv.ConvertOptions(strings_can_be_null=True))
    for batch in reader:
        yield [{k: _from_cell(v) for k, v in row.items()} for row in batch.to_pylist()]


def _from_cell(value: Any) -> Any:
    """CSV cells holding a JSON array or object (how lists are written) become values again."""
    if isinstance(value, str) and value[:1] in "[{" and value[-1:] in "]}":
        try:
            return _loads(value)
        except ValueError:
            return value
    return value


def _read_jsonl(path: str) -> Iterator[list[Record]]:
    chunk: list[Record] = []
    with open(path, "rb") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = _loads(line)
            except ValueError as exc:
                raise ValueError(f"line {number} is not JSON: {exc}") from exc
            if not isinstance(record, dict):
                raise ValueError(f"line {number} is not a JSON object: {line[:80]!r}")
            chunk.append(record)
            if len(chunk) >= 10_000:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


def _read_parquet(path: str) -> Iterator[list[Record]]:
    import pyarrow.parquet as pq
    for batch in pq.ParquetFile(path).iter_batches(batch_size=65_536):
        yield batch.to_pylist()


class _FileWriter(_BaseWriter):
    def __init__(self, connection: ConnectionSpec, path: Path) -> None:
        super().__init__(connection)
        self.path, self.format = path, file_format(connection.details)
        self._part = path.with_name(f".{path.name}.{os.getpid()}.part")
        self._columns: list[str] | None = None
        self._file: Any = None
        self._csv: Any = None
        self._parquet: Any = None

    def write(self, records: list[Record]) -> None:
        import pyarrow as pa
        if not records:
            return
        columns = _columns_of(records)
        if self._columns is None:
            self._columns = columns
            self.path.parent.mkdir(parents=True, exist_ok=True)
        elif extra := [c for c in columns if c not in self._columns]:
            raise self.error(f"fields {extra} are not among the columns of the first batch "
                             f"{self._columns}")
        try:
            self._write(records, self._columns)
        except (OSError, ValueError, TypeError, pa.ArrowException) as exc:
            raise self.error(f"cannot write {self.format} to {self.path}: {exc}") from exc

    def _write(self, records: list[Record], columns: list[str]) -> None:
        if self.format == "jsonl":
            self._file = self._file or open(self._part, "wb")  # noqa: SIM115 -- closed in close()
            self._file.writelines(orjson.dumps(r, default=_json_default,
                                               option=_JSON | orjson.OPT_APPEND_NEWLINE)
                                  for r in records)
        elif self.format == "csv":
            if self._file is None:
                self._file = open(self._part, "w", newline="")  # noqa: SIM115
                self._csv = csv.writer(self._file)
                self._csv.writerow(columns)
            self._csv.writerows([_to_cell(r.get(c)) for c in columns] for r in records)
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq
            schema = self._parquet.schema if self._parquet else None
            table = pa.Table.from_pydict({c: [r.get(c) for r in records] for c in columns},
                                         schema=schema)
            self._parquet = self._parquet or pq.ParquetWriter(self._part, table.schema)
            self._parquet.write_table(table)

    def close(self) -> None:
        self._finish()
        if self._part.exists():
            os.replace(self._part, self.path)

    def _discard(self) -> None:
        self._finish()
        self._part.unlink(missing_ok=True)

    def _finish(self) -> None:
        for handle in (self._file, self._parquet):
            if handle is not None:
                handle.close()
        self._file = self._parquet = None


def _fill(connection: ConnectionSpec, arguments: Mapping[str, str]) -> str:
    """The path with {placeholders} filled from arguments ({date} defaults to today, UTC)."""
    values = {"date": datetime.now(UTC).date().isoformat(), **arguments}

    def one(m: re.Match[str]) -> str:
        value = values.get(m.group(1))
        if value is None:
            raise ConnectorError(f"connection {connection.name!r}: path needs argument "
                                  f"{m.group(1)!r}; given: {sorted(arguments) or 'none'}")
        if "/" in value or "\\" in value or value in ("", ".", ".."):
            raise ConnectorError(f"connection {connection.name!r}: argument {m.group(1)}="
                                  f"{value!r} cannot be part of a path")
        return value
    return PLACEHOLDER.sub(one, connection.details["path"])


def _to_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, list | tuple | dict):
        return orjson.dumps(value, default=_json_default, option=_JSON).decode()
    if isinstance(value, bool):
        return "true" if value else "false"
    return value.isoformat() if isinstance(value, date) else value
