"""What a replay is made of in Kafka: its topics, consumer group and transactional id, the
offsets a time range covers, and its progress (its group's committed offsets against its
ranges). Used by the worker that runs replays and by the client that starts and watches them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from confluent_kafka import TopicPartition

from control.config import Settings
from control.kafka import consumer
from control.registry.state import Replay
from schemas.errors import BrokerError, InferstreamError

TIMEOUT_S = 10.0


def side_topic(settings: Settings, replay: Replay) -> str:
    """Where the replay's results go: its to_topic, else `<ns>.<ws>.<pipeline>.replay.<id>`."""
    return replay.to_topic or (
        f"{settings.pipeline_topic(replay.workspace, replay.pipeline, 'replay')}."
        f"{replay.replay_id}")


def dead_topic(settings: Settings, replay: Replay) -> str:
    """The replay's own dead-letter topic (never the live one): the side topic's `.dead`."""
    return f"{side_topic(settings, replay)}.dead"


def group(settings: Settings, replay: Replay) -> str:
    """The consumer group whose committed offsets are the replay's progress."""
    return f"{settings.namespace}-replay-{replay.workspace}-{replay.replay_id}"


def transactional_id(settings: Settings, replay: Replay) -> str:
    """One per replay: a worker that takes the replay over fences any other still writing."""
    return f"{settings.namespace}-replay-{replay.workspace}-{replay.replay_id}"


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
        out = []
        for p in sorted(meta.partitions):
            low, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=TIMEOUT_S)
            first = _offset_at(c, topic, p, start, low, high) if start_offset is None \
                else min(max(start_offset, low), high)
            last = _offset_at(c, topic, p, end, high, high) if end_offset is None \
                else min(max(end_offset, low), high)
            out.append((p, first, max(first, last)))
        return out
    finally:
        c.close()


def _offset_at(c: object, topic: str, partition: int, when: datetime | None, default: int,
               high: int) -> int:
    """The first offset at or after `when` (the end when none is), or `default` for None."""
    if when is None:
        return default
    ms = int(when.timestamp() * 1000)
    found = c.offsets_for_times([TopicPartition(topic, partition, ms)],  # type: ignore[attr-defined]
                                timeout=TIMEOUT_S)[0]
    if found.error is not None:
        raise BrokerError(f"offsets of {topic}[{partition}] at {when}: {found.error}")
    return high if found.offset < 0 else found.offset


@dataclass(frozen=True)
class Progress:
    """How far a replay got: records (offsets) done of its ranges', by its committed offsets."""

    done: int
    total: int

    @property
    def finished(self) -> bool:
        return self.done >= self.total


def committed(settings: Settings, replay: Replay) -> dict[int, int]:
    """The replay group's committed offset per partition of its ranges (its start if none)."""
    topic = settings.pipeline_topic(replay.workspace, replay.pipeline, "input")
    c = consumer(settings, group=group(settings, replay))
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
    offsets = committed(settings, replay) if offsets is None else offsets
    done = sum(min(max(offsets.get(p, start), start), end) - start
               for p, start, end in replay.ranges)
    return Progress(done, replay.records)


class ReplayError(InferstreamError):
    """A replay that cannot be started or run as asked."""
