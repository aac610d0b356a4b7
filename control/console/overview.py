"""Overview: every deployment with its version, workers, per-second rates and lag; the workers.

The live part (`/fragments/overview`) is fetched again by htmx every few seconds.
"""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web

from control.client.health import summarise
from control.console.web import context, feeds_of, render

TITLE, PATH = "Overview", "/"
REFRESH_S = 2


def _live(request: web.Request) -> dict:
    """The figures of the deployments the viewer may read, as `inferstream status` has them."""
    ctx = context(request)
    feeds = feeds_of(request)
    shown = set(ctx.shown)
    deployments = [d for (ws, _), d in ctx.registry.deployments.items() if ws in shown]
    health = summarise(deployments, feeds.heartbeats.beats(), datetime.now(UTC))
    rates = feeds.heartbeats.rates({w.worker for w in health.workers if not w.stale})
    # Workers serve several workspaces: a viewer sees only what they serve of the readable ones.
    names = {f"{d.workspace}/{d.pipeline}" for d in deployments}
    workers = [(w, {n: v for n, v in w.serving.items() if n in names})
               for w in health.workers]
    if not ctx.viewer.anonymous:
        workers = [(w, serving) for w, serving in workers if serving]
    return {"ctx": ctx, "health": health, "rates": rates, "workers": workers,
            "refresh_s": REFRESH_S, "now": datetime.now(UTC)}


async def page(request: web.Request) -> web.Response:
    return render(request, "overview.html", **_live(request))


async def fragment(request: web.Request) -> web.Response:
    return render(request, "_overview_live.html", **_live(request))


ROUTES = [web.get(PATH, page), web.get("/fragments/overview", fragment)]
