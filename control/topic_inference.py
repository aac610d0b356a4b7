"""Inference through a pipeline's topics: publish records to its input topic and wait for each
one's result (output topic) or dead letter, correlated by a fresh Kafka key per record.

What `Client.infer` does for an operator, and what an orchestration run does for each batch
when it runs pipelines through their topics.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Producer, TopicPartition

from control.config import Settings
from control.kafka import consumer, end_offsets, ensure_topics, pipeline_topics, producer
from schemas.codec import MARKER, codec
from schemas.errors import StatusTimeout


@dataclass(frozen=True)
class Reply:
    """What became of one inferred record: its result, or its dead letter with the reason."""

    key: str
    ok: bool
    body: dict[str, Any]


def infer_through_topics(settings: Settings, ws: str, pipeline: str,
                         records: Sequence[bytes | Mapping[str, Any]], timeout: float = 60.0,
                         sender: Producer | None = None) -> list[Reply]:
    """Each record's reply, in the order of `records`; StatusTimeout names how many got none."""
    topic = lambda kind: settings.pipeline_topic(ws, pipeline, kind)  # noqa: E731
    ensure_topics(settings, pipeline_topics(settings, ws, pipeline))
    starts = {t: end_offsets(settings, t) for t in (topic("output"), topic("dead"))}
    c = consumer(settings, **{"enable.partition.eof": False})
    c.assign([TopicPartition(t, p, o) for t, ends in starts.items() for p, o in ends.items()])
    keys = [uuid.uuid4().hex.encode() for _ in records]
    p = sender or producer(settings)
    for key, record in zip(keys, records, strict=True):
        value = record if isinstance(record, bytes) else json.dumps(record).encode()
        p.produce(topic("input"), key=key, value=value)
    p.flush(30)
    replies: dict[bytes, Reply] = {}
    deadline = time.monotonic() + timeout
    try:
        while len(replies) < len(keys) and time.monotonic() < deadline:
            msg = c.poll(0.2)
            if msg is None or msg.error() or msg.key() not in keys:
                continue
            dead = msg.topic() == topic("dead")
            replies[msg.key()] = Reply(msg.key().decode(), not dead, _reply_body(
                msg.value(), dead))
    finally:
        c.close()
    missing = len(keys) - len(replies)
    if missing:
        raise StatusTimeout(
            f"{missing} of {len(keys)} records got no result within {timeout:.0f}s: is a "
            f"worker running (`inferstream worker`) on {settings.bootstrap_servers}?"
        )
    return [replies[k] for k in keys]


def _reply_body(value: bytes, dead: bool) -> dict[str, Any]:
    if dead:
        letter = codec("DeadLetter").decode(value)
        return {**letter, "original": letter["original"].decode(errors="replace")}
    if value[:2] == MARKER:
        return codec("InferenceResult").decode(value)
    return json.loads(value)
