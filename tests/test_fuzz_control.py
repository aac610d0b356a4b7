"""Bad input on the control topic: whatever bytes arrive, the registrar judges them.

Property: `judge` never raises; it accepts, or rejects with a reason; a rejected event leaves
the registry as it was (compared by content, so an in-place change shows); the status
encodes; and folding the same messages again gives the same registry and statuses. Events
come from the ControlEvent Avro schema itself, every payload type with values from the
edges (odd unicode, huge strings, negative numbers, NaN, names of things that do and do not
exist), on a platform that has users, a workspace, models, a deployed pipeline, an assay, an
orchestration and a task for them to hit; raw bytes, truncated and bit-flipped events too.
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from confluent_kafka import TopicPartition
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError
from registry_events import (
    ADMIN,
    T0,
    Action,
    add_member,
    artifact,
    create_assay,
    create_connection,
    create_orchestration,
    create_pipeline,
    create_pipeline_version,
    create_task,
    create_user,
    create_workspace,
    deploy,
    event,
    model_step,
    sha256,
    tensor_spec,
    upload_model,
)

from control.artifacts import ArtifactStore
from control.client import Client
from control.config import Settings
from control.kafka import consumer, end_offsets, producer
from control.registrar import Registrar, judge, limits_of
from control.registry.events import EVENT_TYPES, NAMESPACE, ControlEvent, ControlStatus
from control.registry.fold import MAX_BATCH_SIZE, Limits, apply, fold
from control.registry.state import AppliedEvents, ArtifactRef, Registry
from schemas.codec import codec
from schemas.errors import ArtifactError, Rejected
from tests.fuzz_strategies import BY_TYPE, ENVELOPES, FUZZ, TEXT, against_the_broker, weighted

pytestmark = pytest.mark.fuzz


def _platform() -> Registry:
    """ann (admin), bob (collaborator in ws), carol (viewer); ws has two models, a deployed
    two-version pipeline, an assay, connections, an orchestration and a task."""
    actions: list[tuple[Action, str]] = [
        (create_user("ann"), ADMIN), (create_user("bob"), ADMIN), (create_user("carol"), ADMIN),
        (create_workspace("ws"), ADMIN), (add_member("bob"), ADMIN),
        (add_member("carol", "viewer"), ADMIN),
        (upload_model("scaler", b"s", inputs=["x"], outputs=["y"]), "bob"),
        (upload_model("classifier", b"c", inputs=["y"], outputs=["label"]), "bob"),
        (create_pipeline("fraud"), "bob"),
        (create_pipeline_version("fraud", model_step("scaler")), "bob"),
        (create_pipeline_version("fraud", model_step("scaler"), model_step("classifier")), "bob"),
        (deploy("fraud", 1), "bob"), (deploy("fraud"), "bob"),
        (create_assay("drift"), "bob"),
        (create_connection("inbox"), "bob"), (create_connection("outbox"), "bob"),
        (create_orchestration("nightly", parameters={"day": None}), "bob"),
        (create_task("nightly-3am", schedule="0 3 * * *", arguments={"day": "x"}), "bob"),
    ]
    state = Registry()
    for offset, (action, actor) in enumerate(actions):
        state = apply(state, event(action, actor=actor, offset=offset))
    return state


def frozen(state: Registry) -> bytes:
    """The registry's contents as bytes: the same unless something in it changed. (Cheaper
    than a deep copy; the applied-events log is shared and grows by design, so by its ids.)"""
    applied = [(i, state.applied.offset_of(i)) for i in state.applied]
    return pickle.dumps((replace(state, applied=AppliedEvents()), applied))


PLATFORM = _platform()
SNAPSHOT = frozen(PLATFORM)


class Message:
    """What judge reads of a Kafka message."""

    def __init__(self, value: bytes | None, offset: int, key: bytes | None = None) -> None:
        self._value, self._offset, self._key = value, offset, key

    def value(self) -> bytes | None:
        return self._value

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key


def encoded(e: ControlEvent) -> bytes | None:
    """The event's bytes, or None when the codec refuses the values drawn (never a crash)."""
    try:
        return e.to_bytes()
    except Exception as exc:
        assert "cannot encode ControlEvent" in str(exc), exc
        return None


