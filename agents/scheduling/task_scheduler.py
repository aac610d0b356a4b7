"""Starting task runs: run-once tasks once, cron tasks once per tick, across the fleet.

Which runs are due is computed from the registry and the stored runs. Before a run
starts, the worker claims its id on the one-partition claims topic: the first claim
in the topic's order wins, so a run starts exactly once even when two workers see it
due at the same moment. A run left `running` by a worker that stopped heartbeating is
marked failed with the reason; a later tick of a cron task runs as usual.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition
from croniter import croniter

from agents.scheduling.orchestration import RunExecutor
from control.config import Settings
from control.kafka import TopicSpec, consumer, ensure_topics, producer
from control.registry.state import Registry, Task
from sinks.runs import FAILED, Run, log_line, run_by_id, save_run, unfinished
from sinks.storage import Storage

log = logging.getLogger(__name__)
MAX_TICKS = 10  # missed cron ticks started per scheduler tick, oldest first
RegistryOf = Callable[[], Registry]  # the registry as of now (it moves while a run goes on)


class RunClaims:
    """First claim wins, in the total order of a one-partition topic."""

    def __init__(self, settings: Settings, worker: str) -> None:
        self.topic, self.worker = settings.topic("runs.claims"), worker
        ensure_topics(settings, {self.topic: TopicSpec(1, {"retention.ms": "-1"})})
        self._producer = producer(settings)
        self._consumer = consumer(settings, **{"enable.partition.eof": False})
        self._consumer.assign([TopicPartition(self.topic, 0, OFFSET_BEGINNING)])
        self._winners: dict[str, str] = {}

    def claim(self, run_id: str, timeout: float = 30.0) -> bool:
        """True when this worker's claim of run_id is the first in the topic."""
        if run_id not in self._winners:
            self._producer.produce(self.topic, key=run_id.encode(), value=self.worker.encode())
            self._producer.flush(10)
            deadline = time.monotonic() + timeout
            while run_id not in self._winners:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"claim of run {run_id} not seen in {timeout:g}s")
                msg = self._consumer.poll(0.2)
                if msg is None or (msg.error() and msg.error().code() == KafkaError._PARTITION_EOF):
                    continue
                self._winners.setdefault(msg.key().decode(), msg.value().decode())
        return self._winners[run_id] == self.worker


def due_runs(registry: Registry, storage: Storage, now: datetime) -> list[tuple[Task, Run]]:
    """The runs that should start now: pure apart from reading which runs exist."""
    due = []
    for task in registry.tasks.values():
        if task.killed:
            continue
        if task.once:
            ticks = [None]
        else:
            # The newest ticks since the task was created, walking back from now.
            it = croniter(task.schedule, now.astimezone(ZoneInfo(task.timezone)))
            ticks = []
            while len(ticks) < MAX_TICKS:
                tick = it.get_prev(datetime)
                if tick <= task.created_at:
                    break
                ticks.insert(0, tick)
        for tick in ticks:
            run_id = task.event_id if tick is None else \
                f"{task.name}@{tick.astimezone(UTC).isoformat()}"
            if run_by_id(storage, run_id) is None:
                due.append((task, Run(run_id, task.workspace, task.name, task.orchestration,
                                      task.version, "once" if tick is None else "cron", tick,
                                      arguments=dict(task.arguments))))
    return due


class TaskScheduler:
    """Starts due runs one at a time in a thread of their own; reaps runs of dead workers."""

    def __init__(self, settings: Settings, executor: RunExecutor, worker: str) -> None:
        self.settings, self.executor, self.worker = settings, executor, worker
        self.claims = RunClaims(settings, worker)
        self._busy: threading.Thread | None = None
        self.current: Run | None = None

    def tick(self, storage: Storage, registry_of: RegistryOf, now: datetime | None = None
             ) -> None:
        """Blocking; call it from an executor thread on a timer."""
        now = now or datetime.now(UTC)
        self._reap(storage, now)
        if self._busy is not None and self._busy.is_alive():
            return
        for task, run in due_runs(registry_of(), storage, now):
            if not self.claims.claim(run.run_id):
                continue
            self.current = run
            self._busy = threading.Thread(
                target=self._run, args=(storage, registry_of, task, run), daemon=True,
                name=f"run {run.run_id}")
            self._busy.start()
            return

    def _run(self, storage: Storage, registry_of: RegistryOf, task: Task, run: Run) -> None:
        def killed() -> bool:
            now = registry_of().tasks.get((task.workspace, task.name))
            return now is None or now.killed

        try:
            self.executor.execute(storage, registry_of(), task, run, killed)
        finally:
            self.current = None

    def _reap(self, storage: Storage, now: datetime) -> None:
        for run in unfinished(storage):
            mine_now = self.current is not None and self.current.run_id == run.run_id
            # A run saves its state after every batch: one silent for long lost its worker.
            if mine_now or now - run.updated_at < timedelta(seconds=self.settings.task_stale_s):
                continue
            reason = (f"worker {run.worker or '?'} stopped during the run (last heartbeat "
                      f"{run.updated_at.isoformat()}); start it again with `tasks run-once`")
            log_line(storage, run.run_id, reason, "error")
            save_run(storage, replace(run, status=FAILED, error=reason, ended_at=now))
