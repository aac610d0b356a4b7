"""The Python client's users, workspaces and members: bootstrap, keys, login, and who sees what.

A mixin of control.client.Client. Reads are filtered here: a user sees the workspaces they are
a member of (any role, viewers included) and an administrator sees all. That is least
privilege for tools and people, not a wall: whoever may read the control topic reads it all,
so Kafka ACLs decide who may read it (docs/security.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from control.client.credentials import Credentials, default_key_path, default_user
from control.client.keys import read_private_key, write_private_key
from control.registry.rules import may_read
from control.registry.signing import fingerprint, new_key, public_key_of
from control.registry.state import COLLABORATOR, Registry, User, Workspace
from schemas.errors import ConfigError, Rejected

if TYPE_CHECKING:
    from control.config import Settings
    from control.registry.events import ControlStatus


class AccessClient:
    """Methods of Client for users, workspaces and members."""

    settings: Settings
    user: str | None
    _key: Ed25519PrivateKey | None
    _key_looked_up: bool

    if TYPE_CHECKING:
        def send(self, type: str, payload: Mapping[str, Any], **kw: Any) -> ControlStatus: ...
        def registry(self) -> Registry: ...
        def _ws(self, workspace: str | None) -> str: ...

    # -- the first administrator, keys and login ---------------------------------------------

    def bootstrap_admin(self, name: str, *, email: str | None = None,
                        key_file: Path | None = None) -> tuple[User, Path]:
        """Create the platform's first administrator with a key pair, which secures it.

        Uses the private key in `key_file` when that exists, else writes a new one there
        (default: beside the credentials file), 0600. From then on every event must be signed
        by its actor, and every user has a key. Logs `name` in on this machine.
        """
        if self.registry().users:
            raise Rejected(
                "this platform already has users, so it has its first administrator; an "
                "administrator creates users with `inferstream users create`"
            )
        path = Path(key_file or default_key_path(self.settings, name)).expanduser()
        made = not path.exists()
        key = new_key() if made else read_private_key(path)
        if made:
            path = write_private_key(key, path)
        self.user, self._key, self._key_looked_up = name, key, True
        try:
            self.send("CreateUser", {"name": name, "email": email, "admin": True,
                                     "public_key": public_key_of(key)}, scoped=False)
        except BaseException:
            if made:
                path.unlink(missing_ok=True)
            raise
        self._remember(name, path)
        return self.registry().users[name], path.resolve()

    def login(self, name: str, key_file: Path) -> User:
        """Sign as `name` with the key in `key_file` from now on, on this machine.

        The key must be the one registered for the user; the credentials file records it.
        """
        key = read_private_key(key_file)
        user = self.registry().users.get(name)
        if user is None:
            raise Rejected(f"unknown user {name!r} on {self.settings.namespace}; an "
                           "administrator must create it first")
        if user.public_key is None:
            raise Rejected(f"user {name!r} has no registered key (an open platform): their "
                           "events need no signature, so there is nothing to log in with")
        if user.public_key != public_key_of(key):
            raise Rejected(
                f"{key_file} is not {name!r}'s key: it is {fingerprint(public_key_of(key))}, "
                f"and {name!r} registered {fingerprint(user.public_key)}"
            )
        self._remember(name, Path(key_file))
        self.user, self._key, self._key_looked_up = name, key, True
        return user

    def _remember(self, name: str, key_file: Path) -> None:
        credentials = Credentials.load(self.settings.credentials_file)
        credentials.login(self.settings, name, key_file)
        credentials.save()

    # -- users -------------------------------------------------------------------------------

    def create_user(self, name: str, email: str | None = None, admin: bool = False, *,
                    public_key: bytes | None = None) -> User:
        """Register a user, with the raw Ed25519 public key that checks their signatures."""
        self.send("CreateUser", {"name": name, "email": email, "admin": admin,
                                 "public_key": public_key}, scoped=False)
        return self.registry().users[name]

    def create_user_with_key(self, name: str, email: str | None = None, admin: bool = False,
                             *, key_file: Path | None = None) -> tuple[User, Path]:
        """Register a user with a new key pair; the private key goes to a new 0600 file.

        Hand that file to the user over a safe channel; they `inferstream login` with it.
        """
        key = new_key()
        path = write_private_key(key, key_file or default_key_path(self.settings, name))
        try:
            user = self.create_user(name, email, admin, public_key=public_key_of(key))
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return user, path

    def deactivate_user(self, name: str) -> ControlStatus:
        return self.send("DeactivateUser", {"name": name}, scoped=False)

    def users(self) -> list[User]:
        """Every user, since members are added by name; only administrators see the e-mail
        addresses of others."""
        registry, actor = self.registry(), self._actor()
        me = registry.users.get(actor)
        everyone = sorted(registry.users.values(), key=lambda u: u.name)
        if me is not None and me.admin and me.active:
            return everyone
        return [u if u.name == actor else replace(u, email=None) for u in everyone]

    def get_user(self, name: str) -> User:
        user = self.registry().users.get(name)
        if user is None:
            raise Rejected(f"unknown user {name!r}")
        return user

    # -- workspaces and members --------------------------------------------------------------

    def create_workspace(self, name: str) -> Workspace:
        self.send("CreateWorkspace", {"name": name}, scoped=False)
        return self.registry().workspaces[name]

    def delete_workspace(self, name: str) -> ControlStatus:
        """Delete a workspace and everything registered in it (owners and administrators)."""
        return self.send("DeleteWorkspace", {"name": name}, workspace=name)

    def workspaces(self) -> list[Workspace]:
        """The workspaces the acting user may see: theirs, or all for an administrator."""
        registry = self.registry()
        return [w for _, w in sorted(registry.workspaces.items())
                if may_read(registry, self._actor(), w.name)]

    def get_workspace(self, name: str) -> Workspace:
        return self._readable(name)[1].workspaces[name]

    def add_member(self, user: str, role: str = COLLABORATOR, workspace: str | None = None
                   ) -> ControlStatus:
        """Add a user as owner, collaborator or viewer, or change their role."""
        return self.send("AddMember", {"user": user, "role": role}, workspace=self._ws(workspace))

    def remove_member(self, user: str, workspace: str | None = None) -> ControlStatus:
        return self.send("RemoveMember", {"user": user}, workspace=self._ws(workspace))

    # -- who may read what -------------------------------------------------------------------

    def _actor(self) -> str:
        """The acting user: --user / INFERSTREAM_USER, else the one logged in here."""
        if not self.user:
            self.user = default_user(self.settings)
        if not self.user:
            raise ConfigError("no user to act as: pass --user, set INFERSTREAM_USER, or "
                              "`inferstream login`")
        return self.user

    def _readable(self, workspace: str | None) -> tuple[str, Registry]:
        """The workspace and the registry, when the acting user may read that workspace."""
        ws, registry = self._ws(workspace), self.registry()
        actor = self._actor()
        if ws not in registry.workspaces:
            raise Rejected(f"unknown workspace {ws!r}")
        if not may_read(registry, actor, ws):
            raise Rejected(f"{actor!r} is not a member of workspace {ws!r}, so may not read it; "
                           "an owner can add them (as a viewer, to read only)")
        return ws, registry
