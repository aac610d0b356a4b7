"""Connections as the registry keeps them: a type and flat string details, checked and masked.

A connection names a source or destination of batch workloads (`file`, `clickhouse`, `kafka`).
`validate` is pure, so the fold can call it; reading and writing are agents/connectors/.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from schemas.errors import InferstreamError

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
PLACEHOLDER = re.compile(r"\{([A-Za-z_]\w*)\}")
_TABLE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)?")
_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")
_SELECT = re.compile(r"\s*(?:(?:--[^\n]*\n|/\*.*?\*/)\s*)*\(*\s*(SELECT|WITH)\b", re.I | re.S)
_SECRET_KEY = re.compile(r"password|passwd|passphrase|secret|token|key|credential", re.I)
_URL = re.compile(r"[A-Za-z][\w+.-]*://[^\s'\"]*")
_SECRET_PARAM = re.compile(r"((?:password|passwd|secret|token|key)=)([^&\s'\"]+)", re.I)


class ConnectorError(InferstreamError):
    """A connection's details are invalid, or its data cannot be read or written."""


@dataclass(frozen=True)
class ConnectionSpec:
    """What reading or writing a connection needs: its name, type and details (flat strings)."""

    name: str
    type: str
    details: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __repr__(self) -> str:  # details may hold secrets: never print them in full
        return (f"ConnectionSpec(name={self.name!r}, type={self.type!r}, "
                f"details={masked(self.details)})")


def validate(connection: ConnectionSpec) -> None:
    """Raise ConnectorError naming the first bad detail and what is allowed; no I/O."""
    where, kind, d = f"connection {connection.name!r}", connection.type, connection.details
    if kind not in DETAILS:
        raise ConnectorError(f"{where}: unknown type {kind!r}; allowed: {', '.join(DETAILS)}")
    for key, value in d.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ConnectorError(f"{where}: detail {key!r} must be a string")
        if key not in DETAILS[kind]:
            raise ConnectorError(f"{where}: unknown detail {key!r} for a {kind} connection; "
                                  f"allowed: {', '.join(sorted(DETAILS[kind]))}")
    {"file": _validate_file, "clickhouse": _validate_clickhouse,
     "kafka": _validate_kafka}[kind](where, d)


def _validate_file(where: str, d: Mapping[str, str]) -> None:
    path = _required(where, d, "path", "a file path or glob, e.g. data/*.parquet")
    if re.search(r"[{}]", PLACEHOLDER.sub("", path)):
        raise ConnectorError(f"{where}: path {path!r} has a brace that is not a placeholder "
                              "like {run_id} or {date}")
    file_format(d, where)


def _validate_clickhouse(where: str, d: Mapping[str, str]) -> None:
    table, query = d.get("table", "").strip(), d.get("query", "").strip()
    if bool(table) == bool(query):
        raise ConnectorError(f"{where}: give exactly one of 'table' (a source or destination) "
                              "or 'query' (a source: a SELECT with {name:Type} parameters)")
    if table and not _TABLE.fullmatch(d["table"]):
        raise ConnectorError(f"{where}: table {table!r} is not a table name; use name or "
                              "database.name (letters, digits, underscores)")
    if query and not _SELECT.match(query):
        raise ConnectorError(f"{where}: query must be a SELECT (or WITH ... SELECT), "
                              f"got {query[:40]!r}")
    check_clickhouse(where, d)
    url = d.get("url")
    if url is not None and not re.fullmatch(r"https?://[^/\s]+(/\S*)?", url):
        raise ConnectorError(f"{where}: url {masked({'url': url})['url']!r} is not a ClickHouse "
                              "server URL like http://user:password@host:8123/database")


def check_clickhouse(where: str, d: Mapping[str, str]) -> None:
    """The table or query of a ClickHouse connection is one it may use (source_queries.py)."""
    from control.registry.source_queries import QueryRefused, check_query, check_table

    on_platform = not d.get("url")
    try:
        if d.get("table"):
            check_table(d["table"].strip(), on_platform)
        else:
            check_query(d["query"], on_platform)
    except QueryRefused as exc:
        raise ConnectorError(f"{where}: {exc}") from None


def _validate_kafka(where: str, d: Mapping[str, str]) -> None:
    topic = _required(where, d, "topic", "a Kafka topic name")
    if not _TOPIC.fullmatch(topic):
        raise ConnectorError(f"{where}: topic {topic!r} is not a Kafka topic name "
                              "(letters, digits, '.', '_', '-'; at most 249)")
    protocol, mechanism = d.get("security_protocol"), d.get("sasl_mechanism")
    if protocol is not None and protocol not in SECURITY_PROTOCOLS:
        raise ConnectorError(f"{where}: security_protocol {protocol!r} is not one of "
                              f"{', '.join(SECURITY_PROTOCOLS)}")
    if mechanism is not None:
        if mechanism not in SASL_MECHANISMS:
            raise ConnectorError(f"{where}: sasl_mechanism {mechanism!r} is not one of "
                                  f"{', '.join(SASL_MECHANISMS)}")
        if not (protocol or "").startswith("SASL_"):
            raise ConnectorError(f"{where}: sasl_mechanism needs security_protocol "
                                  "SASL_PLAINTEXT or SASL_SSL")
        for key in ("sasl_username", "sasl_password"):
            _required(where, d, key, f"the {mechanism} {key.removeprefix('sasl_')}")
    elif "sasl_username" in d or "sasl_password" in d:
        raise ConnectorError(f"{where}: sasl_username/sasl_password need sasl_mechanism "
                              f"({', '.join(SASL_MECHANISMS)})")
    if "key_field" in d and not d["key_field"].strip():
        raise ConnectorError(f"{where}: key_field is empty; name a record field or leave it out")


def _required(where: str, d: Mapping[str, str], key: str, what: str) -> str:
    if not d.get(key, "").strip():
        raise ConnectorError(f"{where}: detail {key!r} is missing: give {what}")
    return d[key]


def file_format(d: Mapping[str, str], where: str = "connection") -> str:
    fmt = d.get("format") or _SUFFIXES.get(Path(d["path"]).suffix.lower())
    if fmt not in FORMATS:
        got = f"format {fmt!r}" if fmt else f"path {d['path']!r} (no known suffix)"
        raise ConnectorError(f"{where}: {got}; format must be one of {', '.join(FORMATS)} "
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
