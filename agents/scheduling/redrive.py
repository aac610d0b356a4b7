"""Carries out dead-letter redrives: sends the chosen dead letters back to their pipeline's
input topic, each exactly once.

A Redrive event (control/registry/redrives.py) fixes offset ranges of the pipeline's
dead-letter topic. The worker that runs schedules carries the registry's redrives out one at a
time: it reads each range with a consumer of the redrive's own group `<namespace>.redrive.<id>`
and republishes each chosen letter's original bytes and key to the input topic, marked with
the redrive's headers (agents/serving/redriven.py), through a transactional producer of the
redrive's own (`<namespace>-redrive-<id>`) whose transaction also commits the group's offsets.
A crash and restart (here or on the worker that takes over) resumes from the committed offsets:
the new producer fences the old one and its open transaction is aborted, so no letter is lost
or sent twice. The intake then serves the records as any others, exactly once, through the
version deployed by then; one that fails again is dead-lettered with its redrive count.
A redrive that can never finish (`unreachable`) is stopped for good, and one that reads
nothing for STALL_S gives way: neither holds the later redrives back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from agents.serving.redriven import Origin
from control.config import Settings
from control.kafka import consumer, producer, watermarks
from control.registry.redrives import REDRIVE, classify, earlier_of
from control.registry.state import Redrive, Registry
from schemas.codec import codec
from schemas.errors import DecodeError

log = logging.getLogger(__name__)
CALL_TIMEOUT_S = 30.0
SLICE_S = 0.25  # a transaction carries about this long's worth of letters at the rate limit
UNDECODABLE = "undecodable"


def redrive_group(settings: Settings, redrive_id: str) -> str:
    """The consumer group whose committed offsets are a redrive's progress."""
    return f"{settings.namespace}.redrive.{redrive_id}"


def progress(c: Consumer, settings: Settings, redrive: Redrive) -> dict[int, int]:
    """Per partition of the redrive's ranges, the next dead-letter offset it will read."""
    topic = settings.pipeline_topic(redrive.workspace, redrive.pipeline, "dead")
    found = c.committed([TopicPartition(topic, p) for p, _, _ in redrive.ranges],
                        timeout=CALL_TIMEOUT_S)
    starts = {p: start for p, start, _ in redrive.ranges}
    return {tp.partition: max(tp.offset, starts[tp.partition]) for tp in found}


def unreachable(redrive: Redrive, at: dict[int, int], highs: dict[int, int]) -> str | None:
    """Why the redrive can never finish, or None: a range not done that ends past the end of
    its partition (`highs`: the dead-letter topic's high watermarks, a partition missing if the
    topic lacks it), as when the topic was deleted and created again. Pure: the worker and
    `redrive-status` say the same."""
    for p, _, end in redrive.ranges:
        if at.get(p, end) >= end:
            continue
        high = highs.get(p)
        if high is None:
            return (f"its range of partition {p} ends at offset {end} but the dead-letter "
                    "topic has no such partition now (deleted and created again?)")
        if end > high:
            return (f"its range of partition {p} ends at offset {end} but the dead-letter "
                    f"topic ends at {high} (deleted and created again?)")
    return None


def high_watermarks(c: Consumer, topic: str, partitions: list[int]) -> dict[int, int]:
    """The high watermark of each of `partitions` the topic has."""
    meta = c.list_topics(topic, timeout=CALL_TIMEOUT_S).topics.get(topic)
    there = set() if meta is None or meta.error is not None else set(meta.partitions)
    return {p: watermarks(c, TopicPartition(topic, p), CALL_TIMEOUT_S)[1]
            for p in partitions if p in there}


