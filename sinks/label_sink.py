"""The labels sink: every pipeline's labels topic into the `labels` table, idempotently.

Like the log sink (sinks.log_sink), a librdkafka consumer in a thread of the process that
owns the storage (consumer group `<namespace>.label-sink`), subscribed by regex to
`<namespace>.<workspace>.<pipeline>.labels`, so a pipeline deployed later is found within
`labels_refresh_s`. A batch is inserted with a deduplication token made from its offsets and
the offsets are committed only after the insert: a crash loses nothing and a replay adds
nothing. A label that cannot be read goes to its pipeline's dead-letter topic with the
reason (before the insert, so before the commit: a replay may dead-letter it twice, never
not at all).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import NamedTuple

from confluent_kafka import KafkaError, Message, Producer

from control.config import Settings
from control.kafka import consumer, producer
from schemas.errors import InferstreamError
from sinks.labels import (
    BadLabel,
    dead_letter,
    decode_label,
    label_row,
    labels_topic_pattern,
    pipeline_of_topic,
)
from sinks.log_sink import LogSink, LogSinkThread
from sinks.storage import Storage, StorageError
from sinks.tables import KafkaPosition, batch_token

log = logging.getLogger(__name__)
BATCH = 5000  # labels are tiny: one insert takes many


class DeadLetterError(InferstreamError):
    """Refused labels could not be dead-lettered: the batch is stored later, not skipped."""


class LabelMessage(NamedTuple):
    """What the sink needs of one message of a labels topic."""

    value: bytes | None
    key: bytes | None
    kafka_ms: int | None
    position: KafkaPosition


class LabelSink:
    """Decodes label messages, dead-letters the bad ones and inserts the rest; blocking."""

    def __init__(self, settings: Settings, storage_owner: LogSink) -> None:
        self.settings, self.owner = settings, storage_owner
        self.written = 0
        self.refused = 0
        self._producer: Producer | None = None

    def open(self) -> Storage:
        """The storage, through the log sink that owns it (StorageError while it cannot)."""
        return self.owner.open()

    def write(self, messages: list[LabelMessage]) -> int:
        """Store one batch; returns the labels stored (a refused one is dead-lettered)."""
        storage = self.owner.open()
        rows, letters = [], []
        for m in messages:
            topic, partition, offset = m.position
            try:
                workspace, pipeline = pipeline_of_topic(self.settings.namespace, topic)
            except ValueError as exc:  # the regex matched it: a bug to see, not data to lose
                log.error("labels sink skips %s:%s:%s: %s", *m.position, exc)
                continue
            try:
                label = decode_label(m.value, m.key, m.kafka_ms)
            except BadLabel as exc:
                dead = self.settings.pipeline_topic(workspace, pipeline, "dead")
                letters.append((dead, m.key, dead_letter(str(exc), workspace, pipeline, m.value,
                                                         m.key, topic, partition, offset)))
                continue
            rows.append(label_row(label, workspace, pipeline, topic, partition, offset))
        if letters:
            self._dead_letter(letters)
        if rows:
            storage.insert("labels", rows, dedup_token=batch_token([m.position for m in messages]))
        self.written += len(rows)
        return len(rows)

    def _dead_letter(self, letters: list[tuple[str, bytes | None, bytes]]) -> None:
        if self._producer is None:
            self._producer = producer(self.settings)
        failed: list[KafkaError] = []
        for topic, key, value in letters:
            self._producer.produce(topic, key=key, value=value,
                                   on_delivery=lambda err, _m: err and failed.append(err))
        left = self._producer.flush(30)
        if left or failed:  # not stored, so not committed: the batch comes again
            raise DeadLetterError(f"could not dead-letter {left or len(failed)} refused label(s): "
                           f"{failed[:1] or 'timed out'}; retrying")
        self.refused += len(letters)


class LabelSinkThread(LogSinkThread):
    """Reads every labels topic in batches and stores them; waits for the storage as the log
    sink does, and commits offsets only after the insert."""

    def __init__(self, settings: Settings, sink: LabelSink,
                 on_stored: Callable[[int, int], None] | None = None) -> None:
        super().__init__(settings, sink, on_stored)  # type: ignore[arg-type]
        self._thread.name = "label-sink"

    def _run(self) -> None:
        if not self._own_storage():
            return
        c = consumer(self.settings, group=f"{self.settings.namespace}.label-sink",
                     **{"enable.partition.eof": False,
                        "topic.metadata.refresh.interval.ms":
                            int(self.settings.labels_refresh_s * 1000)})
        c.subscribe([labels_topic_pattern(self.settings.namespace)])
        try:
            while not self._stop.is_set():
                messages = _messages(c.consume(BATCH, 1.0))
                if not messages:
                    continue
                started = time.perf_counter_ns()
                stored = self._store(messages)
                if stored is None:
                    return  # stopping: nothing committed, the next owner stores them
                self._commit(c, [(b"", m.position) for m in messages])
                if self.on_stored is not None:
                    self.on_stored(stored, time.perf_counter_ns() - started)
        finally:
            c.close()

    def _store(self, messages: list[LabelMessage]) -> int | None:  # type: ignore[override]
        """The labels stored, or None when stopped before they were; outages are waited out."""
        delay = 0.5
        while not self._stop.is_set():
            try:
                return self.sink.write(messages)  # type: ignore[arg-type]
            except (StorageError, DeadLetterError) as exc:
                log.warning("label sink waits %.1fs: %s", delay, exc)
                self._stop.wait(delay)
                delay = min(delay * 2, 10.0)
        return None


def _messages(batch: list[Message]) -> list[LabelMessage]:
    messages = []
    for m in batch:
        error = m.error()
        if error is None:
            kind, ms = m.timestamp()
            messages.append(LabelMessage(m.value(), m.key(), ms if kind else None,
                                         KafkaPosition(m.topic(), m.partition(), m.offset())))
        elif error.code() not in (KafkaError._PARTITION_EOF, KafkaError.UNKNOWN_TOPIC_OR_PART):
            log.warning("reading the labels topics: %s", error)
    return messages


def start(settings: Settings, owner: LogSink) -> LabelSinkThread:
    """Start sinking labels in the process whose log sink owns (or will own) the storage."""
    return LabelSinkThread(settings, LabelSink(settings, owner)).start()  # type: ignore[return-value]
