"""A redrive that can never finish (its range ends past the end of a dead-letter topic created
again) against the real broker: the worker stops it for good with the reason and carries out
the redrives after it, and the client's progress (`pipelines redrive-status`) says why."""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from agents.scheduling.redrive import Redriver
from control.client import Client
from control.config import Settings
from control.kafka import TopicSpec, ensure_topics, producer
from control.registry.state import Redrive, Registry

pytestmark = [pytest.mark.kafka]


def test_a_stuck_redrive_does_not_hold_the_later_ones_back(
        settings: Settings, requires_transactions: None) -> None:
    dead = settings.pipeline_topic("ws", "fraud", "dead")
    ensure_topics(settings, {dead: TopicSpec(1)})
    p = producer(settings)
    for _ in range(3):  # no dead letters: read, counted undecodable and skipped
        p.produce(dead, b"not a dead letter")
    assert p.flush(30) == 0
    stuck = Redrive("ws", "fraud", "fraud-stuck", ((0, 0, 10),), None, 3, None, None, "ann",
                    datetime.now(UTC), ())
    later = replace(stuck, redrive_id="fraud-later", ranges=((0, 0, 3),))
    registry = Registry(redrives={r.redrive_id: r for r in (stuck, later)})

    redriver = Redriver(settings)
    ticking = threading.Thread(target=redriver.tick, args=(registry,), daemon=True)
    ticking.start()
    ticking.join(60)
    redriver.stop.set()  # a tick still looping on the stuck one ends: the test fails, not hangs
    ticking.join(30)

    assert redriver.done == {"fraud-later"}
    reason = "its range of partition 0 ends at offset 10 but the dead-letter topic ends at 3"
    assert reason in redriver.stopped["fraud-stuck"]
    client = Client(settings)
    done = client.redrive_progress(later)
    assert done.finished and done.stopped is None
    shown = client.redrive_progress(stuck)
    assert not shown.finished and reason in (shown.stopped or "")
    # The next tick leaves both alone.
    redriver.stop.clear()
    redriver.tick(registry)
    assert redriver.done == {"fraud-later"} and set(redriver.stopped) == {"fraud-stuck"}
