"""The registrar: folds the control topic and publishes a status for every event.

One registrar is active at a time (a consumer group on the one-partition control
topic). On every assignment it rebuilds the registry (replaying the topic from the start,
or from a seed: a worker's follower has folded it already), and publishes statuses only
after the last event it judged before: the group's committed offset, or the last status on
the status topic when it is further (a registrar that stopped between publishing a batch and
committing it). So a restart neither skips an event, nor judges one twice, nor judges it
differently (the fold is pure). Statuses go out in batches of the events at hand: one flush
and one commit for each batch, not for each event.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

from confluent_kafka import OFFSET_BEGINNING, KafkaError, Message, Producer, TopicPartition

from control.config import Settings
from control.kafka import (
    consumer,
    end_offsets,
    ensure_topics,
    platform_topics,
    poll_batch,
    producer,
    read_until_end,
)
from control.registry.collector import collector_paused
from control.registry.events import ControlEvent, ControlStatus
from control.registry.fold import (
    LIMITS,
    Limits,
    apply,
    cause_result,
    result_of,
)
from control.registry.state import Registry
from schemas.errors import DecodeError, Rejected

log = logging.getLogger(__name__)
MAX_STATUS_TEXT = 500  # characters of each text a status repeats; its reason may have 4x


def judge(registry: Registry, msg: Message, limits: Limits = LIMITS
          ) -> tuple[Registry, ControlStatus]:
    """Fold one control message into the registry and say what became of it."""
    offset = msg.offset()
    try:
        event = ControlEvent.from_bytes(msg.value(), offset)
    except DecodeError as exc:
        # No event id to be read: the message key (clients key events by id) stands in.
        key = msg.key().decode(errors="replace") if msg.key() else ""
        return registry, _bounded(ControlStatus(
            event_id=key, offset=offset, type="?", actor="?", workspace=None,
            accepted=False, reason=f"not a control event: {exc}",
        ))
    try:
        after = apply(registry, event, limits)
    except Rejected as exc:
        return registry, _bounded(ControlStatus(
            event_id=event.event_id, offset=offset, type=event.type, actor=event.actor,
            workspace=event.workspace, accepted=False, reason=str(exc),
            result=cause_result(event)))
    return after, _bounded(ControlStatus(
        event_id=event.event_id, offset=offset, type=event.type, actor=event.actor,
        workspace=event.workspace, accepted=True, result=result_of(registry, after, event)))


def _bounded(status: ControlStatus) -> ControlStatus:
    """The status with its texts cut short: an event may carry a name of most of a megabyte,
    which the status repeats and its reason quotes (repr() may make it four times as long),
    and a status over the broker's message size would never be published."""
    def cut(text: str, most: int = MAX_STATUS_TEXT) -> str:
        return text if len(text) <= most else f"{text[:most]}… ({len(text)} characters)"

    texts = (status.event_id, status.type, status.actor, status.workspace or "",
             *status.result.keys(), *status.result.values())
    if all(len(t) <= MAX_STATUS_TEXT for t in texts) and len(status.reason or "") <= (
            4 * MAX_STATUS_TEXT):
        return status  # the common case: nothing to cut, no copy
    return replace(
        status, event_id=cut(status.event_id), type=cut(status.type), actor=cut(status.actor),
        workspace=None if status.workspace is None else cut(status.workspace),
        reason=None if status.reason is None else cut(status.reason, 4 * MAX_STATUS_TEXT),
        result={cut(k): cut(v) for k, v in status.result.items()})


def limits_of(settings: Settings) -> Limits:
    """The fold's limits from the settings; every process that folds the topic uses these."""
    return Limits(max_batch_size=settings.max_batch_size)


Seed = Callable[[], tuple[Registry, int]]  # a registry already folded and its next offset
BATCH = 1000  # events judged at most before their statuses are flushed and committed
FLUSH_S = 30.0  # how long a flush waits before saying the statuses are late
RESEND_S = 1.0  # the wait before statuses the broker failed to take are sent again
TAIL = 64  # status records read back at first when looking for the last one published


