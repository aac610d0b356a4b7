"""The console's web application: pages, sign-in, static files, and the process that serves them.

`serve()` is what both `python -m control.console` and `inferstream console` run.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import sys
from pathlib import Path
from urllib.parse import quote, urlsplit

from aiohttp import web

from control.config import Settings
from control.console import (
    assays,
    audit,
    dead_letters,
    logs,
    models,
    overview,
    pipelines,
    rules,
    runs,
)
from control.console.auth import Sessions
from control.console.feeds import Feeds
from control.console.web import FEEDS, NAV, VIEWER, feeds_of, render
from control.registry.http_auth import Forbidden, Unauthenticated

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
COOKIE = "inferstream_console"
SESSIONS = web.AppKey("sessions", Sessions)
# Each: TITLE, PATH, ROUTES; in the bar's order.
PAGES = (overview, models, pipelines, logs, dead_letters, assays, rules, runs, audit)
PUBLIC = ("/login", "/logout", "/healthz", "/static/")
# Only our own files: no inline script or style, nothing from elsewhere (the console is offline).
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                               "frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


@web.middleware
async def signed_in(request: web.Request, handler):
    """Every page and fragment needs a session on a secured platform; headers on every answer."""
    if not request.path.startswith(PUBLIC):
        registry = feeds_of(request).registry
        viewer = request.app[SESSIONS].viewer(registry, request.cookies.get(COOKIE))
        if viewer is None:
            target = "/login?next=" + quote(request.path_qs, safe="")
            if request.headers.get("HX-Request"):  # a live fragment: send the whole page there
                raise web.HTTPUnauthorized(headers={"HX-Redirect": target})
            raise web.HTTPSeeOther(target)
        request[VIEWER] = viewer
    response = await handler(request)
    response.headers.update(SECURITY_HEADERS)
    return response


async def login_page(request: web.Request) -> web.Response:
    if not feeds_of(request).registry.secured:
        raise web.HTTPSeeOther("/")
    return render(request, "login.html", error=None, user="", next=_next(request))


async def login(request: web.Request) -> web.Response:
    """Check the credential and set the session cookie; refuse posts from other sites."""
    origin = request.headers.get("Origin")
    if origin is not None and urlsplit(origin).netloc != request.host:
        raise web.HTTPForbidden(text="sign-in from another site is refused")
    form = await request.post()
    user, credential = str(form.get("user", "")), str(form.get("credential", ""))
    try:
        session = request.app[SESSIONS].sign_in(feeds_of(request).registry, user, credential)
    except (Unauthenticated, Forbidden) as exc:
        response = render(request, "login.html", error=str(exc), user=user,
                          next=_next(request, form.get("next")))
        response.set_status(401 if isinstance(exc, Unauthenticated) else 403)
        return response
    response = web.HTTPSeeOther(_next(request, form.get("next")))
    response.set_cookie(COOKIE, session.id, httponly=True, samesite="Strict", path="/",
                        secure=request.secure, max_age=int(request.app[SESSIONS].lifetime_s))
    raise response


async def logout(request: web.Request) -> web.Response:
    request.app[SESSIONS].end(request.cookies.get(COOKIE))
    response = web.HTTPSeeOther("/login")
    response.del_cookie(COOKIE, path="/")
    raise response


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True, "events": feeds_of(request).follower.position})


def _next(request: web.Request, given: object = None) -> str:
    """Where to go after signing in: a path on this console only (no open redirect)."""
    target = str(given if given is not None else request.query.get("next", "/"))
    return target if target.startswith("/") and not target.startswith("//") else "/"


def make_app(settings: Settings, feeds: Feeds) -> web.Application:
    app = web.Application(middlewares=[signed_in])
    app[FEEDS] = feeds
    app[NAV] = [(page.TITLE, page.PATH) for page in PAGES]
    app[SESSIONS] = Sessions(settings.namespace, settings.http_auth_window_s)
    app.router.add_get("/login", login_page)
    app.router.add_post("/login", login)
    app.router.add_post("/logout", logout)
    app.router.add_get("/healthz", healthz)
    app.router.add_static("/static/", STATIC)
    for page in PAGES:
        app.add_routes(page.ROUTES)
    return app


def warn_if_exposed(bind: str, secured: bool) -> None:
    """An open platform's console shows every workspace to whoever reaches it: say so loudly."""
    try:
        loopback = ipaddress.ip_address(bind).is_loopback
    except ValueError:
        loopback = bind == "localhost"
    if not loopback and not secured:
        print(f"WARNING: this platform is OPEN (no bootstrap key) and the console listens on "
              f"{bind}: anyone who reaches it sees every workspace. Bind 127.0.0.1 or secure "
              "the platform (docs/security.md).", file=sys.stderr, flush=True)


async def _serve(settings: Settings, bind: str, port: int) -> None:
    feeds = Feeds(settings).start()
    try:
        # Until the registry is replayed the console cannot tell a secured platform from an
        # open one: listen only after it is.
        await asyncio.to_thread(feeds.follower.wait_caught_up, 300)
        warn_if_exposed(bind, feeds.registry.secured)
        runner = web.AppRunner(make_app(settings, feeds), access_log=None)
        await runner.setup()
        tls = settings.http_server_tls()
        await web.TCPSite(runner, bind, port, ssl_context=tls).start()
        scheme = "https" if tls else "http"
        host = f"[{bind}]" if ":" in bind else bind
        print(f"console at {scheme}://{host}:{port}", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()
    finally:
        feeds.stop()


def serve(settings: Settings, bind: str = "127.0.0.1", port: int = 8080) -> None:
    """Run the console until interrupted."""
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(settings, bind, port))
