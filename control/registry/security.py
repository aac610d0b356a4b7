"""Who may send a control event: authentication, then authorization (pure, like the fold).

Authentication: an event id is applied once (replays are refused); the actor is a known user;
an actor with a registered key signs every event with it, and on a secured platform (one
bootstrapped with a key) every user has a key; a deactivated user cannot act. Authorization:
each event type needs one role, in PERMISSIONS; every type has an entry, or it is refused.
"""

from __future__ import annotations

from collections.abc import Mapping

from control.registry.events import ControlEvent
from control.registry.rules import admin, member, owner_or_admin
from control.registry.signing import PUBLIC_KEY_BYTES, fingerprint, verify
from control.registry.state import Registry, User
from schemas.errors import InferstreamError, Rejected

ADMIN = "platform administrator"
ANYONE = "any active user"
OWNER = "owner of the workspace, or a platform administrator"
WRITER = "owner or collaborator of the workspace"

PERMISSIONS: Mapping[str, str] = {
    "CreateUser": ADMIN,
    "DeactivateUser": ADMIN,
    "CreateWorkspace": ANYONE,  # its creator becomes its owner
    "DeleteWorkspace": OWNER,
    "AddMember": OWNER,
    "RemoveMember": OWNER,
    **{t: WRITER for t in (
        "UploadModel", "CreatePipeline", "CreatePipelineVersion", "Deploy", "Undeploy",
        "Rollback", "CreateAssay", "PauseAssay", "ResumeAssay", "DeleteAssay",
        "CreateConnection", "DeleteConnection", "CreateOrchestration", "CreateTask", "KillTask",
        "CreateApiKey", "RevokeApiKey",
        "CreateRule", "PauseRule", "ResumeRule", "DeleteRule", "PauseRoute", "ResumeRoute",
        "StartReplay", "StopReplay", "ResumeReplay",
        "Redrive",
        "StartCanary", "AdvanceCanary", "HoldCanary", "RollbackCanary", "AbortCanary",
    )},
}


def authenticate(state: Registry, event: ControlEvent) -> None:
    """Raise Rejected unless the event is new and really comes from its active actor."""
    applied_at = state.applied.offset_of(event.event_id)
    if applied_at is not None:
        raise Rejected(
            f"replayed event: id {event.event_id} was already applied (offset {applied_at}); "
            "an event is applied once: send the change again as a new event"
        )
    if not state.users:
        _bootstrap(event)
        return
    user = state.users.get(event.actor)
    if user is None:
        raise Rejected(f"unknown user {event.actor!r}: an administrator must create it first")
    _check_signature(state, user, event)
    if not user.active:
        raise Rejected(f"user {event.actor!r} is deactivated and cannot act")


def authorize(state: Registry, event: ControlEvent) -> None:
    """Raise Rejected unless the actor has the role the event's type needs."""
    if not state.users:
        return  # the bootstrap: the CreateUser rule checks the first user creates itself
    needed = PERMISSIONS.get(event.type)
    if needed == ADMIN:
        admin(state, event)
    elif needed == OWNER:
        owner_or_admin(state, event)
    elif needed == WRITER:
        member(state, event)
    elif needed != ANYONE:
        raise Rejected(f"{event.type} has no permission rule, so no one may send it")


def check_public_key(key: bytes | None, name: str) -> None:
    if key is not None and len(key) != PUBLIC_KEY_BYTES:
        raise Rejected(
            f"public key of {name!r} has {len(key)} bytes; an Ed25519 public key has "
            f"{PUBLIC_KEY_BYTES} (raw, not PEM)"
        )


def _bootstrap(event: ControlEvent) -> None:
    """The first event creates the first administrator; signed by its key, it secures all."""
    if event.type != "CreateUser":
        raise Rejected(
            f"the platform has no users yet, so {event.type} has no one to act: the first event "
            "creates the first administrator (`inferstream bootstrap NAME`)"
        )
    key = event.payload.get("public_key")
    if key is None:
        if event.signature is not None:
            raise Rejected("the first user's event is signed but registers no public key to "
                           "check it with; put the public key in CreateUser")
        return  # an open platform: for a laptop and tests, no signatures needed
    check_public_key(key, event.actor)
    if event.signature is None:
        raise Rejected(
            "the first user registers a public key but the event is unsigned: sign it with the "
            "matching private key (`inferstream bootstrap` does)"
        )
    if not verify(key, event.signature, _unsigned(event)):
        raise Rejected(
            f"the first user's signature does not verify with the public key it registers "
            f"({fingerprint(key)}): the event was altered or signed with another key"
        )


def _check_signature(state: Registry, user: User, event: ControlEvent) -> None:
    if event.signature is None:
        if user.public_key is None and not state.secured:
            return  # an open platform's user without a key
        raise Rejected(
            f"unsigned {event.type}: {user.name!r} has a registered key "
            f"({_fingerprint(user)}) and every event in their name must be signed with it; "
            f"sign with `inferstream login {user.name} --key-file FILE` or --key-file"
        )
    if user.public_key is None:
        raise Rejected(
            f"{event.type} is signed, but {user.name!r} has no registered public key to check "
            "it with; send it unsigned, or have an administrator create a user with a key"
        )
    data = _unsigned(event)
    if verify(user.public_key, event.signature, data):
        return
    # Only a failed check looks further, to tell a mistake from forgery in the reason.
    signer = next((u.name for u in state.users.values() if u.public_key and u.name != user.name
                   and verify(u.public_key, event.signature, data)), None)
    if signer is not None:
        raise Rejected(
            f"{event.type} names {user.name!r} as its actor but is signed with the key of "
            f"{signer!r}; every user signs with their own key"
        )
    raise Rejected(
        f"bad signature on {event.type} from {user.name!r}: it does not verify with their "
        f"registered key ({_fingerprint(user)}); the event was altered or signed with "
        "another key"
    )


def _unsigned(event: ControlEvent) -> bytes:
    try:
        return event.unsigned_bytes()
    except InferstreamError as exc:  # a payload built by hand around the codec
        raise Rejected(f"malformed {event.type} payload: {exc}") from exc


def _fingerprint(user: User) -> str:
    return fingerprint(user.public_key) if user.public_key else "none"
