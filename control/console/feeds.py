"""What the console shows, kept current in memory by threads that follow three topics.

The registry comes from a RegistryFollower (as on a worker); statuses of control events (the
audit log) and worker heartbeats come from tails of `<ns>.control.status` and `<ns>.workers`.
No request reads a topic: pages read these in-memory copies, so a page costs the same on a
platform with ten events or a million.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, Message, TopicPartition

from agents.heartbeat import Heartbeat
from control.config import Settings
from control.follower import RegistryFollower
from control.kafka import consumer, ensure_topics, platform_topics
from control.registry.events import ControlStatus
from control.registry.state import Registry
from schemas.errors import DecodeError, InferstreamError

log = logging.getLogger(__name__)
MAX_STATUSES = 200_000  # the audit log in memory: the newest this many (~100 MB at most)
DEPLOYMENT_EVENTS = ("Deploy", "Undeploy", "Rollback")


@dataclass(frozen=True)
class DeploymentChange:
    """One accepted deploy, undeploy or rollback of a pipeline."""

    workspace: str
    pipeline: str
    type: str
    version: int
    actor: str
    time: datetime


@dataclass(frozen=True)
class Rate:
    """Records per second of one deployment, over the last two heartbeats of its workers."""

    records_in: float
    records_out: float
    dead_lettered: float


class TopicTail:
    """Reads every partition of a topic from its start, then keeps reading, in a thread."""

    def __init__(self, settings: Settings, topic: str, name: str) -> None:
        self.settings, self.topic = settings, topic
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> TopicTail:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def handle(self, msg: Message) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        c = consumer(self.settings, **{"enable.partition.eof": False})
        try:
            meta = c.list_topics(self.topic, timeout=30).topics[self.topic]
            c.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in meta.partitions])
            while not self._stop.is_set():
                msg = c.poll(0.2)
                if msg is None:
                    continue
                if msg.error():
                    if msg.error().code() != KafkaError._PARTITION_EOF:
                        log.warning("%s: %s", self.topic, msg.error())
                    continue
                try:
                    self.handle(msg)
                except Exception:  # one odd record must not stop the page's data
                    log.exception("%s: cannot use the record at offset %s", self.topic,
                                  msg.offset())
        except KafkaException as exc:
            log.error("%s: stopped following: %s", self.topic, exc)
        finally:
            c.close()


class StatusTail(TopicTail):
    """The registrar's statuses of control events, oldest first (workers' reports left out)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, settings.topic("control.status"), "console-statuses")
        self.statuses: deque[ControlStatus] = deque(maxlen=MAX_STATUSES)

    def handle(self, msg: Message) -> None:
        try:
            status = ControlStatus.from_bytes(msg.value())
        except DecodeError:
            return
        if "worker" not in status.result:  # a worker's serving report, not a control event's
            self.statuses.append(status)


class HeartbeatTail(TopicTail):
    """The last two heartbeats of every worker still on the workers topic."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, settings.topic("workers"), "console-heartbeats")
        self._lock = threading.Lock()
        self._latest: dict[str, Heartbeat] = {}
        self._previous: dict[str, Heartbeat] = {}

    def handle(self, msg: Message) -> None:
        key = (msg.key() or b"").decode(errors="replace")
        if msg.value() is None:  # a worker that stopped cleanly deleted its record
            with self._lock:
                self._latest.pop(key, None)
                self._previous.pop(key, None)
            return
        try:
            beat = Heartbeat.from_bytes(msg.value())
        except ValueError as exc:
            log.warning("workers topic: %s", exc)
            return
        with self._lock:
            before = self._latest.get(key)
            if before is not None and beat.time > before.time:
                self._previous[key] = before
            self._latest[key] = beat

    def beats(self) -> list[Heartbeat]:
        with self._lock:
            return list(self._latest.values())

    def rates(self, fresh: set[str]) -> dict[str, Rate]:
        """Per deployment: the rates of the fresh workers (by name), over their last two beats."""
        with self._lock:
            pairs = [(self._previous.get(k), b) for k, b in self._latest.items()
                     if b.worker in fresh]
        return rates_of(pairs)


def rates_of(pairs: Iterable[tuple[Heartbeat | None, Heartbeat]]) -> dict[str, Rate]:
    """Per deployment ("ws/pipeline"): the sum over workers of the growth of their totals
    between two heartbeats (before, after), divided by the time between them."""
    sums: dict[str, list[float]] = {}
    for before, after in pairs:
        seconds = (after.time - before.time).total_seconds() if before else 0.0
        if before is None or seconds <= 0:
            continue
        for name, now in after.metrics.items():
            then = before.metrics.get(name) or {}
            row = sums.setdefault(name, [0.0, 0.0, 0.0])
            for i, field in enumerate(("in", "out", "dead")):
                # A restarted worker counts from zero again: a drop is no negative rate.
                row[i] += max(0, (now.get(field) or 0) - (then.get(field) or 0)) / seconds
    return {name: Rate(*row) for name, row in sums.items()}


class Feeds:
    """The registry, the audit log, deployment changes and heartbeats, followed live."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.changes: deque[DeploymentChange] = deque(maxlen=MAX_STATUSES)
        self._deployments: dict = {}
        self.follower = RegistryFollower(settings, on_change=self._on_change)
        self.statuses = StatusTail(settings)
        self.heartbeats = HeartbeatTail(settings)

    @property
    def registry(self) -> Registry:
        return self.follower.registry

    def start(self) -> Feeds:
        try:  # a console may start before anything else: the topics it follows must exist
            ensure_topics(self.settings, platform_topics(self.settings))
        except (InferstreamError, KafkaException) as exc:
            log.warning("could not make sure the platform's topics exist: %s", exc)
        for part in (self.follower, self.statuses, self.heartbeats):
            part.start()
        return self

    def stop(self) -> None:
        for part in (self.follower, self.statuses, self.heartbeats):
            part.stop()

    def _on_change(self, registry: Registry, status: ControlStatus) -> None:
        # A status of Undeploy names no pipeline: the deployment that changed tells which.
        if status.type in DEPLOYMENT_EVENTS:
            for key, d in registry.deployments.items():
                if self._deployments.get(key) != d:
                    self.changes.append(DeploymentChange(
                        d.workspace, d.pipeline, status.type, d.version, status.actor,
                        d.deployed_at))
        # The fold never changes a map in place (each event makes a new one): a reference is
        # a snapshot.
        self._deployments = registry.deployments
