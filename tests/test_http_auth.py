"""Who may call a worker over HTTP (pure): signed requests, API keys and their rules in the
registry, roles, and the replay guard. The worker-level abuse suite is test_http_security.py."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
from registry_events import (
    T0,
    add_member,
    create_api_key,
    create_workspace,
    deactivate_user,
    delete_workspace,
    event,
    given,
    key_of,
    reject,
    revoke_api_key,
    secured_user,
    signed,
)

from control.registry.events import ControlEvent
from control.registry.http_auth import (
    ANYONE,
    Forbidden,
    Principal,
    ReplayGuard,
    SignedRequest,
    Unauthenticated,
    authenticate,
    authorize,
    new_api_key,
    sign_request,
)
from control.registry.state import Registry

NS = "prod"
WINDOW = 60.0


def by(actor: str, *actions: tuple, ws: str = "lab") -> list[ControlEvent]:
    return [signed(a, actor=actor, workspace=ws) for a in actions]


@pytest.fixture(scope="module")
def tokens() -> dict[str, tuple[str, bytes, str]]:
    """name -> (key id, sha256 of the secret, the whole key)."""
    made = {}
    for name in ("service", "reader", "old", "brief"):
        key_id, token, digest = new_api_key()
        made[name] = (key_id, digest, token)
    return made


@pytest.fixture(scope="module")
def platform(tokens) -> Registry:
    """Secured: root administers; ann owns lab (vera views it), olga owns other; nina is in
    neither. Lab has API keys service (infer), reader (read), old (revoked), brief (expiring)."""
    def key(name: str, scopes: tuple[str, ...], **more) -> tuple:
        key_id, digest, _ = tokens[name]
        return create_api_key(name, key_id=key_id, secret_sha256=digest, scopes=scopes, **more)

    return given(
        Registry(),
        *by("root", secured_user("root"), *(secured_user(u) for u in ("ann", "vera", "nina",
                                                                         "olga"))),
        *by("ann", create_workspace("lab"), add_member("vera", "viewer"),
            key("service", ("infer",)), key("reader", ("read",)), key("old", ("infer",)),
            revoke_api_key("old"), key("brief", ("infer", "read"),
                                       expires_at=T0 + timedelta(hours=2))),
        *by("olga", create_workspace("other"), ws="other"),
    )


def request(registry: Registry, authorization: str | None, body: bytes = b"{}",
            target: str = "/pipelines/p/infer?workspace=lab", now=T0 + timedelta(minutes=1),
            namespace: str = NS) -> SignedRequest | Principal:
    return authenticate(registry, namespace, authorization, "POST", target, body, WINDOW, now)


def signed_by(user: str, body: bytes = b"{}", target: str = "/pipelines/p/infer?workspace=lab",
              key: str | None = None, at=T0 + timedelta(minutes=1)) -> str:
    return sign_request(key_of(key or user), user, NS, "POST", target, body,
                        int(at.timestamp() * 1000))


# -- signed requests ---------------------------------------------------------------------------


def test_a_signed_request_names_its_user(platform: Registry) -> None:
    found = request(platform, signed_by("ann"))
    assert isinstance(found, SignedRequest) and found.principal == Principal(user="ann")


@pytest.mark.parametrize(("tamper", "reason"), [
    (dict(key="nina"), "bad signature from 'ann'"),
    (dict(body=b'{"x": 1}'), "bad signature"),
    (dict(target="/pipelines/q/infer?workspace=lab"), "bad signature"),
    (dict(namespace="staging"), "bad signature"),
    (dict(now=T0 + timedelta(minutes=5)), "beyond the 60s window"),
    (dict(now=T0 - timedelta(minutes=5)), "beyond the 60s window"),
])
def test_a_request_signed_otherwise_is_refused(platform: Registry, tamper: dict,
                                               reason: str) -> None:
    header = signed_by("ann", key=tamper.pop("key", None))
    with pytest.raises(Unauthenticated, match=reason):
        request(platform, header, **tamper)


@pytest.mark.parametrize(("header", "reason"), [
    (None, "this platform is secured: send a credential"),
    ("", "this platform is secured"),
    ("Basic YW5uOnB3", "unknown authorization scheme 'Basic'"),
    ("Inferstream-Ed25519 user=ann,time=1", "lacks nonce, signature"),
    ("Inferstream-Ed25519 user=ann,time=x,nonce=" + "0" * 32 + ",signature=AA",
     "time must be milliseconds"),
    ("Inferstream-Ed25519 user=mallory,time={t},nonce=" + "0" * 32 + ",signature=AA",
     "unknown user 'mallory'"),
    ("Inferstream-Ed25519 user=ann,time={t},nonce=" + "0" * 32 + ",signature=!!",
     "bad signature|not base64url"),
])
def test_malformed_credentials_say_what_is_wrong(platform: Registry, header: str | None,
                                                 reason: str) -> None:
    if header:
        header = header.replace("{t}", str(int((T0 + timedelta(minutes=1)).timestamp() * 1000)))
    with pytest.raises(Unauthenticated, match=reason):
        request(platform, header)


def test_a_deactivated_user_cannot_call(platform: Registry) -> None:
    later = given(platform, *by("root", deactivate_user("nina")))
    with pytest.raises(Unauthenticated, match="'nina' is deactivated"):
        request(later, signed_by("nina"))


def test_a_nonce_is_accepted_once_within_the_window(platform: Registry) -> None:
    guard = ReplayGuard(WINDOW)
    now_ms = int((T0 + timedelta(minutes=1)).timestamp() * 1000)
    header = signed_by("ann")
    first = request(platform, header)
    assert guard.check(first, now_ms) == Principal(user="ann")
    with pytest.raises(Unauthenticated, match="replayed request"):
        guard.check(request(platform, header), now_ms + 1000)
    # Forgotten once its time has left the window: by then the signature is refused as stale.
    guard.check(request(platform, signed_by("ann")), now_ms + 61_000)
    assert len(guard._seen) == 1


# -- API keys ------------------------------------------------------------------------------------


def test_api_keys_authenticate_as_their_workspace(platform: Registry, tokens) -> None:
    found = request(platform, f"Bearer {tokens['service'][2]}")
    assert isinstance(found, Principal) and found.api_key.name == "service"
    assert found.api_key.workspace == "lab" and found.api_key.scopes == ("infer",)


@pytest.mark.parametrize(("make", "reason"), [
    (lambda t: "Bearer isk_nothex", "malformed API key"),
    (lambda t: "Bearer " + t["service"][2][:-1] + ("B" if t["service"][2][-1] == "A" else "A"),
     "is not known to this platform"),
    (lambda t: f"Bearer isk_{'f' * 16}_{'A' * 43}", "is not known to this platform"),
    (lambda t: "Bearer " + t["old"][2], "API key 'old' of workspace 'lab' was revoked"),
])
def test_bad_api_keys_are_refused(platform: Registry, tokens, make, reason: str) -> None:
    with pytest.raises(Unauthenticated, match=reason):
        request(platform, make(tokens))


def test_an_api_key_expires(platform: Registry, tokens) -> None:
    brief = f"Bearer {tokens['brief'][2]}"
    assert request(platform, brief, now=T0 + timedelta(hours=1)).api_key.name == "brief"
    with pytest.raises(Unauthenticated, match="'brief' of workspace 'lab' expired at"):
        request(platform, brief, now=T0 + timedelta(hours=3))


def test_the_registry_keeps_only_a_hash_and_checks_api_key_events(platform: Registry,
                                                                   tokens) -> None:
    key_id, digest, token = tokens["service"]
    stored = platform.api_keys[key_id]
    secret = token.removeprefix(f"isk_{key_id}_")
    assert stored.secret_sha256 == digest == hashlib.sha256(secret.encode()).digest()
    assert secret not in repr(platform)
    for action, reason in [
        (create_api_key("service", key_id="1" * 16), "already has an API key named 'service'"),
        (create_api_key("twin", key_id=key_id), f"API key id {key_id} is taken"),
        (create_api_key("short", key_id="abc"), "is not 16 lowercase hex digits"),
        (create_api_key("odd", key_id="2" * 16, scopes=("write",)), "must be one or more of"),
        (create_api_key("none", key_id="3" * 16, scopes=()), "must be one or more of"),
        (create_api_key("stale", key_id="4" * 16, expires_at=T0 - timedelta(days=1)),
         "which has passed"),
        (create_api_key("hash", key_id="5" * 16, secret_sha256=b"x"), "a sha256 has 32"),
        (revoke_api_key("nope"), "has no API key 'nope' to revoke"),
        (revoke_api_key("old"), "has no API key 'old' to revoke"),
    ]:
        reject(platform, signed(action, actor="ann", workspace="lab"), reason)
    # A viewer may not make keys; a revoked key's name may be used again.
    reject(platform, signed(create_api_key("mine", key_id="6" * 16), actor="vera",
                            workspace="lab"), "may only read")
    again = given(platform, *by("ann", create_api_key("old", key_id="7" * 16)))
    assert again.api_keys["7" * 16].revoked_at is None
    # A deleted workspace takes its keys along.
    gone = given(platform, *by("olga", create_api_key("k", key_id="8" * 16),
                               delete_workspace("other"), ws="other"))
    assert "8" * 16 not in gone.api_keys and key_id in gone.api_keys


# -- who may do what -----------------------------------------------------------------------------


@pytest.mark.parametrize(("who", "workspace", "action", "allowed"), [
    ("ann", "lab", "infer", True), ("ann", "lab", "read", True),
    ("vera", "lab", "infer", False), ("vera", "lab", "read", True),
    ("nina", "lab", "infer", False), ("nina", "lab", "read", False),
    ("root", "lab", "infer", False), ("root", "lab", "read", True),  # admins read, join to act
    ("ann", "other", "infer", False), ("ann", "other", "read", False),
    ("service", "lab", "infer", True), ("service", "lab", "read", False),
    ("reader", "lab", "read", True), ("reader", "lab", "infer", False),
    ("service", "other", "infer", False), ("reader", "other", "read", False),
    ("ann", "gone", "read", False),
])
def test_roles_and_scopes(platform: Registry, tokens, who: str, workspace: str, action: str,
                          allowed: bool) -> None:
    if who in tokens:
        principal = Principal(api_key=platform.api_keys[tokens[who][0]])
    else:
        principal = Principal(user=who)
    if allowed:
        authorize(platform, principal, workspace, action)
    else:
        with pytest.raises(Forbidden):
            authorize(platform, principal, workspace, action)


def test_an_open_platform_lets_anyone_call() -> None:
    open_platform = given(Registry(), event(("CreateUser", {
        "name": "ann", "email": None, "admin": True, "public_key": None}), actor="ann"))
    assert not open_platform.secured
    assert request(open_platform, None) is ANYONE
    authorize(open_platform, ANYONE, "lab", "infer")


def test_the_schema_carries_api_key_events() -> None:
    event = signed(create_api_key("k", key_id="9" * 16, expires_at=T0), actor="ann")
    back = ControlEvent.from_bytes(event.to_bytes())
    assert back.payload["expires_at"] == T0 and back.payload["scopes"] == ["infer"]
