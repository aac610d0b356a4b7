"""Models: each version's framework, interface, sha256, size, extra files, uploader and time."""

from __future__ import annotations

from aiohttp import web

from control.console.web import context, render

TITLE, PATH = "Models", "/models"


async def page(request: web.Request) -> web.Response:
    """Every model of the shown workspaces; ?model= narrows to one (a link to it)."""
    ctx = context(request)
    wanted = request.query.get("model")
    shown = set(ctx.shown)
    found = [m for (ws, name), m in sorted(ctx.registry.models.items())
             if ws in shown and (not wanted or name == wanted)]
    return render(request, "models.html", ctx=ctx, models=found)


ROUTES = [web.get(PATH, page)]
