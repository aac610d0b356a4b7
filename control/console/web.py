"""What every page shares: templates (autoescaped), the viewer of a request, filters, paging.

A page module holds TITLE, PATH and ROUTES (aiohttp route definitions); control.console.app
lists the modules, which makes the navigation bar. Handlers call `context(request)` for the
viewer and their workspaces, and `render(request, template, ...)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import jinja2
from aiohttp import web

from control.console.auth import Viewer
from control.console.feeds import Feeds
from control.registry.state import Registry

FEEDS = web.AppKey("feeds", Feeds)
NAV = web.AppKey("nav", list)  # (title, path) of each page, in the bar's order
VIEWER = "viewer"  # request key the auth middleware sets
PAGE_SIZE = 100

templates = jinja2.Environment(
    loader=jinja2.PackageLoader("control.console", "templates"),
    # Everything a user typed (names, reasons, record bytes) is escaped, in every template.
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def when(moment: datetime | None) -> str:
    """A time as the CLI prints it: UTC to the second."""
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment else "-"


def size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


templates.filters["when"] = when
templates.filters["size"] = size


@dataclass(frozen=True)
class Context:
    """One request's view of the platform: the registry now and what the viewer may read."""

    registry: Registry
    viewer: Viewer
    workspaces: list[str]  # readable, sorted
    chosen: str | None  # the ?workspace= filter, if readable

    @property
    def shown(self) -> list[str]:
        """The workspaces a page lists: the chosen one, else every readable one."""
        return [self.chosen] if self.chosen else self.workspaces


def feeds_of(request: web.Request) -> Feeds:
    return request.app[FEEDS]


def context(request: web.Request) -> Context:
    registry = feeds_of(request).registry
    viewer: Viewer = request[VIEWER]
    readable = viewer.workspaces(registry)
    chosen = request.query.get("workspace") or None
    if chosen is not None and chosen not in readable:
        # Unknown and unreadable look alike, so the answer says nothing about other workspaces.
        raise web.HTTPNotFound(text=f"no workspace {chosen[:128]!r} that you may read")
    return Context(registry, viewer, readable, chosen)


def render(request: web.Request, template: str, **values: Any) -> web.Response:
    """A page (or an htmx fragment) from a template, with what every page shows."""
    feeds = feeds_of(request)
    viewer = request.get(VIEWER)
    html = templates.get_template(template).render(
        nav=request.app[NAV], path=request.path, viewer=viewer,
        open_platform=not feeds.registry.secured, query=dict(request.query), **values)
    return web.Response(text=html, content_type="text/html")


@dataclass(frozen=True)
class Page:
    """One page of a long list: its rows and where the neighbours are."""

    rows: list[Any]
    number: int  # from 1
    total: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // PAGE_SIZE))


def page_of(request: web.Request, rows: list[Any]) -> Page:
    """The ?page= slice of rows (already filtered and ordered)."""
    try:
        number = max(1, int(request.query.get("page", "1")))
    except ValueError:
        raise web.HTTPBadRequest(text="page must be a whole number from 1") from None
    start = (number - 1) * PAGE_SIZE
    return Page(rows[start:start + PAGE_SIZE], number, len(rows))
