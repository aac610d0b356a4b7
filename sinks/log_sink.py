"""The inference-log sink: batches from the logs topic into ClickHouse, idempotently.

Each batch is inserted with a deduplication token made from its Kafka offsets,
and rows are keyed (ReplacingMergeTree) by record, step, model and shadow, so a
batch replayed after a crash adds nothing. Offsets are committed only after
the insert, so a crash loses nothing either.

The sink reads the logs topic with a librdkafka consumer of its own (consumer group
`<namespace>.log-sink`) in a thread, not through a Faust agent: Faust's per-message work
would cost as much CPU as serving the record that made the log. Most logs arrive as
InferenceLogBlock messages (a predict call's logs column-wise) and reach ClickHouse as one
Arrow table per insert (sinks.log_blocks); the others as the Avro they are
(sinks.log_batches), which ClickHouse parses.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from control.config import Settings
from control.kafka import consumer
from schemas.errors import DecodeError
from sinks.access import claim
from sinks.log_batches import (
    BATCH_STRUCTURE,
    INSERT,
    INSERT_BATCHES,
    INSERT_SETTINGS,
    STRUCTURE,
    container,
    current_batch_prefix,
    current_prefix,
    decode_logs,
    logs_in,
)
from sinks.log_blocks import block_table, current_block_prefix, decode_block
from sinks.storage import Storage, StorageError, open_storage
from sinks.tables import LOG_BLOCKS, LOG_ROWS, KafkaPosition, batch_token, log_rows, migrate

log = logging.getLogger(__name__)
Log = tuple[bytes, KafkaPosition]  # a log message's value, and where it was read
# Messages per insert at most: a block or batch holds a micro-batch's logs of a step (512 by
# default, under 1 MB), so up to ~30 000 logs; ClickHouse spends less a log on inserts of
# 20 000 than of 5000.
BATCH = 64


class LogSink:
    """Owns this worker's storage handle; opened on first use, when it is free."""

    def __init__(self, settings: Settings, web_url: str) -> None:
        self.settings = settings
        self.web_url = web_url
        self.storage: Storage | None = None
        self.written = 0
        self.undecodable = 0
        self._lock = threading.Lock()

    def open(self) -> Storage:
        """The storage, opened and migrated; raises StorageLocked while another process has it."""
        with self._lock:
            if self.storage is None:
                storage = open_storage(self.settings)
                migrate(storage)
                if not self.settings.clickhouse_url:
                    claim(self.settings, self.web_url)  # the CLI reads chDB through us
                self.storage = storage
            return self.storage

    def write(self, logs: Sequence[Log]) -> int:
        """Insert one batch of log messages idempotently; returns the logs stored. Blocking.

        One insert per kind: InferenceLogBlock messages as an Arrow table (sinks.log_blocks),
        the other current schemas (InferenceLogBatch, InferenceLog) as the Avro they are;
        older ones are decoded here."""
        storage = self.open()
        block, batch, single = current_block_prefix(), current_batch_prefix(), current_prefix()
        blocks: list[Log] = []
        batches: list[Log] = []
        singles: list[Log] = []
        older: list[Log] = []
        for entry in logs:
            prefix = entry[0][:10]
            (blocks if prefix == block else batches if prefix == batch
             else singles if prefix == single else older).append(entry)
        stored = 0
        if blocks:
            stored += self._write_blocks(storage, blocks)
        if batches:
            stored += self._write_avro(storage, batches, batches=True)
        if singles:
            stored += self._write_avro(storage, singles, batches=False)
        if older:
            stored += self._write_rows(storage, older)
        self.written += stored
        return stored

    def _write_blocks(self, storage: Storage, logs: list[Log]) -> int:
        token = batch_token([position for _, position in logs])
        blocks = []
        for value, position in logs:
            try:
                blocks.append((decode_block(value), position))
            except DecodeError as exc:
                self._undecodable(position, exc)
        storage.insert_arrow(LOG_BLOCKS, block_table(blocks), dedup_token=token,
                             settings=INSERT_SETTINGS)
        return sum(len(block["record_id_ends"]) for block, _ in blocks)

    def _undecodable(self, position: KafkaPosition, exc: DecodeError) -> None:
        # Only workers write this topic; a record we cannot read is a bug to see.
        self.undecodable += 1
        log.error("skipping undecodable log record %s:%s:%s: %s", *position, exc)

    def _write_avro(self, storage: Storage, logs: list[Log], batches: bool) -> int:
        token = batch_token([position for _, position in logs])
        try:
            storage.insert_select(INSERT_BATCHES if batches else INSERT,
                                  container(*zip(*logs, strict=True), batches=batches), "Avro",
                                  BATCH_STRUCTURE if batches else STRUCTURE, dedup_token=token,
                                  settings=INSERT_SETTINGS)
            return sum(map(logs_in, (value for value, _ in logs))) if batches else len(logs)
        except StorageError as exc:
            if "Avro" not in str(exc):  # an outage: wait it out, as for rows
                raise
            # A log ClickHouse cannot read, or a server without the Avro format: the
            # rows path finds and reports the culprit, and stores the others.
            log.warning("the storage refused a batch of Avro logs, inserting rows: %s", exc)
        return self._write_rows(storage, logs)

    def _write_rows(self, storage: Storage, logs: Sequence[Log]) -> int:
        # Logs of an older schema (or a storage that cannot read Avro): decoded here.
        token = batch_token([position for _, position in logs])
        records, positions = [], []
        for value, position in logs:
            try:
                decoded = decode_logs(value)
            except DecodeError as exc:
                self._undecodable(position, exc)
                continue
            records += decoded
            positions += [position] * len(decoded)
        if records:
            storage.insert(LOG_ROWS, log_rows(records, positions), dedup_token=token)
        return len(records)


