"""Authenticated control events in the fold: bootstrap, signatures, replays (pure, no Kafka).

Each rejection names its reason and changes nothing (`reject` checks both).
"""

from __future__ import annotations

import copy
import io
import json
import time
from dataclasses import replace

import fastavro
import pytest
from registry_events import (
    SCALER,
    T0,
    add_member,
    create_user,
    create_workspace,
    deactivate_user,
    event,
    given,
    key_of,
    public_of,
    reject,
    secured_user,
    signed,
    upload_model,
)

import schemas.codec as codec_module
from control.registry.events import ControlEvent
from control.registry.fold import fold
from control.registry.signing import fingerprint, new_key, public_key_of, verify
from control.registry.state import AppliedEvents, Registry
from schemas.codec import MARKER, schema_fingerprint


@pytest.fixture
def secured() -> Registry:
    """ann bootstrapped with her key; bob and carol have keys; ws: ann owner, bob collaborator."""
    return given(
        Registry(),
        signed(secured_user("ann"), actor="ann"),
        signed(secured_user("bob")),
        signed(secured_user("carol")),
        signed(create_workspace("ws")),
        signed(add_member("bob")),
    )


# -- the envelope ----------------------------------------------------------------------------


def test_signature_is_the_envelopes_last_field() -> None:
    # ControlEvent.from_bytes cuts it off the bytes as written: it must stay last.
    schema = json.loads((codec_module.AVRO_DIR / "inferstream.control.ControlEvent.avsc")
                        .read_text())
    assert schema["fields"][-1]["name"] == "signature"


def test_a_signature_covers_the_event_as_written() -> None:
    e = signed(create_workspace("lab"))

    assert e.signature is not None and len(e.signature) == 64
    assert verify(public_of("ann"), e.signature, e.unsigned_bytes())
    unsigned = replace(e, signature=None, signed=b"")
    assert e.unsigned_bytes() == unsigned.to_bytes()


@pytest.mark.parametrize(("position", "what"), [
    (12, "event id"), (-70, "workspace name"), (-5, "signature")])
def test_a_changed_byte_breaks_the_signature(secured: Registry, position: int, what: str) -> None:
    data = bytearray(signed(create_workspace("lab")).to_bytes())
    data[position] ^= 0x01  # a hex digit of the id or a letter of "lab" stays text

    reject(secured, ControlEvent.from_bytes(bytes(data)), "bad signature", "'ann'")


def test_an_event_written_before_signatures_decodes_unsigned() -> None:
    history = codec_module.HISTORY_DIR
    old = next(json.loads(p.read_text()) for p in sorted(history.glob("*ControlEvent.*.avsc"))
               if all(f["name"] != "signature" for f in json.loads(p.read_text())["fields"]))
    parsed = fastavro.parse_schema(old, _write_hint=False)
    body = io.BytesIO()
    fastavro.schemaless_writer(body, parsed, {
        "event_id": "e-1", "time": T0, "actor": "ann", "workspace": None,
        "payload": ("inferstream.control.CreateWorkspace", {"name": "lab"})})
    data = MARKER + schema_fingerprint(parsed) + body.getvalue()

    e = ControlEvent.from_bytes(data)

    assert (e.type, e.signature, e.unsigned_bytes()) == ("CreateWorkspace", None, data)
    assert "lab" in given(Registry(), event(create_user("ann"), actor="ann"), e).workspaces


# -- bootstrap -------------------------------------------------------------------------------


def test_a_signed_bootstrap_secures_the_platform(secured: Registry) -> None:
    ann = secured.users["ann"]

    assert secured.secured
    assert (ann.admin, ann.public_key) == (True, public_of("ann"))


def test_an_unsigned_bootstrap_leaves_the_platform_open() -> None:
    state = given(Registry(), event(create_user("ann"), actor="ann"))

    assert not state.secured and state.users["ann"].admin
    assert "lab" in given(state, event(create_workspace("lab"))).workspaces


def test_a_bootstrap_with_a_key_must_be_signed_by_it() -> None:
    reject(Registry(), event(secured_user("ann"), actor="ann"), "unsigned", "public key")
    reject(Registry(), signed(secured_user("ann"), actor="ann", key=key_of("mallory")),
           "does not verify", fingerprint(public_of("ann")))


def test_the_first_event_must_create_the_first_administrator() -> None:
    reject(Registry(), signed(create_workspace("lab")), "no users yet", "bootstrap")
    reject(Registry(), signed(secured_user("bob"), actor="ann", key=key_of("bob")),
           "first user must create itself")


# -- who signed it ---------------------------------------------------------------------------


