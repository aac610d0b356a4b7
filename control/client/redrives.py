"""The Python client's dead-letter redrives: fix a redrive's ranges, plan it, send it, follow it.

A mixin of control.client.Client, kept apart so each file stays one subject. The plan reads
the dead-letter topic over the redrive's ranges and judges every letter as the worker will
(control/registry/redrives.py), so its counts are what the redrive does; progress is the
redrive's committed offsets (agents/scheduling/redrive.py).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from confluent_kafka import KafkaError, TopicPartition

from agents.scheduling.redrive import (
    UNDECODABLE,
    high_watermarks,
    progress,
    redrive_group,
    unreachable,
)
from control.kafka import consumer, end_offsets
from control.offsets import Progress, offsets_at
from control.registry.redrives import (
    REDRIVE,
    check_pattern,
    classify,
    earlier_of,
    overlapping,
)
from control.registry.state import Redrive
from schemas.codec import codec
from schemas.errors import BrokerError, DecodeError, Rejected

if TYPE_CHECKING:
    from control.config import Settings
    from control.registry.events import ControlStatus
    from control.registry.state import Registry

READ_TIMEOUT_S = 60.0


@dataclass
class RedrivePlan:
    """What a redrive does with the letters of its ranges: counts by outcome
    (control/registry/redrives.py OUTCOMES, or undecodable), and the letters it sends back
    counted by reason."""

    outcomes: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)

    @property
    def considered(self) -> int:
        return sum(self.outcomes.values())


class RedriveClient:
    """Methods of Client for dead-letter redrives."""

    settings: Settings

    if TYPE_CHECKING:
        def send(self, type: str, payload: Mapping[str, Any], **kw: Any) -> ControlStatus: ...
        def registry(self) -> Registry: ...
        def _ws(self, workspace: str | None) -> str: ...
        def _readable(self, workspace: str | None) -> tuple[str, Registry]: ...

    def redrive_ranges(self, pipeline: str, from_time: datetime | None = None,
                       to_time: datetime | None = None, workspace: str | None = None
                       ) -> list[tuple[int, int, int]]:
        """(partition, start, end) offsets of the pipeline's dead letters written from
        `from_time` up to `to_time` (default: all of them up to now)."""
        topic = self.settings.pipeline_topic(self._ws(workspace), pipeline, "dead")
        try:
            ends = end_offsets(self.settings, topic)
        except BrokerError as exc:
            raise Rejected(f"pipeline {pipeline!r} has no dead-letter topic {topic} to redrive "
                           f"from (never deployed?): {exc}") from None
        c = consumer(self.settings)
        try:
            starts = {p: 0 for p in ends} if from_time is None else offsets_at(
                c, topic, ends, from_time, READ_TIMEOUT_S)
            stops = dict(ends) if to_time is None else offsets_at(
                c, topic, ends, to_time, READ_TIMEOUT_S)
        finally:
            c.close()
        return [(p, min(starts[p], stops[p]), stops[p]) for p in sorted(ends)]

    def redrive(self, pipeline: str, *, from_time: datetime | None = None,
                to_time: datetime | None = None, reason_like: str | None = None,
                force: bool = False, workspace: str | None = None) -> Redrive:
        """Send the pipeline's dead letters (written in [from_time, to_time), whose reason fits
        `reason_like`) back through its deployed version, each once. A worker carries it out;
        see redrive_progress. force: also letters redriven INFERSTREAM_REDRIVE_LIMIT times."""
        ws = self._ws(workspace)
        ranges = self.redrive_ranges(pipeline, from_time, to_time, ws)
        status = self.send("Redrive", {
            "pipeline": pipeline,
            "ranges": [{"partition": p, "start": s, "end": e} for p, s, e in ranges],
            "from_time": from_time, "to_time": to_time, "reason_like": reason_like,
            "limit": None if force else self.settings.redrive_limit}, workspace=ws)
        return self.registry().redrives[status.result["redrive_id"]]

    def redrive_draft(self, pipeline: str, *, from_time: datetime | None = None,
                      to_time: datetime | None = None, reason_like: str | None = None,
                      force: bool = False, workspace: str | None = None
                      ) -> tuple[Redrive, Registry]:
        """The redrive `redrive` would send, not sent (for a dry run), and the registry."""
        check_pattern(reason_like)  # as the registry would refuse it
        ws = self._ws(workspace)
        ranges = tuple(self.redrive_ranges(pipeline, from_time, to_time, ws))
        registry = self.registry()
        if (ws, pipeline) not in registry.pipelines:
            raise Rejected(f"unknown pipeline {pipeline!r} in workspace {ws!r}")
        deployment = registry.deployments.get((ws, pipeline))
        if deployment is None or not deployment.active:  # as the registry would refuse it
            raise Rejected(f"pipeline {pipeline!r} is not deployed: a redrive sends dead "
                           "letters through the deployed version; deploy the fixed version "
                           "first")
        return Redrive(
            ws, pipeline, "dry-run", ranges, reason_like,
            None if force else self.settings.redrive_limit, from_time, to_time, "",
            datetime.now(UTC),
            overlapping(registry, ws, pipeline, ranges)), registry

    def plan_redrive(self, redrive: Redrive, registry: Registry | None = None) -> RedrivePlan:
        """Read the redrive's letters and judge each as the worker does."""
        registry = registry or self.registry()
        settings, earlier = self.settings, earlier_of(registry, redrive)
        topic = settings.pipeline_topic(redrive.workspace, redrive.pipeline, "dead")
        input_topic = settings.pipeline_topic(redrive.workspace, redrive.pipeline, "input")
        plan, decode = RedrivePlan(), codec("DeadLetter").decode
        c = consumer(settings)
        try:
            for partition, start, end in redrive.ranges:
                for offset, value in _read(c, topic, partition, start, end):
                    try:
                        letter = decode(value)
                    except DecodeError:
                        plan.outcomes[UNDECODABLE] += 1
                        continue
                    outcome = classify(redrive, earlier, partition, offset, letter, input_topic)
                    plan.outcomes[outcome] += 1
                    if outcome == REDRIVE:
                        plan.reasons[letter["reason"]] += 1
        finally:
            c.close()
        return plan

    def redrive_progress(self, redrive: Redrive) -> Progress:
        """Offsets read of those the redrive covers, by its committed offsets, and why it
        can never finish if it cannot (as the worker judges it)."""
        # read_uncommitted: the offsets of committed transactions, without waiting on one a
        # killed worker left open (see control.replays.committed).
        c = consumer(self.settings, group=redrive_group(self.settings, redrive.redrive_id),
                     **{"isolation.level": "read_uncommitted"})
        try:
            at = progress(c, self.settings, redrive)
            topic = self.settings.pipeline_topic(redrive.workspace, redrive.pipeline, "dead")
            highs = high_watermarks(c, topic, [p for p, _, end in redrive.ranges if at[p] < end])
        finally:
            c.close()
        total = sum(end - start for _, start, end in redrive.ranges)
        done = sum(min(at[p], end) - start for p, start, end in redrive.ranges)
        return Progress(done, total, unreachable(redrive, at, highs))

    def redrives(self, pipeline: str | None = None, workspace: str | None = None
                 ) -> list[Redrive]:
        """The workspace's redrives (of one pipeline), oldest first."""
        ws, registry = self._readable(workspace)
        return [r for r in registry.redrives.values()
                if r.workspace == ws and pipeline in (None, r.pipeline)]

    def redrive_of(self, redrive_id: str, workspace: str | None = None) -> Redrive:
        found = next((r for r in self.redrives(workspace=workspace)
                      if r.redrive_id == redrive_id), None)
        if found is None:
            raise Rejected(f"unknown redrive {redrive_id!r} in workspace "
                           f"{self._ws(workspace)!r}; `pipelines redrives` lists them")
        return found


def _read(c: Any, topic: str, partition: int, start: int, end: int
          ) -> list[tuple[int, bytes]]:
    """(offset, value) of the committed messages of topic[partition] in [start, end)."""
    if end <= start:
        return []
    c.assign([TopicPartition(topic, partition, start)])
    found: list[tuple[int, bytes]] = []
    deadline = time.monotonic() + READ_TIMEOUT_S
    while time.monotonic() < deadline:
        msg = c.poll(0.5)
        if msg is None:
            continue
        if msg.error():
            if msg.error().code() != KafkaError._PARTITION_EOF:
                raise BrokerError(f"reading {topic}[{partition}]: {msg.error()}")
            if msg.offset() >= end:  # past the range, transaction markers included
                return found
            continue
        if msg.offset() >= end:
            return found
        found.append((msg.offset(), msg.value() or b""))
        if msg.offset() + 1 >= end:
            return found
    raise BrokerError(f"reading {topic}[{partition}] up to offset {end} took over "
                      f"{READ_TIMEOUT_S:g}s")
