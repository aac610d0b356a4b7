"""The worker's intake: one librdkafka consumer over every served pipeline's input topic.

A thread of its own takes micro-batches (`consume(n, wait)`) from the input topics of the
pipelines the deployment manager serves, has the data plane serve them, and makes the batch one
unit with Kafka transactions (exactly-once, the default): the batch's results, dead letters
and inference logs, and its input offsets, are committed together or not at all. A crash
before the commit leaves nothing visible to `read_committed` consumers; the batch is served
again from the last committed offsets. Zombies are fenced by the group generation (KIP-447).

A batch's transaction commits in the background while the next batch is consumed, decoded,
run and encoded into a buffer (committing waits for every record of the batch to reach the
broker: ~20% of a cycle, idle): the buffer goes to the producer once the last commit is
known, so transactions never overlap. A failed commit rewinds both batches.

With `INFERSTREAM_DELIVERY=at-least-once` (brokers without transactions, such as the embedded
Tansu) the batch's output is flushed before its offsets are committed: nothing is lost, and a
crash between the two serves the batch again (same record ids and keys).

Why not a Faust stream: measured with bench/, Faust's per-event path cost ~75 µs a record
(aiokafka fetch, event objects, acks), more than decoding, inference and encoding together,
and aiokafka's group metadata cannot be handed to a librdkafka transaction.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from agents.serving.outbox import TUNING
from control.config import Settings
from control.kafka import consumer, producer

if TYPE_CHECKING:
    from agents.serving.dataplane import DataPlane, Serving

Routes = Callable[[], Mapping[str, "Serving"]]  # input topic -> what serves it, now
log = logging.getLogger(__name__)
IDLE_S = 0.2  # how often an intake with nothing to serve looks for deployments
LAG_EVERY_S = 1.0
TRANSACTION_TIMEOUT_MS = 10_000
COMMIT_ATTEMPTS = 3  # of CALL_TIMEOUT_S each; then the batch is aborted and served again
CALL_TIMEOUT_S = 10.0
# A transaction not committed by then is given up, the producer replaced (its successor fences
# it) and the batch served again: after a broker restart librdkafka 2.16's
# send_offsets_to_transaction was seen to block for minutes past its own timeout. Past the
# transaction timeout the coordinator aborts the transaction anyway, so waiting longer only
# lengthens the pause: a broker restart used to pause results for the old 45 s.
COMMIT_DEADLINE_S = TRANSACTION_TIMEOUT_MS / 1000 + 5.0
BATCHES_PER_TRANSACTION = 8  # micro-batches (of a deployment's batch size) a commit may carry


class Buffer:
    """What a served batch sends (results, dead letters, logs; see serving), held until its
    transaction begins."""

    __slots__ = ("messages",)

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes | None, bytes]] = []

    def send(self, topic: str, key: bytes | None, value: bytes) -> None:
        self.messages.append((topic, key, value))

    def produce(self, p: Producer) -> None:
        """Hand everything to the producer, in order."""
        produce, poll = p.produce, p.poll
        for topic, key, value in self.messages:
            while True:
                try:
                    produce(topic, value, key)
                    break
                except BufferError:  # librdkafka's queue is full: let it drain
                    poll(0.01)


@dataclass(eq=False)
class _Commit:
    """A batch handed to the producer, its transaction committing in a thread of its own."""

    served: list[Message]
    batches: list[tuple[Serving, list[Message]]]
    counts: list[tuple[int, int]]
    thread: threading.Thread | None = None
    done: bool = False  # committed, once settled
    fatal: bool = False  # the failed transaction left the producer unusable


class Intake:
    """Consumes, serves and commits the input topics of the served pipelines."""

    def __init__(self, settings: Settings, plane: DataPlane, routes: Routes) -> None:
        self.settings = settings
        self.plane = plane
        self.routes = routes
        self.exactly_once = settings.delivery == "exactly-once"
        self.error: str | None = None  # why the thread stopped, if it did
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="intake", daemon=True)
        self._subscribed: tuple[str, ...] = ()
        self._lag_at = 0.0
        self._fatal = False  # the last failed transaction left the producer unusable
        self._cycle_began = 0.0  # when the last batch was taken
        self._pending: _Commit | None = None  # the batch whose commit is not yet known
        self._failed: list[Message] = []  # of a failed commit, to be read again

    def start(self) -> Intake:
        self._thread.start()
        return self

    def stop(self, timeout: float = 15.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def alive(self) -> bool:
        """False once the thread has died or was stopped; true before it starts."""
        started = self._thread.ident is not None
        return not self._stop.is_set() and (self._thread.is_alive() or not started)

    def _run(self) -> None:
        try:
            c = consumer(
                self.settings, group=f"{self.settings.namespace}-workers-serving",
                **{"enable.partition.eof": False,
                   # Every pipeline spread over the workers: sticky and cooperative assignors
                   # balance the count of partitions, and gave one worker all of one
                   # pipeline's partitions and the other all of another's.
                   "partition.assignment.strategy": "roundrobin",
                   "fetch.wait.max.ms": 10,
                   "max.poll.interval.ms": 300_000})
            p = self._producer()
            try:
                while not self._stop.is_set():
                    try:
                        p = self._serve_once(c, p)
                    except KafkaException as exc:  # the broker away, a rebalance: go on
                        log.warning("intake: %s; going on", exc)
                        self._stop.wait(1.0)
            finally:
                self._settle()  # the last batch committed or not before the group is left
                c.close()  # leaves the group: the others take its partitions at once
                p.flush(10)
        except Exception as exc:  # the worker's liveness says so; nothing was committed
            self.error = f"{type(exc).__name__}: {exc}"
            log.exception("the intake stopped")

    def _producer(self) -> Producer:
        if not self.exactly_once:
            return producer(self.settings, **TUNING)
        p = producer(self.settings, **TUNING, **{
            "transactional.id": f"{self.settings.namespace}-workers-serving-"
                                f"{self.plane.worker}",
            # An open transaction holds back read_committed consumers until it ends; a worker
            # that died mid-batch is cut short after this long (or at once by its restart).
            "transaction.timeout.ms": TRANSACTION_TIMEOUT_MS,
            # A transaction begun right after a commit may find the last one's markers still
            # being written (CONCURRENT_TRANSACTIONS) and is retried after this backoff: with
            # librdkafka's default 100 ms, p99 latency at 3k records/s was 250 ms, with 5 ms
            # 100 ms.
            "retry.backoff.ms": 5, "retry.backoff.max.ms": 50})
        p.init_transactions(30)
        return p

    def _serve_once(self, c: Consumer, p: Producer) -> Producer:
        by_topic = self.routes()  # one snapshot per batch: swaps land between batches
        topics = tuple(sorted(by_topic))
        if topics != self._subscribed:
            if topics:
                c.subscribe(list(topics), on_assign=_assigned, on_revoke=self._revoked,
                            on_lost=self._revoked)
            else:
                c.unsubscribe()
            self._subscribed = topics
        if not topics:
            p, _ = self._known(c, p)
            self._stop.wait(IDLE_S)
            return p
        size = max(s.deployment.batch_size for s in by_topic.values())
        wait = min(s.deployment.batch_wait_ms for s in by_topic.values())
        metrics = self.plane.metrics
        started = time.perf_counter_ns()
        # One transaction per batch wait at most, carrying up to a few micro-batches. Under
        # load, serving and committing the last batch took that long already and what came
        # meanwhile is served at once (a full wait per transaction capped a steady flow at a
        # third of saturation); with little load, records gather for the rest of the wait
        # (a transaction per handful of records overloaded the broker: seconds of latency).
        left = max(wait, 1) / 1000 - (time.monotonic() - self._cycle_began)
        messages = c.consume(size * BATCHES_PER_TRANSACTION, max(left, 0.0))
        self._cycle_began = time.monotonic()
        if not messages:
            return self._known(c, p)[0]
        started = taken_ns = metrics.add("consume", started)
        taken = [m for m in messages if _usable(m)]
        served, waiting = _split(taken, by_topic)
        _rewind(c, waiting)  # an undeployed pipeline's records wait in their topic
        if not served:
            return self._known(c, p)[0]
        batches = _batches(served, by_topic)
        out = Buffer()
        counts = [self.plane.serve_batch(serving, batch, out) for serving, batch in batches]
        started = time.perf_counter_ns()
        p, failed = self._known(c, p, served)
        metrics.paused("settle", time.perf_counter_ns() - started)
        if failed:  # the last batch is read again, and this one after it
            return p
        try:
            if self.exactly_once:
                p.begin_transaction()
            out.produce(p)
        except KafkaException as exc:
            log.warning("serving a batch failed (%s); serving it again", exc)
            self._fatal = self._abort(p, exc.args[0])
            _rewind(c, served)
            return self._producer_after_failure(p)
        pending = self._pending = _Commit(served, batches, counts)
        if self.exactly_once:
            pending.thread = threading.Thread(
                target=self._commit, args=(c, p, pending, c.consumer_group_metadata()),
                name="transaction-commit", daemon=True)
            pending.thread.start()
        else:
            self._commit(c, p, pending)
            p, _ = self._known(c, p)
        metrics.paused("cycle", metrics.add("produce", started) - taken_ns)
        return p

    def _settle(self) -> None:
        """Wait for the pending batch's commit; count it, or keep its records to read again."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        if pending.thread is not None:
            pending.thread.join(COMMIT_DEADLINE_S)
            if pending.thread.is_alive():  # left to itself: the next producer fences it
                log.warning("a batch's transaction did not commit in %gs; replacing the "
                            "producer and serving the batch again", COMMIT_DEADLINE_S)
                pending.done, pending.fatal = False, True
        self._fatal = self._fatal or pending.fatal
        if not pending.done:
            self._failed += pending.served
            return
        for (serving, batch), (out, dead) in zip(pending.batches, pending.counts, strict=True):
            self.plane.served_batch(serving, len(batch), out, dead)

    def _known(self, c: Consumer, p: Producer, taken: Sequence[Message] = ()
               ) -> tuple[Producer, bool]:
        """Settle the pending commit. After a failed one (here or in a rebalance) its records
        and `taken` are read again (True), and a producer that cannot go on is replaced."""
        had = self._pending is not None
        self._settle()
        if self._failed:
            _rewind(c, [*self._failed, *taken])  # the first offset of each partition wins
            self._failed = []
            return self._producer_after_failure(p), True
        if had:
            self._report_lag(c, self.routes())
        return p, False

    def _revoked(self, _: Consumer, partitions: list[TopicPartition]) -> None:
        # The pending batch commits (or fails) before its partitions go to another worker.
        self._settle()
        if partitions:
            log.info("input partitions revoked: %s", _names(partitions))

    def _commit(self, c: Consumer, p: Producer, pending: _Commit, metadata: object = None
                ) -> None:
        """Commit the batch's output with its input offsets (in the commit thread when
        exactly once): pending.done, or it was aborted. metadata: the consumer's group
        metadata when the batch was taken (exactly-once). Writes only to pending."""
        offsets = _next_offsets(pending.served)
        if not self.exactly_once:
            left = p.flush(30)
            if left:
                log.warning("%d records of a batch were not delivered; serving it again", left)
                return
            c.commit(offsets=offsets, asynchronous=False)
            pending.done = True
            return
        started = time.perf_counter_ns()
        try:
            p.send_offsets_to_transaction(offsets, metadata, CALL_TIMEOUT_S)
            for attempt in range(COMMIT_ATTEMPTS):
                try:
                    p.commit_transaction(CALL_TIMEOUT_S)
                    pending.done = True
                    self.plane.metrics.committed(time.perf_counter_ns() - started)
                    return
                except KafkaException as exc:  # e.g. the broker restarting: try again
                    if not exc.args[0].retriable() or attempt == COMMIT_ATTEMPTS - 1:
                        raise
                    log.warning("committing a batch's transaction: %s; trying again",
                                exc.args[0])
        except KafkaException as exc:
            log.warning("a batch's transaction failed (%s); serving it again", exc.args[0])
            pending.fatal = self._abort(p, exc.args[0])

    def _abort(self, p: Producer, error: KafkaError) -> bool:
        """End a failed batch's transaction; True if the producer cannot go on (replace it)."""
        if error.fatal():
            return True
        if self.exactly_once:
            try:
                p.abort_transaction(CALL_TIMEOUT_S)
            except KafkaException as exc:
                log.warning("aborting the batch's transaction failed: %s", exc)
                return True
        return False

    def _producer_after_failure(self, p: Producer) -> Producer:
        """The producer to go on with: a fenced or failed one is replaced."""
        if not self._fatal:
            return p
        # Its init fences the old one, which is left to the GC. If the broker is away the init
        # raises and the old producer stays marked failed: replaced at the next batch.
        fresh = self._producer()
        self._fatal = False
        return fresh

    def _report_lag(self, c: Consumer, by_topic: Mapping[str, Serving]) -> None:
        now = time.monotonic()
        if now - self._lag_at < LAG_EVERY_S:
            return
        self._lag_at = now
        lag: dict[str, int] = defaultdict(int)
        for tp in c.position(c.assignment()):  # no I/O: what the client knows
            if tp.topic in by_topic and tp.offset >= 0:
                _, high = c.get_watermark_offsets(tp, cached=True)
                lag[tp.topic] += max(high - tp.offset, 0)
        for topic, serving in by_topic.items():
            self.plane.lag(serving, lag.get(topic, 0))


