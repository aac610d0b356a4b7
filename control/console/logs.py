"""Inference logs of a pipeline: filtered (time range, version, model, failures, anomalies),
newest first, a page at a time, and exported to CSV or Parquet as `inferstream logs --export`
writes them.

Every page is two bounded reads in ClickHouse (the page's first row by position, then the
page), and the count stops at COUNT_CAP, so a million logs cost what a hundred do.
"""

from __future__ import annotations

import asyncio
import re
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from control.client.log_export import LogExport, outputs_text
from control.console.reading import open_storage, read, readable
from control.console.web import PAGE_SIZE, Context, context, render
from control.registry.state import step_models
from schemas.errors import InferstreamError
from sinks import reads
from sinks.access import log_pages
from sinks.log_queries import LogFilter, LogPosition

TITLE, PATH = "Inference logs", "/logs"
COUNT_CAP = 100_000  # "more than" past this: counting further costs a scan of the filter
EXPORTS = {"csv": "text/csv", "parquet": "application/vnd.apache.parquet"}


@dataclass(frozen=True)
class Choice:
    """The pipeline shown and what its filters may be (lists the filters are checked against)."""

    workspace: str
    pipeline: str
    versions: list[int]
    models: list[str]


def _choice(ctx: Context, workspace: str | None, pipeline: str | None) -> Choice | None:
    """The pipeline asked for (404 when not readable), else the first readable one, else None."""
    pipelines = [(ws, name) for ws, name in sorted(ctx.registry.pipelines) if ws in ctx.shown]
    if pipeline:
        ws = readable(ctx, workspace)
        if (ws, pipeline) not in ctx.registry.pipelines:
            raise web.HTTPNotFound(text=f"workspace {ws!r} has no pipeline {pipeline[:128]!r}")
        key = (ws, pipeline)
    elif pipelines:
        key = pipelines[0]
    else:
        return None
    found = ctx.registry.pipelines[key]
    models = sorted({m for v in found.versions for m in _models(v.steps)})
    return Choice(key[0], key[1], [v.version for v in found.versions], models)


def _models(steps: Any) -> list[str]:
    return [s.model for step in steps for s in step_models(step)]


def _time(text: str | None, what: str) -> datetime | None:
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise web.HTTPBadRequest(text=f"{what} {text[:64]!r} is not a time: use ISO-8601, "
                                 "e.g. 2026-01-31T12:00 (UTC)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def log_filter(request: web.Request, choice: Choice) -> LogFilter:
    """The filter of the query string, every value checked (a list, a number or a time)."""
    q = request.query
    version = q.get("version") or None
    if version is not None and (not version.isdigit() or int(version) not in choice.versions):
        raise web.HTTPBadRequest(text=f"pipeline {choice.pipeline!r} has no version "
                                 f"{version[:32]!r}: one of {choice.versions}")
    model = q.get("model") or None
    if model is not None and model not in choice.models:
        raise web.HTTPBadRequest(text=f"pipeline {choice.pipeline!r} runs no model "
                                 f"{model[:128]!r}: one of {', '.join(choice.models)}")
    try:
        return LogFilter(workspace=choice.workspace, pipeline=choice.pipeline,
                         start=_time(q.get("from"), "from"), end=_time(q.get("to"), "to"),
                         pipeline_version=None if version is None else int(version),
                         model=model, only_failures=q.get("failures") == "on",
                         only_anomalies=q.get("anomalies") == "on")
    except (InferstreamError, ValidationError) as exc:
        raise web.HTTPBadRequest(text=str(exc)[:500]) from None


def _number(request: web.Request) -> int:
    try:
        return max(1, int(request.query.get("page", "1")))
    except ValueError:
        raise web.HTTPBadRequest(text="page must be a whole number from 1") from None


async def newest_page(request: web.Request, where: LogFilter, number: int, total: int
                      ) -> list[dict[str, Any]]:
    """Page `number` (from 1) of PAGE_SIZE logs, newest first, of `total` counted logs."""
    skip = (number - 1) * PAGE_SIZE
    if skip >= total:
        return []
    if number * PAGE_SIZE <= total:  # a full page: it starts at the (number*size)-th newest
        found = await read(request, "nth_newest_log",
                           reads.NthNewestLog(where=where, n=number * PAGE_SIZE))
        since = None if found is None else LogPosition(**found)
        size = PAGE_SIZE
    else:  # the oldest, partial page
        since, size = None, total - skip
    rows = await read(request, "log_page", reads.LogPage(where=where, size=size, since=since))
    return list(reversed(rows or []))


async def page(request: web.Request) -> web.Response:
    ctx = context(request)
    choice = _choice(ctx, request.query.get("workspace"), request.query.get("pipeline"))
    pipelines = [(ws, name) for ws, name in sorted(ctx.registry.pipelines)
                 if ws in ctx.workspaces]
    values: dict[str, Any] = {"ctx": ctx, "choice": choice, "pipelines": pipelines,
                              "rows": [], "total": 0, "number": 1, "cap": COUNT_CAP,
                              "size": PAGE_SIZE, "outputs_text": outputs_text}
    if choice is not None:
        where = log_filter(request, choice)
        number = _number(request)
        total = await read(request, "count_logs_upto",
                           reads.CountLogsUpTo(where=where, cap=COUNT_CAP)) or 0
        values |= {"total": total, "number": number,
                   "rows": await newest_page(request, where, number, total)}
    return render(request, "logs.html", **values)


def _write(request: web.Request, where: LogFilter, path: Path) -> int:
    """The export of `inferstream logs --export` (the same writer, the same reads)."""
    export = LogExport(path, split_rows=2**62, split=False)
    try:
        with open_storage(request) as reader:
            for rows in log_pages(reader, where, None):
                export.write(rows)
    finally:
        export.close()
    return export.rows


async def export(request: web.Request) -> web.StreamResponse:
    """Every log of the filter as one CSV or Parquet file, written on the server, then sent."""
    ctx = context(request)
    fmt = request.query.get("format", "csv")
    if fmt not in EXPORTS:
        raise web.HTTPBadRequest(text=f"format {fmt[:16]!r}: one of {', '.join(EXPORTS)}")
    choice = _choice(ctx, request.query.get("workspace"), request.query.get("pipeline"))
    if choice is None:
        raise web.HTTPNotFound(text="no pipeline that you may read")
    where = log_filter(request, choice)
    name = re.sub(r"[^A-Za-z0-9._-]", "_", f"{choice.workspace}-{choice.pipeline}-logs.{fmt}")
    with tempfile.TemporaryDirectory(prefix="inferstream-export-") as folder:
        path = Path(folder) / f"export.{fmt}"
        await asyncio.to_thread(_write, request, where, path)
        response = web.StreamResponse(headers={
            "Content-Type": EXPORTS[fmt],
            "Content-Disposition": f'attachment; filename="{name}"'})
        response.headers.update(SECURITY)
        await response.prepare(request)
        with path.open("rb") as data:
            while chunk := data.read(1 << 20):
                await response.write(chunk)
        await response.write_eof()
    return response


# A prepared StreamResponse is past the middleware's header update: set them here.
SECURITY = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}

ROUTES = [web.get(PATH, page), web.get(PATH + "/export", export)]
