"""One storage interface over ClickHouse, two transports, one SQL dialect.

Both transports are clickhouse-connect clients: `ServerStorage` speaks HTTP to a ClickHouse
server, `ChdbStorage` drives chDB (the ClickHouse engine in-process, on a local folder)
through clickhouse-connect's chdb interface. So parameter binding (`{name:Type}`, bound by
the engine, never pasted into the SQL), type decoding and inserts are the same code on both;
only opening differs.

chDB lets one process open a data folder at a time, and one folder per process: open the
storage once at start-up and pass it around. A second `ChdbStorage` on the same folder in
the same process shares the engine; another process gets `StorageLocked`.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import clickhouse_connect
import pyarrow as pa
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError

from control.config import Settings
from schemas.errors import InferstreamError

Params = Mapping[str, Any]


class StorageError(InferstreamError):
    """ClickHouse (server or chDB) refused a statement or could not be opened."""


class StorageLocked(StorageError):
    """The chDB data folder is held by another process (or this process holds another one)."""


class Storage:
    """ClickHouse through a clickhouse-connect client; every method raises StorageError."""

    def __init__(self, client: Client, where: str) -> None:
        self._client = client
        self.where = where  # for messages: which server or folder

    def command(self, sql: str, params: Params | None = None) -> None:
        """Run a statement that returns nothing (DDL, ALTER, OPTIMIZE...)."""
        try:
            self._client.command(sql, parameters=dict(params or {}))
        except ClickHouseError as exc:
            raise self._error(exc, sql) from exc

    # Settings every query runs with: chDB's refuse table functions (file, url, s3, remote,
    # executable, ...), writes and SETTINGS clauses (readonly=1), a second wall behind the
    # rule that no caller's SQL text reaches the engine. A server's come from its user profile.
    read_settings: Mapping[str, Any] = {}

    def query(self, sql: str, params: Params | None = None,
              timeout_s: float | None = None) -> list[dict[str, Any]]:
        """Rows of a SELECT as dicts, in column order; `timeout_s` bounds the engine's time."""
        names, rows = self.query_rows(sql, params, timeout_s)
        return [dict(zip(names, row, strict=True)) for row in rows]

    def query_rows(
        self, sql: str, params: Params | None = None, timeout_s: float | None = None
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Column names and row tuples of a SELECT (cheaper than dicts for big results)."""
        settings = dict(self.read_settings)
        if timeout_s is not None:
            settings["max_execution_time"] = max(1, round(timeout_s))
        try:
            result = self._client.query(sql, parameters=dict(params or {}),
                                        settings=settings or None)
        except ClickHouseError as exc:
            raise self._error(exc, sql) from exc
        return list(result.column_names), [tuple(row) for row in result.result_rows]

    def insert(
        self, table: str, rows: Sequence[Mapping[str, Any]], dedup_token: str | None = None
    ) -> int:
        """Insert dict rows (all with the same keys) as one block; returns the row count.

        With a `dedup_token`, inserting the same token again is a no-op (the table needs
        `non_replicated_deduplication_window`, which every table of ours sets).
        """
        if not rows:
            return 0
        columns = list(rows[0])
        data = [[row[c] for c in columns] for row in rows]
        settings = {"insert_deduplication_token": dedup_token} if dedup_token else None
        try:
            self._client.insert(table, data, column_names=columns, settings=settings)
        except ClickHouseError as exc:
            raise self._error(exc, f"INSERT INTO {table}") from exc
        except (KeyError, TypeError, ValueError) as exc:  # a value the column type cannot take
            raise StorageError(f"{self.where}: cannot insert into {table}: {exc}") from exc
        return len(rows)

    def insert_select(self, sql: str, data: bytes, fmt: str, structure: str,
                      dedup_token: str | None = None, settings: Params | None = None) -> None:
        """Run `INSERT ... SELECT ... FROM {source}`: the engine reads `data` (in format `fmt`,
        with columns as in `structure`) as the source, e.g. Avro it parses without Python."""
        settings = _insert_settings(dedup_token, settings)
        source = f"input({_literal(structure)})"
        try:  # a server takes the data as the request's body
            self._client.command(f"{sql.format(source=source)} FORMAT {fmt}", data=data,
                                 settings=settings)
        except ClickHouseError as exc:
            raise self._error(exc, sql) from exc

    def insert_arrow(self, table: str, data: pa.Table, dedup_token: str | None = None,
                     settings: Params | None = None) -> int:
        """Insert an Arrow table whose columns are the table's (or some of them, the others
        taking their defaults) as one block; returns the row count. Tokens as for insert."""
        if not data.num_rows:
            return 0
        try:
            self._client.insert_arrow(table, data,
                                      settings=_insert_settings(dedup_token, settings))
        except ClickHouseError as exc:
            raise self._error(exc, f"INSERT INTO {table}") from exc
        return data.num_rows

    def close(self) -> None:
        """Release the connection (for chDB: the folder, once its last user closes)."""
        self._client.close()

    def __enter__(self) -> Storage:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _error(self, exc: Exception, sql: str) -> StorageError:
        first = " ".join(sql.split())[:200]
        return StorageError(f"{self.where}: {exc} (statement: {first})")


class ServerStorage(Storage):
    """A ClickHouse server, e.g. `http://default:secret@localhost:8123/inferstream`."""

    def __init__(self, url: str) -> None:
        try:
            client = clickhouse_connect.get_client(dsn=url, tz_mode="aware")
        except ClickHouseError as exc:
            raise StorageError(
                f"cannot reach ClickHouse at {_without_password(url)}: {exc}; check "
                "INFERSTREAM_CLICKHOUSE_URL, or unset it to use chDB under the data dir"
            ) from exc
        super().__init__(client, _without_password(url))


# chDB opens one folder per process; count this process's users of each folder so that
# opening a second folder fails with a message naming the first.
_chdb_users: dict[str, int] = {}
_chdb_lock = threading.Lock()


class ChdbStorage(Storage):
    """chDB in this process, on a local folder (created if missing)."""

    read_settings = {"readonly": 1}

    def __init__(self, path: Path | str) -> None:
        folder = os.path.realpath(path)
        with _chdb_lock:
            other = next((p for p, n in _chdb_users.items() if n and p != folder), None)
            if other is not None:
                raise StorageLocked(
                    f"this process already has chDB open at {other}; chDB opens one folder "
                    f"per process, so close that storage before opening {folder}"
                )
            Path(folder).mkdir(parents=True, exist_ok=True)
            try:
                client = clickhouse_connect.get_client(
                    interface="chdb", path=folder, tz_mode="aware"
                )
            except ClickHouseError as exc:
                raise _open_error(folder, exc) from exc
            _chdb_users[folder] = _chdb_users.get(folder, 0) + 1
        self.path = Path(folder)
        self._open = True
        super().__init__(client, f"chDB at {folder}")

    def insert_select(self, sql: str, data: bytes, fmt: str, structure: str,
                      dedup_token: str | None = None, settings: Params | None = None) -> None:
        # chDB has no request body: the engine reads the data from a file of ours.
        settings = _insert_settings(dedup_token, settings)
        with tempfile.NamedTemporaryFile(suffix=f".{fmt.lower()}") as f:
            f.write(data)
            f.flush()
            source = f"file({_literal(f.name)}, {_literal(fmt)}, {_literal(structure)})"
            try:
                self._client.command(sql.format(source=source), settings=settings)
            except ClickHouseError as exc:
                raise self._error(exc, sql) from exc

    def insert_arrow(self, table: str, data: pa.Table, dedup_token: str | None = None,
                     settings: Params | None = None) -> int:
        # The engine reads an Arrow stream that pyarrow writes to a file of ours, off the GIL
        # (clickhouse-connect would first copy the whole stream into a Python bytes object).
        if not data.num_rows:
            return 0
        columns = ", ".join(f"`{name}`" for name in data.column_names)
        with tempfile.NamedTemporaryFile(suffix=".arrow") as f:
            with pa.OSFile(f.name, "wb") as out, pa.ipc.new_file(out, data.schema) as writer:
                writer.write_table(data)
            sql = (f"INSERT INTO {table} ({columns}) FROM INFILE {_literal(f.name)} "
                   "FORMAT Arrow")
            try:
                self._client.command(sql, settings=_insert_settings(dedup_token, settings))
            except ClickHouseError as exc:
                raise self._error(exc, f"INSERT INTO {table}") from exc
        return data.num_rows

    def close(self) -> None:
        with _chdb_lock:
            if not self._open:
                return
            self._open = False
            self._client.close()
            _chdb_users[str(self.path)] -= 1


def _open_error(folder: str, exc: Exception) -> StorageError:
    """Say who holds the folder when another process does; the engine only says 'failed'."""
    holder = _lock_holder(Path(folder) / "status")
    if holder is None:
        return StorageError(f"cannot open chDB at {folder}: {exc}")
    return StorageLocked(
        f"chDB data folder {folder} is in use by another process ({holder}). chDB lets one "
        "process open a folder at a time: stop that process, run this command through the "
        "process that owns the folder (the worker), or set INFERSTREAM_CLICKHOUSE_URL to a "
        "ClickHouse server that every process can share"
    )


def _lock_holder(status: Path) -> str | None:
    """'PID n, started at t' when another process holds the engine's status-file lock."""
    try:
        fd = os.open(status, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:  # locked: a live engine holds it (a crashed one leaves it unlocked)
        info = dict(line.split(": ", 1) for line in status.read_text().splitlines() if ": " in line)
        return f"PID {info.get('PID', '?')}, started at {info.get('Started at', '?')}"
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _insert_settings(dedup_token: str | None, settings: Params | None) -> dict[str, Any]:
    token = {"insert_deduplication_token": dedup_token} if dedup_token else {}
    return {**(settings or {}), **token}


def _literal(text: str) -> str:
    """A ClickHouse string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def open_storage(settings: Settings) -> Storage:
    """The server when `clickhouse_url` is set, else chDB under `data_dir/chdb`."""
    if settings.clickhouse_url:
        return ServerStorage(settings.clickhouse_url)
    return ChdbStorage(settings.data_dir / "chdb")
