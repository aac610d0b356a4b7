"""ClickHouse connections: a table (source or destination) or a SELECT query (source), on the
connection's own server or the platform's storage."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from datetime import date, datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson

from agents.connectors import _JSON, Record, _BaseWriter, _columns_of, _json_default
from control.config import Settings
from control.registry.connections import ConnectionSpec, ConnectorError, check_clickhouse

if TYPE_CHECKING:
    from sinks.storage import Storage

_PARAM = re.compile(r"\{\s*([A-Za-z_]\w*)\s*:\s*([^{}]+?)\s*\}")


def records(connection: ConnectionSpec, settings: Settings, storage: Storage | None,
            arguments: Mapping[str, str]) -> Iterator[list[Record]]:
    """The table's rows, or the query's with the task's arguments bound as its parameters."""
    d = connection.details
    check_clickhouse(f"connection {connection.name!r}", d)  # again: rules may have grown
    if "table" in d:
        sql, params = f"SELECT * FROM {_quote_table(d['table'])}", {}
    else:
        sql, params = d["query"], _query_params(connection, arguments)
    with _Clickhouse(connection, settings, storage) as ch:
        yield ch.query(sql, params)  # all rows at once: Storage has no streaming query yet


def count_hint(connection: ConnectionSpec, settings: Settings, storage: Storage | None,
               arguments: Mapping[str, str]) -> int | None:
    """The table's row count; None for a query."""
    d = connection.details
    if "table" not in d:
        return None  # counting a query costs as much as running it
    with _Clickhouse(connection, settings, storage) as ch:
        return int(ch.query(f"SELECT count() AS n FROM {_quote_table(d['table'])}")[0]["n"])


def open_writer(connection: ConnectionSpec, settings: Settings, storage: Storage | None,
                arguments: Mapping[str, str]) -> _TableWriter:
    """A writer of rows into the table, created from the first batch if it does not exist."""
    if "table" not in connection.details:
        raise ConnectorError(f"connection {connection.name!r} is a query; a destination "
                              "needs 'table'")
    check_clickhouse(f"connection {connection.name!r}", connection.details)
    return _TableWriter(connection, settings, storage)


def _query_params(connection: ConnectionSpec, arguments: Mapping[str, str]) -> dict[str, str]:
    """The task's arguments the query names, bound by the engine (never pasted into the SQL)."""
    params = {}
    for name, ch_type in _PARAM.findall(connection.details["query"]):
        if name not in arguments:
            raise ConnectorError(f"connection {connection.name!r}: the query needs argument "
                                  f"{name!r} ({ch_type}); given: {sorted(arguments) or 'none'}")
        params[name] = _param_value(arguments[name], ch_type)
    return params


def _param_value(value: str, ch_type: str) -> str:
    """ISO times with an offset (2024-05-01T12:00:00Z), which ClickHouse will not parse, moved
    into the zone of a DateTime parameter."""
    zone = re.fullmatch(r"(?:Nullable\()?DateTime(?:64)?\((?:\d+\s*,\s*)?'([^']+)'\)\)?", ch_type)
    try:
        moment = datetime.fromisoformat(value)
        if zone is None or moment.tzinfo is None:
            return value
        return moment.astimezone(ZoneInfo(zone.group(1))).strftime("%Y-%m-%d %H:%M:%S.%f")
    except (ValueError, ZoneInfoNotFoundError):
        return value


