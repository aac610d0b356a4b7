"""The worker's producer of results, dead letters and inference logs: librdkafka, per batch.

Faust's own producer (aiokafka) costs an awaited coroutine and a Python-level accumulator per
record; librdkafka queues a record in about a microsecond and batches, compresses and retries
in C threads. A served batch is one Shipment: its records are queued without awaiting, then
`await shipment.delivered()` resolves once the broker has acknowledged every one of them (or
raises), so the batch's input offsets are acknowledged only after its output is safe.
Delivery reports are served by a thread of our own and handed to the event loop.
"""

from __future__ import annotations

import asyncio
import threading

from confluent_kafka import KafkaError, Message, Producer

from control.config import Settings
from control.kafka import producer
from schemas.errors import BrokerError

# Throughput-minded: a few ms of linger fills batches; the queue holds many batches in flight.
TUNING: dict[str, object] = {
    "linger.ms": 2,
    "batch.num.messages": 10_000,
    "batch.size": 1_000_000,
    "queue.buffering.max.messages": 1_000_000,
    "queue.buffering.max.kbytes": 1_048_576,
    # No compression: consumers of any language must read it (aiokafka needs extra libraries
    # for lz4 and zstd), and small records on a LAN gain less than the CPU it costs.
}


class Outbox:
    """One idempotent librdkafka producer for every agent of the worker."""

    def __init__(self, settings: Settings) -> None:
        self.producer: Producer = producer(settings, **TUNING)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve_reports, name="outbox", daemon=True)
        self._thread.start()

    def shipment(self) -> Shipment:
        """A new batch of records whose delivery is awaited together; call from the loop."""
        return Shipment(self.producer, asyncio.get_running_loop())

    def close(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
        self.producer.flush(timeout)

    def _serve_reports(self) -> None:
        while not self._stop.is_set():
            self.producer.poll(0.05)


class Shipment:
    """Records queued for one served batch; delivered() once the broker has them all."""

    __slots__ = ("_delivered", "_done", "_error", "_expected", "_future", "_loop", "_produce",
                 "_producer", "sent")

    def __init__(self, producer: Producer, loop: asyncio.AbstractEventLoop) -> None:
        self._producer = producer
        self._produce = producer.produce
        self._loop = loop
        self._future: asyncio.Future[None] = loop.create_future()
        self._delivered = self._report  # one bound method for every record, not one each
        self.sent = 0
        self._done = 0  # written only by the report thread
        self._expected = -1  # written only by the loop, once every record is queued
        self._error: KafkaError | None = None

    def send(self, topic: str, key: bytes | None, value: bytes) -> None:
        """Queue one record; waits (briefly, in the loop) only when librdkafka's queue is full."""
        while True:
            try:
                self._produce(topic, value, key, on_delivery=self._delivered)
                break
            except BufferError:
                self._producer.poll(0.01)
        self.sent += 1

    async def delivered(self) -> None:
        """Wait until the broker acknowledged every record sent; BrokerError if one failed."""
        self._expected = self.sent
        if self._done == self._expected:
            self._resolve()
        await self._future
        if self._error is not None:
            raise BrokerError(f"a result, log or dead letter was not delivered: {self._error}; "
                              "the batch will be served again")

    def _report(self, error: KafkaError | None, _: Message) -> None:
        # The report thread; the GIL orders this against delivered(), so exactly one of the
        # two sees the last record counted and resolves (a second resolve is a no-op).
        if error is not None:
            self._error = error
        self._done += 1
        if self._done == self._expected:
            self._loop.call_soon_threadsafe(self._resolve)

    def _resolve(self) -> None:
        if not self._future.done():
            self._future.set_result(None)