class RedriveJob:
    """One redrive, carried out (or resumed) until every range is read, or `stop` is set."""

    # With no letter read for this long, the run gives way to the redrives after it (an open
    # transaction of the topic's writer holds read_committed reads back until it times out).
    STALL_S = 60.0

    def __init__(self, settings: Settings, registry: Registry, redrive: Redrive,
                 stop: threading.Event) -> None:
        self.settings, self.redrive, self.stop = settings, redrive, stop
        self.stopped: str | None = None  # why it can never finish, when it cannot
        self.earlier = earlier_of(registry, redrive)
        topic = settings.pipeline_topic
        self.dead = topic(redrive.workspace, redrive.pipeline, "dead")
        self.input = topic(redrive.workspace, redrive.pipeline, "input")
        self.counts: Counter[str] = Counter()  # of this run only: a resumed run counts the rest

    def run(self) -> bool:
        """Carry the redrive out; True once every range is done (now or before)."""
        r = self.redrive
        c = consumer(self.settings, group=redrive_group(self.settings, r.redrive_id))
        try:
            left = self._left(c)
            if not left:
                return True
            self.stopped = unreachable(r, self._at, high_watermarks(c, self.dead, list(left)))
            if self.stopped is not None:
                return False
            p = producer(self.settings, **{
                "transactional.id": f"{self.settings.namespace}-redrive-{r.redrive_id}",
                "transaction.timeout.ms": 60_000})
            p.init_transactions(CALL_TIMEOUT_S)  # fences an earlier run, aborts what it left open
            try:
                return self._carry_out(c, p)
            finally:
                p.flush(10)
        finally:
            c.close()

    def _left(self, c: Consumer) -> dict[int, int]:
        """partition -> end offset of the ranges not done yet, positioned at their progress."""
        at = progress(c, self.settings, self.redrive)
        left = {p: end for p, _, end in self.redrive.ranges if at[p] < end}
        self._at = {p: at[p] for p in left}
        return left

    def _carry_out(self, c: Consumer, p: Producer) -> bool:
        left = self._left(c)  # again: the committed offsets of a run the init just settled
        c.assign([TopicPartition(self.dead, part, self._at[part]) for part in left])
        rate = self.settings.redrive_rate
        chunk = max(1, min(1000, int(rate * SLICE_S)))
        began, sent = time.monotonic(), 0
        read_at = began  # when the last message (or partition end) was read
        decode = codec("DeadLetter").decode
        log.info("redrive %s of %s/%s: %d partition(s) to read", self.redrive.redrive_id,
                 self.redrive.workspace, self.redrive.pipeline, len(left))
        while left and not self.stop.is_set():
            messages = c.consume(chunk, 0.5)
            if messages:
                read_at = time.monotonic()
            elif time.monotonic() - read_at > self.STALL_S:
                log.warning("redrive %s read nothing of %s for %gs; the redrives after it go "
                            "first, it resumes next tick", self.redrive.redrive_id, self.dead,
                            self.STALL_S)
                return False
            p.begin_transaction()
            ends: dict[int, int] = {}  # where a partition's end was reached
            for m in messages:
                if m.error() is not None:
                    if m.error().code() == KafkaError._PARTITION_EOF:
                        ends[m.partition()] = m.offset()
                    else:
                        log.warning("redrive %s reading %s: %s", self.redrive.redrive_id,
                                    self.dead, m.error())
                    continue
                part, offset = m.partition(), m.offset()
                if offset >= left.get(part, -1):
                    continue  # past its range: a later redrive's
                sent += self._one(p, decode, part, offset, m.value())
            self._commit(c, p, left, ends)
            # Within the rate: a large redrive must not crowd live records out of the intake.
            self.stop.wait(max(0.0, sent / rate - (time.monotonic() - began)))
        if left:
            return False
        log.info("redrive %s done: %s", self.redrive.redrive_id, dict(self.counts))
        return True

    def _one(self, p: Producer, decode: Callable[[bytes], dict], partition: int, offset: int,
             value: bytes | None) -> int:
        """Send one dead letter back if the redrive takes it; 1 if it did."""
        try:
            letter = decode(value or b"")
        except DecodeError as exc:
            log.warning("redrive %s skips %s[%d]@%d, no dead letter: %s",
                        self.redrive.redrive_id, self.dead, partition, offset, exc)
            self.counts[UNDECODABLE] += 1
            return 0
        outcome = classify(self.redrive, self.earlier, partition, offset, letter, self.input)
        self.counts[outcome] += 1
        if outcome != REDRIVE:
            return 0
        origin = Origin(letter["topic"], letter["partition"], letter["offset"],
                        self.redrive.redrive_id, letter.get("redrive_count", 0) + 1)
        while True:
            try:
                p.produce(self.input, letter["original"], letter["key"],
                          headers=origin.headers())
                return 1
            except BufferError:  # librdkafka's queue is full: let it drain
                p.poll(0.05)

    def _commit(self, c: Consumer, p: Producer, left: dict[int, int], ends: dict[int, int]
                ) -> None:
        """Commit the letters sent with how far the ranges are read; drop finished ranges.
        `ends`: partitions whose end was reached, at which offset (past transaction markers,
        which no message stands for)."""
        positions = c.position([TopicPartition(self.dead, part) for part in left])
        offsets = []
        for tp in positions:
            at = max(tp.offset, ends.get(tp.partition, -1))
            if at < 0:  # nothing read yet
                continue
            end = left[tp.partition]
            offsets.append(TopicPartition(self.dead, tp.partition, min(at, end)))
            if at >= end:
                del left[tp.partition]
        if offsets:
            p.send_offsets_to_transaction(offsets, c.consumer_group_metadata(), CALL_TIMEOUT_S)
        p.commit_transaction(CALL_TIMEOUT_S)


class Redriver:
    """Carries out the registry's redrives that are not done, oldest first; one per worker
    (the one that runs schedules), called from its timer."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.done: set[str] = set()
        self.stopped: dict[str, str] = {}  # redrive id -> why it can never finish
        self.stop = threading.Event()

    def tick(self, registry: Registry) -> None:
        for redrive in list(registry.redrives.values()):
            if self.stop.is_set():
                return
            if redrive.redrive_id in self.done or redrive.redrive_id in self.stopped:
                continue
            job = RedriveJob(self.settings, registry, redrive, self.stop)
            try:
                if job.run():
                    self.done.add(redrive.redrive_id)
                elif job.stopped is not None:  # never loop on it: the others go on
                    self.stopped[redrive.redrive_id] = job.stopped
                    log.warning("redrive %s of %s/%s stopped for good: %s",
                                redrive.redrive_id, redrive.workspace, redrive.pipeline,
                                job.stopped)
            except Exception as exc:  # the broker away, a fenced producer: resumed next tick
                log.warning("redrive %s stopped (%s: %s); it resumes from its committed "
                            "offsets", redrive.redrive_id, type(exc).__name__, exc)
                return