class LogSinkThread:
    """Reads the logs topic in batches (BATCH messages or a second) and stores them; never drops
    one: a busy chDB folder or a storage outage is waited out, and offsets are committed only
    after the insert."""

    def __init__(self, settings: Settings, sink: LogSink,
                 on_stored: Callable[[int, int], None] | None = None) -> None:
        self.settings, self.sink, self.on_stored = settings, sink, on_stored
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="log-sink", daemon=True)

    def start(self) -> LogSinkThread:
        self._thread.start()
        return self

    def stop(self, timeout: float = 15.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        _background()
        # Only the process that holds the storage reads the logs topic: with chDB one process
        # at a time can write, and a reader of the topic that could not write would hold the
        # logs' partition while the owner had nothing to store. Another worker waits here and
        # takes over (storage and partition) when the owner goes.
        if not self._own_storage():
            return
        topic = self.settings.topic("logs")
        # Fetches of a megabyte or half a second: each small fetch cost the broker about as
        # much as a big one, and logs may wait that long.
        c = consumer(self.settings, group=f"{self.settings.namespace}.log-sink",
                     **{"enable.partition.eof": False, "fetch.min.bytes": 1_000_000,
                        "fetch.wait.max.ms": 500})
        c.subscribe([topic])
        try:
            while not self._stop.is_set():
                logs = _logs(c.consume(BATCH, 1.0))
                if not logs:
                    continue
                started = time.perf_counter_ns()
                stored = self._store(logs)
                if stored is None:
                    return  # stopping: nothing committed, the next owner stores it
                self._commit(c, logs)
                if self.on_stored is not None:
                    self.on_stored(stored, time.perf_counter_ns() - started)
        finally:
            c.close()

    def _own_storage(self) -> bool:
        """Wait until this process holds the storage; False when stopped first."""
        delay, waited = 0.5, False
        while not self._stop.is_set():
            try:
                self.sink.open()
                if waited:
                    log.info("log sink owns the storage now and reads the logs topic")
                return True
            except StorageError as exc:
                if not waited:
                    log.info("log sink waits for the storage (another worker sinks the "
                             "logs meanwhile): %s", exc)
                waited = True
                self._stop.wait(delay)
                delay = min(delay * 2, 5.0)
        return False

    def _commit(self, c: Consumer, logs: list[Log]) -> None:
        """Commit the stored logs' offsets, through a broker restart (the coordinator moves).

        Given up only when the group took the partitions away: the next owner stores these
        logs again, and the table keeps one of each (a ReplacingMergeTree read with FINAL)."""
        delay = 0.5
        while not self._stop.is_set():
            try:
                c.commit(offsets=_next_offsets(logs), asynchronous=False)
                return
            except KafkaException as exc:
                error = exc.args[0]
                if not error.retriable() and error.code() not in _COORDINATOR_MOVED:
                    log.warning("log sink could not commit its offsets: %s", error)
                    return
                log.info("log sink retries its commit in %.1fs: %s", delay, error)
                self._stop.wait(delay)
                delay = min(delay * 2, 5.0)

    def _store(self, logs: list[Log]) -> int | None:
        """The logs stored, or None when stopped before they were."""
        delay = 0.5
        while not self._stop.is_set():
            try:
                return self.sink.write(logs)
            except StorageError as exc:
                log.warning("log sink waits %.1fs: %s", delay, exc)
                self._stop.wait(delay)
                delay = min(delay * 2, 10.0)
        return None


def _background() -> None:
    """Lower this thread's priority (nice 10, as the engine's insert threads; see
    INSERT_SETTINGS): where chDB shares the worker's machine, serving records comes first."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError) as exc:  # not Linux, or not allowed
        log.info("the log sink runs at the worker's priority: %s", exc)


_COORDINATOR_MOVED = {KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_NOT_AVAILABLE,
                      KafkaError.COORDINATOR_LOAD_IN_PROGRESS, KafkaError._TRANSPORT,
                      KafkaError.REQUEST_TIMED_OUT}


def _logs(messages: list[Message]) -> list[Log]:
    logs = []
    for m in messages:
        value = m.value()
        if value is not None and m.error() is None:
            logs.append((value, KafkaPosition(m.topic(), m.partition(), m.offset())))
        elif m.error() is not None and m.error().code() != KafkaError._PARTITION_EOF:
            log.warning("reading the logs topic: %s", m.error())
    return logs


def _next_offsets(logs: list[Log]) -> list[TopicPartition]:
    ends: dict[tuple[str, int], int] = {}
    for _, (topic, partition, offset) in logs:
        ends[(topic, partition)] = max(ends.get((topic, partition), -1), offset + 1)
    return [TopicPartition(t, p, o) for (t, p), o in ends.items()]
