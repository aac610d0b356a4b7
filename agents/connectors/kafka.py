"""Kafka connections: a topic of JSON records, read from its beginning to its end as of the
start, and written with acknowledged delivery."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import orjson

from agents.connectors import _JSON, Record, _BaseWriter, _json_default, _loads
from control.config import Settings
from control.registry.connections import ConnectionSpec, ConnectorError
from schemas.errors import BrokerError

if TYPE_CHECKING:
    from sinks.storage import Storage


def records(connection: ConnectionSpec, settings: Settings, storage: Storage | None,
            arguments: Mapping[str, str]) -> Iterator[list[Record]]:
    """The topic's records (tombstones skipped); `key_field`, if absent, from the message key."""
    key_field = connection.details.get("key_field")
    with _KafkaTopic(connection, settings) as topic:
        for messages in topic.read():
            chunk = []
            for m in messages:
                try:
                    record = _loads(m.value())
                except ValueError as exc:
                    raise topic.error(f"message at {m.partition()}:{m.offset()} is not JSON: "
                                      f"{exc}") from exc
                if not isinstance(record, dict):
                    raise topic.error(f"message at {m.partition()}:{m.offset()} is not a JSON "
                                      "object")
                if key_field and key_field not in record and m.key() is not None:
                    record[key_field] = m.key().decode(errors="replace")
                chunk.append(record)
            yield chunk


def count_hint(connection: ConnectionSpec, settings: Settings, storage: Storage | None,
               arguments: Mapping[str, str]) -> int | None:
    """The messages the topic holds now, from its watermarks (tombstones included)."""
    with _KafkaTopic(connection, settings) as topic:
        return sum(high - low for low, high in topic.watermarks().values())


def open_writer(connection: ConnectionSpec, settings: Settings, storage: Storage | None,
                arguments: Mapping[str, str]) -> _KafkaWriter:
    """A writer of records as JSON messages, keyed by `key_field` if given."""
    return _KafkaWriter(connection, settings)


class _KafkaWriter(_BaseWriter):
    def __init__(self, connection: ConnectionSpec, settings: Settings) -> None:
        from confluent_kafka import Producer

        from control.kafka import TopicSpec, ensure_topics
        super().__init__(connection)
        self.topic = connection.details["topic"]
        self.key_field = connection.details.get("key_field")
        if "bootstrap_servers" not in connection.details:  # other clusters: topic must exist
            ensure_topics(settings, {self.topic: TopicSpec()})
        self._producer = Producer({**_kafka_config(connection, settings), "acks": "all",
                                   "enable.idempotence": True, "linger.ms": 5,
                                   # the key hashing of Faust/aiokafka, as control.kafka
                                   "partitioner": "murmur2_random"})
        self._failures: list[str] = []

    def write(self, records: list[Record]) -> None:
        for record in records:
            key = record.get(self.key_field) if self.key_field else None
            value = orjson.dumps(record, default=_json_default, option=_JSON)
            while True:
                try:
                    self._producer.produce(self.topic, value, None if key is None else str(key),
                                           on_delivery=self._delivered)
                    break
                except BufferError:  # the local queue is full: let deliveries drain it
                    self._producer.poll(0.5)
        # Flushing each batch means a write that returns has been acknowledged by the broker.
        if self._producer.flush(60) or self._failures:
            raise self.error(f"delivery to topic {self.topic} failed: "
                             f"{self._failures[:3] or 'timed out after 60 s'}")

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is not None:
            self._failures.append(str(err))

    def close(self) -> None:
        self._producer.flush(60)


class _KafkaTopic:
    """A bounded read of one topic: from the beginning to its end as of `watermarks()`."""

    def __init__(self, connection: ConnectionSpec, settings: Settings) -> None:
        from confluent_kafka import Consumer
        self.name, self.topic = connection.name, connection.details["topic"]
        self._consumer = Consumer({**_kafka_config(connection, settings),
                                   "group.id": f"{settings.namespace}.connectors",
                                   "enable.auto.commit": False, "enable.partition.eof": True,
                                   "auto.offset.reset": "earliest"})

    def error(self, message: str) -> ConnectorError:
        return ConnectorError(f"connection {self.name!r}, topic {self.topic}: {message}")

    def watermarks(self) -> dict[int, tuple[int, int]]:
        from confluent_kafka import KafkaException, TopicPartition

        from control.kafka import watermarks
        try:
            meta = self._consumer.list_topics(self.topic, timeout=10).topics.get(self.topic)
            if meta is None or meta.error is not None or not meta.partitions:
                raise self.error(f"no such topic ({meta.error if meta else 'unknown'})")
            return {p: watermarks(self._consumer, TopicPartition(self.topic, p))
                    for p in meta.partitions}
        except (KafkaException, BrokerError) as exc:
            raise self.error(str(exc)) from exc

    def read(self, idle_timeout: float = 30.0) -> Iterator[list[Any]]:
        from confluent_kafka import KafkaError, TopicPartition
        marks = self.watermarks()
        ends = {p: high for p, (low, high) in marks.items() if high > low}
        self._consumer.assign([TopicPartition(self.topic, p, marks[p][0]) for p in ends])
        deadline = time.monotonic() + idle_timeout
        while ends:
            messages = self._consumer.consume(1000, timeout=0.5)
            if not messages and time.monotonic() > deadline:
                raise self.error(f"no message for {idle_timeout:g} s before the end {ends}")
            chunk = []
            for m in messages:
                deadline = time.monotonic() + idle_timeout
                p = m.partition()
                if m.error() and m.error().code() != KafkaError._PARTITION_EOF:
                    raise self.error(str(m.error()))
                if p not in ends or m.offset() >= ends[p]:
                    ends.pop(p, None)  # at the end as of the start (EOF or past it)
                    continue
                if m.error():  # EOF short of the end: transaction markers; more may come
                    continue
                if m.value() is not None:  # a tombstone carries no record
                    chunk.append(m)
                if m.offset() + 1 >= ends[p]:
                    del ends[p]
            if chunk:
                yield chunk

    def __enter__(self) -> _KafkaTopic:
        return self

    def __exit__(self, *exc: object) -> None:
        self._consumer.close()


def _kafka_config(connection: ConnectionSpec, settings: Settings) -> dict[str, Any]:
    d = connection.details
    # Another cluster gets only its own details, never the platform's credentials.
    config: dict[str, Any] = ({"bootstrap.servers": d["bootstrap_servers"]}
                              if "bootstrap_servers" in d else dict(settings.kafka_config()))
    for detail, key in (("security_protocol", "security.protocol"),
                        ("sasl_mechanism", "sasl.mechanisms"),
                        ("sasl_username", "sasl.username"), ("sasl_password", "sasl.password")):
        if detail in d:
            config[key] = d[detail]
    return config
