"""Connections: reading and writing the data of a named source or destination of batch workloads.

A connection is a type (`file`, `clickhouse`, `kafka`) and flat string details. `validate`
is pure, so the registry's fold can call it; reading and writing are the I/O edges a task
run uses, one module per type (`files`, `clickhouse`, `kafka`). Those modules, and the heavy
libraries they use (pyarrow, confluent-kafka, the storage), are imported on first use, so
that importing this package for `validate` and `masked` stays cheap.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from importlib import import_module
from pathlib import Path
from types import MappingProxyType, ModuleType, TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Self

import orjson

from control.config import Settings
from schemas.errors import InferstreamError

if TYPE_CHECKING:
    from sinks.storage import Storage


Record = dict[str, Any]
NO_ARGUMENTS: Mapping[str, str] = MappingProxyType({})
FORMATS = ("csv", "jsonl", "parquet")
DETAILS: Mapping[str, frozenset[str]] = MappingProxyType({
    "file": frozenset({"path", "format"}),
    "clickhouse": frozenset({"table", "query", "url"}),
    "kafka": frozenset({"topic", "key_field", "bootstrap_servers", "security_protocol",
                        "sasl_mechanism", "sasl_username", "sasl_password"}),
})
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
_SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet",
             ".pq": "parquet"}
_PLACEHOLDER = re.compile(r"\{([A-Za-z_]\w*)\}")
_TABLE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)?")
_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")
_SELECT = re.compile(r"\s*(?:(?:--[^\n]*\n|/\*.*?\*/)\s*)*\(*\s*(SELECT|WITH)\b", re.I | re.S)
_SECRET_KEY = re.compile(r"password|passwd|passphrase|secret|token|key|credential", re.I)
_URL = re.compile(r"[A-Za-z][\w+.-]*://[^\s'\"]*")
_SECRET_PARAM = re.compile(r"((?:password|passwd|secret|token|key)=)([^&\s'\"]+)", re.I)
_JSON = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
# Each type's reading and writing, imported on first use (see the module docstring).
_MODULES: Mapping[str, str] = MappingProxyType({
    "file": f"{__name__}.files", "clickhouse": f"{__name__}.clickhouse",
    "kafka": f"{__name__}.kafka",
})


# Shadows the builtin inside this package only; callers import it by this name.
class ConnectionError(InferstreamError):
    """A connection's details are invalid, or its data cannot be read or written."""


@dataclass(frozen=True)
class Connection:
    """A named source or destination: a type and its details (flat strings)."""

    name: str
    type: str
    details: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __repr__(self) -> str:  # details may hold secrets: never print them in full
        return f"Connection(name={self.name!r}, type={self.type!r}, details={masked(self.details)})"


class Writer(Protocol):
    """Where a run's results go: `write` batches, then `close` (or use it as a context)."""

    def write(self, records: list[Record]) -> None: ...
    def close(self) -> None: ...
    def __enter__(self) -> Writer: ...
    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None: ...


# ---- validation and masking: pure ----------------------------------------------------------

def validate(connection: Connection) -> None:
    """Raise ConnectionError naming the first bad detail and what is allowed; no I/O."""
    where, kind, d = f"connection {connection.name!r}", connection.type, connection.details
    if kind not in DETAILS:
        raise ConnectionError(f"{where}: unknown type {kind!r}; allowed: {', '.join(DETAILS)}")
    for key, value in d.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ConnectionError(f"{where}: detail {key!r} must be a string")
        if key not in DETAILS[kind]:
            raise ConnectionError(f"{where}: unknown detail {key!r} for a {kind} connection; "
                                  f"allowed: {', '.join(sorted(DETAILS[kind]))}")
    {"file": _validate_file, "clickhouse": _validate_clickhouse,
     "kafka": _validate_kafka}[kind](where, d)


def _validate_file(where: str, d: Mapping[str, str]) -> None:
    path = _required(where, d, "path", "a file path or glob, e.g. data/*.parquet")
    if re.search(r"[{}]", _PLACEHOLDER.sub("", path)):
        raise ConnectionError(f"{where}: path {path!r} has a brace that is not a placeholder "
                              "like {run_id} or {date}")
    _format(d, where)


def _validate_clickhouse(where: str, d: Mapping[str, str]) -> None:
    table, query = d.get("table", "").strip(), d.get("query", "").strip()
    if bool(table) == bool(query):
        raise ConnectionError(f"{where}: give exactly one of 'table' (a source or destination) "
                              "or 'query' (a source: a SELECT with {name:Type} parameters)")
    if table and not _TABLE.fullmatch(d["table"]):
        raise ConnectionError(f"{where}: table {table!r} is not a table name; use name or "
                              "database.name (letters, digits, underscores)")
    if query and not _SELECT.match(query):
        raise ConnectionError(f"{where}: query must be a SELECT (or WITH ... SELECT), "
                              f"got {query[:40]!r}")
    check_clickhouse(where, d)
    url = d.get("url")
    if url is not None and not re.fullmatch(r"https?://[^/\s]+(/\S*)?", url):
        raise ConnectionError(f"{where}: url {masked({'url': url})['url']!r} is not a ClickHouse "
                              "server URL like http://user:password@host:8123/database")


