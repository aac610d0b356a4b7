"""`inferstream console`: the read-only web console (control/console), or a sign-in token for it."""

from __future__ import annotations

from typing import Annotated

import typer

from control.cli.base import client_of
from control.console.auth import SIGN_IN_TARGET
from control.registry.http_auth import sign_request
from schemas.errors import ConfigError


def console(
    ctx: typer.Context,
    bind: Annotated[str, typer.Option(help="Address to listen on; beyond loopback only on a "
                                      "secured platform")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on")] = 8080,
    token: Annotated[bool, typer.Option(
        "--token", help="Print a sign-in token for the console instead (signed with your key, "
        "good for INFERSTREAM_HTTP_AUTH_WINDOW_S seconds) and exit")] = False,
) -> None:
    """Serve the web console: deployments, models, pipelines and the audit log, in a browser.

    It prints `console at http://HOST:PORT` once it listens (after replaying the registry).
    On a secured platform sign in with an API key of scope read or with `--token`'s token.
    """
    client = client_of(ctx)
    if token:
        key, user = client._signing_key(), client._actor()
        if key is None:
            raise ConfigError(f"no private key for {user!r}: `inferstream login {user} "
                              "--key-file FILE` first, or pass --key-file")
        print(sign_request(key, user, client.settings.namespace, "GET", SIGN_IN_TARGET, b""))
        return
    from control.console.app import serve  # aiohttp and Jinja2: only for this command

    serve(client.settings, bind, port)