class _TableWriter(_BaseWriter):
    def __init__(self, connection: ConnectionSpec, settings: Settings,
                 storage: Storage | None) -> None:
        super().__init__(connection)
        self.table = connection.details["table"]
        self._ch = _Clickhouse(connection, settings, storage)
        self._types: dict[str, str] = {}

    def write(self, records: list[Record]) -> None:
        if not records:
            return
        columns = _columns_of(records)
        if not self._types:
            self._types = self._existing() or self._create(records, columns)
        if extra := [c for c in columns if c not in self._types]:
            raise self.error(f"fields {extra} are not columns of table {self.table} "
                             f"({', '.join(self._types)})")
        coerce = {c: _coercer(self._types[c]) for c in columns}
        try:
            rows = [{c: coerce[c](r.get(c)) for c in columns} for r in records]
        except ValueError as exc:  # text that is no time for a DateTime column
            raise self.error(f"cannot insert into {self.table}: {exc}") from exc
        self._ch.insert(self.table, rows)

    def _existing(self) -> dict[str, str]:
        database, _, table = self.table.rpartition(".")
        rows = self._ch.query(
            "SELECT name, type FROM system.columns WHERE table = {t:String} AND database = "
            "if({d:String} = '', currentDatabase(), {d:String}) ORDER BY position",
            {"t": table, "d": database})
        return {row["name"]: row["type"] for row in rows}

    def _create(self, records: list[Record], columns: list[str]) -> dict[str, str]:
        fields = ", ".join(f"{_quote(c)} {_column_type([r.get(c) for r in records])}"
                           for c in columns)
        self._ch.command(f"CREATE TABLE IF NOT EXISTS {_quote_table(self.table)} ({fields}) "
                         "ENGINE = MergeTree ORDER BY tuple()")
        return self._existing()  # another writer may have won the race: use its types

    def close(self) -> None:
        self._ch.close()


class _Clickhouse:
    """The connection's server (its `url`), else the caller's storage, else the platform's."""

    def __init__(self, connection: ConnectionSpec, settings: Settings,
                 storage: Storage | None) -> None:
        from sinks.storage import ServerStorage, StorageError, open_storage
        self.name, self._errors = connection.name, StorageError
        url = connection.details.get("url")
        try:
            self.storage = ServerStorage(url) if url else storage or open_storage(settings)
        except StorageError as exc:
            raise ConnectorError(f"connection {self.name!r}: {exc}") from exc
        self._owned = bool(url) or storage is None

    def _call(self, method: str, *args: Any) -> Any:
        try:
            return getattr(self.storage, method)(*args)
        except self._errors as exc:
            raise ConnectorError(f"connection {self.name!r}: {exc}") from exc

    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> list[Record]:
        return self._call("query", sql, params)

    def command(self, sql: str) -> None:
        self._call("command", sql)

    def insert(self, table: str, rows: list[Record]) -> None:
        self._call("insert", table, rows)

    def close(self) -> None:
        if self._owned:
            self.storage.close()

    def __enter__(self) -> _Clickhouse:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _column_type(values: list[Any]) -> str:
    present = [v for v in values if v is not None]
    kind = _base_type(present)
    return kind if len(present) == len(values) or kind.startswith("Array") \
        else f"Nullable({kind})"


def _base_type(values: list[Any]) -> str:
    if values and all(isinstance(v, list | tuple) for v in values):
        inner = [x for v in values for x in v]
        return f"Array({_column_type(inner) if inner else 'Float64'})"
    kinds = {type(v) for v in values}
    if not values or len(kinds) > 2 or not kinds <= {bool, int, float, datetime, date}:
        return "String"  # text, nested objects (stored as JSON) and mixtures
    if kinds == {bool}:
        return "Bool"
    if kinds == {int}:
        return "Int64"
    if kinds <= {int, float}:
        return "Float64"
    return {frozenset({datetime}): "DateTime64(6, 'UTC')",
            frozenset({date}): "Date32"}.get(frozenset(kinds), "String")


def _coercer(ch_type: str) -> Callable[[Any], Any]:
    """Make a value fit an existing column: objects into String as JSON, ISO text into times."""
    base = re.sub(r"^(?:Nullable|LowCardinality)\((.*)\)$", r"\1", ch_type)
    if base == "String":
        return lambda v: v if v is None or isinstance(v, str) else orjson.dumps(
            v, default=_json_default, option=_JSON).decode()
    if base.startswith("DateTime"):
        return lambda v: datetime.fromisoformat(v) if isinstance(v, str) else v
    if base.startswith("Date"):
        return lambda v: date.fromisoformat(v) if isinstance(v, str) else v
    return lambda v: v


def _quote(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def _quote_table(table: str) -> str:
    return ".".join(_quote(part) for part in table.split("."))  # validated: no dots in parts
