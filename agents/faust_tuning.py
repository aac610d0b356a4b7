"""What the worker changes in Faust for throughput and latency, each measured with bench/.

- Fetch wait. Faust builds its aiokafka consumer with fetch_max_wait_ms=1500 and no setting
  to change it. aiokafka keeps one fetch in flight per broker, so while a fetch waits at the
  broker for partitions that have nothing new, records arriving for the others wait too: under
  steady load the worker stalled for ~1.5 s at a time and never caught up (p99 of seconds at
  half of saturation). 20 ms bounds such a stall; an idle worker sends ~50 small fetches a
  second.
- Stream buffer. When a stream's buffer passes 80 % of stream_buffer_maxsize, Faust stops
  fetching its partitions, and once no partition is left to fetch it sleeps a whole second
  before it looks again. With the default 4096 a blip of half a second under steady load
  (8k records/s) got there, and the worker then ran ~0.6 s behind for the rest of the run
  (2 runs of 3); with 32768 (about 4 s of records here, some 50 MB of events at most), none.
- Per-event statistics. Faust's Monitor sensor records every message and stream event
  (counters, timestamps, per-stream dicts) for its own /stats page, which workers do not
  serve; the worker keeps its own per-batch counters (agents.metrics). Without them: +5-10 %
  throughput.
"""

from __future__ import annotations

from typing import Any

import aiokafka
from faust.sensors.monitor import Monitor
from faust.transport.drivers import aiokafka as driver
from faust.types import TP, EventT, Message, StreamT, TransportT

FETCH_MAX_WAIT_MS = 20
STREAM_BUFFER = 32768


class _ConsumerThread(driver.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: TransportT) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        # Read when the consumer starts and builds its fetcher, which is after this.
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS
        return consumer


class _Consumer(driver.Consumer):
    def _new_consumer_thread(self) -> driver.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Transport(driver.Transport):
    """Faust's aiokafka transport, with a short fetch wait; set it as app.transport."""

    Consumer = _Consumer


class QuietMonitor(Monitor):
    """Faust's Monitor without the per-message and per-event bookkeeping; pass as monitor=."""

    def on_message_in(self, tp: TP, offset: int, message: Message) -> None:
        return None

    def on_stream_event_in(self, tp: TP, offset: int, stream: StreamT,
                           event: EventT) -> dict[str, Any] | None:
        return None

    def on_stream_event_out(self, tp: TP, offset: int, stream: StreamT, event: EventT,
                            state: dict[str, Any] | None = None) -> None:
        return None

    def on_message_out(self, tp: TP, offset: int, message: Message) -> None:
        return None
