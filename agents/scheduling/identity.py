"""Whom a worker's scheduled actions (rule actions, canary verdicts) are signed as.

The worker acts as INFERSTREAM_USER, signing with INFERSTREAM_KEY_FILE; that user must be an
owner or collaborator of the workspace acted on. On an open platform without a user it acts as
the fallback actor (a rule's creator, a canary's starter). On a secured platform without a
user and key it acts on nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from control.config import Settings, read_private_key
from control.registry.events import ControlEvent
from control.registry.state import Registry
from schemas.errors import ConfigError


@dataclass(frozen=True)
class Identity:
    """Who the worker acts as: INFERSTREAM_USER, signing with INFERSTREAM_KEY_FILE."""

    user: str | None
    key: Ed25519PrivateKey | None
    problem: str | None = None  # why a configured key could not be read

    @classmethod
    def of(cls, settings: Settings) -> Identity:
        if settings.key_file is None:
            return cls(settings.user, None)
        try:
            return cls(settings.user, read_private_key(settings.key_file))
        except ConfigError as exc:
            return cls(settings.user, None, str(exc))

    def actor(self, registry: Registry, fallback_actor: str) -> str | None:
        """Who signs an action whose owner is `fallback_actor`; None: no one can on this
        platform."""
        if registry.secured:
            return self.user if self.user and self.key else None
        return self.user or fallback_actor

    def sign(self, event: ControlEvent) -> ControlEvent:
        """The event signed with the worker's key when it acts as the worker's user."""
        if self.key is not None and event.actor == self.user:
            return event.signed_with(self.key)
        return event

    def missing(self) -> str:
        """Why the worker has no identity on a secured platform, and what to do."""
        if self.problem:
            return f"its key file cannot be used: {self.problem}"
        return ("it has no identity: set INFERSTREAM_USER to a collaborator of the "
                "workspace and INFERSTREAM_KEY_FILE to that user's private key, and restart it")
