"""The transport ceiling: the best plain relay, input topic → output topic, no inference.

A batched confluent-kafka loop (librdkafka does the fetching, batching and sending in C):
consume up to 10k records, produce each one unchanged with its key, serve delivery reports,
repeat. Offsets are committed asynchronously every few batches, as a relay would.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer


@dataclass(frozen=True)
class Relay:
    bootstrap: str
    source: str
    destination: str
    count: int  # stop after relaying this many records
    group: str = "bench-relay"
    deadline_s: float = 120.0


def relay(job: Relay) -> None:
    """Move job.count records from source to destination as fast as the clients go."""
    c = Consumer({"bootstrap.servers": job.bootstrap, "group.id": job.group,
                  "auto.offset.reset": "earliest", "enable.auto.commit": False,
                  "fetch.message.max.bytes": 4_000_000})
    p = Producer({"bootstrap.servers": job.bootstrap, "acks": "all",
                  "enable.idempotence": True, "linger.ms": 5,
                  "batch.num.messages": 10000,
                  "batch.size": 1_000_000, "queue.buffering.max.messages": 1_000_000,
                  "partitioner": "murmur2_random"})
    c.subscribe([job.source])
    moved, batches, deadline = 0, 0, time.monotonic() + job.deadline_s
    try:
        while moved < job.count and time.monotonic() < deadline:
            for m in c.consume(10000, 0.1):
                if m.error():
                    continue
                while True:
                    try:
                        p.produce(job.destination, m.value(), m.key())
                        break
                    except BufferError:
                        p.poll(0.01)
                moved += 1
            p.poll(0)
            batches += 1
            if batches % 20 == 0:
                c.commit(asynchronous=True)
        if p.flush(60):
            raise KafkaException(f"{len(p)} relayed records were not delivered in 60s")
        try:
            c.commit(asynchronous=False)
        except KafkaException as exc:  # the last asynchronous commit already had them all
            if exc.args[0].code() != KafkaError._NO_OFFSET:
                raise
    finally:
        c.close()
