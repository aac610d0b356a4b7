"""Turns assay alerts into the actions of the rules they match: once per alert and rule.

Every worker runs one, in the consumer group `<namespace>.rules` of the alerts topic, so one
of them reads each alert (whatever assay raised it, drift or performance). For each active
rule the alert matches it publishes the rule's action (control/registry/alert_rules.py)
under an event id that is a function of the rule and the alert only: a second worker, or this
one restarted, that reads the alert again writes the very same event, and the fold applies an
event id once (and refuses an alert that already fired the rule). The alert's offset is
committed only after its actions were produced, or decided against, so a crash loses none.

Identity: the worker acts as INFERSTREAM_USER, signing with INFERSTREAM_KEY_FILE; that user
must be an owner or collaborator of the rule's workspace. On an open platform without a user
it acts as the rule's creator. On a secured platform without a user and key it acts on
nothing: it logs the reason once, counts it, and leaves the alert unconsumed, so it acts
once a worker with an identity runs.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import KafkaError, TopicPartition
from prometheus_client import CollectorRegistry, Counter

from agents.scheduling.identity import Identity
from control.config import Settings
from control.kafka import consumer, deliver, producer
from control.registry.alert_rules import (
    action_event_id,
    action_of,
    cause_of,
    check_firing,
    matching_rules,
)
from control.registry.events import ControlEvent
from control.registry.state import AlertRule, Registry
from schemas.codec import codec
from schemas.errors import DecodeError, Rejected

log = logging.getLogger(__name__)
HOLD_S = 30.0  # how long an alert that cannot be acted on now waits before it is tried again
OUTCOMES = ("published", "skipped", "no_identity", "undecodable", "failed")


class RuleExecutor:
    """Reads alerts and publishes the actions of the rules they fire, in a thread."""

    def __init__(self, settings: Settings, registry_of: Callable[[], Registry],
                 caught_up: Callable[[], object],
                 metrics: CollectorRegistry | None = None, group: str | None = None) -> None:
        self.settings = settings
        # Another group reads every alert again (as a restart that lost its offsets would).
        self.group = group or f"{settings.namespace}.rules"
        self.registry_of, self.caught_up = registry_of, caught_up
        self.identity = Identity.of(settings)
        self.actions = Counter("inferstream_rule_actions",
                               "Alerts and rule actions by outcome: published, skipped (the "
                               "rule may not fire now), no_identity, undecodable, failed",
                               ["outcome"], registry=metrics or CollectorRegistry())
        for outcome in OUTCOMES:
            self.actions.labels(outcome)
        self.done = 0  # alerts whose offsets were committed
        self._said_missing = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self.run, name="rule-executor", daemon=True)

    def start(self) -> RuleExecutor:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)

    def run(self) -> None:
        """Consume alerts until stop(); commit each one once it is dealt with."""
        c = consumer(self.settings, group=self.group,
                     **{"enable.partition.eof": False})
        p = producer(self.settings)
        c.subscribe([self.settings.topic("alerts")])
        try:
            while not self._stop.is_set():
                msg = c.poll(0.2)
                if msg is None:
                    continue
                if msg.error():
                    if msg.error().code() != KafkaError._PARTITION_EOF:
                        log.warning("alerts topic: %s", msg.error())
                    continue
                if self.handle(msg.value(), lambda e: self._produce(p, e)):
                    c.commit(message=msg, asynchronous=False)
                    self.done += 1
                else:  # read it again later, and nothing after it before
                    c.seek(TopicPartition(msg.topic(), msg.partition(), msg.offset()))
                    self._stop.wait(HOLD_S)
        finally:
            c.close()
            p.flush(10)

    def handle(self, data: bytes, publish: Callable[[ControlEvent], bool]) -> bool:
        """Act on one alert; False when it must wait (and be read again)."""
        try:
            alert = codec("AssayAlert").decode(data)
        except DecodeError as exc:
            log.warning("skipping a message on the alerts topic that is no alert: %s", exc)
            self.actions.labels("undecodable").inc()
            return True
        try:
            self.caught_up()  # so an action an earlier run published shows as fired
        except TimeoutError as exc:
            log.warning("rules wait for the registry: %s", exc)
            return False
        registry = self.registry_of()
        for rule in matching_rules(registry, alert):
            if not self._act(registry, rule, alert, publish):
                return False
        return True

    def _act(self, registry: Registry, rule: AlertRule, alert: Mapping[str, Any],
             publish: Callable[[ControlEvent], bool]) -> bool:
        cause, now = cause_of(rule, alert), _now_ms()
        try:
            check_firing(rule, cause, now)
        except Rejected as why:
            log.info("not acting on alert: %s", why)
            self.actions.labels("skipped").inc()
            return True
        actor = self.identity.actor(registry, rule.created_by)
        if actor is None:
            self.actions.labels("no_identity").inc()
            if not self._said_missing:
                log.error("rule %s/%s cannot act on this secured platform: this worker %s; "
                          "its alerts wait", rule.workspace, rule.name, self.identity.missing())
                self._said_missing = True
            return False
        type_, payload = action_of(rule, cause)
        event = ControlEvent(type_, payload, actor, rule.workspace,
                             event_id=action_event_id(rule, alert), time=now)
        event = self.identity.sign(event)
        if not publish(event):
            self.actions.labels("failed").inc()
            return False
        log.info("rule %s/%s: %s %s for alert %s of %s (window %s)", rule.workspace, rule.name,
                 type_, rule.pipeline, alert["status"], alert["assay_id"],
                 alert["window_start"].isoformat())
        self.actions.labels("published").inc()
        return True

    def _produce(self, p: Any, event: ControlEvent) -> bool:
        """Put the event on the control topic; True once the broker has it."""
        problem = deliver(p, self.settings.topic("control"), event.event_id.encode(),
                          event.to_bytes())
        if problem:
            log.warning("action %s %s: %s; the alert is tried again", event.type,
                        event.event_id, problem)
        return problem is None

def _now_ms() -> datetime:
    """Now at the millisecond precision of an event's time."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)
