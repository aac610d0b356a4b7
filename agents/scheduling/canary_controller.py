"""Judges running canaries when their steps are due, and publishes the verdicts, exactly once.

It runs in the worker that runs schedules (agents/app.py `scheduling()`), on a timer. For each
running canary whose step has lasted its `every`, it waits for its registry to catch up with
the control topic, measures both versions over the step (inference logs in ClickHouse:
sinks/canary_measures.py; dead letters from the pipeline's dead-letter topic, which carry the
version that refused them) and publishes AdvanceCanary, HoldCanary or RollbackCanary under
`canary_event_id`, a function of the canary and the step only. A worker killed mid-ramp leaves
the step to the next owner of the schedules, which reads where the canary stands from the
registry and writes the same event ids: the fold applies an event id once, a step only from
the one before it, and a rollback only at the step it judged. It signs as the worker identity,
as the rule executor does (agents/scheduling/identity.py).

Both versions are measured over the same window, from the step's start to `canary_sink_lag_s`
before now (logs reach ClickHouse a moment after they are served; dead letters are counted by
their own times in that window). A step that cannot be judged yet (held, or its dead letters
not all read) is looked at again after max(tick, every/10), not at every tick.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from confluent_kafka import KafkaError, Message, TopicPartition

from agents.scheduling.canary_gates import Side, Verdict, judge
from agents.scheduling.identity import Identity
from control.config import Settings
from control.kafka import consumer, deliver, producer, watermarks
from control.registry.canary import ADVANCE, HOLD, ROLLBACK, canary_event_id, due_at
from control.registry.events import ControlEvent
from control.registry.state import Canary, Deployment, Registry
from schemas.codec import codec
from schemas.errors import BrokerError, DecodeError
from sinks.assay_results import load_results
from sinks.canary_measures import log_measures
from sinks.storage import Storage

log = logging.getLogger(__name__)
EVENT_OF = {ADVANCE: "AdvanceCanary", HOLD: "HoldCanary", ROLLBACK: "RollbackCanary"}
BREACHES = ("warning", "alert")


class CanaryController:
    """Publishes the verdicts of due canary steps; tick() is blocking."""

    def __init__(self, settings: Settings, registry_of: Callable[[], Registry],
                 caught_up: Callable[[], object]) -> None:
        self.settings = settings
        self.registry_of, self.caught_up = registry_of, caught_up
        self.identity = Identity.of(settings)
        self._producer = producer(settings)
        self._consumer = consumer(settings, **{"enable.partition.eof": True})
        self._said: set[str] = set()
        # (canary id, step) -> when to look at it again: a held or unjudged step is not
        # measured (the dead-letter topic and the logs read) at every tick.
        self._later: dict[tuple[str, int], datetime] = {}

    def tick(self, storage_of: Callable[[], Storage], now: datetime | None = None
             ) -> list[ControlEvent]:
        """Judge every due step; returns the events published. The storage is opened only
        when a step is due."""
        now = _ms(now or datetime.now(UTC))
        registry = self.registry_of()
        if not any(self._due(d, now) for d in registry.active_deployments()):
            return []
        self.caught_up()  # an earlier run's verdicts must show before judging again
        registry = self.registry_of()
        storage = storage_of()
        published = []
        for d in registry.active_deployments():
            if not self._due(d, now):
                continue
            assert d.canary is not None
            step = (d.canary.canary_id, d.canary.step)
            self._later[step] = now + timedelta(
                seconds=max(self.settings.canary_tick_s, d.canary.every_s / 10))
            try:
                event = self._decide(storage, registry, d, now)
            except Exception:  # one broken canary must not stop the others
                log.exception("canary of %s/%s could not be judged; judged again at the next "
                              "tick", d.workspace, d.pipeline)
                self._later.pop(step)
                continue
            if event is None:
                continue
            if self._publish(event):
                published.append(event)
            else:
                self._later.pop(step)
        return published

    def _due(self, d: Deployment, now: datetime) -> bool:
        """The canary's step has lasted its `every` (plus the sink's lag), and it was not
        looked at too recently."""
        c = d.canary
        if c is None or not c.running or self.window_end(now) < due_at(c):
            return False
        later = self._later.get((c.canary_id, c.step))
        return later is None or now >= later

    def window_end(self, now: datetime) -> datetime:
        """Where the measures of a step judged at `now` end: the sink's lag before now."""
        return now - timedelta(seconds=self.settings.canary_sink_lag_s)

    def _decide(self, storage: Storage, registry: Registry, d: Deployment, now: datetime
                ) -> ControlEvent | None:
        canary = d.canary
        assert canary is not None and canary.step_at is not None
        verdict = self.verdict(storage, registry, d, canary, now)
        if verdict.action == HOLD and canary.held == canary.step:
            return None  # said once a step; it is judged again at the next tick
        actor = self.identity.actor(registry, canary.started_by)
        if actor is None:
            if canary.canary_id not in self._said:
                log.error("canary %s cannot act on this secured platform: this worker %s",
                          canary.canary_id, self.identity.missing())
                self._said.add(canary.canary_id)
            return None
        payload: dict[str, object] = {"pipeline": d.pipeline, "canary_id": canary.canary_id}
        match verdict.action:
            case "advance":
                step = canary.step + 1
                payload |= {"step": step, "evidence": verdict.text}
            case "hold":
                step = canary.step
                payload |= {"step": step, "reason": verdict.text}
            case _:
                step = canary.step  # the step judged: the fold refuses it at any other
                payload |= {"step": step, "reason": verdict.text}
        event = ControlEvent(EVENT_OF[verdict.action], payload, actor, d.workspace,
                             event_id=canary_event_id(canary.canary_id, verdict.action, step),
                             time=now)
        event = self.identity.sign(event)
        log.info("canary %s step %d: %s: %s", canary.canary_id, canary.step, verdict.action,
                 verdict.text)
        return event

    def verdict(self, storage: Storage, registry: Registry, d: Deployment, canary: Canary,
                now: datetime) -> Verdict:
        """Both versions' measures over the current step (to the sink's lag before now),
        judged."""
        since = canary.step_at
        assert since is not None
        until = self.window_end(now)
        versions = (d.version, canary.version)
        logs = log_measures(storage, d.workspace, d.pipeline, versions, since, until)
        dead = self.dead_letters(d, since, until)
        current, candidate = (
            Side(v, logs[v].records, dead[v], logs[v].logs, logs[v].errors, logs[v].p99_us / 1000)
            for v in versions)
        return judge(canary, current, candidate,
                     self._assay_breaches(storage, registry, d, canary, since, until))

    def _assay_breaches(self, storage: Storage, registry: Registry, d: Deployment,
                        canary: Canary, since: datetime, now: datetime) -> list[str]:
        breaches = []
        for name in canary.gates.assays:
            assay = registry.assays.get((d.workspace, name))
            if assay is None:
                continue  # deleted since: it gates nothing
            width = assay.config.width
            for r in load_results(storage, d.workspace, assay.assay_id, since - width, now):
                if r.window_end > since and r.status in BREACHES:
                    breaches.append(f"assay {name} is in {r.status} for the window "
                                    f"{r.window_start.isoformat()} to {r.window_end.isoformat()}"
                                    f" ({r.metric} {r.score})")
        return breaches

    def dead_letters(self, d: Deployment, since: datetime, until: datetime,
                     timeout_s: float = 30.0) -> Counter[int]:
        """Dead letters of the pipeline timed in [since, until), by pipeline version: read
        from its dead-letter topic (committed ones), from the first written at `since`.
        BrokerError when they cannot all be read within `timeout_s`: a partial count would
        understate both versions' rates."""
        topic = self.settings.pipeline_topic(d.workspace, d.pipeline, "dead")
        c = self._consumer
        meta = c.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or meta.error is not None:
            return Counter()
        start_ms = int(since.timestamp() * 1000)
        wanted = c.offsets_for_times(
            [TopicPartition(topic, p, start_ms) for p in meta.partitions], timeout=10)
        ends = {}
        for tp in wanted:
            _, high = watermarks(c, TopicPartition(topic, tp.partition))
            if tp.offset >= 0 and tp.offset < high:
                ends[tp.partition] = high
        counts: Counter[int] = Counter()
        if not ends:
            return counts
        c.assign([tp for tp in wanted if tp.partition in ends])
        lo, hi = start_ms * 1000, int(until.timestamp() * 1_000_000)
        deadline = datetime.now(UTC) + timedelta(seconds=timeout_s)
        while ends and datetime.now(UTC) < deadline:
            msg: Message | None = c.poll(0.2)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    ends.pop(msg.partition(), None)
                continue
            if msg.offset() + 1 >= ends.get(msg.partition(), 0):
                ends.pop(msg.partition(), None)
            try:
                letter = codec("DeadLetter").decode(msg.value())
            except DecodeError:
                continue
            at = letter["time"]
            at_us = int(at.timestamp() * 1_000_000) if isinstance(at, datetime) else int(at)
            if letter.get("pipeline") == d.pipeline and lo <= at_us < hi \
                    and letter.get("pipeline_version") is not None:
                counts[int(letter["pipeline_version"])] += 1
        c.unassign()
        if ends:
            raise BrokerError(
                f"the dead letters of {d.workspace}/{d.pipeline} on {topic} partitions "
                f"{sorted(ends)} were not all read within {timeout_s:g} s; the step is judged "
                "later (check the brokers if this repeats)")
        return counts

    def _publish(self, event: ControlEvent) -> bool:
        problem = deliver(self._producer, self.settings.topic("control"),
                          event.event_id.encode(), event.to_bytes())
        if problem:
            log.warning("canary event %s %s: %s; judged again at the next tick", event.type,
                        event.event_id, problem)
        return problem is None

    def close(self) -> None:
        self._consumer.close()
        self._producer.flush(10)


def _ms(moment: datetime) -> datetime:
    """At the millisecond precision of an event's time."""
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)
