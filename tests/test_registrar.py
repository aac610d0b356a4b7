"""The registrar's statuses: one per event, in batches, after a stop between publishing and
committing, after the broker failed to take some, and from a follower's seed; the client's
incremental fold of the log."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest
from confluent_kafka import KafkaError, Producer

import control.registrar
from control.client import Client
from control.config import Settings
from control.follower import RegistryFollower
from control.kafka import end_offsets, ensure_topics, platform_topics, producer, read_until_end
from control.registrar import Registrar, judge, judged_until, limits_of
from control.registry.events import ControlEvent, ControlStatus
from control.registry.state import Registry
from tests.helpers import wait_until

pytestmark = pytest.mark.kafka


def _statuses(settings: Settings) -> list[ControlStatus]:
    return [ControlStatus.from_bytes(m.value())
            for m in read_until_end(settings, settings.topic("control.status"))]


def _workspaces(n: int, start: int = 0) -> list[ControlEvent]:
    """A user, then n workspaces it makes: every event accepted, each a status of its own."""
    first = [ControlEvent("CreateUser", {"name": "ann", "email": None, "admin": False,
                                         "public_key": None}, "ann", None)] if start == 0 else []
    return first + [ControlEvent("CreateWorkspace", {"name": f"ws{i}"}, "ann", None)
                    for i in range(start, start + n)]


def _produce(settings: Settings, events: list[ControlEvent]) -> None:
    p = producer(settings)
    for e in events:
        p.produce(settings.topic("control"), key=e.event_id.encode(), value=e.to_bytes())
    assert p.flush(30) == 0


def _judged_once(settings: Settings, events: list[ControlEvent]) -> list[ControlStatus]:
    """Wait for a registrar's status of each event; then every event has exactly one,
    accepted (workers' reports that they serve a version are not the registrar's)."""
    ids = {e.event_id for e in events}
    wait_until(lambda: ids <= {s.event_id for s in _statuses(settings)}, 60, "every status")
    statuses = [s for s in _statuses(settings) if s.event_id in ids and "worker" not in s.result]
    assert Counter(s.event_id for s in statuses) == Counter(ids)
    assert all(s.accepted for s in statuses), [s.reason for s in statuses if not s.accepted]
    return statuses


@pytest.fixture
def topics(settings: Settings) -> Iterator[Settings]:
    ensure_topics(settings, platform_topics(settings))
    yield settings


def test_a_burst_gets_one_status_per_event_in_order(topics: Settings) -> None:
    events = _workspaces(1500)
    _produce(topics, events)
    registrar = Registrar(topics).start()
    try:
        statuses = _judged_once(topics, events)
        assert [s.offset for s in statuses] == sorted(s.offset for s in statuses)
        assert judged_until(topics) == len(events)
    finally:
        registrar.stop()


def test_statuses_published_but_not_committed_are_not_published_again(topics: Settings) -> None:
    """A registrar that stopped after publishing a batch's statuses, before committing it:
    the next one reads where the status topic ends and judges only the events after it."""
    events = _workspaces(5)
    _produce(topics, events)
    # As a registrar would have: statuses of the first three, then a stop, nothing committed.
    registry, p = Registry(), producer(topics)
    for msg in list(read_until_end(topics, topics.topic("control")))[:3]:
        registry, status = judge(registry, msg, limits_of(topics))
        p.produce(topics.topic("control.status"), key=status.event_id.encode(),
                  value=status.to_bytes())
    assert p.flush(30) == 0
    assert judged_until(topics) == 3
    registrar = Registrar(topics).start()
    try:
        _judged_once(topics, events)
        wait_until(lambda: registrar.applied == len(events), 30, "the registrar caught up")
        assert registrar.registry.workspaces.keys() == {f"ws{i}" for i in range(5)}
    finally:
        registrar.stop()


def test_a_workers_report_is_not_a_registrars_status(topics: Settings) -> None:
    events = _workspaces(2)
    _produce(topics, events)
    report = ControlStatus(events[1].event_id, 1, "CreateWorkspace", "ann", None, True,
                           result={"worker": "w1", "serving": "1"})
    p = producer(topics)
    p.produce(topics.topic("control.status"), value=report.to_bytes())
    assert p.flush(30) == 0
    assert judged_until(topics) == 0  # no registrar's status yet: all three still to judge
    registrar = Registrar(topics).start()
    try:
        assert len(_judged_once(topics, events)) == 3
    finally:
        registrar.stop()


class _Losing:
    """A real producer that loses the first try of every third status: it reports it failed,
    as librdkafka does after message.timeout.ms when the broker was away, and sends nothing."""

    def __init__(self, real: Producer) -> None:
        self.real, self.tries = real, 0
        self.lost: set[bytes] = set()  # each key lost once
        self.to_fail: list = []  # delivery callbacks to call with the failure at the next flush

    def produce(self, topic: str, key: bytes, value: bytes, on_delivery) -> None:
        self.tries += 1
        if self.tries % 3 == 0 and key not in self.lost:
            self.lost.add(key)
            self.to_fail.append(on_delivery)
            return
        self.real.produce(topic, key=key, value=value, on_delivery=on_delivery)

    def flush(self, timeout: float) -> int:
        failing, self.to_fail = self.to_fail, []
        for failed in failing:
            failed(KafkaError(KafkaError._MSG_TIMED_OUT), None)
        return self.real.flush(timeout)


def test_statuses_the_broker_failed_to_take_are_sent_again(
        topics: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    events = _workspaces(30)
    _produce(topics, events)
    made: list[_Losing] = []

    def losing(settings: Settings, **overrides: object) -> _Losing:
        made.append(_Losing(producer(settings, **overrides)))
        return made[-1]

    monkeypatch.setattr(control.registrar, "producer", losing)
    registrar = Registrar(topics).start()
    try:
        assert len(_judged_once(topics, events)) == len(events)  # none lost, none twice
        assert len(made[0].lost) == 10
        assert judged_until(topics) == len(events)
    finally:
        registrar.stop()


def test_a_registrar_seeded_by_a_follower_replays_nothing_twice(topics: Settings) -> None:
    first = _workspaces(20)
    _produce(topics, first)
    registrar = Registrar(topics).start()  # judges the history, then goes
    _judged_once(topics, first)
    registrar.stop()
    follower = RegistryFollower(topics).start()
    try:
        follower.wait_caught_up(30)
        seeded = Registrar(topics, seed=follower.snapshot).start()
        try:
            later = _workspaces(3, start=20)
            _produce(topics, later)
            _judged_once(topics, first + later)
            wait_until(lambda: seeded.applied == len(first) + len(later), 30, "caught up")
            assert seeded.registry == follower.registry
        finally:
            seeded.stop()
    finally:
        follower.stop()


def test_the_client_folds_only_what_is_new(topics: Settings) -> None:
    registrar = Registrar(topics).start()
    try:
        with Client(topics, user="ann") as client:
            client.create_user("ann")
            client.create_workspace("one")
            registry = client.registry()
            assert client.registry() is registry  # nothing new: not replayed again
            client.create_workspace("two")
            assert set(client.registry().workspaces) == {"one", "two"}
            with Client(topics, user="ann") as fresh:
                assert fresh.registry() == client.registry()
            assert end_offsets(topics, topics.topic("control"))[0] == 3
    finally:
        registrar.stop()