def check_clickhouse(where: str, d: Mapping[str, str]) -> None:
    """The table or query of a ClickHouse connection is one it may use (queries.py)."""
    from agents.connectors.queries import QueryRefused, check_query, check_table

    on_platform = not d.get("url")
    try:
        if d.get("table"):
            check_table(d["table"].strip(), on_platform)
        else:
            check_query(d["query"], on_platform)
    except QueryRefused as exc:
        raise ConnectionError(f"{where}: {exc}") from None


def _validate_kafka(where: str, d: Mapping[str, str]) -> None:
    topic = _required(where, d, "topic", "a Kafka topic name")
    if not _TOPIC.fullmatch(topic):
        raise ConnectionError(f"{where}: topic {topic!r} is not a Kafka topic name "
                              "(letters, digits, '.', '_', '-'; at most 249)")
    protocol, mechanism = d.get("security_protocol"), d.get("sasl_mechanism")
    if protocol is not None and protocol not in SECURITY_PROTOCOLS:
        raise ConnectionError(f"{where}: security_protocol {protocol!r} is not one of "
                              f"{', '.join(SECURITY_PROTOCOLS)}")
    if mechanism is not None:
        if mechanism not in SASL_MECHANISMS:
            raise ConnectionError(f"{where}: sasl_mechanism {mechanism!r} is not one of "
                                  f"{', '.join(SASL_MECHANISMS)}")
        if not (protocol or "").startswith("SASL_"):
            raise ConnectionError(f"{where}: sasl_mechanism needs security_protocol "
                                  "SASL_PLAINTEXT or SASL_SSL")
        for key in ("sasl_username", "sasl_password"):
            _required(where, d, key, f"the {mechanism} {key.removeprefix('sasl_')}")
    elif "sasl_username" in d or "sasl_password" in d:
        raise ConnectionError(f"{where}: sasl_username/sasl_password need sasl_mechanism "
                              f"({', '.join(SASL_MECHANISMS)})")
    if "key_field" in d and not d["key_field"].strip():
        raise ConnectionError(f"{where}: key_field is empty; name a record field or leave it out")


def _required(where: str, d: Mapping[str, str], key: str, what: str) -> str:
    if not d.get(key, "").strip():
        raise ConnectionError(f"{where}: detail {key!r} is missing: give {what}")
    return d[key]


def _format(d: Mapping[str, str], where: str = "connection") -> str:
    fmt = d.get("format") or _SUFFIXES.get(Path(d["path"]).suffix.lower())
    if fmt not in FORMATS:
        got = f"format {fmt!r}" if fmt else f"path {d['path']!r} (no known suffix)"
        raise ConnectionError(f"{where}: {got}; format must be one of {', '.join(FORMATS)} "
                              f"(or a path ending {', '.join(_SUFFIXES)})")
    return fmt


def masked(details: Mapping[str, str]) -> dict[str, str]:
    """Details safe to print: secret values and passwords inside URLs become ****xy."""
    return {k: _mask(v) if k != "key_field" and _SECRET_KEY.search(k) else _mask_inline(v)
            for k, v in details.items()}


def _mask(secret: str) -> str:
    # Two trailing characters help tell secrets apart; short ones would give too much away.
    return "****" + (secret[-2:] if len(secret) >= 8 else "")


def _mask_inline(value: str) -> str:
    def url(m: re.Match[str]) -> str:
        token = m.group(0)
        start, at = token.index("://") + 3, token.rfind("@")
        user, colon, password = token[start:max(at, start)].partition(":")
        return token if not colon else f"{token[:start]}{user}:{_mask(password)}{token[at:]}"
    value = _URL.sub(url, value)
    return _SECRET_PARAM.sub(lambda m: m.group(1) + _mask(m.group(2)), value)

# ---- reading and writing: dispatched to the type's module ------------------------------------

def _module(connection: Connection) -> ModuleType:
    """The module of the connection's type: `records`, `count_hint` and `open_writer`, each
    taking (connection, settings, storage, arguments)."""
    return import_module(_MODULES[connection.type])


def read_batches(
    connection: Connection, settings: Settings, *, storage: Storage | None = None,
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
    connection: Connection, settings: Settings, *, storage: Storage | None = None,
    arguments: Mapping[str, str] = NO_ARGUMENTS,
) -> int | None:
    """How many records the source holds, when that is cheap to know (for progress bars)."""
    validate(connection)
    hint: int | None = _module(connection).count_hint(connection, settings, storage, arguments)
    return hint


def open_writer(
    connection: Connection, settings: Settings, *, storage: Storage | None = None,
    arguments: Mapping[str, str] = NO_ARGUMENTS,
) -> Writer:
    """A writer to the destination. Files appear (atomically) at close; leaving a `with`
    block on an exception discards a file, while rows and messages already sent stay."""
    validate(connection)
    writer: Writer = _module(connection).open_writer(connection, settings, storage, arguments)
    return writer


# ---- shared by the types' modules ------------------------------------------------------------

class _BaseWriter:
    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    def close(self) -> None:
        raise NotImplementedError

    def _discard(self) -> None:
        self.close()

    def error(self, message: str) -> ConnectionError:
        return ConnectionError(f"connection {self.connection.name!r}: {message}")

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
