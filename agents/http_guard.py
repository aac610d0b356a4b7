"""What every HTTP request to a worker passes first: limits, then (secured platform) a credential.

Limits hold for every request but the probes and metrics: a body over the record limit gets
413 before it is read; past `http_max_in_flight` requests at once, 503 with Retry-After (never
a queue without bound); a request that takes longer than `http_request_timeout_s`, 503. The
credential of inference and reads is checked by the views (`Guard.identify`), because a
signature covers the body.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from control.config import Settings
from control.registry.http_auth import (
    SCHEME,
    Principal,
    ReplayGuard,
    SignedRequest,
    Unauthenticated,
    authenticate,
)
from control.registry.state import Registry

log = logging.getLogger(__name__)
OPEN_PATHS = ("/health", "/metrics")  # and below them: probes and scrapes need no credential
CHALLENGE = f'Bearer realm="inferstream", {SCHEME} realm="inferstream"'
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Guard:
    """Limits and credentials of a worker's HTTP requests; `registry` is set once replayed."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.in_flight = 0
        self.registry: Callable[[], Registry | None] = lambda: None
        self._replays = ReplayGuard(settings.http_auth_window_s)

    def application_options(self) -> dict[str, Any]:
        """Faust's web_application_options: aiohttp's body limit and this guard."""
        return {"client_max_size": self.settings.max_record_bytes,
                "middlewares": [self.middleware]}

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith(OPEN_PATHS):
            return await handler(request)
        limit = self.settings.max_record_bytes
        if request.content_length is not None and request.content_length > limit:
            return _error(413, f"request body of {request.content_length} bytes is over the "
                          f"limit of {limit} (INFERSTREAM_MAX_RECORD_BYTES)")
        if self.in_flight >= self.settings.http_max_in_flight:
            return _error(503, f"this worker serves {self.in_flight} requests already (the "
                          "limit, INFERSTREAM_HTTP_MAX_IN_FLIGHT); retry shortly",
                          {"Retry-After": "1"})
        self.in_flight += 1
        timeout = self.settings.http_request_timeout_s
        try:
            return await asyncio.wait_for(handler(request), timeout)
        except TimeoutError:
            return _error(503, f"the request took longer than {timeout:g}s "
                          "(INFERSTREAM_HTTP_REQUEST_TIMEOUT_S)", {"Retry-After": "1"})
        finally:
            self.in_flight -= 1

    def identify(self, request: web.Request, body: bytes) -> Principal:
        """Who sent the request (anyone, on an open platform); Unauthenticated says why not."""
        registry = self.registry()
        if registry is None:
            raise Unauthenticated("the worker has not read the registry yet; retry shortly")
        found = authenticate(registry, self.settings.namespace,
                             request.headers.get("Authorization"), request.method,
                             request.raw_path, body, self.settings.http_auth_window_s)
        return self._replays.check(found) if isinstance(found, SignedRequest) else found


def _error(status: int, reason: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": reason}, status=status, headers=headers)
