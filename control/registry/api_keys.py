"""The registry's rules for API keys: workspace keys that authenticate HTTP callers (pure).

A key is `isk_<key id>_<secret>`; the registry holds its id, scopes and the sha256 of its
secret, never the secret. Owners and collaborators make and revoke a workspace's keys.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from control.registry.events import ControlEvent
from control.registry.rules import check_name, member
from control.registry.state import ApiKey, Registry
from schemas.errors import Rejected

Handler = Callable[[Registry, ControlEvent, Mapping[str, Any]], Registry]
SCOPES = ("infer", "read")
KEY_ID = re.compile(r"[0-9a-f]{16}")
SECRET_HASH_BYTES = 32


def _create_api_key(state: Registry, event: ControlEvent, p: Mapping[str, Any]) -> Registry:
    ws = member(state, event)
    check_name("API key", p["name"])
    if find_api_key(state, ws.name, p["name"]) is not None:
        raise Rejected(f"workspace {ws.name!r} already has an API key named {p['name']!r}; "
                       "revoke it first or choose another name")
    if not KEY_ID.fullmatch(p["key_id"]):
        raise Rejected(f"API key id {p['key_id']!r} is not 16 lowercase hex digits")
    if p["key_id"] in state.api_keys:
        raise Rejected(f"API key id {p['key_id']} is taken; make a new key")
    if len(p["secret_sha256"]) != SECRET_HASH_BYTES:
        raise Rejected(f"secret_sha256 has {len(p['secret_sha256'])} bytes; a sha256 has 32")
    scopes = tuple(dict.fromkeys(p["scopes"]))
    if not scopes or not set(scopes) <= set(SCOPES):
        raise Rejected(f"API key scopes {list(p['scopes'])} must be one or more of "
                       f"{', '.join(SCOPES)}")
    expires = p.get("expires_at")
    if expires is not None and expires <= event.time:
        raise Rejected(f"API key {p['name']!r} would expire at {expires.isoformat()}, "
                       "which has passed; give a time to come")
    key = ApiKey(ws.name, p["name"], p["key_id"], bytes(p["secret_sha256"]), scopes,
                 event.actor, event.time, expires)
    return replace(state, api_keys={**state.api_keys, key.key_id: key})


def _revoke_api_key(state: Registry, event: ControlEvent, p: Mapping[str, Any]) -> Registry:
    ws = member(state, event)
    key = find_api_key(state, ws.name, p["name"])
    if key is None:
        raise Rejected(f"workspace {ws.name!r} has no API key {p['name']!r} to revoke")
    key = replace(key, revoked_at=event.time)
    return replace(state, api_keys={**state.api_keys, key.key_id: key})


def find_api_key(state: Registry, workspace: str, name: str) -> ApiKey | None:
    """The workspace's unrevoked key of that name."""
    return next((k for k in state.api_keys.values() if k.workspace == workspace
                 and k.name == name and k.revoked_at is None), None)


API_KEY_HANDLERS: dict[str, Handler] = {
    "CreateApiKey": _create_api_key,
    "RevokeApiKey": _revoke_api_key,
}
