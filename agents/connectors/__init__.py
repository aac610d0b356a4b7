"""Connectors: reading and writing the data of a named source or destination of batch workloads.

A connection (control/registry/connections.py: its type, details and their checks) is read and
written here, one module per type (`files`, `clickhouse`, `kafka`), each imported on first
use with the heavy library it needs (pyarrow, confluent-kafka, the storage).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from decimal import Decimal
from importlib import import_module
from types import MappingProxyType, ModuleType, TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Self

import orjson

from control.config import Settings
from control.registry.connections import ConnectionSpec, ConnectorError, validate

if TYPE_CHECKING:
    from sinks.storage import Storage


Record = dict[str, Any]
NO_ARGUMENTS: Mapping[str, str] = MappingProxyType({})
_JSON = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
# Each type's reading and writing, imported on first use (see the module docstring).
_MODULES: Mapping[str, str] = MappingProxyType({
    "file": f"{__name__}.files", "clickhouse": f"{__name__}.clickhouse",
    "kafka": f"{__name__}.kafka",
})


class Writer(Protocol):
    """Where a run's results go: `write` batches, then `close` (or use it as a context)."""

    def write(self, records: list[Record]) -> None: ...
    def close(self) -> None: ...
    def __enter__(self) -> Writer: ...
    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None: ...


# ---- reading and writing: dispatched to the type's module ------------------------------------

def _module(connection: ConnectionSpec) -> ModuleType:
    """The module of the connection's type: `records`, `count_hint` and `open_writer`, each
    taking (connection, settings, storage, arguments)."""
    return import_module(_MODULES[connection.type])


def read_batches(
    connection: ConnectionSpec, settings: Settings, *, storage: Storage | None = None,
    arguments: Mapping[str, str] = NO_ARGUMENTS, batch_size: int = 1000,
) -> Iterator[list[Record]]:
    """The source's records as dicts, in batches of `batch_size` (the last may be smaller)."""
    validate(connection)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    chunks: Iterator[list[Record]] = _module(connection).records(connection, settings, storage,
                                                                 arguments)
    return _rebatch(chunks, batch_size)


def _rebatch(chunks: Iterator[list[Record]], size: int) -> Iterator[list[Record]]:
    pending: list[Record] = []
    for chunk in chunks:
        pending.extend(chunk)
        while len(pending) >= size:
            yield pending[:size]
            del pending[:size]
    if pending:
        yield pending


def count_hint(
    connection: ConnectionSpec, settings: Settings, *, storage: Storage | None = None,
    arguments: Mapping[str, str] = NO_ARGUMENTS,
) -> int | None:
    """How many records the source holds, when that is cheap to know (for progress bars)."""
    validate(connection)
    hint: int | None = _module(connection).count_hint(connection, settings, storage, arguments)
    return hint


def open_writer(
    connection: ConnectionSpec, settings: Settings, *, storage: Storage | None = None,
    arguments: Mapping[str, str] = NO_ARGUMENTS,
) -> Writer:
    """A writer to the destination. Files appear (atomically) at close; leaving a `with`
    block on an exception discards a file, while rows and messages already sent stay."""
    validate(connection)
    writer: Writer = _module(connection).open_writer(connection, settings, storage, arguments)
    return writer


# ---- shared by the types' modules ------------------------------------------------------------

class _BaseWriter:
    def __init__(self, connection: ConnectionSpec) -> None:
        self.connection = connection

    def close(self) -> None:
        raise NotImplementedError

    def _discard(self) -> None:
        self.close()

    def error(self, message: str) -> ConnectorError:
        return ConnectorError(f"connection {self.connection.name!r}: {message}")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        else:
            self._discard()


def _columns_of(records: Iterable[Record]) -> list[str]:
    return list(dict.fromkeys(k for r in records for k in r))


def _loads(data: str | bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)  # NaN and Infinity, which orjson refuses


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return str(value)  # IP addresses, enums and the like: their text is what a reader expects
