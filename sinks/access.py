"""Reaching the storage from any process, whoever owns the embedded chDB folder.

With a ClickHouse server every process connects directly. With chDB one process
at a time can open the data folder: the worker that runs the log sink opens it
and records itself in `<data_dir>/chdb.owner.json`; other processes (the CLI, a
second worker) read through that worker's `/storage/query` endpoint, or open
the folder themselves when it is free.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from datetime import date, datetime
from pathlib import Path
from typing import Any

from control.config import Settings
from sinks.storage import ChdbStorage, ServerStorage, Storage, StorageError, StorageLocked

OWNER_FILE = "chdb.owner.json"


class RemoteReader:
    """Read-only queries through the worker that owns the chDB folder."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        body = json.dumps({"sql": sql, "params": to_wire(params or {})}).encode()
        request = urllib.request.Request(f"{self.url}/storage/query", data=body, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return from_wire(json.loads(response.read()))["rows"]
        except urllib.error.HTTPError as exc:
            raise StorageError(f"query through {self.url}: {_reason(exc)}") from exc
        except OSError as exc:
            raise StorageError(f"the worker owning the chDB folder ({self.url}) does not "
                               f"answer: {exc}") from exc

    def close(self) -> None:
        pass

    def __enter__(self) -> RemoteReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_reader(settings: Settings) -> Storage | RemoteReader:
    """Something to query: the server, the chDB folder when free, else its owning worker."""
    if settings.clickhouse_url:
        return ServerStorage(settings.clickhouse_url)
    owner = read_owner(settings)
    if owner is not None and owner["pid"] != os.getpid():
        return RemoteReader(owner["url"])  # a live worker has it: don't even try the lock
    try:
        return ChdbStorage(settings.data_dir / "chdb")
    except StorageLocked:
        owner = read_owner(settings)
        if owner is None:
            raise
        return RemoteReader(owner["url"])


def claim(settings: Settings, url: str) -> None:
    """Record that this process owns the chDB folder and answers queries at `url`."""
    path = Path(settings.data_dir) / OWNER_FILE
    tmp = path.with_suffix(f".{os.getpid()}")
    tmp.write_text(json.dumps({"pid": os.getpid(), "url": url}))
    tmp.replace(path)


def read_owner(settings: Settings) -> dict[str, Any] | None:
    try:
        owner = json.loads((Path(settings.data_dir) / OWNER_FILE).read_text())
        os.kill(owner["pid"], 0)  # a stale file from a dead worker names nobody
    except (OSError, ValueError, KeyError):
        return None
    return owner


def to_wire(value: Any) -> Any:
    """JSON-safe values, with dates kept recognisable (ClickHouse parameters need them typed)."""
    if isinstance(value, datetime | date):
        return {"$date": value.isoformat()}
    if isinstance(value, dict):
        return {k: to_wire(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_wire(v) for v in value]
    if isinstance(value, float) and value != value:  # NaN: JSON has no literal for it
        return {"$float": "nan"}
    return value


def from_wire(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"$date"}:
            return datetime.fromisoformat(value["$date"])
        if set(value) == {"$float"}:
            return float(value["$float"])
        return {k: from_wire(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_wire(v) for v in value]
    return value


def _reason(exc: urllib.error.HTTPError) -> str:
    try:
        return json.loads(exc.read())["error"]
    except (ValueError, KeyError):
        return str(exc)
