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
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import faust

from agents.avro_writer import LogWriter
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
)
from agents.metrics import StageMetrics
from agents.model_cache import ModelCache
from agents.outbox import Outbox, Shipment
from agents.runner import BatchOutcome, PipelineRunner, RecordResult
from agents.runtimes.base import TensorSpec
from control.config import Settings
from control.events import ControlStatus
from control.kafka import ensure_topics, pipeline_topics, producer
from control.state import Deployment, PipelineVersion, Registry, step_models

log = logging.getLogger(__name__)
Key = tuple[str, str]  # (workspace, pipeline)
MAX_IN_FLIGHT = 3  # served batches awaiting the broker's acknowledgement, per pipeline
OFFLOAD_AFTER_NS = 10_000_000  # models slower than this on a batch run in a thread from then on


@dataclass
class Serving:
    """What a worker serves for one pipeline: its deployed version, ready to run."""

    deployment: Deployment
    version: PipelineVersion
    runner: PipelineRunner
    specs: tuple[TensorSpec, ...]  # the first step's inputs: what an input record must hold
    avro: AvroInput  # the Avro record producers may write instead of JSON
    logs: LogWriter  # this version's inference-log records
    input_topic: str
    output_topic: str
    dead_topic: str
    offload: bool = False  # run the models in a thread (they took long on the last batch)

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
        self._guards: dict[Key, asyncio.Future[None]] = {}  # see _keep_subscribed
        self._lock = asyncio.Lock()
        self._status_producer = None
        self.metrics = StageMetrics()
        self.outbox = Outbox(settings)
        self.ready = False  # set once the registry is replayed and its deployments served
        self.refused: dict[Key, str] = {}  # deployments this worker cannot load, and why

    async def reconcile(self, registry: Registry, status: ControlStatus | None = None) -> None:
        """Make what this worker serves match the registry's deployments."""
        async with self._lock:
            wanted = {(d.workspace, d.pipeline): d for d in registry.active_deployments()}
            for key in [k for k in self.served if k not in wanted]:
                await self._stop_agent(key)
                del self.served[key]
                self.refused.pop(key, None)
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
                self.refused.pop(key, None)
                log.info("serving %s/%s v%s", *key, deployment.version)
                if current is None or current.batching != serving.batching:
                    await self._stop_agent(key)
                    await self._start_agent(key, serving)
                self._report(about, accepted=True, serving=deployment.version)
            # Loaded models live as long as the worker: keep the collector from rescanning them.
            gc.freeze()

    def alive(self) -> bool:
        """Whether the worker still takes records from its input topics."""
        return True

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
            LogWriter(deployment.workspace, deployment.pipeline, deployment.version, self.worker),
            topic("input"), topic("output"), topic("dead"),
        )

    def _refuse(self, deployment: Deployment, current: Serving | None, exc: Exception,
                status: ControlStatus | None) -> None:
        keeps = (f"it keeps serving version {current.version.version}" if current
                 else "it is not served")
        reason = (f"worker {self.worker} cannot load {deployment.pipeline} version "
                  f"{deployment.version}: {exc}; {keeps}")
        log.error(reason)
        self.refused[(deployment.workspace, deployment.pipeline)] = reason
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
            # While the broker acknowledges a batch's output, the next batch is served; its
            # input offsets are acknowledged once its own output is delivered.
            in_flight: deque[asyncio.Future[None]] = deque()
            try:
                started = time.perf_counter_ns()
                async for events in stream.noack_take(size, within=max(wait_ms, 1) / 1000):
                    metrics.add("consume", started)
                    shipment = await self.process(key, events)
                    in_flight.append(asyncio.ensure_future(
                        self._ack_when_delivered(stream, events, shipment)))
                    waiting = time.perf_counter_ns()
                    while len(in_flight) > MAX_IN_FLIGHT or (in_flight and in_flight[0].done()):
                        await in_flight.popleft()
                    started = metrics.add("produce", waiting)
            finally:
                for pending in in_flight:  # not acknowledged: served again after a restart
                    pending.cancel()

        agent = self.app.agent(topic, name=f"serve.{key[0]}.{key[1]}")(serve)
        self._agents[key] = agent
        await agent.start()
        self._guards[key] = asyncio.ensure_future(self._keep_subscribed(topic))

    async def _keep_subscribed(self, topic: faust.TopicT) -> None:
        """Ask again for a subscription that Faust dropped.

        Faust's conductor discards a subscription change that arrives while the group is
        rebalancing, so an agent started then (a deploy while another worker joins) would
        never get records on this worker. Cancelled when the agent stops.
        """
        conductor = self.app.topics
        missed = 0  # checks in a row that found the topic unsubscribed and no change pending
        while True:
            await asyncio.sleep(1.0)
            pending = conductor._subscription_changed
            if (self.app.rebalancing or (pending is not None and pending.is_set())
                    or not conductor._topic_contain_unsubscribed_topics(topic)):
                missed = 0
                continue
            missed += 1
            if missed >= 2:
                log.info("subscribing to %s again: the request came during a rebalance",
                         ", ".join(topic.topics))
                conductor._flag_changes()
                missed = 0

    async def _ack_when_delivered(self, stream: faust.StreamT, events: Sequence[faust.EventT],
                                  shipment: Shipment) -> None:
        await shipment.delivered()
        started = time.perf_counter_ns()
        for event in events:
            await stream.ack(event)
        self.metrics.served(len(events))
        self.metrics.add("ack", started)

    async def _stop_agent(self, key: Key) -> None:
        guard = self._guards.pop(key, None)
        if guard is not None:
            guard.cancel()
        agent = self._agents.pop(key, None)
        if agent is None:
            return
        # Commit what was served, so the rebalance this causes does not serve it again.
        await self.app.consumer.commit()
        await agent.stop()
        for channel in list(self.app.topics._topics):
            if self.settings.pipeline_topic(*key, "input") in channel.topics:
                self.app.topics.discard(channel)

    async def process(self, key: Key, events: Sequence[faust.EventT]) -> Shipment:
        """Serve one micro-batch: queue its results, dead letters and logs.

        Returns their shipment: await its delivered() before acknowledging the batch.
        """
        serving = self.served[key]
        metrics = self.metrics
        shipment = self.outbox.shipment()
        started = time.perf_counter_ns()
        records, sources, dead = self._decode(serving, events)
        started = metrics.add("decode", started)
        if records:
            # On the loop, unless the models take long enough to hold up fetching: a thread
            # hop costs more than small models take (GIL hand-offs between the loop and the
            # thread cost ~12 % of throughput in bench/), but a big model must not stall it.
            if serving.offload:
                outcome = await asyncio.get_running_loop().run_in_executor(
                    None, serving.runner.run, records)
            else:
                outcome = serving.runner.run(records)
            serving.offload = time.perf_counter_ns() - started > OFFLOAD_AFTER_NS
            started = metrics.add("infer", started)
            send, output = shipment.send, serving.output_topic
            for result in outcome.results:
                send(output, result.record.key,
                     encode_result(result.record, result.outputs, self.meta(serving, result)))
            dead += [(sources[id(f.record)], f.reason) for f in outcome.failures]
            self.publish_logs(serving, outcome, shipment)
        for message, reason in dead:
            self._dead(serving, message, reason, shipment)
        metrics.add("encode", started)
        return shipment

    def _decode(self, serving: Serving, events: Sequence[faust.EventT]
                ) -> tuple[list[InputRecord], dict[int, Any], list[tuple[Any, str]]]:
        """The batch's records, their messages by id(record), and the undecodable ones."""
        records: list[InputRecord] = []
        sources: dict[int, Any] = {}
        dead: list[tuple[Any, str]] = []
        limit = self.settings.max_record_bytes
        for event in events:
            m = event.message
            try:
                record = decode_record(m.value, m.key, serving.specs,
                                       f"{m.topic}:{m.partition}:{m.offset}", serving.avro,
                                       max_bytes=limit)
            except BadRecord as exc:
                dead.append((m, str(exc)))
                continue
            records.append(record)
            sources[id(record)] = m
        return records, sources, dead

    def meta(self, serving: Serving, result: RecordResult) -> ResultMeta:
        d = serving.deployment
        return ResultMeta(
            pipeline=d.pipeline, pipeline_version=d.version, workspace=d.workspace,
            models=[(m.step, m.model, m.version, m.role) for m in result.models],
            elapsed_us=result.elapsed_us, worker=self.worker,
        )

    def publish_logs(self, serving: Serving, outcome: BatchOutcome, shipment: Shipment) -> None:
        """Queue one inference-log record per inference (shadow ones too) on the logs topic."""
        topic, send = self.settings.topic("logs"), shipment.send
        values = serving.logs.encode_all(time.time_ns() // 1000, outcome.logs)
        for entry, value in zip(outcome.logs, values, strict=True):
            send(topic, entry.record_id.encode(), value)

    def _dead(self, serving: Serving, message: Any, reason: str, shipment: Shipment) -> None:
        d = serving.deployment
        value = dead_letter(message.value, message.key, reason, d.pipeline, d.version,
                            message.topic, message.partition, message.offset,
                            workspace=d.workspace)
        shipment.send(serving.dead_topic, message.key, value)