@dataclass
class Registrar:
    settings: Settings
    registry: Registry = field(default_factory=Registry)
    applied: int = 0  # offset after the last event folded
    seed: Seed | None = None

    def __post_init__(self) -> None:
        self._publish_from = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._replaying = contextlib.ExitStack()

    def run(self) -> None:
        """Follow the control topic until stop() is called."""
        ensure_topics(self.settings, platform_topics(self.settings))
        control = self.settings.topic("control")
        status_topic = self.settings.topic("control.status")
        c = consumer(self.settings, group=f"{self.settings.namespace}.registrar",
                     **{"enable.partition.eof": False})
        p = producer(self.settings)
        c.subscribe([control], on_assign=self._on_assign)
        limits = limits_of(self.settings)
        try:
            while not self._stop.is_set():
                last = None
                failed: list[tuple[ControlStatus, KafkaError]] = []
                for msg in poll_batch(c, 0.2, BATCH):
                    if msg.error():
                        log.warning("control topic: %s", msg.error())
                        continue
                    self.registry, status = judge(self.registry, msg, limits)
                    self.applied = msg.offset() + 1
                    if msg.offset() >= self._publish_from:
                        _send(p, status_topic, status, failed)
                        last = msg
                if self.applied >= self._publish_from:
                    self._replaying.close()  # caught up: the collector may run again
                if last is not None and self._delivered(p, status_topic, failed):
                    c.commit(offsets=[TopicPartition(control, last.partition(),
                                                     last.offset() + 1)], asynchronous=False)
        finally:
            self._replaying.close()
            c.close()
            p.flush(10)

    def _delivered(self, p: Producer, topic: str,
                   failed: list[tuple[ControlStatus, KafkaError]]) -> bool:
        """Wait until the broker has every status sent, sending again those it failed (after
        message.timeout.ms, say, with the broker away): a status is never given up, since its
        event is committed after it. False if the registrar was stopped first."""
        while not self._stop.is_set():
            if p.flush(FLUSH_S):
                log.warning("statuses not yet delivered to %s after %g s; waiting",
                            topic, FLUSH_S)
                continue
            if not failed:
                return True
            again = [status for status, _ in failed]
            log.warning("%d statuses were not delivered to %s (%s); sending them again in "
                        "%g s", len(again), topic, failed[0][1], RESEND_S)
            failed.clear()
            # An error that comes back at once (no rights on the topic, say) must not spin.
            if self._stop.wait(RESEND_S):
                break
            for status in again:
                _send(p, topic, status, failed)
        return False

    def _on_assign(self, c, partitions: list[TopicPartition]) -> None:
        committed = c.committed(partitions, timeout=10)
        self._publish_from = max(
            max((tp.offset for tp in committed if tp.offset >= 0), default=0),
            judged_until(self.settings))
        self.registry, self.applied = Registry(), 0
        if self.seed is not None:
            registry, position = self.seed()
            if position <= self._publish_from:  # every event it folded has its status
                self.registry, self.applied = registry, position
        if self.applied < self._publish_from:  # a replay: no cyclic collection meanwhile
            self._replaying.enter_context(collector_paused())
        c.assign([TopicPartition(tp.topic, tp.partition, self.applied or OFFSET_BEGINNING)
                  for tp in partitions])

    def start(self) -> Registrar:
        """Run in a background thread."""
        self._thread = threading.Thread(target=self.run, name="registrar", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(15)


def _send(p: Producer, topic: str, status: ControlStatus,
          failed: list[tuple[ControlStatus, KafkaError]]) -> None:
    """Produce one status; if the broker never takes it, it lands in `failed`."""
    def delivered(error: KafkaError | None, _: Message) -> None:
        if error is not None:
            failed.append((status, error))

    p.produce(topic, key=status.event_id.encode(), value=status.to_bytes(),
              on_delivery=delivered)


def judged_until(settings: Settings) -> int:
    """The offset after the last control event the status topic has a registrar's status of
    (0 when none is left): read back from the topic's end, as far as it takes to find one.
    Workers' reports that they serve a version (`worker` in the result) do not count."""
    topic = settings.topic("control.status")
    end = end_offsets(settings, topic).get(0, 0)
    back = TAIL
    while True:
        start = max(end - back, 0)
        found = [status.offset for status in _statuses(settings, topic, start)
                 if "worker" not in status.result]
        if found or start == 0:
            return max(found, default=-1) + 1
        back *= 4


def _statuses(settings: Settings, topic: str, start: int) -> Iterator[ControlStatus]:
    for msg in read_until_end(settings, topic, start=start):
        with contextlib.suppress(DecodeError):
            yield ControlStatus.from_bytes(msg.value())
