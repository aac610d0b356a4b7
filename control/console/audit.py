"""Audit log: every control event's status, newest first, filterable and paged."""

from __future__ import annotations

from aiohttp import web

from control.console.web import context, feeds_of, page_of, render

TITLE, PATH = "Audit log", "/audit"
OUTCOMES = ("accepted", "rejected")


async def page(request: web.Request) -> web.Response:
    """Filters: ?workspace= ?type= ?actor= ?outcome=accepted|rejected ?q= (in the reason)."""
    ctx = context(request)
    q = request.query
    kind, actor, outcome = q.get("type"), q.get("actor"), q.get("outcome")
    text = (q.get("q") or "").lower()
    readable = set(ctx.workspaces)
    seen = [s for s in feeds_of(request).statuses.statuses.copy()
            if ctx.viewer.sees(ctx.registry, s, readable)]
    types = sorted({s.type for s in seen})
    rows = [s for s in reversed(seen)
            if (not ctx.chosen or s.workspace == ctx.chosen)
            and (not kind or s.type == kind) and (not actor or s.actor == actor)
            and (not outcome or s.accepted == (outcome == "accepted"))
            and (not text or text in (s.reason or "").lower())]
    return render(request, "audit.html", ctx=ctx, page=page_of(request, rows), types=types,
                  outcomes=OUTCOMES)


ROUTES = [web.get(PATH, page)]
