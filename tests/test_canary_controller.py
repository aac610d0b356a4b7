"""The canary controller without Kafka or ClickHouse: which window it measures, how often it
measures a step that waits, that dead letters it could not all read judge nothing, and whom it
acts as on a secured platform."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import pytest
from confluent_kafka import TopicPartition
from registry_events import (
    T0,
    add_member,
    create_pipeline,
    create_pipeline_version,
    create_workspace,
    deploy,
    event,
    given,
    key_of,
    model_step,
    secured_user,
    signed,
    upload_model,
    ws_members,
)

import agents.scheduling.canary_controller as module
from agents.scheduling.canary_controller import CanaryController
from agents.scheduling.identity import Identity
from control.config import Settings
from control.registry.events import ControlEvent
from control.registry.fold import apply
from control.registry.state import Deployment, Registry
from schemas.errors import BrokerError
from sinks.canary_measures import LogMeasures

S = timedelta(seconds=1)
EVERY_S, LAG_S, TICK_S = 60, 5, 1


START = ("StartCanary", {
    "pipeline": "fraud", "version": 2, "steps": [10, 100], "every_s": EVERY_S, "hash_key": None,
    "max_dead_letter_pp": 1.0, "max_error_pp": 1.0, "max_p99_ratio": 1.5, "p99_slack_ms": 5.0,
    "min_records": 100, "assays": []})


def fraud() -> tuple:
    return (upload_model("scaler", b"s", inputs=["x"], outputs=["y"]), create_pipeline("fraud"),
            *(create_pipeline_version("fraud", model_step("scaler"), rules=2) for _ in range(2)),
            deploy("fraud", 1))


@pytest.fixture
def registry() -> Registry:
    """fraud v1 deployed, a canary of v2 started at T0 (steps 10, 100, every 60 s)."""
    state = given(Registry(), *ws_members(), *(event(a) for a in fraud()))
    return apply(state, replace(event(START), time=T0))


class Producer:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def produce(self, topic: str, key: bytes, value: bytes, on_delivery: Any) -> None:
        self.sent.append(value)
        on_delivery(None, None)

    def flush(self, timeout: float) -> int:
        return 0


def controller(registry: Registry) -> CanaryController:
    c = object.__new__(CanaryController)  # no Kafka clients
    c.settings = Settings(canary_tick_s=TICK_S, canary_sink_lag_s=LAG_S)
    c.registry_of, c.caught_up = (lambda: registry), (lambda: None)
    c.identity, c._producer = Identity(None, None), Producer()
    c._said, c._later = set(), {}
    return c


def test_both_versions_are_measured_over_one_window_and_a_waiting_step_backs_off(
        registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    windows: list[tuple[str, datetime, datetime]] = []

    def logs(_s: object, _w: str, _p: str, versions: tuple[int, ...], lo: datetime,
             hi: datetime) -> dict[int, LogMeasures]:
        windows.append(("logs", lo, hi))
        return {v: LogMeasures(10, 10, 0, 1000.0) for v in versions}  # too few: it holds

    def dead(_d: Deployment, lo: datetime, hi: datetime) -> Counter[int]:
        windows.append(("dead", lo, hi))
        return Counter()

    monkeypatch.setattr(module, "log_measures", logs)
    c = controller(registry)
    monkeypatch.setattr(c, "dead_letters", dead)
    due = T0 + EVERY_S * S
    assert c.tick(object, due + (LAG_S - 1) * S) == [] and windows == []  # logs may lag
    held = c.tick(object, due + LAG_S * S)
    assert [e.type for e in held] == ["HoldCanary"]
    assert windows == [("logs", T0, due), ("dead", T0, due)]  # the same window, lag before now
    # The registry now shows the hold: measured again after max(tick, every/10) = 6 s only.
    c.registry_of = lambda: apply(registry, held[0])
    for seconds in range(1, 6):
        assert c.tick(object, due + (LAG_S + seconds) * S) == []
    assert len(windows) == 2
    assert c.tick(object, due + (LAG_S + 6) * S) == []  # judged, held again: said once
    assert len(windows) == 4 and windows[-1] == ("dead", T0, due + 6 * S)


class SilentConsumer:
    """A dead-letter topic with letters at offsets 0..9 that never arrive."""

    def list_topics(self, topic: str, timeout: float) -> Any:
        meta = type("Meta", (), {"partitions": {0: None}, "error": None})()
        return type("Cluster", (), {"topics": {topic: meta}})()

    def offsets_for_times(self, wanted: list[TopicPartition], timeout: float
                          ) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, 0) for tp in wanted]

    def get_watermark_offsets(self, tp: TopicPartition, timeout: float) -> tuple[int, int]:
        return 0, 10

    def assign(self, _: object) -> None: ...

    def unassign(self) -> None: ...

    def poll(self, timeout: float) -> None:
        return None


def test_dead_letters_not_all_read_judge_nothing_until_the_next_tick(
        registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    c = controller(registry)
    c._consumer = SilentConsumer()
    d = registry.deployments[("ws", "fraud")]
    with pytest.raises(BrokerError, match=r"partitions \[0\] were not all read within 0.2 s"):
        c.dead_letters(d, T0, T0 + S, timeout_s=0.2)
    monkeypatch.setattr(module, "log_measures", lambda *a: {
        v: LogMeasures(1000, 1000, 0, 1000.0) for v in a[3]})
    monkeypatch.setattr(c, "dead_letters", lambda *a: (_ for _ in ()).throw(BrokerError("x")))
    now = T0 + (EVERY_S + LAG_S) * S
    assert c.tick(object, now) == [] and c._producer.sent == []  # no advance on a part
    monkeypatch.setattr(c, "dead_letters", lambda *a: Counter())
    assert [e.type for e in c.tick(object, now + TICK_S * S)] == ["AdvanceCanary"]


def test_on_a_secured_platform_it_acts_only_as_a_collaborator_with_a_key(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Every event signed; ann started the canary, bot is a collaborator. A worker with no
    identity judges but publishes nothing, and says why once; as bot it signs the advance,
    which the fold accepts."""
    state = given(Registry(), *(signed(a, workspace=None) for a in (
        secured_user("ann"), secured_user("bot"))), signed(create_workspace("ws")),
        signed(add_member("bot")), *(signed(a) for a in fraud()), signed(START))
    assert state.secured
    monkeypatch.setattr(module, "log_measures", lambda *a: {
        v: LogMeasures(1000, 1000, 0, 1000.0) for v in a[3]})
    c = controller(state)
    monkeypatch.setattr(c, "dead_letters", lambda *a: Counter())
    now = T0 + (EVERY_S + LAG_S) * S
    for seconds in (0, 6):  # judged again once the step's back-off is over: said once
        assert c.tick(object, now + seconds * S) == [] and c._producer.sent == []
    assert caplog.text.count("cannot act on this secured platform") == 1
    assert "INFERSTREAM_USER" in caplog.text
    c.identity = Identity("bot", key_of("bot"))
    [advance] = c.tick(object, now + 12 * S)
    assert (advance.type, advance.actor) == ("AdvanceCanary", "bot")
    assert advance.signature is not None
    after = apply(state, ControlEvent.from_bytes(advance.to_bytes(), offset=100))
    canary = after.deployments[("ws", "fraud")].canary
    assert canary is not None and canary.step == 2
