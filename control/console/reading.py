"""How the log, assay and run pages read ClickHouse: the typed reads of sinks/reads.py, never SQL.

The console checks the viewer first (`readable`: a workspace they may read, else 404), then
runs the read in a thread through `sinks.access.open_reader`, as the CLI does: a ClickHouse
server directly, else the chDB folder, else the worker that owns it, asked with the console
process's own credential (INFERSTREAM_API_KEY of scope read, or INFERSTREAM_USER and a key).
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from control.client import Client
from control.console.web import Context, feeds_of
from schemas.errors import InferstreamError
from sinks import reads
from sinks.access import Reader, open_reader
from sinks.storage import StorageError


def readable(ctx: Context, workspace: str | None) -> str:
    """`workspace` when the viewer may read it; unknown and unreadable both answer 404."""
    if not workspace or workspace not in ctx.workspaces:
        raise web.HTTPNotFound(text=f"no workspace {str(workspace)[:128]!r} that you may read")
    return workspace


def _credential(client: Client):
    def headers(method: str, path: str, body: bytes) -> dict[str, str]:
        try:
            return client.http_headers(method, path, body)
        except InferstreamError:  # no user or key configured: an open platform's worker asks none
            return {}
    return headers


def open_storage(request: web.Request) -> Reader:
    settings = feeds_of(request).settings
    return open_reader(settings, _credential(Client(settings)))


def read_now(request: web.Request, name: str, args: reads.Args) -> Any:
    """One typed read, blocking (call it in a thread)."""
    with open_storage(request) as reader:
        return reader.read(name, args)


async def read(request: web.Request, name: str, args: reads.Args) -> Any:
    """One typed read in a thread; a storage that cannot answer is a 503 saying why."""
    try:
        return await asyncio.to_thread(read_now, request, name, args)
    except StorageError as exc:
        if "UNKNOWN_TABLE" in str(exc):  # nothing stored yet: no worker has written anything
            return None
        raise web.HTTPServiceUnavailable(text=f"the storage does not answer: {exc}") from exc


