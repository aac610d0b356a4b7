"""The registrar: folds the control topic and publishes a status for every event.

One registrar is active at a time (a consumer group on the one-partition control
topic). On every assignment it replays the topic from the start to rebuild the
registry, and publishes statuses only from the group's committed offset on, so a
restart neither skips an event nor re-judges it differently (the fold is pure).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field, replace

from confluent_kafka import OFFSET_BEGINNING, KafkaError, Message, TopicPartition

from control.config import Settings
from control.kafka import consumer, ensure_topics, platform_topics, producer
from control.registry.events import ControlEvent, ControlStatus
from control.registry.fold import LIMITS, Limits, apply, cause_result, result_of
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
    status = ControlStatus(
        event_id=event.event_id, offset=offset, type=event.type, actor=event.actor,
        workspace=event.workspace, accepted=True,
    )
    try:
        after = apply(registry, event, limits)
    except Rejected as exc:
        return registry, _bounded(replace(status, accepted=False, reason=str(exc),
                                          result=cause_result(event)))
    return after, _bounded(replace(status, result=result_of(registry, after, event)))


def _bounded(status: ControlStatus) -> ControlStatus:
    """The status with its texts cut short: an event may carry a name of most of a megabyte,
    which the status repeats and its reason quotes (repr() may make it four times as long),
    and a status over the broker's message size would never be published."""
    def cut(text: str, most: int = MAX_STATUS_TEXT) -> str:
        return text if len(text) <= most else f"{text[:most]}… ({len(text)} characters)"

    return replace(
        status, event_id=cut(status.event_id), type=cut(status.type), actor=cut(status.actor),
        workspace=None if status.workspace is None else cut(status.workspace),
        reason=None if status.reason is None else cut(status.reason, 4 * MAX_STATUS_TEXT),
        result={cut(k): cut(v) for k, v in status.result.items()})


def limits_of(settings: Settings) -> Limits:
    """The fold's limits from the settings; every process that folds the topic uses these."""
    return Limits(max_batch_size=settings.max_batch_size)


@dataclass
class Registrar:
    settings: Settings
    registry: Registry = field(default_factory=Registry)
    applied: int = 0  # offset after the last event folded

    def __post_init__(self) -> None:
        self._publish_from = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

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
                msg = c.poll(0.2)
                if msg is None:
                    continue
                if msg.error():
                    if msg.error().code() != KafkaError._PARTITION_EOF:
                        log.warning("control topic: %s", msg.error())
                    continue
                self.registry, status = judge(self.registry, msg, limits)
                self.applied = msg.offset() + 1
                if msg.offset() >= self._publish_from:
                    p.produce(status_topic, key=status.event_id.encode(), value=status.to_bytes())
                    p.flush(30)
                    c.commit(offsets=[TopicPartition(control, msg.partition(), msg.offset() + 1)],
                             asynchronous=False)
        finally:
            c.close()
            p.flush(10)

    def _on_assign(self, c, partitions: list[TopicPartition]) -> None:
        committed = c.committed(partitions, timeout=10)
        self._publish_from = max((tp.offset for tp in committed if tp.offset >= 0), default=0)
        self.registry, self.applied = Registry(), 0
        c.assign([TopicPartition(tp.topic, tp.partition, OFFSET_BEGINNING) for tp in partitions])

    def start(self) -> Registrar:
        """Run in a background thread."""
        self._thread = threading.Thread(target=self.run, name="registrar", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(15)

