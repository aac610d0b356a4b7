"""The registry's entities of past traffic served again: replays of an input topic's range
with another version, and redrives of dead letters through the deployed one."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class Replay:
    """A past range of `pipeline`'s input topic scored again with `version` into a side topic
    (control/registry/replays.py). `ranges`: (partition, start, end) offsets, end exclusive,
    fixed when it was asked for. Whether it is done is Kafka's to say (its group's committed
    offsets against the ranges), not the registry's: the registry knows only running or
    stopped."""

    workspace: str
    replay_id: str
    pipeline: str
    version: int
    ranges: tuple[tuple[int, int, int], ...]
    to_topic: str | None  # None: the default side topic (control/replays.py)
    from_time: datetime | None
    to_time: datetime | None
    running: bool
    created_by: str
    created_at: datetime

    @property
    def records(self) -> int:
        """How many offsets the ranges span (transaction markers among them are no records)."""
        return sum(end - start for _, start, end in self.ranges)


@dataclass(frozen=True)
class Redrive:
    """Dead letters of a pipeline sent back through its deployed version, each once.

    `ranges` are (partition, start, end) offsets of the dead-letter topic, end exclusive.
    `earlier` names the redrives of the pipeline before it whose ranges overlap its own, in
    order: a dead letter one of them took is not sent again (control/registry/redrives.py).
    """

    workspace: str
    pipeline: str
    redrive_id: str
    ranges: tuple[tuple[int, int, int], ...]
    reason_like: str | None
    limit: int | None  # skip dead letters redriven this often; None: forced
    from_time: datetime | None
    to_time: datetime | None
    created_by: str
    created_at: datetime
    earlier: tuple[str, ...] = ()