def judged(state: Registry, values: list[bytes | None], start: int = 1000
           ) -> tuple[Registry, list[ControlStatus]]:
    """Judge each message in turn, checking the property on every one."""
    statuses = []
    for offset, value in enumerate(values, start):
        snapshot = SNAPSHOT if state is PLATFORM else frozen(state)
        after, status = judge(state, Message(value, offset, b"key"))
        assert status.offset == offset
        # What the registrar publishes must encode, and be small whatever the event held.
        assert len(status.to_bytes()) < 20_000
        if status.accepted:
            assert status.reason is None
            assert after.applied.offset_of(status.event_id) == offset
        else:
            assert status.reason and status.reason.strip(), status
            assert after is state and frozen(state) == snapshot, (
                "a rejected event changed the registry")
        statuses.append(replace(status, time=T0))
        state = after
    return state, statuses


def check_deterministic(values: list[bytes | None]) -> list[ControlStatus]:
    state, statuses = judged(PLATFORM, values)
    again, statuses_again = judged(PLATFORM, values)
    assert again == state and statuses_again == statuses, "the fold is not deterministic"
    return statuses


def mangle(data: bytes, how: int, where: int, byte: int) -> bytes:
    """Truncated, one bit flipped, one byte overwritten, inserted or dropped, or extended."""
    at = where % max(len(data), 1)
    return [data[:at], data[:at] + bytes([data[at] ^ (1 << byte % 8)]) + data[at + 1:],
            data[:at] + bytes([byte]) + data[at + 1:], data[:at] + bytes([byte]) + data[at:],
            data[:at] + data[at + 1:], data + bytes([byte])][how % 6]


# -- targets -----------------------------------------------------------------------------


@FUZZ
@given(st.lists(st.binary(max_size=120) | st.binary(max_size=120).map(
    lambda b: b"\xc3\x01" + codec("ControlEvent").fingerprint + b) | st.none(),
    min_size=1, max_size=3))
def test_random_bytes_are_rejected_with_a_reason(values: list[bytes | None]) -> None:
    for status in check_deterministic(values):
        assert not status.accepted and "not a control event" in (status.reason or "")


@FUZZ
@given(st.lists(ENVELOPES, min_size=1, max_size=2))
def test_any_event_of_the_schema_is_judged(events: list[ControlEvent]) -> None:
    check_deterministic([encoded(e) for e in events])


@FUZZ
@given(ENVELOPES, st.integers(0, 5), st.integers(0, 10**6), st.integers(0, 255))
def test_mangled_events_are_judged(e: ControlEvent, how: int, where: int, byte: int) -> None:
    data = encoded(e)
    if data is not None:
        check_deterministic([mangle(data, how, where, byte), data])


@FUZZ
@given(st.sampled_from(EVENT_TYPES).flatmap(BY_TYPE.__getitem__), st.sampled_from(["ann", "bob"]))
def test_every_event_type_by_a_member_is_judged(payload: tuple[str, Any], actor: str) -> None:
    # The envelope is right here, so the rules of each type (not the checks of who) are hit.
    name, values = payload
    e = ControlEvent(name.removeprefix(NAMESPACE), values, actor, "ws", time=T0)
    check_deterministic([encoded(e)])


# -- hand-built payloads the codec would refuse: apply still rejects, never raises ---------


@FUZZ
@given(st.sampled_from(EVENT_TYPES), st.dictionaries(
    st.sampled_from(["name", "pipeline", "version", "batch_size", "batch_wait_ms", "user",
                     "role", "steps", "artifact", "inputs", "outputs", "files", "framework",
                     "schedule", "timezone", "orchestration", "arguments", "details", "type"]),
    st.none() | st.integers() | st.floats() | TEXT | st.lists(st.integers(), max_size=2)
    | st.dictionaries(TEXT, TEXT, max_size=2), max_size=8), st.sampled_from(["ann", "bob"]))
def test_hand_built_payloads_are_rejected_not_raised(type_: str, payload: dict,
                                                     actor: str) -> None:
    e = ControlEvent(type_, payload, actor, "ws", time=T0, offset=5000)
    try:
        after = apply(PLATFORM, e)
    except Exception as exc:
        assert type(exc).__name__ == "Rejected" and str(exc).strip(), repr(exc)
        assert frozen(PLATFORM) == SNAPSHOT
    else:
        assert after.applied.offset_of(e.event_id) == 5000


