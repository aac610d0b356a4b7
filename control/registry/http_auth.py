"""Who is calling a worker over HTTP, and what they may do there (pure, like the fold).

Two credentials, both decided by the registry, so every worker agrees and a revocation takes
effect wherever the control topic is read:

- **Signed requests** (operators, the CLI and the Python client): the user's Ed25519 key, the
  one that signs their control events, signs the namespace, method, path with query, time,
  a nonce and the sha256 of the body. `Authorization: Inferstream-Ed25519 user=..,time=..,
  nonce=..,signature=..`. A request is good for `window` seconds around its time, and a
  worker refuses a nonce it has seen (`ReplayGuard`, kept by the caller).
- **API keys** (programs that call inference or read results): `Authorization: Bearer
  isk_<key id>_<secret>`, made by `CreateApiKey` in one workspace with scopes infer and/or
  read; the registry holds only the sha256 of the secret.

On an open platform (bootstrapped without a key) there is nothing to check: every caller is
the anonymous principal. Reasons say what was wrong and what to do, never a secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from control.registry.rules import may_read
from control.registry.signing import sign, verify
from control.registry.state import COLLABORATOR, OWNER, ApiKey, Registry
from schemas.errors import InferstreamError

SCHEME = "Inferstream-Ed25519"
KEY_PREFIX = "isk_"
Action = Literal["infer", "read"]
_TOKEN = re.compile(rf"{KEY_PREFIX}(?P<id>[0-9a-f]{{16}})_(?P<secret>[A-Za-z0-9_-]{{43}})")
_FIELD = re.compile(r"\s*([a-z]+)=([^,]*)\s*")
_NONCE = re.compile(r"[0-9a-f]{32}")


class Unauthenticated(InferstreamError):
    """No credential, or one that does not hold (HTTP 401)."""


class Forbidden(InferstreamError):
    """A good credential whose user or key may not do this (HTTP 403)."""


@dataclass(frozen=True)
class Principal:
    """Who a request comes from: a user, a workspace's API key, or anyone (open platform)."""

    user: str | None = None
    api_key: ApiKey | None = None

    @property
    def anonymous(self) -> bool:
        return self.user is None and self.api_key is None

    def __str__(self) -> str:
        if self.api_key is not None:
            return f"API key {self.api_key.name!r} of workspace {self.api_key.workspace!r}"
        return f"user {self.user!r}" if self.user else "anyone (open platform)"


ANYONE = Principal()


@dataclass(frozen=True)
class SignedRequest:
    """A request's signature parts, once they check out: the nonce is the caller's to record."""

    principal: Principal
    nonce: str
    time_ms: int


# -- the caller's side --------------------------------------------------------------------------


def canonical(namespace: str, method: str, target: str, time_ms: int, nonce: str,
              body: bytes) -> bytes:
    """What a request signature covers; `target` is the path with its query string."""
    digest = hashlib.sha256(body).hexdigest()
    return "\n".join(("inferstream-http-1", namespace, method.upper(), target, str(time_ms),
                      nonce, digest)).encode()


def sign_request(key: Ed25519PrivateKey, user: str, namespace: str, method: str, target: str,
                 body: bytes, now_ms: int | None = None) -> str:
    """The Authorization header value of a request signed by `user`'s key."""
    time_ms = int(time.time() * 1000) if now_ms is None else now_ms
    nonce = secrets.token_hex(16)
    signature = sign(key, canonical(namespace, method, target, time_ms, nonce, body))
    encoded = base64.urlsafe_b64encode(signature).decode().rstrip("=")
    return f"{SCHEME} user={user},time={time_ms},nonce={nonce},signature={encoded}"


def new_api_key() -> tuple[str, str, bytes]:
    """A fresh key: (key id, the whole key to hand to the caller once, its secret's sha256)."""
    key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
    return key_id, f"{KEY_PREFIX}{key_id}_{secret}", hashlib.sha256(secret.encode()).digest()


# -- the worker's side ----------------------------------------------------------------------


def authenticate(registry: Registry, namespace: str, authorization: str | None, method: str,
                 target: str, body: bytes, window_s: float,
                 now: datetime | None = None) -> SignedRequest | Principal:
    """The principal behind a request, or Unauthenticated with the reason.

    A signed request comes back as a SignedRequest, whose nonce the caller must not accept
    twice within the window; an API key or an open platform's caller as a Principal.
    """
    now = now or datetime.now(UTC)
    if not registry.secured:
        return ANYONE
    if not authorization:
        raise Unauthenticated(
            "this platform is secured: send a credential, `Authorization: Bearer isk_...` (an "
            f"API key: `inferstream api-keys create`) or a request signed with your key ({SCHEME}"
            "; the Python client and CLI sign for you)")
    scheme, _, rest = authorization.strip().partition(" ")
    if scheme == "Bearer":
        return Principal(api_key=_api_key(registry, rest.strip(), now))
    if scheme == SCHEME:
        return _signed(registry, namespace, rest, method, target, body, window_s, now)
    raise Unauthenticated(f"unknown authorization scheme {scheme[:40]!r}: use Bearer (API "
                          f"keys) or {SCHEME} (signed requests)")


