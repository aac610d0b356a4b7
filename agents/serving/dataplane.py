"""The data plane: the one place where records are served, for the stream, HTTP and batch tasks.

It turns bytes into records (records/formats.py), runs a deployed version (the column-wise
fast path when the batch fits it, else record by record), and turns the outcome into results,
dead letters and inference logs, sent to an Outgoing: the intake's transaction buffer for the
stream, the outbox for HTTP. Batch tasks decode and run through it too
(scheduling/orchestration.py). It also counts what it serves (metrics).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from confluent_kafka import Message

from agents.metrics import GcPauses, PipelineMetrics, StageMetrics
from agents.records.avro_logs import LogWriter
from agents.records.formats import (
    AvroInput,
    BadRecord,
    InputRecord,
    ResultMeta,
    dead_letter,
    decode_record,
    encode_result,
)
from agents.serving.canary import in_canary, split
from agents.serving.columnar import Columnar, Outgoing
from agents.serving.outbox import Outbox
from agents.serving.redriven import any_redriven, origin_of
from agents.serving.runner import BatchOutcome, PipelineRunner, RecordResult
from agents.serving.validations import CheckReport
from control.config import Settings
from control.registry.state import Deployment, PipelineVersion
from control.registry.tensors import TensorSpec

Key = tuple[str, str]  # (workspace, pipeline)
log = logging.getLogger(__name__)


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
    canary: CanarySide | None = None  # while a canary runs: its version and share

    @property
    def key(self) -> Key:
        return self.deployment.workspace, self.deployment.pipeline


@dataclass
class CanarySide:
    """What serves the canary's share of a deployed pipeline's records while a canary runs."""

    serving: Serving  # the canary version, loaded beside the current one
    share: int  # percent
    hash_key: str | None


@dataclass(frozen=True)
class Answer:
    """What became of one record sent over HTTP: its result (bytes and content type), or why
    not (an HTTP status and the reason)."""

    status: int
    body: bytes | str
    content_type: str = "application/json"


class DataPlane:
    """Serves records of deployed versions and counts them; one per worker."""

    def __init__(self, settings: Settings, worker: str) -> None:
        self.settings = settings
        self.worker = worker
        self.metrics = StageMetrics()
        self._gc = GcPauses(self.metrics).install()  # the collector's pauses, for the tail
        self.pipeline_metrics = PipelineMetrics()
        self.outbox = Outbox(settings)  # what HTTP requests' logs go through
        self._rng = np.random.default_rng()

    def serve_batch(self, serving: Serving, messages: Sequence[Message], out: Outgoing
                    ) -> tuple[int, int]:
        """Serve one micro-batch of input messages: send its results, dead letters and logs
        to `out`. Returns (results, dead letters). Runs in the intake's thread.

        While a canary runs, its share of the messages is served by the canary version (its
        results, logs and dead letters say so), the rest by the current one."""
        side = serving.canary
        if side is None:
            return self._serve_batch(serving, messages, out)
        current, canary = split(messages, side.share, side.hash_key,
                                lambda m: self._hash_value(serving, m), self._rng)
        served = [self._serve_batch(s, ms, out)
                  for s, ms in ((serving, current), (side.serving, canary)) if ms]
        return sum(r for r, _ in served), sum(d for _, d in served)

    def _hash_value(self, serving: Serving, m: Message) -> object:
        """The canary's hash key field of a message, or None (then it draws at random)."""
        assert serving.canary is not None and serving.canary.hash_key is not None
        try:
            record = self.decode(m.value(), m.key(), serving.specs, "", serving.avro)
        except BadRecord:
            return None
        return record.fields.get(serving.canary.hash_key)

    def _serve_batch(self, serving: Serving, messages: Sequence[Message], out: Outgoing
                     ) -> tuple[int, int]:
        metrics = self.metrics
        began = started = time.perf_counter_ns()
        # The fast path names records by their position: a redriven one keeps its first id.
        if serving.columnar is not None and not any_redriven(messages):
            served = serving.columnar.serve(messages, out, metrics,
                                            lambda report: self.checked(serving, report))
            if served is not None:
                self.pipeline_metrics.batch_seconds(*serving.key,
                                                    (time.perf_counter_ns() - began) / 1e9)
                return served, 0
        records, sources, dead = self._decode(serving, messages)
        started = metrics.add("decode", started)
        results = 0
        if records:
            outcome = serving.runner.run(records)
            self.checked(serving, outcome.checks)
            started = metrics.add("infer", started)
            send, output = out.send, serving.output_topic
            for result in outcome.results:
                send(output, result.record.key,
                     encode_result(result.record, result.outputs, self.meta(serving, result)))
            results = len(outcome.results)
            dead += [(sources[id(f.record)], f.reason) for f in outcome.failures]
            self.publish_logs(serving, outcome, out)
        for message, reason in dead:
            self._dead(serving, message, reason, out)
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
        specs, avro = serving.specs, serving.avro
        for m in messages:
            origin = origin_of(m)
            position = (origin.record_id if origin is not None
                        else f"{m.topic()}:{m.partition()}:{m.offset()}")
            try:
                record = self.decode(m.value(), m.key(), specs, position, avro)
            except BadRecord as exc:
                dead.append((m, str(exc)))
                continue
            records.append(record)
            sources[id(record)] = m
        return records, sources, dead

    def checked(self, serving: Serving, report: CheckReport | None) -> None:
        """Count what a batch's validations found; log each one that could not run, once."""
        if report is None:
            return
        self.pipeline_metrics.checked(*serving.key, report.flagged, report.errors)
        d = serving.deployment
        for check, error in report.errors.items():
            log.warning("pipeline %s/%s v%d: validation %r could not be evaluated over a batch "
                        "(it flagged none of its records; the results went out): %s",
                        d.workspace, d.pipeline, d.version, check, error)

    def meta(self, serving: Serving, result: RecordResult) -> ResultMeta:
        d = serving.deployment
        return ResultMeta(
            pipeline=d.pipeline, pipeline_version=d.version, workspace=d.workspace,
            models=[(m.step, m.model, m.version, m.role) for m in result.models],
            elapsed_us=result.elapsed_us, worker=self.worker,
            anomalies=result.anomalies if serving.runner.checks is not None else None,
        )

    def publish_logs(self, serving: Serving, outcome: BatchOutcome, out: Outgoing) -> None:
        """Send the batch's inference logs (shadow ones too): see LogWriter.messages."""
        topic, send = self.settings.topic("logs"), out.send
        for value in serving.logs.messages(time.time_ns() // 1000, outcome.logs):
            send(topic, None, value)

    def _dead(self, serving: Serving, message: Message, reason: str, out: Outgoing) -> None:
        d = serving.deployment
        origin = origin_of(message)
        if origin is None:
            value = dead_letter(message.value(), message.key(), reason, d.pipeline, d.version,
                                message.topic(), message.partition(), message.offset(),
                                workspace=d.workspace)
        else:  # where it first arrived, and how often it was sent back
            value = dead_letter(message.value(), message.key(), reason, d.pipeline, d.version,
                                origin.topic, origin.partition, origin.offset,
                                workspace=d.workspace, redrive_count=origin.count,
                                redrive_id=origin.redrive_id)
        out.send(serving.dead_topic, message.key(), value)

    def decode(self, payload: bytes, key: bytes | None, specs: tuple[TensorSpec, ...],
               record_id: str, avro: AvroInput | None = None) -> InputRecord:
        """One record from its bytes (JSON, V2 or Avro); BadRecord says why it is not one."""
        return decode_record(payload, key, specs, record_id, avro,
                             max_bytes=self.settings.max_record_bytes)

    async def serve_request(self, serving: Serving, body: bytes, record_id: str) -> Answer:
        """One record sent over HTTP: served like a stream record (by the canary version for
        its share while a canary runs), its logs through the outbox (delivered before the
        answer), its result in the record's own format."""
        import asyncio

        try:
            record = self.decode(body, None, serving.specs, record_id, serving.avro)
        except BadRecord as exc:
            return Answer(400, str(exc))
        side = serving.canary
        if side is not None:  # the canary's share of requests, by the same rule as the stream
            value = record.fields.get(side.hash_key) if side.hash_key else None
            if in_canary(value, side.share, float(self._rng.random())):
                serving = side.serving
                try:
                    record = self.decode(body, None, serving.specs, record_id, serving.avro)
                except BadRecord as exc:
                    return Answer(400, str(exc))
        outcome = await asyncio.get_running_loop().run_in_executor(
            None, serving.runner.run, [record])
        self.checked(serving, outcome.checks)
        shipment = self.outbox.shipment()
        self.publish_logs(serving, outcome, shipment)
        await shipment.delivered()
        if outcome.failures:
            return Answer(422, outcome.failures[0].reason)
        result = outcome.results[0]
        value = encode_result(record, result.outputs, self.meta(serving, result))
        return Answer(200, value, "avro/binary" if record.format == "avro" else "application/json")

    def close(self) -> None:
        self._gc.remove()
        self.outbox.close()