def test_an_event_too_large_to_quote_still_gets_a_short_status() -> None:
    # repr() makes a NUL four characters: quoted whole, the reason would be 1.2 MB.
    e = ControlEvent("CreateWorkspace", {"name": "\x00" * 300_000}, "\x00" * 300_000, "ws",
                     event_id="e" * 300_000, time=T0)
    _, status = judge(PLATFORM, Message(e.to_bytes(), 9))
    assert not status.accepted and (status.reason or "").startswith("unknown user '\\x00\\x00")
    assert (status.reason or "").endswith("(1200054 characters)")  # the whole reason, cut short
    assert "(300000 characters)" in status.event_id and len(status.to_bytes()) < 20_000


# -- limits --------------------------------------------------------------------------------


@pytest.mark.parametrize(("batch_size", "limits", "mentions"), [
    (0, Limits(), ["batch size 0", f"1..{MAX_BATCH_SIZE}"]),
    (-5, Limits(), ["batch size -5"]),
    (MAX_BATCH_SIZE + 1, Limits(), [f"batch size {MAX_BATCH_SIZE + 1}", "INFERSTREAM_MAX_BATCH"]),
    (500, Limits(max_batch_size=100), ["batch size 500", "1..100", "INFERSTREAM_MAX_BATCH"]),
])
def test_a_batch_size_outside_the_limit_is_rejected(batch_size: int, limits: Limits,
                                                    mentions: list[str]) -> None:
    message = Message(event(deploy("fraud", 1, batch_size=batch_size), actor="bob").to_bytes(), 77)
    after, status = judge(PLATFORM, message, limits)
    assert not status.accepted and after is PLATFORM
    for text in mentions:
        assert text in (status.reason or ""), status.reason


def test_a_raised_limit_admits_a_larger_batch() -> None:
    action = deploy("fraud", 1, batch_size=MAX_BATCH_SIZE * 2)
    message = Message(event(action, actor="bob").to_bytes(), 78)
    after, status = judge(PLATFORM, message, Limits(max_batch_size=MAX_BATCH_SIZE * 2))
    assert status.accepted and after.deployments[("ws", "fraud")].batch_size == MAX_BATCH_SIZE * 2
    assert fold([ControlEvent.from_bytes(message.value(), 78)], PLATFORM,
                Limits(max_batch_size=MAX_BATCH_SIZE * 2)) == after



def test_an_artifact_over_the_size_limit_is_neither_stored_nor_loaded(tmp_path: Path) -> None:
    # Nothing listens on port 1: a store that tried the broker would fail otherwise.
    store = ArtifactStore(Settings(bootstrap_servers="127.0.0.1:1", data_dir=tmp_path,
                                   max_artifact_bytes=100))
    with pytest.raises(ArtifactError, match=r"is 101 bytes, over the limit of 100 bytes.*"
                                            r"INFERSTREAM_MAX_ARTIFACT_BYTES"):
        store.put(b"x" * 101, "onnx")
    declared = ArtifactRef(sha256(b"big"), 10**12, "onnx", "t", 0, 0, 1)  # an UploadModel's say
    with pytest.raises(ArtifactError, match=r"is 1000000000000 bytes, over the limit of 100"):
        store.get(declared)
    with pytest.raises(ArtifactError, match="cannot be 50 chunks"):
        store.get(replace(declared, size=10, chunks=50))


