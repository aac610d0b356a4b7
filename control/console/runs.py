"""Tasks and runs: every task's schedule, its runs (status, records in/out/bad, duration) and
one run's log lines, as `inferstream tasks list|runs|logs` print them."""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web

from control.console.reading import read
from control.console.web import context, render
from sinks import reads
from sinks.runs import Run, run_from_row

TITLE, PATH = "Tasks and runs", "/runs"
RUNS_SHOWN = 100  # the newest runs per workspace


def duration(run: Run, now: datetime | None = None) -> str:
    """How long a run took (or has taken so far), as 1h02m03s / 2m05s / 4.2s."""
    if run.started_at is None:
        return "-"
    seconds = ((run.ended_at or now or datetime.now(UTC)) - run.started_at).total_seconds()
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, s = divmod(int(seconds), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}h{m:02d}m{s:02d}s" if hours else f"{m}m{s:02d}s"


async def page(request: web.Request) -> web.Response:
    """?workspace= ?task= narrow the runs; ?run=ID shows that run's log lines."""
    ctx = context(request)
    task = request.query.get("task") or None
    tasks = [t for (ws, _), t in sorted(ctx.registry.tasks.items()) if ws in ctx.shown]
    runs: list[Run] = []
    for ws in ctx.shown:
        rows = await read(request, "runs", reads.Runs(workspace=ws, task=task,
                                                      limit=RUNS_SHOWN))
        runs += [run_from_row(dict(r)) for r in rows or []]
    runs.sort(key=lambda r: r.started_at or r.updated_at, reverse=True)
    chosen, lines = None, []
    run_id = request.query.get("run")
    if run_id:
        found = await read(request, "run", reads.RunById(run_id=run_id[:256]))
        chosen = run_from_row(dict(found)) if found else None
        if chosen is None or chosen.workspace not in ctx.workspaces:
            # Another workspace's run is as unknown as one that does not exist.
            raise web.HTTPNotFound(text=f"no run {run_id[:128]!r} that you may read")
        lines = await read(request, "run_logs", reads.RunById(run_id=chosen.run_id)) or []
    return render(request, "runs.html", ctx=ctx, tasks=tasks, runs=runs, chosen=chosen,
                  lines=lines, duration=duration, now=datetime.now(UTC))


ROUTES = [web.get(PATH, page)]
