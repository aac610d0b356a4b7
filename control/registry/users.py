"""The registry's rules for users, workspaces and members (pure, like the fold).

Who may send each event is checked before these rules run (control/registry/security.py); the rules
here check what the event does: names, keys, the last owner and the last administrator.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from control.registry.events import ControlEvent
from control.registry.rules import USER_NAME, active_user, admin, check_name, owner_or_admin
from control.registry.security import check_public_key
from control.registry.signing import fingerprint
from control.registry.state import OWNER, ROLES, Registry, User, Workspace
from schemas.errors import Rejected

Handler = Callable[[Registry, ControlEvent, Mapping[str, Any]], Registry]


def _create_user(state: Registry, event: ControlEvent, p: Mapping[str, Any]) -> Registry:
    check_name("user", p["name"], USER_NAME)
    first = not state.users
    if first and event.actor != p["name"]:
        raise Rejected(
            f"the first user must create itself: actor {event.actor!r} != name {p['name']!r}"
        )
    if not first:
        admin(state, event)
    if p["name"] in state.users:
        raise Rejected(f"user {p['name']!r} already exists")
    key = p.get("public_key")
    check_public_key(key, p["name"])
    if key is None and state.secured:
        raise Rejected(
            f"user {p['name']!r} has no public key, and on a secured platform every user signs "
            "their events: `inferstream users create` makes a key pair, or give --public-key"
        )
    holder = next((u.name for u in state.users.values() if key and u.public_key == key), None)
    if holder is not None:
        raise Rejected(
            f"public key {fingerprint(key)} is already {holder!r}'s; every user needs a key "
            "pair of their own"
        )
    user = User(p["name"], p["email"], first or p["admin"], True, event.time, key)
    secured = state.secured or (first and key is not None)
    return replace(state, users={**state.users, user.name: user}, secured=secured)


def _deactivate_user(state: Registry, event: ControlEvent, p: Mapping[str, Any]) -> Registry:
    admin(state, event)
    user = active_user(state, p["name"])
    admins = [u for u in state.users.values() if u.admin and u.active]
    if user.admin and len(admins) == 1:
        raise Rejected(f"{user.name!r} is the last active administrator; make another one first")
    return replace(state, users={**state.users, user.name: replace(user, active=False)})


def _create_workspace(state: Registry, event: ControlEvent, p: Mapping[str, Any]) -> Registry:
    check_name("workspace", p["name"])
    if p["name"] in state.workspaces:
        raise Rejected(f"workspace {p['name']!r} already exists")
    if p["name"] in state.deleted_workspaces:
        raise Rejected(
            f"workspace {p['name']!r} was deleted, and its name is not given out again: its "
            "topics and inference logs still exist; pick another name"
        )
    ws = Workspace(p["name"], event.actor, event.time, {event.actor: OWNER})
    return replace(state, workspaces={**state.workspaces, ws.name: ws})


def _delete_workspace(state: Registry, event: ControlEvent, p: Mapping[str, Any]) -> Registry:
    ws = owner_or_admin(state, event)
    if p["name"] != ws.name:
        raise Rejected(
            f"DeleteWorkspace names {p['name']!r} but acts in workspace {ws.name!r}; "
            "name the workspace you delete in both"
        )
    deployed = sorted(d.pipeline for d in state.deployments.values()
                      if d.workspace == ws.name and d.active)
    if deployed:
        raise Rejected(
            f"workspace {ws.name!r} still serves pipelines {deployed}; undeploy them first"
        )

    def keep(entries: Mapping[tuple[str, str], Any]) -> dict[tuple[str, str], Any]:
        return {k: v for k, v in entries.items() if k[0] != ws.name}

    return replace(
        state,
        workspaces={n: w for n, w in state.workspaces.items() if n != ws.name},
        deleted_workspaces={**state.deleted_workspaces, ws.name: event.time},
        models=keep(state.models), pipelines=keep(state.pipelines),
        deployments=keep(state.deployments), assays=keep(state.assays),
        connections=keep(state.connections), orchestrations=keep(state.orchestrations),
        tasks=keep(state.tasks), alert_rules=keep(state.alert_rules),
        api_keys={i: k for i, k in state.api_keys.items() if k.workspace != ws.name},
    )


def _add_member(state: Registry, event: ControlEvent, p: Mapping[str, Any]) -> Registry:
    ws = owner_or_admin(state, event)
    active_user(state, p["user"])
    if p["role"] not in ROLES:
        raise Rejected(f"role {p['role']!r} is not one of {', '.join(ROLES)}")
    if ws.role_of(p["user"]) == OWNER and p["role"] != OWNER:
        _keep_an_owner(ws, p["user"])
    ws = replace(ws, members={**ws.members, p["user"]: p["role"]})
    return replace(state, workspaces={**state.workspaces, ws.name: ws})


def _remove_member(state: Registry, event: ControlEvent, p: Mapping[str, Any]) -> Registry:
    ws = owner_or_admin(state, event)
    if p["user"] not in ws.members:
        raise Rejected(f"{p['user']!r} is not a member of workspace {ws.name!r}")
    _keep_an_owner(ws, p["user"])
    members = {u: r for u, r in ws.members.items() if u != p["user"]}
    return replace(state, workspaces={**state.workspaces, ws.name: replace(ws, members=members)})


def _keep_an_owner(ws: Workspace, leaving: str) -> None:
    if [u for u, r in ws.members.items() if r == OWNER] == [leaving]:
        raise Rejected(f"{leaving!r} is the last owner of workspace {ws.name!r}; add another first")


USER_HANDLERS: dict[str, Handler] = {
    "CreateUser": _create_user,
    "DeactivateUser": _deactivate_user,
    "CreateWorkspace": _create_workspace,
    "DeleteWorkspace": _delete_workspace,
    "AddMember": _add_member,
    "RemoveMember": _remove_member,
}