@pytest.mark.parametrize("field", ["max_record_bytes", "max_artifact_bytes", "max_batch_size"])
def test_limits_are_positive_settings(field: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(f"INFERSTREAM_{field.upper()}", "1234")
    assert getattr(Settings(), field) == 1234
    monkeypatch.setenv(f"INFERSTREAM_{field.upper()}", "0")
    with pytest.raises(ValidationError, match=field):
        Settings()


def test_the_registry_default_is_the_settings_default() -> None:
    assert Settings().max_batch_size == MAX_BATCH_SIZE
    assert limits_of(Settings(max_batch_size=7)) == Limits(max_batch_size=7)


# -- against the real broker: the registrar ----------------------------------------------


class Judged:
    """A registrar of its own (max batch size 1000) and an admin's client in workspace ws."""

    def __init__(self, broker: Any, tmp: Path) -> None:
        self.settings = Settings(bootstrap_servers=broker.bootstrap,
                                 namespace=f"fc{uuid4().hex[:8]}", data_dir=tmp,
                                 max_batch_size=1000)
        self.registrar = Registrar(self.settings).start()
        self.client = Client(self.settings, user="ann", workspace="ws")
        self.client.create_user("ann")
        self.client.create_workspace("ws")

    def close(self) -> None:
        self.client.close()
        self.registrar.stop()

    def statuses(self, values: list[bytes], timeout: float = 30.0) -> list[ControlStatus]:
        """Put values on the control topic; their statuses, in order (matched by offset)."""
        topic, status_topic = (self.settings.topic(t) for t in ("control", "control.status"))
        start = end_offsets(self.settings, status_topic)
        offsets: list[int] = []
        p = producer(self.settings)
        for value in values:  # one partition, one idempotent producer: delivered in order
            p.produce(topic, key=uuid4().hex.encode(), value=value,
                      on_delivery=lambda err, msg: offsets.append(-1 if err else msg.offset()))
        p.flush(30)
        assert len(offsets) == len(values) and -1 not in offsets
        found: dict[int, ControlStatus] = {}
        c = consumer(self.settings, **{"enable.partition.eof": False})
        c.assign([TopicPartition(status_topic, p, o) for p, o in start.items()])
        deadline = time.monotonic() + timeout
        try:
            while len(found) < len(offsets) and time.monotonic() < deadline:
                msg = c.poll(0.2)
                if msg is not None and not msg.error():
                    status = ControlStatus.from_bytes(msg.value())
                    if status.offset in offsets:
                        found[status.offset] = status
        finally:
            c.close()
        assert len(found) == len(offsets), f"{len(offsets) - len(found)} events got no status"
        return [found[o] for o in offsets]


@pytest.fixture(scope="module")
def judging(broker: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Judged]:
    platform = Judged(broker, tmp_path_factory.mktemp("fuzz-judged"))
    yield platform
    platform.close()


GARBAGE = st.lists(weighted(
    (2, st.binary(max_size=200)),
    (1, st.binary(max_size=100).map(lambda b: b"\xc3\x01" + codec("ControlEvent").fingerprint
                                    + b)),
    (2, st.tuples(ENVELOPES, st.integers(1, 10**6)).map(  # an event cut short
        lambda t: (encoded(t[0]) or b"\x00")[: t[1] % max(len(encoded(t[0]) or b"x"), 1)]))),
    min_size=20, max_size=40)


@pytest.mark.kafka
@against_the_broker(4)
@given(GARBAGE)
def test_garbage_on_the_control_topic_is_rejected_and_the_registrar_goes_on(
        judging: Judged, garbage: list[bytes]) -> None:
    for status in judging.statuses(garbage):
        assert not status.accepted and "not a control event" in (status.reason or ""), status
    name = f"after-{uuid4().hex[:8]}"
    judging.client.create_workspace(name)  # accepted (else Rejected): the registrar goes on
    assert name in judging.registrar.registry.workspaces


@pytest.mark.kafka
def test_an_event_of_most_of_a_megabyte_gets_its_status(judging: Judged) -> None:
    e = ControlEvent("CreateWorkspace", {"name": "lab"}, "\x00" * 300_000, "ws")
    [status] = judging.statuses([e.to_bytes()])  # quoted whole, over the broker's limit
    assert not status.accepted and (status.reason or "").startswith("unknown user")


@pytest.mark.kafka
def test_the_batch_size_limit_of_the_registrar(judging: Judged) -> None:
    c = judging.client
    c.send("UploadModel", {  # registered by event alone: nothing here loads it
        "name": "m", "framework": "onnx", "artifact": artifact(b"m"), "files": [],
        "inputs": [tensor_spec("x")], "outputs": [tensor_spec("y")], "description": None})
    c.create_pipeline("p")
    c.create_pipeline_version("p", [{"model": "m", "version": 1}])
    with pytest.raises(Rejected, match=r"batch size 1001 is outside 1\.\.1000: the platform's "
                                       "limit INFERSTREAM_MAX_BATCH_SIZE is 1000"):
        c.deploy("p", batch_size=1001)
    with pytest.raises(Rejected, match=r"batch size 0 is outside 1\.\.1000: a batch holds"):
        c.deploy("p", batch_size=0)
    assert c.deploy("p", batch_size=1000).batch_size == 1000
