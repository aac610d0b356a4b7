"""Who looks at the console, and which workspaces they may see (pure but for the session map).

On a secured platform a person signs in with their user name and one of two credentials that
control/registry/http_auth.py already knows:

- an **API key with scope read** (`inferstream api-keys create NAME --scope read`): the
  session sees the key's workspace, and only while the named user may read it;
- a **sign-in token** (`inferstream console --token`): a request signed with the user's own
  key, good for the HTTP window; the session sees every workspace the user may read (all of
  them for an administrator).

Every request re-checks its session against the registry, so a revoked key, a removed member
or a deactivated user loses the console at once. On an open platform everyone sees everything.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from control.registry.events import ControlStatus
from control.registry.http_auth import (
    KEY_PREFIX,
    SCHEME,
    Forbidden,
    ReplayGuard,
    SignedRequest,
    Unauthenticated,
    authenticate,
)
from control.registry.rules import may_read
from control.registry.state import Registry

SIGN_IN_TARGET = "/login"  # what a sign-in token signs: GET /login with an empty body
SESSION_S = 8 * 3600.0


@dataclass(frozen=True)
class Session:
    """A signed-in person: by API key (key_id) or by their own key (key_id None)."""

    id: str
    user: str
    key_id: str | None
    expires: float  # time.monotonic()


@dataclass(frozen=True)
class Viewer:
    """The person behind one request, as the registry says now."""

    user: str | None  # None on an open platform
    key_workspace: str | None = None  # signed in with an API key of this workspace
    admin: bool = False

    @property
    def anonymous(self) -> bool:
        return self.user is None

    def workspaces(self, registry: Registry) -> list[str]:
        """The workspaces this viewer may read, sorted."""
        if self.anonymous:
            return sorted(registry.workspaces)
        if self.key_workspace is not None:
            return [self.key_workspace] if self.key_workspace in registry.workspaces else []
        return sorted(w for w in registry.workspaces if may_read(registry, self.user or "", w))

    def sees(self, registry: Registry, status: ControlStatus, readable: set[str]) -> bool:
        """Whether a control event's status is this viewer's to see (as Client.statuses)."""
        if self.anonymous or (status.workspace is not None and status.workspace in readable):
            return True
        # A person signed in with their own key also sees their own events and, as an
        # administrator, every event; an API key vouches for its workspace only.
        return self.key_workspace is None and (self.admin or status.actor == self.user)

    def __str__(self) -> str:
        if self.anonymous:
            return "anyone (open platform)"
        how = f"API key of {self.key_workspace}" if self.key_workspace else "own key"
        return f"{self.user} ({how})"


ANYONE = Viewer(None)


class Sessions:
    """The server-side session map: random ids (the cookie) to sessions, with expiry."""

    def __init__(self, namespace: str, window_s: float, lifetime_s: float = SESSION_S) -> None:
        self.namespace, self.window_s, self.lifetime_s = namespace, window_s, lifetime_s
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()
        self._replays = ReplayGuard(window_s)

    def sign_in(self, registry: Registry, user: str, credential: str) -> Session:
        """A new session, or Unauthenticated / Forbidden saying why not."""
        user, credential = user.strip(), credential.strip()
        if credential.startswith(KEY_PREFIX):
            found = authenticate(registry, self.namespace, f"Bearer {credential}", "GET",
                                 SIGN_IN_TARGET, b"", self.window_s)
            key = getattr(found, "api_key", None)
            if key is None:
                raise Unauthenticated("this platform is open: there is nothing to sign in to")
            if "read" not in key.scopes:
                raise Forbidden(f"API key {key.name!r} has scopes {', '.join(key.scopes)}; the "
                                "console needs one with scope read")
            if not may_read(registry, user, key.workspace):
                raise Forbidden(f"user {user[:128]!r} may not read workspace {key.workspace!r}"
                                ", whose key this is: sign in with your own name")
            session = self._new(user, key.key_id)
        elif credential.startswith(SCHEME):
            found = authenticate(registry, self.namespace, credential, "GET", SIGN_IN_TARGET,
                                 b"", self.window_s)
            if not isinstance(found, SignedRequest):
                raise Unauthenticated("this platform is open: there is nothing to sign in to")
            principal = self._replays.check(found)
            if user and user != principal.user:
                raise Unauthenticated(f"this token signs in {principal.user!r}, not "
                                      f"{user[:128]!r}")
            session = self._new(principal.user or "", None)
        else:
            raise Unauthenticated(f"unknown credential: paste an API key ({KEY_PREFIX}...) with "
                                  "scope read, or a token of `inferstream console --token`")
        return session

    def viewer(self, registry: Registry, session_id: str | None) -> Viewer | None:
        """Who holds this session now, or None: sign in (again)."""
        if not registry.secured:
            return ANYONE
        with self._lock:
            session = self._sessions.get(session_id or "")
            if session is not None and session.expires < time.monotonic():
                del self._sessions[session.id]
                session = None
        if session is None:
            return None
        user = registry.users.get(session.user)
        if user is None or not user.active:
            return None
        if session.key_id is None:
            return Viewer(user.name, admin=user.admin)
        key = registry.api_keys.get(session.key_id)
        if (key is None or not key.usable_at(datetime.now(UTC)) or "read" not in key.scopes
                or not may_read(registry, user.name, key.workspace)):
            return None
        return Viewer(user.name, key_workspace=key.workspace)

    def end(self, session_id: str | None) -> None:
        with self._lock:
            self._sessions.pop(session_id or "", None)

    def _new(self, user: str, key_id: str | None) -> Session:
        session = Session(secrets.token_urlsafe(32), user, key_id,
                          time.monotonic() + self.lifetime_s)
        with self._lock:
            now = time.monotonic()  # forget the expired ones, so the map cannot only grow
            for old in [s for s in self._sessions.values() if s.expires < now]:
                del self._sessions[old.id]
            self._sessions[session.id] = session
        return session
