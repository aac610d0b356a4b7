"""Serving deployed pipelines: one Faust agent per deployed pipeline, swapped between batches.

The deployment manager follows the registry. For a new deployment it loads the
version's models first (in a thread), then starts an agent on the input topic;
for a new version of a deployed pipeline it swaps the runner, which the agent
picks up at its next batch, so no record is half-processed by two versions. An
undeployed pipeline's agent stops and its records wait in the input topic.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import faust

from agents.formats import (
    AvroInput,
    BadRecord,
    InputRecord,
    ResultMeta,
    avro_input,
    dead_letter,
    decode_record,
    encode_result,
    input_schema_name,
    tensor_records,
)
from agents.metrics import StageMetrics
from agents.model_cache import ModelCache
from agents.runner import BatchOutcome, PipelineRunner, RecordResult
from agents.runtimes.base import TensorSpec
from control.config import Settings
from control.events import ControlStatus
from control.kafka import ensure_topics, pipeline_topics, producer
from control.state import Deployment, PipelineVersion, Registry, step_models
from schemas.codec import codec

log = logging.getLogger(__name__)
Key = tuple[str, str]  # (workspace, pipeline)


@dataclass
class Serving:
    """What a worker serves for one pipeline: its deployed version, ready to run."""

    deployment: Deployment
    version: PipelineVersion
    runner: PipelineRunner
    specs: tuple[TensorSpec, ...]  # the first step's inputs: what an input record must hold
    avro: AvroInput  # the Avro record producers may write instead of JSON
    input_topic: str
    output_topic: str
    dead_topic: str

    @property
    def batching(self) -> tuple[int, int]:
        return self.deployment.batch_size, self.deployment.batch_wait_ms


class DeploymentManager:
    """Keeps one agent per deployed pipeline and the runner of its deployed version."""

    def __init__(self, app: faust.App, settings: Settings, worker: str) -> None:
        self.app = app
        self.settings = settings
        self.worker = worker
        self.cache = ModelCache(settings)
        self.served: dict[Key, Serving] = {}
        self._agents: dict[Key, Any] = {}
        self._lock = asyncio.Lock()
        self._status_producer = None
        self.metrics = StageMetrics()
        self.ready = False  # set once the registry is replayed and its deployments served

    async def reconcile(self, registry: Registry, status: ControlStatus | None = None) -> None:
        """Make what this worker serves match the registry's deployments."""
        async with self._lock:
            wanted = {(d.workspace, d.pipeline): d for d in registry.active_deployments()}
            for key in [k for k in self.served if k not in wanted]:
                await self._stop_agent(key)
                del self.served[key]
                log.info("undeployed %s/%s", *key)
            for key, deployment in wanted.items():
                about = status if status and (
                    status.workspace, status.result.get("pipeline")) == key else None
                current = self.served.get(key)
                if current is not None and current.deployment == deployment:
                    continue
                try:
                    serving = await asyncio.get_running_loop().run_in_executor(
                        None, self._prepare, registry, deployment)
                except Exception as exc:  # a version that cannot load must not stop the others
                    self._refuse(deployment, current, exc, about)
                    continue
                self.served[key] = serving  # the agent's next batch uses it
                log.info("serving %s/%s v%s", *key, deployment.version)
                if current is None or current.batching != serving.batching:
                    await self._stop_agent(key)
                    await self._start_agent(key, serving)
                self._report(about, accepted=True, serving=deployment.version)
            # Loaded models live as long as the worker: keep the collector from rescanning them.
            gc.freeze()

    def _prepare(self, registry: Registry, deployment: Deployment) -> Serving:
        pipeline = registry.pipelines[(deployment.workspace, deployment.pipeline)]
        version = pipeline.versions[deployment.version - 1]
        runtimes = self.cache.for_pipeline(registry, version)
        first = step_models(version.steps[0])[0]
        topic = lambda kind: self.settings.pipeline_topic(  # noqa: E731
            deployment.workspace, deployment.pipeline, kind)
        ensure_topics(self.settings,
                      pipeline_topics(self.settings, deployment.workspace, deployment.pipeline))
        specs = runtimes[(first.model, first.version)].inputs
        return Serving(
            deployment, version, PipelineRunner(version, runtimes, self.worker), specs,
            avro_input(specs, input_schema_name(deployment.workspace, deployment.pipeline)),
            topic("input"), topic("output"), topic("dead"),
        )

    def _refuse(self, deployment: Deployment, current: Serving | None, exc: Exception,
                status: ControlStatus | None) -> None:
        keeps = (f"it keeps serving version {current.version.version}" if current
                 else "it is not served")
        reason = (f"worker {self.worker} cannot load {deployment.pipeline} version "
                  f"{deployment.version}: {exc}; {keeps}")
        log.error(reason)
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

    async def _start_agent(self, key: Key, serving: Serving) -> None:
        topic = self.app.topic(serving.input_topic, key_type=bytes, value_type=bytes,
                               partitions=self.settings.pipeline_partitions)
        size, wait_ms = serving.batching

        metrics = self.metrics

        async def serve(stream: faust.StreamT) -> None:
            started = time.perf_counter_ns()
            async for events in stream.noack_take(size, within=max(wait_ms, 1) / 1000):
                metrics.add("consume", started)
                await self.process(key, events)
                acking = time.perf_counter_ns()
                for event in events:
                    await stream.ack(event)
                metrics.served(len(events))
                started = metrics.add("ack", acking)

        agent = self.app.agent(topic, name=f"serve.{key[0]}.{key[1]}")(serve)
        self._agents[key] = agent
        await agent.start()

    async def _stop_agent(self, key: Key) -> None:
        agent = self._agents.pop(key, None)
        if agent is None:
            return
        # Commit what was served, so the rebalance this causes does not serve it again.
        await self.app.consumer.commit()
        await agent.stop()
        for channel in list(self.app.topics._topics):
            if self.settings.pipeline_topic(*key, "input") in channel.topics:
                self.app.topics.discard(channel)

    async def process(self, key: Key, events: Sequence[faust.EventT]) -> None:
        """Serve one micro-batch: results, dead letters and logs, all delivered before acks."""
        serving = self.served[key]
        metrics = self.metrics
        started = time.perf_counter_ns()
        records: list[InputRecord] = []
        sources: dict[int, Any] = {}  # id(record) -> its Kafka message, for dead letters
        pending: list[Awaitable[Any]] = []
        for event in events:
            m = event.message
            try:
                record = decode_record(
                    m.value, m.key, serving.specs, f"{m.topic}:{m.partition}:{m.offset}",
                    serving.avro, max_bytes=self.settings.max_record_bytes,
                )
            except BadRecord as exc:
                pending.append(await self._dead(serving, m, str(exc)))
                continue
            records.append(record)
            sources[id(record)] = m
        started = metrics.add("decode", started)
        if records:
            outcome = await asyncio.get_running_loop().run_in_executor(
                None, serving.runner.run, records)
            started = metrics.add("infer", started)
            for result in outcome.results:
                value = encode_result(result.record, result.outputs, self.meta(serving, result))
                pending.append(await self._send(serving.output_topic, result.record.key, value))
            for failure in outcome.failures:
                pending.append(await self._dead(serving, sources[id(failure.record)],
                                                failure.reason))
            pending += await self.publish_logs(serving, outcome)
            started = metrics.add("encode", started)
        await asyncio.gather(*pending)
        metrics.add("produce", started)

    def meta(self, serving: Serving, result: RecordResult) -> ResultMeta:
        d = serving.deployment
        return ResultMeta(
            pipeline=d.pipeline, pipeline_version=d.version, workspace=d.workspace,
            models=[(m.step, m.model, m.version, m.role) for m in result.models],
            elapsed_us=result.elapsed_us, worker=self.worker,
        )

    async def publish_logs(self, serving: Serving, outcome: BatchOutcome
                           ) -> list[Awaitable[Any]]:
        """One inference-log record per inference (shadow ones too) on the logs topic."""
        d = serving.deployment
        now = datetime.now(UTC)
        logs_codec = codec("InferenceLog")
        sends = []
        for entry in outcome.logs:
            value = logs_codec.encode({
                "time": now, "record_id": entry.record_id, "workspace": d.workspace,
                "pipeline": d.pipeline, "pipeline_version": d.version, "step": entry.step,
                "model": entry.model, "model_version": entry.model_version,
                "shadow": entry.shadow, "inputs": tensor_records(entry.inputs),
                "outputs": tensor_records(entry.outputs), "elapsed_us": entry.elapsed_us,
                "worker": self.worker, "error": entry.error,
            })
            sends.append(await self._send(self.settings.topic("logs"),
                                          entry.record_id.encode(), value))
        return sends

    async def _dead(self, serving: Serving, message: Any, reason: str) -> Awaitable[Any]:
        d = serving.deployment
        value = dead_letter(message.value, message.key, reason, d.pipeline, d.version,
                            message.topic, message.partition, message.offset,
                            workspace=d.workspace)
        return await self._send(serving.dead_topic, message.key, value)

    async def _send(self, topic: str, key: bytes | None, value: bytes) -> Awaitable[Any]:
        # Returns once queued; the awaitable resolves when the broker has it.
        return await self.app.producer.send(topic, key, value, None, None, None)
