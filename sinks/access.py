"""Reaching the storage from any process, whoever owns the embedded chDB folder.

With a ClickHouse server every process connects directly. With chDB one process
at a time can open the data folder: the worker that runs the log sink opens it
and records itself in `<data_dir>/chdb.owner.json`; other processes (the CLI, a
second worker) ask that worker for the typed reads of sinks/reads.py at
`POST /reads/{name}` (with their credential), or open the folder themselves when
it is free. Either way a read is a name and checked arguments, never SQL.
"""

from __future__ import annotations

import json
import os
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from datetime import date, datetime
from pathlib import Path
from typing import Any

from control.config import Settings
from sinks.log_queries import LogFilter, LogPosition
from sinks.reads import Args, LogPage, NthNewestLog, run_read
from sinks.storage import ChdbStorage, ServerStorage, Storage, StorageError, StorageLocked

OWNER_FILE = "chdb.owner.json"
# Headers that authenticate a request: (method, path, body) -> headers (control.client).
Credential = Callable[[str, str, bytes], Mapping[str, str]]


class LocalReader:
    """Reads on a storage this process has open."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def read(self, name: str, args: Args) -> Any:
        return run_read(self.storage, name, args)

    def close(self) -> None:
        self.storage.close()

    def __enter__(self) -> LocalReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RemoteReader:
    """Reads through the worker that owns the chDB folder, with the caller's credential."""

    def __init__(self, url: str, credential: Credential | None = None,
                 tls: ssl.SSLContext | None = None, timeout_s: float = 120.0) -> None:
        self.url, self.credential, self.tls = url.rstrip("/"), credential, tls
        self.timeout_s = timeout_s

    def read(self, name: str, args: Args) -> Any:
        path, body = f"/reads/{name}", args.model_dump_json().encode()
        headers = {"Content-Type": "application/json"}
        if self.credential is not None:
            headers |= self.credential("POST", path, body)
        request = urllib.request.Request(f"{self.url}{path}", data=body, method="POST",
                                         headers=headers)
        tls = self.tls if self.url.startswith("https:") else None
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s, context=tls) as response:
                return from_wire(json.loads(response.read()))["result"]
        except urllib.error.HTTPError as exc:
            raise StorageError(f"read {name} through {self.url}: {exc.code} "
                               f"{_reason(exc)}") from exc
        except OSError as exc:
            raise StorageError(f"the worker owning the chDB folder ({self.url}) does not "
                               f"answer: {exc}") from exc

    def close(self) -> None:
        pass

    def __enter__(self) -> RemoteReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


Reader = LocalReader | RemoteReader


def open_reader(settings: Settings, credential: Credential | None = None) -> Reader:
    """Something to read from: the server, the chDB folder when free, else its owning worker
    (asked with `credential`'s headers)."""
    if settings.clickhouse_url:
        return LocalReader(ServerStorage(settings.clickhouse_url))
    owner = read_owner(settings)
    if owner is None or owner["pid"] == os.getpid():
        try:
            return LocalReader(ChdbStorage(settings.data_dir / "chdb"))
        except StorageLocked:
            owner = read_owner(settings)
            if owner is None:
                raise
    # A live worker has it: don't even try the lock.
    return RemoteReader(owner["url"], credential, settings.http_client_tls()
                        if owner["url"].startswith("https:") else None)


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


def log_pages(reader: Reader, where: LogFilter, limit: int | None = None,
              size: int = 10_000) -> Iterator[list[dict[str, Any]]]:
    """The newest `limit` logs (all with None) in pages of `size`, oldest first. Each page
    starts after the last row of the one before (in time order): memory stays at one page and
    no row is repeated or skipped between pages."""
    if size <= 0:
        raise ValueError(f"page size {size} must be positive")
    left, since, after = limit, None, None
    if limit is not None and limit > 0:  # the newest `limit` start at the limit-th newest
        found = reader.read("nth_newest_log", NthNewestLog(where=where, n=limit))
        since = None if found is None else LogPosition(**found)
    while left is None or left > 0:
        page = reader.read("log_page", LogPage(
            where=where, size=size if left is None else min(size, left), after=after,
            since=since))
        if not page:
            return
        yield page
        if left is not None:
            left -= len(page)
        after = LogPosition.of(page[-1])
