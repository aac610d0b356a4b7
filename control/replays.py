"""What a replay is made of in Kafka: its topics, consumer group and transactional id, the
offsets a time range covers, and its progress (its group's committed offsets against its
ranges). Used by the worker that runs replays and by the client that starts and watches them.
"""

from __future__ import annotations

from datetime import datetime

from confluent_kafka import TopicPartition

from control.config import Settings
from control.kafka import consumer, watermarks
from control.offsets import TIMEOUT_S, Progress, offsets_at
from control.registry.state import Replay
from schemas.errors import BrokerError, InferstreamError


def side_topic(settings: Settings, replay: Replay) -> str:
    """Where the replay's results go: `<ns>.<ws>.<pipeline>.replay.<name>`, the name its
    to_topic (a name, never a whole topic: control/registry/replays.py), else its id."""
    return (f"{settings.pipeline_topic(replay.workspace, replay.pipeline, 'replay')}."
            f"{replay.to_topic or replay.replay_id}")


def dead_topic(settings: Settings, replay: Replay) -> str:
    """The replay's own dead-letter topic (never the live one): the side topic's `.dead`."""
    return f"{side_topic(settings, replay)}.dead"


def group(settings: Settings, replay: Replay) -> str:
    """The consumer group whose committed offsets are the replay's progress. Dots separate
    the parts: no workspace or replay name holds one, so no two replays share a group."""
    return f"{settings.namespace}.replay.{replay.workspace}.{replay.replay_id}"


def transactional_id(settings: Settings, replay: Replay) -> str:
    """One per replay: a worker that takes the replay over fences any other still writing."""
    return f"{settings.namespace}.replay.{replay.workspace}.{replay.replay_id}"


def ranges_of(settings: Settings, topic: str, start: datetime | None, end: datetime | None,
              start_offset: int | None = None, end_offset: int | None = None
              ) -> list[tuple[int, int, int]]:
    """(partition, start, end) offsets of `topic` between two times (None: the topic's start,
    or its end now) or two offsets (the same for every partition, clipped to what it holds);
    end exclusive. Fixed once: records that arrive later are not part of the replay."""
    c = consumer(settings)
    try:
        meta = c.list_topics(topic, timeout=TIMEOUT_S).topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            raise BrokerError(f"input topic {topic!r} is not there "
                              f"({meta.error if meta else 'unknown topic'}); a replay reads a "
                              "pipeline's input topic, which its first deploy creates")
        marks = {p: watermarks(c, TopicPartition(topic, p), TIMEOUT_S)
                 for p in sorted(meta.partitions)}
        lows = {p: low for p, (low, _) in marks.items()}
        highs = {p: high for p, (_, high) in marks.items()}
        firsts = _at(c, topic, lows, highs, start, start_offset, lows)
        lasts = _at(c, topic, lows, highs, end, end_offset, highs)
        return [(p, firsts[p], max(firsts[p], lasts[p])) for p in sorted(marks)]
    finally:
        c.close()


def _at(c: object, topic: str, lows: dict[int, int], highs: dict[int, int],
        when: datetime | None, offset: int | None, default: dict[int, int]) -> dict[int, int]:
    """Per partition: `offset` clipped to what the partition holds, else the first offset at
    or after `when`, else `default`'s."""
    if offset is not None:
        return {p: min(max(offset, lows[p]), high) for p, high in highs.items()}
    return dict(default) if when is None else offsets_at(c, topic, highs, when)


def committed(settings: Settings, replay: Replay, stable: bool = True) -> dict[int, int]:
    """The replay group's committed offset per partition of its ranges (its start if none).

    stable=False (progress, status): the offsets of committed transactions only, at once. A
    read_committed consumer asks for stable offsets, which waits while a transaction holds
    the group's offsets: after a worker is killed mid-replay, until the next one fences it or
    the transaction times out."""
    topic = settings.pipeline_topic(replay.workspace, replay.pipeline, "input")
    isolation = {} if stable else {"isolation.level": "read_uncommitted"}
    c = consumer(settings, group=group(settings, replay), **isolation)
    try:
        found = c.committed([TopicPartition(topic, p) for p, _, _ in replay.ranges],
                            timeout=TIMEOUT_S)
    finally:
        c.close()
    starts = {p: start for p, start, _ in replay.ranges}
    return {tp.partition: tp.offset if tp.offset >= 0 else starts[tp.partition] for tp in found}


def progress(settings: Settings, replay: Replay, offsets: dict[int, int] | None = None
             ) -> Progress:
    """The replay's progress from its group's committed offsets (or these)."""
    offsets = committed(settings, replay, stable=False) if offsets is None else offsets
    done = sum(min(max(offsets.get(p, start), start), end) - start
               for p, start, end in replay.ranges)
    return Progress(done, replay.records)


class ReplayError(InferstreamError):
    """A replay that cannot be started or run as asked."""
