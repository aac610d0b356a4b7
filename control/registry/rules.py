"""Checks shared by the registry's rules: names, who may act, and what must exist.

Pure, like the fold that calls them: each returns what it checked or raises Rejected
with a reason a person can act on.
"""

from __future__ import annotations

import re

from control.registry.events import ControlEvent
from control.registry.state import COLLABORATOR, OWNER, VIEWER, Pipeline, Registry, User, Workspace
from schemas.errors import Rejected

NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")  # used in topic names: keep it Kafka-safe
USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,127}")


def check_name(kind: str, name: str, pattern: re.Pattern[str] = NAME) -> None:
    if not isinstance(name, str) or not pattern.fullmatch(name):
        rule = (
            "1-128 letters, digits, '.', '_', '@' or '-'"
            if pattern is USER_NAME
            else "1-63 lowercase letters, digits, '-' or '_', starting with a letter or digit"
        )
        raise Rejected(f"invalid {kind} name {name!r}: use {rule}")


def active_user(state: Registry, name: str) -> User:
    user = state.users.get(name)
    if user is None:
        raise Rejected(f"unknown user {name!r}: an administrator must create it first")
    if not user.active:
        raise Rejected(f"user {name!r} is deactivated and cannot act")
    return user


def admin(state: Registry, event: ControlEvent) -> None:
    if not state.users[event.actor].admin:
        raise Rejected(f"{event.type} needs a platform administrator; {event.actor!r} is not one")


def workspace_of(state: Registry, event: ControlEvent) -> Workspace:
    if not event.workspace:
        raise Rejected(f"{event.type} acts in a workspace: name one (--workspace)")
    ws = state.workspaces.get(event.workspace)
    if ws is None:
        raise Rejected(f"unknown workspace {event.workspace!r}; create it first")
    return ws


def member(state: Registry, event: ControlEvent) -> Workspace:
    """The event's workspace, when the actor may change things in it: an owner or collaborator."""
    ws = workspace_of(state, event)
    role = ws.role_of(event.actor)
    if role == VIEWER:
        raise Rejected(
            f"{event.actor!r} is a viewer of workspace {ws.name!r} and may only read; "
            f"{event.type} needs an owner or collaborator: an owner can change their role"
        )
    if role not in (OWNER, COLLABORATOR):
        raise Rejected(
            f"{event.actor!r} is not a member of workspace {ws.name!r}; an owner must add them"
        )
    return ws


def owner_or_admin(state: Registry, event: ControlEvent) -> Workspace:
    ws = workspace_of(state, event)
    if ws.role_of(event.actor) != OWNER and not state.users[event.actor].admin:
        raise Rejected(
            f"{event.type} in workspace {ws.name!r} needs an owner of it; {event.actor!r} is not"
        )
    return ws


def pipeline_of(state: Registry, ws: Workspace, name: str) -> Pipeline:
    pipeline = state.pipelines.get((ws.name, name))
    if pipeline is None:
        raise Rejected(f"unknown pipeline {name!r} in workspace {ws.name!r}")
    return pipeline


def may_read(registry: Registry, user: str, workspace: str) -> bool:
    """Whether `user` may see `workspace` and what is in it: members and administrators."""
    found, ws = registry.users.get(user), registry.workspaces.get(workspace)
    if found is None or not found.active or ws is None:
        return False
    return found.admin or ws.role_of(user) is not None
