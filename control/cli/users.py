"""CLI commands for identities: bootstrap, login, whoami, users, workspaces and members."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from control.cli.base import JsonFlag, client_of, rows_table, show, when
from control.client.credentials import platform_of
from control.client.keys import read_public_key
from control.registry.signing import fingerprint, public_key_of
from control.registry.state import User
from schemas.errors import ConfigError

users = typer.Typer(help="Create, list and deactivate users.", no_args_is_help=True)
workspaces = typer.Typer(help="Create and delete workspaces; manage their members.",
                         no_args_is_help=True)


class Role(StrEnum):
    owner = "owner"
    collaborator = "collaborator"
    viewer = "viewer"


def _key_of(user: User) -> str:
    return fingerprint(user.public_key) if user.public_key else "-"


# -- the first administrator, login ----------------------------------------------------------


def bootstrap(
    ctx: typer.Context, name: str, email: Annotated[str | None, typer.Option()] = None,
    key_file: Annotated[Path | None, typer.Option(
        "--key-file", help="Private key to register (PEM); made (0600) when it does not exist "
        "(default: beside the credentials file)")] = None,
    json_out: JsonFlag = False,
) -> None:
    """Create the first administrator of a new platform, with a key pair: secures the platform.

    From then on every control event must be signed by its actor's key, and every user has
    one. NAME is logged in on this machine. (On a laptop, `--user NAME users create NAME`
    also makes the first user an administrator, of an open platform: no keys, no signatures.)
    """
    user, path = client_of(ctx).bootstrap_admin(name, email=email, key_file=key_file)
    show({"user": user.name, "admin": user.admin, "key_file": str(path),
          "public_key": _key_of(user)}, json_out,
         message=f"[bold]{user.name}[/] is the first administrator; platform secured.\n"
                 f"  private key: {path} (only you can read it; keep it safe)\n"
                 f"  public key:  {_key_of(user)}")


def login(
    ctx: typer.Context, name: str,
    key_file: Annotated[Path, typer.Option("--key-file", help="Your private key (PEM, 0600)")],
    json_out: JsonFlag = False,
) -> None:
    """Sign as NAME with KEY from now on, on this machine (recorded in the credentials file)."""
    user = client_of(ctx).login(name, key_file)
    show({"user": user.name, "key_file": str(key_file.expanduser().resolve()),
          "public_key": _key_of(user), "platform": platform_of(ctx.obj)}, json_out,
         message=f"logged in as [bold]{user.name}[/] ({_key_of(user)}) on "
                 f"{platform_of(ctx.obj)}")


def whoami(ctx: typer.Context, json_out: JsonFlag = False) -> None:
    """Show who commands act as, with which key, and whether the platform knows that key."""
    client = client_of(ctx)
    name = client._actor()
    key = client._signing_key()
    mine = public_key_of(key) if key is not None else None
    user = client.registry().users.get(name)
    registered = user.public_key if user else None
    facts = {
        "user": name, "platform": platform_of(ctx.obj),
        "key": fingerprint(mine) if mine else None,
        "registered_key": fingerprint(registered) if registered else None,
        "matches": mine == registered, "admin": bool(user and user.admin),
        "active": bool(user and user.active),
    }
    verdict = ("signs with the registered key" if mine and facts["matches"] else
               "no key (events unsigned)" if not mine else
               "[red]this key is not the registered one[/]")
    show(facts, json_out, message=f"{name} on {facts['platform']}: {verdict}"
         + ("" if user else " [red](no such user)[/]"))


# -- users -------------------------------------------------------------------------------------


@users.command("create")
def users_create(
    ctx: typer.Context, name: str, email: Annotated[str | None, typer.Option()] = None,
    admin: Annotated[bool, typer.Option(help="Make a platform administrator.")] = False,
    public_key: Annotated[Path | None, typer.Option(
        exists=True, help="The user's own public key (PEM): they keep the private key")] = None,
    key_out: Annotated[Path | None, typer.Option(
        help="Where to write the new user's private key (0600); default: beside the "
        "credentials file")] = None,
    no_key: Annotated[bool, typer.Option(
        "--no-key", help="No key (open platforms only: the user's events go unsigned)")
    ] = False,
    json_out: JsonFlag = False,
) -> None:
    """Create a user, with a key pair whose private key is written to a file only you can read.

    The first user of a platform is its administrator: make it with `bootstrap NAME` to
    secure the platform (every event signed), or with `--user NAME users create NAME` for an
    open platform (a laptop: no keys). On an open platform, users get a key only when asked
    (--key-out or --public-key).
    """
    client = client_of(ctx)
    if public_key and (key_out or no_key):
        raise ConfigError("give --public-key, or --key-out / --no-key, not both")
    path = None
    if public_key:
        user = client.create_user(name, email, admin, public_key=read_public_key(public_key))
    elif no_key or not (client.registry().secured or key_out):
        user = client.create_user(name, email, admin)
    else:
        user, path = client.create_user_with_key(name, email, admin, key_file=key_out)
    facts = {"name": user.name, "email": user.email, "admin": user.admin,
             "public_key": _key_of(user), "key_file": str(path) if path else None}
    message = f"created user [bold]{user.name}[/]{' (admin)' if user.admin else ''}"
    if path:
        message += (f"\n  private key written to {path} (mode 0600): hand it to {user.name} "
                    f"over a safe channel; they run `inferstream login {user.name} "
                    "--key-file FILE`")
    show(facts, json_out, message=message)


@users.command("list")
def users_list(ctx: typer.Context, json_out: JsonFlag = False) -> None:
    """List users."""
    rows = client_of(ctx).users()
    show(rows, json_out, lambda: rows_table(
        "users", ["name", "email", "admin", "active", "key", "created"],
        [(u.name, u.email, u.admin, u.active, _key_of(u), when(u.created_at)) for u in rows]))


@users.command("get")
def users_get(ctx: typer.Context, name: str, json_out: JsonFlag = False) -> None:
    """Show one user."""
    user = client_of(ctx).get_user(name)
    show(user, json_out, message=f"{user.name} email={user.email} admin={user.admin} "
         f"active={user.active} key={_key_of(user)} created={when(user.created_at)}")


@users.command("deactivate")
def users_deactivate(ctx: typer.Context, name: str, json_out: JsonFlag = False) -> None:
    """Deactivate a user: they can no longer act."""
    status = client_of(ctx).deactivate_user(name)
    show(status, json_out, message=f"deactivated user [bold]{name}[/]")


# -- workspaces --------------------------------------------------------------------------------


@workspaces.command("create")
def workspaces_create(ctx: typer.Context, name: str, json_out: JsonFlag = False) -> None:
    """Create a workspace; you become its owner."""
    ws = client_of(ctx).create_workspace(name)
    show(ws, json_out, message=f"created workspace [bold]{ws.name}[/]")


@workspaces.command("delete")
def workspaces_delete(
    ctx: typer.Context, name: str,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation")] = False,
    json_out: JsonFlag = False,
) -> None:
    """Delete a workspace and everything registered in it (owners and administrators).

    Its pipelines must be undeployed first. Its topics and inference logs stay; its name is
    never given out again.
    """
    if not yes:
        typer.confirm(f"delete workspace {name!r} and everything registered in it?", abort=True)
    status = client_of(ctx).delete_workspace(name)
    show(status, json_out, message=f"deleted workspace [bold]{name}[/]")


@workspaces.command("list")
def workspaces_list(ctx: typer.Context, json_out: JsonFlag = False) -> None:
    """List the workspaces you are a member of (all of them, for an administrator)."""
    rows = client_of(ctx).workspaces()
    show(rows, json_out, lambda: rows_table(
        "workspaces", ["name", "members", "created by", "created"],
        [(w.name, ", ".join(f"{u} ({r})" for u, r in sorted(w.members.items())), w.created_by,
          when(w.created_at)) for w in rows]))


@workspaces.command("get")
def workspaces_get(ctx: typer.Context, name: str, json_out: JsonFlag = False) -> None:
    """Show one workspace and its members."""
    ws = client_of(ctx).get_workspace(name)
    show(ws, json_out, lambda: rows_table(f"workspace {name}", ["member", "role"],
         sorted(ws.members.items())))


@workspaces.command("add-member")
def workspaces_add_member(ctx: typer.Context, user: str,
                          role: Annotated[Role, typer.Option()] = Role.collaborator,
                          json_out: JsonFlag = False) -> None:
    """Add a user to the workspace (--workspace), or change their role.

    owner: manages members, deletes the workspace; collaborator: uploads models, creates and
    deploys pipelines, assays, connections, orchestrations and tasks; viewer: reads only.
    """
    status = client_of(ctx).add_member(user, role.value)
    show(status, json_out, message=f"{user} is now {role.value} of {status.workspace}")


@workspaces.command("remove-member")
def workspaces_remove_member(ctx: typer.Context, user: str, json_out: JsonFlag = False) -> None:
    """Remove a user from the workspace (--workspace)."""
    status = client_of(ctx).remove_member(user)
    show(status, json_out, message=f"removed {user} from {status.workspace}")