def test_an_unsigned_event_is_rejected_on_a_secured_platform(secured: Registry) -> None:
    reject(secured, event(create_workspace("lab")), "unsigned CreateWorkspace", "'ann'",
           fingerprint(public_of("ann")), "inferstream login")


def test_an_event_signed_with_another_users_key_is_rejected(secured: Registry) -> None:
    forged = signed(SCALER, actor="bob", key=key_of("carol"))

    reject(secured, forged, "names 'bob' as its actor", "signed with the key of 'carol'")


def test_an_event_signed_with_an_unknown_key_is_rejected(secured: Registry) -> None:
    reject(secured, signed(SCALER, actor="bob", key=new_key()), "bad signature", "'bob'")


def test_a_replayed_event_is_rejected(secured: Registry) -> None:
    e = signed(SCALER, actor="bob", offset=7)
    state = given(secured, e)

    reject(state, e, "replayed event", e.event_id, "offset 7")
    # Even where it would be valid again: an event id is applied once.
    again = given(state, signed(upload_model("scaler", b"scaler v2"), actor="bob"))
    reject(again, e, "replayed")


def test_a_deactivated_users_signed_event_is_rejected(secured: Registry) -> None:
    state = given(secured, signed(deactivate_user("bob")))

    reject(state, signed(SCALER, actor="bob"), "'bob'", "deactivated")


def test_a_non_member_is_rejected_even_when_signed(secured: Registry) -> None:
    reject(secured, signed(SCALER, actor="carol"), "'carol'", "not a member", "'ws'")


def test_an_unknown_actor_is_rejected(secured: Registry) -> None:
    reject(secured, signed(create_workspace("lab"), actor="mallory"), "unknown user 'mallory'")


# -- keys of users ---------------------------------------------------------------------------


def test_on_a_secured_platform_every_user_has_a_key(secured: Registry) -> None:
    reject(secured, signed(create_user("dave")), "'dave'", "no public key", "secured")


def test_a_key_belongs_to_one_user(secured: Registry) -> None:
    twin = ("CreateUser", {"name": "dave", "email": None, "admin": False,
                           "public_key": public_of("bob")})
    reject(secured, signed(twin), "already 'bob'")


def test_a_public_key_has_32_raw_bytes(secured: Registry) -> None:
    pem = ("CreateUser", {"name": "dave", "email": None, "admin": False,
                          "public_key": b"-----BEGIN PUBLIC KEY-----"})
    reject(secured, signed(pem), "26 bytes", "32")


def test_on_an_open_platform_a_user_with_a_key_must_sign() -> None:
    state = given(Registry(), event(create_user("ann"), actor="ann"), event(secured_user("bob")),
                  event(create_workspace("ws")), event(add_member("bob")))

    reject(state, event(SCALER, actor="bob"), "unsigned", "'bob'")
    assert ("ws", "scaler") in given(state, signed(SCALER, actor="bob")).models
    reject(state, signed(create_workspace("lab"), actor="ann"), "no registered public key")


# -- the set of applied events ---------------------------------------------------------------


def test_applied_events_grow_in_place_and_branch_by_copying() -> None:
    a = AppliedEvents().add("e1", 0)
    b = a.add("e2", 1)
    c = b.add("e3", 2)
    branch = b.add("x", 9)

    assert c._log is b._log is a._log, "growing the newest registry copies nothing"
    assert branch._log is not c._log
    assert list(c) == ["e1", "e2", "e3"] and list(branch) == ["e1", "e2", "x"]
    assert "e3" not in b and "e3" not in branch and "x" not in c
    assert (branch.offset_of("x"), c.offset_of("e3"), a.offset_of("e2")) == (9, 2, None)
    assert copy.deepcopy(c) == c != branch


def test_a_long_replay_stays_linear() -> None:
    # Copying a frozenset per event would be ~10^9 element copies here; appending is 10^5.
    started = time.perf_counter()
    applied = AppliedEvents()
    for n in range(100_000):
        applied = applied.add(f"e{n}", n)
    assert len(applied) == 100_000 and "e99999" in applied
    assert time.perf_counter() - started < 5


def test_fold_keeps_every_applied_event_once() -> None:
    events = [signed(secured_user("ann"), actor="ann", offset=0),
              signed(create_workspace("ws"), offset=1)]
    replayed = [*events, ControlEvent.from_bytes(events[1].to_bytes(), offset=2)]

    state = fold(replayed)

    assert list(state.applied) == [e.event_id for e in events]
    assert state == fold(events)


def test_keys_are_ed25519() -> None:
    key = new_key()
    assert len(public_key_of(key)) == 32
    assert not verify(public_key_of(key), b"\x00" * 64, b"data")
    assert not verify(b"short", key.sign(b"data"), b"data")