def authorize(registry: Registry, principal: Principal, workspace: str, action: Action) -> None:
    """Raise Forbidden unless `principal` may `action` (infer or read) in `workspace`.

    Inference writes logs in the workspace's name, so it needs an owner or collaborator (as
    changing anything there does); reading needs a member or an administrator. An API key
    acts in its own workspace, within its scopes.
    """
    if principal.anonymous and not registry.secured:
        return
    if workspace not in registry.workspaces:
        raise Forbidden(f"unknown workspace {workspace!r}")
    key = principal.api_key
    if key is not None:
        if key.workspace != workspace:
            raise Forbidden(f"{principal} cannot act in workspace {workspace!r}")
        if action not in key.scopes:
            raise Forbidden(f"{principal} has scopes {', '.join(key.scopes)}, not {action}; "
                            "make a key with that scope")
        return
    user = principal.user or ""
    if action == "read":
        if not may_read(registry, user, workspace):
            raise Forbidden(f"{principal} is not a member of workspace {workspace!r}, so may "
                            "not read it; an owner can add them")
        return
    role = registry.workspaces[workspace].role_of(user)
    if role not in (OWNER, COLLABORATOR):
        what = f"a {role}" if role else "not a member"
        raise Forbidden(f"{principal} is {what} of workspace {workspace!r}; inference needs "
                        "an owner or collaborator (or an API key with scope infer)")


class ReplayGuard:
    """The nonces of signed requests seen within the window: a second use is refused.

    One per worker, in memory: a request captured on the wire could be replayed to another
    worker within the window, which TLS prevents (docs: security).
    """

    def __init__(self, window_s: float, capacity: int = 1_000_000) -> None:
        self.window_ms, self.capacity = int(window_s * 1000), capacity
        self._seen: OrderedDict[str, int] = OrderedDict()  # nonce -> expiry, oldest first

    def check(self, signed: SignedRequest, now_ms: int | None = None) -> Principal:
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        while self._seen and next(iter(self._seen.values())) <= now_ms:
            self._seen.popitem(last=False)
        if signed.nonce in self._seen:
            raise Unauthenticated("replayed request: this signature's nonce was used already; "
                                  "sign every request afresh")
        if len(self._seen) >= self.capacity:
            raise Unauthenticated("too many signed requests within the window; retry shortly")
        # Kept until the request's own time leaves the window (its time, not ours, bounds it).
        self._seen[signed.nonce] = max(signed.time_ms + self.window_ms, now_ms + 1)
        self._seen.move_to_end(signed.nonce)
        return signed.principal


def _api_key(registry: Registry, token: str, now: datetime) -> ApiKey:
    match = _TOKEN.fullmatch(token)
    if match is None:
        raise Unauthenticated("malformed API key: expected isk_<16 hex digits>_<43 characters>")
    key = registry.api_keys.get(match["id"])
    digest = hashlib.sha256(match["secret"].encode()).digest()
    # Compared in constant time, and the same reason for an unknown id and a wrong secret.
    if key is None or not hmac.compare_digest(digest, key.secret_sha256):
        raise Unauthenticated(f"API key isk_{match['id']}_… is not known to this platform")
    if key.revoked_at is not None:
        raise Unauthenticated(f"API key {key.name!r} of workspace {key.workspace!r} was "
                              f"revoked at {key.revoked_at.isoformat()}")
    if not key.usable_at(now):
        raise Unauthenticated(f"API key {key.name!r} of workspace {key.workspace!r} expired "
                              f"at {key.expires_at.isoformat() if key.expires_at else '?'}")
    return key


def _signed(registry: Registry, namespace: str, header: str, method: str, target: str,
            body: bytes, window_s: float, now: datetime) -> SignedRequest:
    fields = dict(_FIELD.fullmatch(part).groups() for part in header.split(",")
                  if _FIELD.fullmatch(part))
    missing = [f for f in ("user", "time", "nonce", "signature") if not fields.get(f)]
    if missing:
        raise Unauthenticated(f"{SCHEME} header lacks {', '.join(missing)}")
    if not fields["time"].isdigit() or not _NONCE.fullmatch(fields["nonce"]):
        raise Unauthenticated(f"{SCHEME} header: time must be milliseconds since the epoch and "
                              "nonce 32 hex digits")
    time_ms = int(fields["time"])
    skew = abs(now.timestamp() * 1000 - time_ms) / 1000
    if skew > window_s:
        raise Unauthenticated(f"signed request is {skew:.0f}s away from this worker's clock, "
                              f"beyond the {window_s:g}s window: sign afresh, keep clocks in "
                              "sync (NTP)")
    user = registry.users.get(fields["user"])
    if user is None or user.public_key is None:
        raise Unauthenticated(f"unknown user {fields['user'][:128]!r}, or one without a key")
    if not user.active:
        raise Unauthenticated(f"user {user.name!r} is deactivated")
    try:
        encoded = fields["signature"]
        signature = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    except ValueError:
        raise Unauthenticated("signature is not base64url") from None
    data = canonical(namespace, method, target, time_ms, fields["nonce"], body)
    if not verify(user.public_key, signature, data):
        raise Unauthenticated(f"bad signature from {user.name!r}: the request was altered, "
                              "sent to another platform, or signed with another key")
    return SignedRequest(Principal(user=user.name), fields["nonce"], time_ms)


def may_infer(registry: Registry, principal: Principal, workspace: str) -> bool:
    try:
        authorize(registry, principal, workspace, "infer")
    except Forbidden:
        return False
    return True

