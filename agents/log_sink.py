"""The inference-log sink: batches from the logs topic into ClickHouse, idempotently.

Each batch is inserted with a deduplication token made from its Kafka offsets,
and rows are keyed (ReplacingMergeTree) by record, step, model and shadow, so a
batch replayed after a crash adds nothing. Offsets are acknowledged only after
the insert, so a crash loses nothing either.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

from control.config import Settings
from schemas.codec import codec
from schemas.errors import DecodeError
from sinks.access import claim
from sinks.storage import Storage, open_storage
from sinks.tables import KafkaPosition, batch_token, log_rows, migrate

log = logging.getLogger(__name__)


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

    def write(self, messages: Sequence[Any]) -> int:
        """Insert one batch of Kafka messages (value, topic, partition, offset); blocking."""
        records, positions = [], []
        for m in messages:
            try:
                records.append(codec("InferenceLog").decode(m.value))
            except DecodeError as exc:
                # Only workers write this topic; a record we cannot read is a bug to see.
                self.undecodable += 1
                log.error("skipping undecodable log record %s:%s:%s: %s",
                          m.topic, m.partition, m.offset, exc)
                continue
            positions.append(KafkaPosition(m.topic, m.partition, m.offset))
        if records:
            self.open().insert("inference_logs", log_rows(records, positions),
                               dedup_token=batch_token(positions))
        self.written += len(records)
        return len(records)
