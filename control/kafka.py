"""Thin confluent-kafka plumbing shared by the control plane: clients, topics, replay."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

from control.config import Settings
from schemas.errors import BrokerError

FOREVER = "-1"
# Errors of a partition whose leader is not settled yet (a new topic, a restarted broker).
_LEADERSHIP = {
    KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
}


@dataclass(frozen=True)
class TopicSpec:
    partitions: int = 1
    config: dict[str, str] = field(default_factory=dict)


def platform_topics(settings: Settings) -> dict[str, TopicSpec]:
    """The topics every platform has, whatever is deployed on it."""
    return {
        # One partition: control events have one total order, kept forever.
        settings.topic("control"): TopicSpec(1, {"retention.ms": FOREVER}),
        settings.topic("control.status"): TopicSpec(1, {"retention.ms": str(7 * 86_400_000)}),
        # Chunk keys are unique (sha256:index), so compaction keeps every artifact forever.
        settings.topic("artifacts"): TopicSpec(1, {"cleanup.policy": "compact"}),
        # chDB has one owner, so one consumer of the logs; a server takes several.
        settings.topic("logs"): TopicSpec(3 if settings.clickhouse_url else 1),
        settings.topic("alerts"): TopicSpec(1),
    }


def pipeline_topics(settings: Settings, workspace: str, pipeline: str) -> dict[str, TopicSpec]:
    """A deployed pipeline's input, output and dead-letter topics."""
    many = TopicSpec(settings.pipeline_partitions)
    return {
        settings.pipeline_topic(workspace, pipeline, "input"): many,
        settings.pipeline_topic(workspace, pipeline, "output"): many,
        settings.pipeline_topic(workspace, pipeline, "dead"): TopicSpec(1),
    }


def producer(settings: Settings, **overrides: object) -> Producer:
    """An idempotent producer whose key hashing matches Faust/aiokafka (murmur2)."""
    config = {
        **settings.kafka_config(),
        "enable.idempotence": True,
        "acks": "all",
        "partitioner": "murmur2_random",
        "linger.ms": 5,
        "message.max.bytes": 2_000_000,
        **overrides,
    }
    return Producer(config)


def consumer(settings: Settings, group: str | None = None, **overrides: object) -> Consumer:
    """A consumer; without a group it is only used with assign() and never commits."""
    config = {
        **settings.kafka_config(),
        "group.id": group or f"{settings.namespace}.reader",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": True,
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 1000,
        "fetch.message.max.bytes": 2_000_000,
        **overrides,
    }
    return Consumer(config)


def admin(settings: Settings) -> AdminClient:
    return AdminClient(settings.kafka_config())


def ensure_topics(settings: Settings, specs: dict[str, TopicSpec], timeout: float = 30.0) -> None:
    """Create the topics that do not exist yet, and wait until the broker knows them."""
    client = admin(settings)
    try:
        existing = set(client.list_topics(timeout=timeout).topics)
    except KafkaException as exc:
        raise BrokerError(
            f"cannot reach Kafka at {settings.bootstrap_servers}: {exc}; is a broker running "
            "(`inferstream up`) and INFERSTREAM_BOOTSTRAP_SERVERS right?"
        ) from exc
    missing = [
        NewTopic(name, spec.partitions, 1, config=spec.config)
        for name, spec in specs.items() if name not in existing
    ]
    for name, future in client.create_topics(missing).items() if missing else ():
        try:
            future.result(timeout)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise BrokerError(f"cannot create topic {name}: {exc}") from exc
    deadline = time.monotonic() + timeout
    while not _led(client.list_topics(timeout=timeout).topics, specs):
        if time.monotonic() > deadline:
            raise BrokerError(f"topics {sorted(specs)} got no partition leaders in {timeout}s")
        time.sleep(0.05)


def _led(topics: dict, specs: dict[str, TopicSpec]) -> bool:
    """Whether every partition of every topic has a leader (fresh topics need a moment)."""
    return all(
        name in topics and topics[name].error is None and topics[name].partitions
        and all(p.leader >= 0 for p in topics[name].partitions.values())
        for name in specs
    )


def end_offsets(settings: Settings, topic: str, timeout: float = 10.0) -> dict[int, int]:
    """The current end (high watermark) of each partition of a topic."""
    c = consumer(settings)
    try:
        meta = c.list_topics(topic, timeout=timeout).topics[topic]
        if meta.error is not None:
            raise BrokerError(f"topic {topic}: {meta.error}")
        return {p: _high_watermark(c, TopicPartition(topic, p), timeout) for p in meta.partitions}
    finally:
        c.close()


def _high_watermark(c: Consumer, tp: TopicPartition, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return c.get_watermark_offsets(tp, timeout=timeout)[1]
        except KafkaException as exc:
            # Leadership moves (new topic, broker restart) are retriable; wait them out.
            error = exc.args[0]
            if not (error.retriable() or error.code() in _LEADERSHIP) \
                    or time.monotonic() > deadline:
                raise BrokerError(f"end offset of {tp.topic}[{tp.partition}]: {exc}") from exc
            time.sleep(0.1)


def read_until_end(
    settings: Settings, topic: str, timeout: float = 30.0, start: int = OFFSET_BEGINNING
) -> Iterator[Message]:
    """Every message of a topic from `start` up to its end as of now, partition by partition."""
    ends = end_offsets(settings, topic)
    c = consumer(settings)
    try:
        for partition, end in ends.items():
            if end <= 0:
                continue
            c.assign([TopicPartition(topic, partition, start)])
            deadline = time.monotonic() + timeout
            while True:
                msg = c.poll(0.5)
                if time.monotonic() > deadline:
                    raise BrokerError(
                        f"reading {topic}[{partition}] up to offset {end} took over {timeout}s"
                    )
                if msg is None:
                    continue
                if msg.error():
                    if msg.error().code() == KafkaError._PARTITION_EOF:
                        if msg.offset() >= end:
                            break
                        continue
                    raise BrokerError(f"reading {topic}[{partition}]: {msg.error()}")
                yield msg
                if msg.offset() + 1 >= end:
                    break
    finally:
        c.close()


def delivery_error(err: KafkaError | None, msg: Message) -> None:
    """A produce callback that turns a failed delivery into an exception at flush time."""
    if err is not None:
        raise BrokerError(f"delivery to {msg.topic()} failed: {err}")
