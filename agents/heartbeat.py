"""The worker's heartbeat: what it serves and how it fares, on the compacted `<ns>.workers` topic.

Workers may run on machines an operator cannot reach over HTTP, so each one publishes, every
INFERSTREAM_HEARTBEAT_S seconds, one small JSON record keyed by its name: ready, alive, the
version of each pipeline it serves, the deployments it refused and why, and its per-pipeline
totals. Compaction keeps the latest record per worker; `inferstream status` reads them. A
worker that stops cleanly deletes its record (a tombstone); one that dies leaves its last
record, which grows stale.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from confluent_kafka import KafkaException

from control.config import Settings
from control.kafka import producer

if TYPE_CHECKING:
    import faust

    from agents.serving.deployments import DeploymentManager

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Heartbeat:
    """One worker's state as it last published it."""

    worker: str
    time: datetime
    interval_s: float  # how often the worker publishes: a record older than a few is stale
    ready: bool  # as /health/ready says: replayed, live, and no deployment refused
    alive: bool  # the worker still takes records from its input topics
    serving: dict[str, int] = field(default_factory=dict)  # "ws/pipeline" -> version
    refused: dict[str, str] = field(default_factory=dict)  # "ws/pipeline" -> reason
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)  # PipelineMetrics.snapshot

    def to_bytes(self) -> bytes:
        return json.dumps({**asdict(self), "time": self.time.isoformat()}).encode()

    @classmethod
    def from_bytes(cls, value: bytes) -> Heartbeat:
        """Parse a record; ValueError (with what is wrong) when it is not a heartbeat."""
        try:
            raw = json.loads(value)
            return cls(worker=str(raw["worker"]), time=datetime.fromisoformat(raw["time"]),
                       interval_s=float(raw["interval_s"]), ready=bool(raw["ready"]),
                       alive=bool(raw["alive"]), serving=dict(raw.get("serving") or {}),
                       refused=dict(raw.get("refused") or {}),
                       metrics=dict(raw.get("metrics") or {}))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a worker heartbeat ({exc!r}): {value[:200]!r}") from None

    def age_s(self, now: datetime) -> float:
        return (now - self.time).total_seconds()


def beat_of(manager: DeploymentManager, interval_s: float) -> Heartbeat:
    """The heartbeat the manager's worker would publish now."""
    return Heartbeat(
        worker=manager.worker, time=datetime.now(UTC), interval_s=interval_s,
        ready=manager.not_ready() is None, alive=manager.alive(),
        serving={f"{ws}/{p}": s.deployment.version for (ws, p), s in manager.served.items()},
        refused={f"{ws}/{p}": reason for (ws, p), reason in manager.refused.items()},
        metrics=manager.pipeline_metrics.snapshot(),
    )


def register(app: faust.App, manager: DeploymentManager, settings: Settings) -> None:
    """Publish the worker's heartbeat every settings.heartbeat_s, and delete it on a clean stop."""
    topic, key = settings.topic("workers"), manager.worker.encode()
    made: list[Any] = []  # the producer, made on first use (after ensure_topics)

    def send(value: bytes | None) -> None:
        if not made:
            made.append(producer(settings, **{"linger.ms": 0}))
        made[0].produce(topic, key=key, value=value, on_delivery=_failed)
        made[0].poll(0)  # serves the delivery callbacks of earlier heartbeats

    @app.timer(settings.heartbeat_s)
    async def heartbeat() -> None:
        try:
            send(beat_of(manager, settings.heartbeat_s).to_bytes())
        except (BufferError, KafkaException) as exc:  # the next one may get through
            log.warning("heartbeat not published to %s: %s", topic, exc)

    @app.on_before_shutdown.connect
    async def forget(sender: Any, **kwargs: Any) -> None:
        # A worker stopped on purpose is not a problem: `inferstream status` forgets it.
        try:
            send(None)
            made[0].flush(5)
        except (BufferError, KafkaException) as exc:
            log.warning("worker %s could not delete its heartbeat: %s", manager.worker, exc)


def _failed(err: Any, msg: Any) -> None:
    if err is not None:
        log.warning("heartbeat to %s not delivered: %s", msg.topic(), err)
