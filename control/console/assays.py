"""Assays: each assay's latest status, and one assay's score over time with its warning and
alert lines and each window's baseline-vs-window densities, drawn by static/assays.js (uPlot)
from `/assays/data`, the results `inferstream assays results` prints."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from control.console.reading import read, readable
from control.console.web import context, render
from control.registry.assay_config import bin_labels
from control.registry.state import Assay
from sinks import reads
from sinks.assays import AssayResult, result_from_row

TITLE, PATH = "Assays", "/assays"
SHOWN_WINDOWS = 500  # the newest windows an assay's page draws (older ones: ?from=)
LIST_WINDOWS = 1  # windows read per assay for the list's status badge: the newest


async def results(request: web.Request, assay: Assay, windows: int,
                  start: datetime | None = None) -> list[AssayResult]:
    """The assay's results from `start`, else its newest `windows` windows, oldest first."""
    config = assay.config
    if start is None:
        last = await read(request, "last_assay_window", reads.LastAssayWindow(
            workspace=assay.workspace, assay_id=assay.assay_id))
        if last is None:
            return []
        start = max(config.start, last - (windows - 1) * config.step)
    rows = await read(request, "assay_results", reads.AssayResults(
        workspace=assay.workspace, assay_id=assay.assay_id, start=start))
    return [result_from_row(dict(r)) for r in rows or []]


def _assay(request: web.Request) -> Assay | None:
    ctx = context(request)
    name = request.query.get("assay")
    if not name:
        return None
    ws = readable(ctx, request.query.get("workspace"))
    found = ctx.registry.assays.get((ws, name))
    if found is None:
        raise web.HTTPNotFound(text=f"workspace {ws!r} has no assay {name[:128]!r}")
    return found


def _start(request: web.Request) -> datetime | None:
    text = request.query.get("from")
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise web.HTTPBadRequest(text=f"from {text[:64]!r} is not an ISO-8601 time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


async def page(request: web.Request) -> web.Response:
    """Every assay of the shown workspaces with its latest status; ?assay= one's charts."""
    ctx = context(request)
    chosen = _assay(request)
    listed = [a for (ws, _), a in sorted(ctx.registry.assays.items()) if ws in ctx.shown]
    latest: dict[tuple[str, str], AssayResult | None] = {}
    for a in listed:
        found = await results(request, a, LIST_WINDOWS)
        latest[(a.workspace, a.name)] = found[-1] if found else None
    windows = await results(request, chosen, SHOWN_WINDOWS, _start(request)) if chosen else []
    return render(request, "assays.html", ctx=ctx, assays=listed, latest=latest,
                  chosen=chosen, windows=list(reversed(windows)))


def chart_data(assay: Assay, found: list[AssayResult]) -> dict[str, Any]:
    """What static/assays.js draws: times in epoch seconds, every window's bins."""
    config = assay.config
    return {
        "assay": assay.name, "workspace": assay.workspace,
        "metric": "cumulative" if config.aggregation == "cumulative" else config.metric,
        "warning": config.warning_threshold, "alert": config.alert_threshold,
        "lower_is_worse": config.lower_is_worse,
        "windows": [{
            "start": r.window_start.timestamp(), "end": r.window_end.timestamp(),
            "score": r.score, "status": r.status, "count": r.window.count,
            "labelled": r.labelled,
            "labels": bin_labels(r.edges), "baseline": list(r.baseline_densities),
            "window": list(r.window_densities)} for r in found],
    }


async def data(request: web.Request) -> web.Response:
    """?workspace= &assay= [&from=]: the chart's data as JSON."""
    chosen = _assay(request)
    if chosen is None:
        raise web.HTTPBadRequest(text="name an assay: ?workspace=W&assay=NAME")
    found = await results(request, chosen, SHOWN_WINDOWS, _start(request))
    return web.json_response(chart_data(chosen, found))


ROUTES = [web.get(PATH, page), web.get(PATH + "/data", data)]
