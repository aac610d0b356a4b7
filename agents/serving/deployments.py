"""Deployments: the runner of each deployed version, swapped between batches.

The deployment manager follows the registry. For a new deployment or version it loads the
version's models first (in a thread), then publishes the new set of served pipelines; the
intake takes it at its next batch, so no record is half-processed by two versions. An
undeployed pipeline leaves the intake's subscription and its records wait in the input
topic. A version that cannot load is refused, with a status for the operator who deployed it.
Serving the records is the data plane's (dataplane.py).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime

from agents.records.avro_logs import LogWriter
from agents.records.avro_writer import ResultWriter
from agents.records.formats import (
    avro_input,
    input_schema_name,
)
from agents.runtimes.base import ModelRuntime
from agents.serving.columnar import Columnar
from agents.serving.dataplane import CanarySide, DataPlane, Key, Serving
from agents.serving.intake import Intake
from agents.serving.model_cache import ModelCache
from agents.serving.runner import PipelineRunner
from control.config import Settings
from control.kafka import ensure_topics, pipeline_topics, producer
from control.registry.events import ControlStatus
from control.registry.state import Deployment, PipelineVersion, Registry, step_models

log = logging.getLogger(__name__)
NOT_LIVE = "the worker does not take records from its input topics; restart it"
RETRY_FIRST_S, RETRY_MAX_S = 5.0, 60.0  # how soon a refused version is tried again


class DeploymentManager:
    """Keeps the runner of every deployed pipeline's version, and serves their batches."""

    def __init__(self, settings: Settings, plane: DataPlane) -> None:
        self.settings = settings
        self.plane = plane
        self.worker = plane.worker
        self.cache = ModelCache(settings)
        self.served: dict[Key, Serving] = {}
        self.by_topic: dict[str, Serving] = {}  # replaced whole, never changed: see Intake
        self.refused: dict[Key, str] = {}  # deployments this worker cannot load, and why
        self._lock = asyncio.Lock()
        self._status_producer = None
        self.pipeline_metrics = plane.pipeline_metrics
        # The intake asks for the served pipelines at each batch: it never imports this room.
        self.intake = Intake(settings, plane, lambda: self.by_topic)
        self.replayed = False  # set once the registry is replayed and its deployments served
        self._retry_at: dict[Key, tuple[float, float]] = {}  # refused: next try, its delay

    def alive(self) -> bool:
        """Whether the worker still takes records from its input topics."""
        return self.intake.alive()

    def not_live(self) -> str | None:
        """Why the worker should be restarted, or None while it takes records."""
        if self.alive():
            return None
        error = self.intake.error  # the intake says why it stopped, when it knows
        return f"{NOT_LIVE}: {error}" if error else NOT_LIVE

    def not_ready(self) -> str | None:
        """Why the worker is not ready, or None: the one answer of /health, /health/ready,
        the heartbeat and the ready gauge."""
        if not self.replayed:
            return "registry not replayed yet: the worker is still catching up on deployments"
        dead = self.not_live()
        if dead:
            return dead
        if self.refused:
            return "; ".join(f"{ws}/{p}: {why}" for (ws, p), why in sorted(self.refused.items()))
        return None

    async def retry_refused(self, registry: Registry) -> None:
        """Try again to load the versions this worker refused (an artifact that was not there
        yet, a full disk, a race with another worker), each with a growing delay (5 s to a
        minute), instead of waiting for the next deploy."""
        now = time.monotonic()
        due = [k for k in self.refused if self._retry_at.get(k, (now, 0.0))[0] <= now]
        if due:
            for key in due:
                delay = min(self._retry_at.get(key, (now, RETRY_FIRST_S))[1] * 2, RETRY_MAX_S)
                self._retry_at[key] = (now + delay, delay)
            await self.reconcile(registry)

    async def reconcile(self, registry: Registry, status: ControlStatus | None = None) -> None:
        """Make what this worker serves match the registry's deployments."""
        async with self._lock:
            wanted = {(d.workspace, d.pipeline): d for d in registry.active_deployments()}
            for key in [k for k in self.served if k not in wanted]:
                del self.served[key]
                self.pipeline_metrics.forget(*key)
                log.info("undeployed %s/%s", *key)
            # Undeployed at once: what follows may take a while (loading other versions), and
            # records sent meanwhile must wait in their topic.
            self.by_topic = {s.input_topic: s for s in self.served.values()}
            self.refused = {k: v for k, v in self.refused.items() if k in wanted}
            self._retry_at = {k: v for k, v in self._retry_at.items() if k in self.refused}
            for key, deployment in wanted.items():
                about = status if status and (
                    status.workspace, status.result.get("pipeline")) == key else None
                current = self.served.get(key)
                if current is not None and _serves(current.deployment) == _serves(deployment):
                    continue
                try:
                    serving = await asyncio.get_running_loop().run_in_executor(
                        None, self._prepare, registry, deployment)
                except Exception as exc:  # a version that cannot load must not stop the others
                    self._refuse(deployment, current, exc, about)
                    continue
                self.served[key] = serving
                self.refused.pop(key, None)
                self._retry_at.pop(key, None)
                self.pipeline_metrics.set_version(*key, deployment.version)
                log.info("serving %s/%s v%s", *key, deployment.version)
                self._report(about, accepted=True, serving=deployment.version)
            # The intake's next batch uses the new set.
            self.by_topic = {s.input_topic: s for s in self.served.values()}
            # Versions no served pipeline runs any more stop their processes (Python steps).
            self.cache.release({(s.deployment.workspace, m.model, m.version)
                                for s in self._servings()
                                for step in s.version.steps for m in step_models(step)})
            # Loaded models live as long as the worker: keep the collector from rescanning them.
            gc.freeze()

    def _servings(self) -> list[Serving]:
        """Every served version, canaries' included."""
        return [*self.served.values(),
                *(s.canary.serving for s in self.served.values() if s.canary is not None)]

    def _prepare(self, registry: Registry, deployment: Deployment) -> Serving:
        pipeline = registry.pipelines[(deployment.workspace, deployment.pipeline)]
        version = pipeline.versions[deployment.version - 1]
        runtimes = self.cache.for_pipeline(registry, version)
        ensure_topics(self.settings,
                      pipeline_topics(self.settings, deployment.workspace, deployment.pipeline))
        serving = self.serving(deployment, version, runtimes)
        canary = deployment.canary
        if canary is not None and canary.running:
            # Both versions' models are loaded before the swap: the canary serves from the
            # first batch that sees it. Paused routes belong to the current version's steps.
            other = pipeline.versions[canary.version - 1]
            side = self.serving(replace(deployment, version=canary.version, canary=None,
                                        paused_routes=frozenset()),
                                other, self.cache.for_pipeline(registry, other))
            serving.canary = CanarySide(side, canary.share, canary.hash_key)
        return serving

    def serving(self, deployment: Deployment, version: PipelineVersion,
                runtimes: Mapping[tuple[str, int], ModelRuntime]) -> Serving:
        """What serves a deployed version with these loaded models."""
        topic = lambda kind: self.settings.pipeline_topic(  # noqa: E731
            deployment.workspace, deployment.pipeline, kind)
        first = step_models(version.steps[0])[0]
        specs = runtimes[(first.model, first.version)].inputs
        runner = PipelineRunner(version, runtimes, self.worker,
                                paused_routes=deployment.paused_routes)
        avro = avro_input(specs, input_schema_name(deployment.workspace, deployment.pipeline))
        names = (deployment.workspace, deployment.pipeline, deployment.version, self.worker)
        logs = LogWriter(*names)
        columnar = Columnar.of(runner, specs, avro, ResultWriter(*names), logs, topic("output"),
                               self.settings.topic("logs"), self.settings.max_record_bytes)
        return Serving(deployment, version, runner, specs, avro, logs, topic("input"),
                       topic("output"), topic("dead"), columnar)

    def _refuse(self, deployment: Deployment, current: Serving | None, exc: Exception,
                status: ControlStatus | None) -> None:
        keeps = (f"it keeps serving version {current.version.version}" if current
                 else "it is not served")
        reason = (f"worker {self.worker} cannot load {deployment.pipeline} version "
                  f"{deployment.version}: {exc}; {keeps}")
        log.error(reason)
        key = (deployment.workspace, deployment.pipeline)
        if key not in self.refused or f"version {deployment.version}:" not in self.refused[key]:
            self.pipeline_metrics.model_load_failure(*key)  # once a version, not once a try
        self.refused[key] = reason
        self._retry_at.setdefault(key, (time.monotonic() + RETRY_FIRST_S, RETRY_FIRST_S))
        self._report(status, accepted=False, reason=reason)

    def _report(self, status: ControlStatus | None, accepted: bool, reason: str | None = None,
                serving: int | None = None) -> None:
        """Tell the operator waiting on a deploy or rollback what this worker made of it."""
        if status is None or status.type not in ("Deploy", "Rollback"):
            return
        if self._status_producer is None:
            self._status_producer = producer(self.settings)
        result = {"worker": self.worker}
        if serving is not None:
            result["serving"] = str(serving)
        report = replace(status, accepted=accepted, reason=reason, result=result,
                         time=datetime.now(UTC))
        self._status_producer.produce(self.settings.topic("control.status"),
                                      key=status.event_id.encode(), value=report.to_bytes())
        self._status_producer.flush(10)

    def close(self) -> None:
        self.intake.stop()
        self.plane.close()
        self.cache.close()


def _serves(d: Deployment) -> tuple[object, ...]:
    """What of a deployment decides how it is served: a canary's evidence or a held step
    change nothing, so its versions are not prepared again for them."""
    c = d.canary
    running = (c.canary_id, c.version, c.share, c.hash_key) if c is not None and c.running else None
    return replace(d, canary=None), running
