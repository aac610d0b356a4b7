"""Replays: a past range of a pipeline's input topic scored again, exactly once, off the live path.

One thread of the worker that runs schedules (agents/app.py) runs the registry's running
replays one at a time, oldest first. A replay is served by the data plane's own code (the
runner, the column-wise fast path, result, dead-letter and log encoding) through a DataPlane
of its own, so the live Prometheus series never count it. For each replay:

- its records are read with a consumer of the replay's own group, `assign`ed from the
  group's committed offsets (else the range's start), up to the range's end fixed when it was
  asked for (control/replays.py), read_committed;
- each batch's results (to the side topic), dead letters (to the side topic's `.dead`, never
  the live one), inference logs (marked with the replay id) and the group's next offsets go in
  one transaction of a producer whose transactional.id is the replay's own: a worker that
  takes the replay over (after a kill -9, or because it now runs the schedules) fences any
  zombie still writing, and starts from the committed offsets, so every result is in the side
  topic once for read_committed consumers;
- the live output topic, the live group's offsets and the live metrics are never touched.

StopReplay is seen between batches; the committed progress stays for ResumeReplay.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from agents.records.avro_logs import LogWriter
from agents.records.avro_writer import ResultWriter
from agents.records.formats import avro_input, input_schema_name
from agents.serving.columnar import Columnar
from agents.serving.dataplane import DataPlane, Serving
from agents.serving.intake import TRANSACTION_TIMEOUT_MS, Buffer
from agents.serving.model_cache import ModelCache
from agents.serving.outbox import TUNING
from agents.serving.runner import PipelineRunner
from control import replays as names
from control.config import Settings
from control.kafka import TopicSpec, consumer, ensure_topics, producer
from control.registry.state import Deployment, Registry, Replay, step_models

log = logging.getLogger(__name__)
CALL_TIMEOUT_S = 30.0
RETRY_S = 10.0  # a replay that failed (a version that will not load, the broker away) waits

Key = tuple[str, str]  # (workspace, replay id)


@dataclass
class ReplayState:
    """What this worker knows of a replay it ran: done, or why it last failed."""

    done: bool = False
    error: str | None = None
    retry_at: float = 0.0


def next_replay(registry: Registry, known: dict[Key, ReplayState], now: float
                ) -> Replay | None:
    """The oldest running replay not done here, and not waiting after a failure (`now` on
    the monotonic clock); None when there is none."""
    for replay in sorted(registry.replays.values(), key=lambda r: r.created_at):
        state = known.get((replay.workspace, replay.replay_id))
        if replay.running and (state is None or (not state.done and state.retry_at <= now)):
            return replay
    return None


class ReplayRunner:
    """Runs the registry's running replays, one at a time, in a thread of its own."""

    def __init__(self, settings: Settings, worker: str, cache: ModelCache,
                 registry_of: Callable[[], Registry]) -> None:
        self.settings = settings
        self.worker = worker
        self.cache = cache
        self.registry_of = registry_of
        self.plane = DataPlane(settings, worker)  # its own metrics: the live ones stay live
        self.known: dict[Key, ReplayState] = {}
        self.batches = 0  # committed replay transactions (tests and logs read it)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="replays", daemon=True)

    def start(self) -> ReplayRunner:
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
        self.plane.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            replay = self._next()
            if replay is None:
                self._stop.wait(self.settings.replay_tick_s)
                continue
            key = (replay.workspace, replay.replay_id)
            state = self.known.setdefault(key, ReplayState())
            try:
                state.done = self.run(replay)
                state.error = None
            except Exception as exc:
                state.error = f"{type(exc).__name__}: {exc}"
                state.retry_at = time.monotonic() + RETRY_S
                log.warning("replay %s/%s failed (%s); trying again in %gs from its committed "
                            "progress", *key, state.error, RETRY_S)

    def _next(self) -> Replay | None:
        return next_replay(self.registry_of(), self.known, time.monotonic())

    def _running(self, replay: Replay) -> bool:
        found = self.registry_of().replays.get((replay.workspace, replay.replay_id))
        return found is not None and found.running and not self._stop.is_set()

    def run(self, replay: Replay) -> bool:
        """Serve the replay from its committed offsets until its ranges are done (True), or it
        is stopped or this worker stops (False)."""
        serving = self.serving(self.registry_of(), replay)
        topic = serving.input_topic
        ensure_topics(self.settings, {
            names.side_topic(self.settings, replay): TopicSpec(self.settings.pipeline_partitions),
            names.dead_topic(self.settings, replay): TopicSpec(1)})
        p = producer(self.settings, **TUNING, **{
            "transactional.id": names.transactional_id(self.settings, replay),
            "transaction.timeout.ms": TRANSACTION_TIMEOUT_MS})
        p.init_transactions(CALL_TIMEOUT_S)  # fences any other writer of this replay
        c = consumer(self.settings, group=names.group(self.settings, replay),
                     **{"enable.partition.eof": False})
        try:
            ends = {p_: end for p_, _, end in replay.ranges}
            at = names.committed(self.settings, replay)
            todo = {p_: o for p_, o in at.items() if o < ends[p_]}
            if todo:
                log.info("replay %s/%s: %s v%d, %d of %d records to go", replay.workspace,
                         replay.replay_id, replay.pipeline, replay.version,
                         sum(ends[x] - o for x, o in todo.items()), replay.records)
                c.assign([TopicPartition(topic, x, o) for x, o in todo.items()])
            while todo:
                if not self._running(replay):
                    return False
                self._batch(c, p, serving, replay, ends, todo)
            log.info("replay %s/%s is done", replay.workspace, replay.replay_id)
            return True
        finally:
            c.close()
            p.flush(10)

    def _batch(self, c: Consumer, p: Producer, serving: Serving, replay: Replay,
               ends: dict[int, int], todo: dict[int, int]) -> None:
        """Serve and commit one batch; `todo` (partition -> next offset) shrinks as partitions
        reach their end. A failed transaction rewinds to the committed offsets."""
        topic = serving.input_topic
        messages = c.consume(self.settings.replay_batch_size, self.settings.replay_tick_s)
        taken = [m for m in messages if m.error() is None and m.offset() < ends[m.partition()]]
        for m in messages:
            if m.error() is not None:
                log.warning("replay %s: reading %s: %s", replay.replay_id, topic, m.error())
        after = dict(todo)
        for m in taken:
            after[m.partition()] = max(after[m.partition()], m.offset() + 1)
        # Past the end (or over transaction markers at it): the partition is done at its end.
        for tp in c.position([TopicPartition(topic, x) for x in todo]):
            if tp.offset >= ends[tp.partition]:
                after[tp.partition] = ends[tp.partition]
        if after == todo:
            return
        out = Buffer()
        for start in range(0, len(taken), self.settings.replay_batch_size):
            self.plane.serve_batch(serving, taken[start:start + self.settings.replay_batch_size],
                                   out)
        try:
            p.begin_transaction()
            out.produce(p)
            p.send_offsets_to_transaction(
                [TopicPartition(topic, x, o) for x, o in after.items() if o != todo[x]],
                c.consumer_group_metadata(), CALL_TIMEOUT_S)
            p.commit_transaction(CALL_TIMEOUT_S)
        except KafkaException as exc:
            if not exc.args[0].fatal():
                with contextlib.suppress(KafkaException):
                    p.abort_transaction(CALL_TIMEOUT_S)
            raise  # the replay starts again from its committed offsets, with a new producer
        self.batches += 1
        for x, o in after.items():
            if o >= ends[x]:
                del todo[x]
                c.incremental_unassign([TopicPartition(topic, x)])
            else:
                todo[x] = o

    def serving(self, registry: Registry, replay: Replay) -> Serving:
        """Version N of the pipeline, loaded, writing to the replay's topics and logs."""
        pipeline = registry.pipelines[(replay.workspace, replay.pipeline)]
        version = pipeline.versions[replay.version - 1]
        runtimes = self.cache.for_pipeline(registry, version)
        first = step_models(version.steps[0])[0]
        specs = runtimes[(first.model, first.version)].inputs
        # Not the live deployment: its paused routes and batch size are not the replay's.
        deployment = Deployment(
            workspace=replay.workspace, pipeline=replay.pipeline, version=replay.version,
            active=False, batch_size=self.settings.replay_batch_size, batch_wait_ms=0,
            history=(), deployed_by=replay.created_by, deployed_at=replay.created_at)
        runner = PipelineRunner(version, runtimes, self.worker)
        avro = avro_input(specs, input_schema_name(replay.workspace, replay.pipeline))
        ids = (replay.workspace, replay.pipeline, replay.version, self.worker)
        logs = LogWriter(*ids, replay=replay.replay_id)
        side = names.side_topic(self.settings, replay)
        columnar = Columnar.of(runner, specs, avro, ResultWriter(*ids), logs, side,
                               self.settings.topic("logs"), self.settings.max_record_bytes)
        return Serving(deployment, version, runner, specs, avro, logs,
                       self.settings.pipeline_topic(replay.workspace, replay.pipeline, "input"),
                       side, names.dead_topic(self.settings, replay), columnar)
