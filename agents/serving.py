"""Serving deployed pipelines: the runner of each deployed version, swapped between batches.

The deployment manager follows the registry. For a new deployment or version it loads the
version's models first (in a thread), then publishes the new set of served pipelines; the
intake (agents.intake) takes it at its next batch, so no record is half-processed by two
versions. An undeployed pipeline leaves the intake's subscription and its records wait in the
input topic.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from confluent_kafka import Message

from agents.avro_writer import LogWriter, ResultWriter
from agents.columnar import Columnar, Sink
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
from agents.intake import Intake
from agents.metrics import PipelineMetrics, StageMetrics
from agents.model_cache import ModelCache
from agents.outbox import Outbox
from agents.runner import BatchOutcome, PipelineRunner, RecordResult
from agents.runtimes.base import ModelRuntime, TensorSpec
from control.config import Settings
from control.events import ControlStatus
from control.kafka import ensure_topics, pipeline_topics, producer
from control.state import Deployment, PipelineVersion, Registry, step_models

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
    logs: LogWriter  # this version's inference-log records
    input_topic: str
    output_topic: str
    dead_topic: str
    columnar: Columnar | None = None  # the fast path, when the version is the common case

    @property
    def key(self) -> Key:
        return self.deployment.workspace, self.deployment.pipeline


class DeploymentManager:
    """Keeps the runner of every deployed pipeline's version, and serves their batches."""

    def __init__(self, settings: Settings, worker: str) -> None:
        self.settings = settings
        self.worker = worker
        self.cache = ModelCache(settings)
        self.served: dict[Key, Serving] = {}
        self.by_topic: dict[str, Serving] = {}  # replaced whole, never changed: see Intake
        self.refused: dict[Key, str] = {}  # deployments this worker cannot load, and why
        self._lock = asyncio.Lock()
        self._status_producer = None
        self.metrics = StageMetrics()
        self.pipeline_metrics = PipelineMetrics()
        self.outbox = Outbox(settings)  # what HTTP requests' logs go through
        self.intake = Intake(settings, self)
        self.ready = False  # set once the registry is replayed and its deployments served

    def alive(self) -> bool:
        """Whether the worker still takes records from its input topics."""
        return self.intake.alive()

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
                self.served[key] = serving
                self.refused.pop(key, None)
                self.pipeline_metrics.set_version(*key, deployment.version)
                log.info("serving %s/%s v%s", *key, deployment.version)
                self._report(about, accepted=True, serving=deployment.version)
            # The intake's next batch uses the new set.
            self.by_topic = {s.input_topic: s for s in self.served.values()}
            # Loaded models live as long as the worker: keep the collector from rescanning them.
            gc.freeze()

    def _prepare(self, registry: Registry, deployment: Deployment) -> Serving:
        pipeline = registry.pipelines[(deployment.workspace, deployment.pipeline)]
        version = pipeline.versions[deployment.version - 1]
        runtimes = self.cache.for_pipeline(registry, version)
        ensure_topics(self.settings,
                      pipeline_topics(self.settings, deployment.workspace, deployment.pipeline))
        return self.serving(deployment, version, runtimes)

    def serving(self, deployment: Deployment, version: PipelineVersion,
                runtimes: Mapping[tuple[str, int], ModelRuntime]) -> Serving:
        """What serves a deployed version with these loaded models."""
        topic = lambda kind: self.settings.pipeline_topic(  # noqa: E731
            deployment.workspace, deployment.pipeline, kind)
        first = step_models(version.steps[0])[0]
        specs = runtimes[(first.model, first.version)].inputs
        runner = PipelineRunner(version, runtimes, self.worker)
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
        self.refused[key] = reason
        self.pipeline_metrics.model_load_failure(*key)
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

    def serve_batch(self, serving: Serving, messages: Sequence[Message], sink: Sink
                    ) -> tuple[int, int]:
        """Serve one micro-batch of input messages: send its results, dead letters and logs
        to `sink`. Returns (results, dead letters). Runs in the intake's thread."""
        metrics = self.metrics
        began = started = time.perf_counter_ns()
        if serving.columnar is not None:
            served = serving.columnar.serve(messages, sink, metrics)
            if served is not None:
                self.pipeline_metrics.batch_seconds(*serving.key,
                                                    (time.perf_counter_ns() - began) / 1e9)
                return served, 0
        records, sources, dead = self._decode(serving, messages)
        started = metrics.add("decode", started)
        results = 0
        if records:
            outcome = serving.runner.run(records)
            started = metrics.add("infer", started)
            send, output = sink.send, serving.output_topic
            for result in outcome.results:
                send(output, result.record.key,
                     encode_result(result.record, result.outputs, self.meta(serving, result)))
            results = len(outcome.results)
            dead += [(sources[id(f.record)], f.reason) for f in outcome.failures]
            self.publish_logs(serving, outcome, sink)
        for message, reason in dead:
            self._dead(serving, message, reason, sink)
        metrics.add("encode", started)
        self.pipeline_metrics.batch_seconds(*serving.key,
                                            (time.perf_counter_ns() - began) / 1e9)
        return results, len(dead)

    def served_batch(self, serving: Serving, records: int, results: int, dead: int) -> None:
        """Count a batch whose output and offsets are committed."""
        self.metrics.served(records)
        m, key = self.pipeline_metrics, serving.key
        m.records_in(*key, records)
        m.records_out(*key, results)
        m.dead_lettered(*key, dead)

    def lag(self, serving: Serving, waiting: int) -> None:
        self.pipeline_metrics.set_lag(*serving.key, waiting)

    def _decode(self, serving: Serving, messages: Sequence[Message]
                ) -> tuple[list[InputRecord], dict[int, Message], list[tuple[Message, str]]]:
        """The batch's records, their messages by id(record), and the undecodable ones."""
        records: list[InputRecord] = []
        sources: dict[int, Message] = {}
        dead: list[tuple[Message, str]] = []
        limit = self.settings.max_record_bytes
        specs, avro = serving.specs, serving.avro
        for m in messages:
            try:
                record = decode_record(m.value(), m.key(), specs,
                                       f"{m.topic()}:{m.partition()}:{m.offset()}", avro,
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

    def publish_logs(self, serving: Serving, outcome: BatchOutcome, sink: Sink) -> None:
        """Send the batch's inference logs (shadow ones too): see LogWriter.messages."""
        topic, send = self.settings.topic("logs"), sink.send
        for value in serving.logs.messages(time.time_ns() // 1000, outcome.logs):
            send(topic, None, value)

    def _dead(self, serving: Serving, message: Message, reason: str, sink: Sink) -> None:
        d = serving.deployment
        value = dead_letter(message.value(), message.key(), reason, d.pipeline, d.version,
                            message.topic(), message.partition(), message.offset(),
                            workspace=d.workspace)
        sink.send(serving.dead_topic, message.key(), value)

    def close(self) -> None:
        self.intake.stop()
        self.outbox.close()
