"""CLI commands for API keys: workspace keys that programs send to workers over HTTP."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated

import typer

from control.cli.base import JsonFlag, client_of, out, parse_duration, rows_table, show, when
from control.registry.state import ApiKey

api_keys = typer.Typer(
    help="API keys of a workspace, for programs that call workers over HTTP (curl, services): "
    "`Authorization: Bearer isk_...`.", no_args_is_help=True)


class Scope(StrEnum):
    infer = "infer"
    read = "read"


def _state(key: ApiKey) -> str:
    if key.revoked_at is not None:
        return f"revoked {when(key.revoked_at)}"
    if key.expires_at is not None and key.expires_at <= datetime.now(UTC):
        return f"expired {when(key.expires_at)}"
    return "active"


@api_keys.command("create")
def create(
    ctx: typer.Context, name: str,
    scope: Annotated[list[Scope] | None, typer.Option(
        help="What the key may do in the workspace: infer (POST .../infer) and/or read (logs, "
        "assay results, runs); repeat for both. Default: infer")] = None,
    expires_in: Annotated[str | None, typer.Option(
        help="Refuse the key after this long, e.g. 30d or 12h; default: until revoked")] = None,
    json_out: JsonFlag = False,
) -> None:
    """Make an API key of the workspace; it is printed once and never again."""
    expires_at = datetime.now(UTC) + parse_duration(expires_in) if expires_in else None
    key, token = client_of(ctx).create_api_key(
        name, [s.value for s in scope or [Scope.infer]], expires_at=expires_at)
    facts = {"name": key.name, "workspace": key.workspace, "key_id": key.key_id,
             "scopes": list(key.scopes), "expires_at": key.expires_at, "key": token}
    show(facts, json_out, message=(
        f"API key [bold]{key.name}[/] of workspace {key.workspace} "
        f"({', '.join(key.scopes)}):\n  {token}\nIt is shown this once: store it where the "
        "program reads it (e.g. INFERSTREAM_API_KEY); `inferstream api-keys revoke "
        f"{key.name}` stops it."))


@api_keys.command("list")
def list_keys(ctx: typer.Context, json_out: JsonFlag = False) -> None:
    """List the workspace's API keys (never their secrets)."""
    rows = client_of(ctx).api_keys()
    if json_out:
        show([{**{f: getattr(k, f) for f in ("name", "workspace", "key_id", "scopes",
                                              "created_by", "created_at", "expires_at",
                                              "revoked_at")}, "state": _state(k)}
              for k in rows], True)
        return
    out.print(rows_table("API keys", ["name", "key id", "scopes", "state", "created by",
                                      "created", "expires"],
                         [(k.name, k.key_id, ", ".join(k.scopes), _state(k), k.created_by,
                           when(k.created_at), when(k.expires_at) if k.expires_at else "never")
                          for k in rows]))


@api_keys.command("revoke")
def revoke(ctx: typer.Context, name: str, json_out: JsonFlag = False) -> None:
    """Revoke an API key: every worker refuses it within seconds."""
    key = client_of(ctx).revoke_api_key(name)
    show({"name": key.name, "workspace": key.workspace, "revoked_at": key.revoked_at},
         json_out, message=f"revoked API key [bold]{key.name}[/] of workspace {key.workspace}")