def _assigned(_: Consumer, partitions: list[TopicPartition]) -> None:
    if partitions:
        log.info("input partitions assigned: %s", _names(partitions))


def _names(partitions: list[TopicPartition]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions)


def _usable(m: Message) -> bool:
    error = m.error()
    if error is None:
        return True
    log.warning("reading an input topic: %s", error)
    return False


def _split(messages: Iterable[Message], by_topic: Mapping[str, Serving]
           ) -> tuple[list[Message], list[Message]]:
    """The messages of served pipelines, and those whose pipeline is no longer served."""
    served, waiting = [], []
    for m in messages:
        (served if m.topic() in by_topic else waiting).append(m)
    return served, waiting


def _batches(messages: Sequence[Message], by_topic: Mapping[str, Serving]
             ) -> list[tuple[Serving, list[Message]]]:
    """Per pipeline, in batches of at most its deployment's batch size."""
    per_topic: dict[str, list[Message]] = defaultdict(list)
    for m in messages:
        per_topic[m.topic()].append(m)
    out = []
    for topic, ms in per_topic.items():
        serving = by_topic[topic]
        size = serving.deployment.batch_size
        out += [(serving, ms[i:i + size]) for i in range(0, len(ms), size)]
    return out


def _next_offsets(messages: Iterable[Message]) -> list[TopicPartition]:
    last: dict[tuple[str, int], int] = {}
    for m in messages:
        last[(m.topic(), m.partition())] = m.offset()
    return [TopicPartition(t, p, o + 1) for (t, p), o in last.items()]


def _rewind(c: Consumer, messages: Iterable[Message]) -> None:
    """Seek each partition back to the first of these messages, to be read again."""
    first: dict[tuple[str, int], int] = {}
    for m in messages:
        first.setdefault((m.topic(), m.partition()), m.offset())
    for (topic, partition), offset in first.items():
        try:
            c.seek(TopicPartition(topic, partition, offset))
        except KafkaException as exc:  # no longer assigned: its next owner reads them
            log.info("not rewinding %s[%d]: %s", topic, partition, exc)
