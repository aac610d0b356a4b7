"""Offsets of a topic as replays and redrives use them: the offsets a time covers, and how far
a consumer group of theirs has read its ranges."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from confluent_kafka import TopicPartition

from schemas.errors import BrokerError

TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Progress:
    """How far a replay or redrive got: offsets done of the offsets its ranges cover, by its
    group's committed offsets; `stopped` says why it can never finish, when it cannot."""

    done: int
    total: int
    stopped: str | None = None

    @property
    def finished(self) -> bool:
        return self.done >= self.total


def offsets_at(c: Any, topic: str, ends: Mapping[int, int], when: datetime,
               timeout: float = TIMEOUT_S) -> dict[int, int]:
    """Per partition of `ends` (partition -> end offset), the first offset written at or after
    `when`, no further than the end (the end when nothing was written since)."""
    ms = int(when.timestamp() * 1000)
    found = c.offsets_for_times([TopicPartition(topic, p, ms) for p in sorted(ends)],
                                timeout=timeout)
    out = {}
    for tp in found:
        if tp.error is not None:
            raise BrokerError(f"offsets of {topic}[{tp.partition}] at {when}: {tp.error}")
        end = ends[tp.partition]
        out[tp.partition] = end if tp.offset < 0 else min(tp.offset, end)
    return out
