"""Follows the control topic from its start and keeps the registry current, in a thread.

Workers use it to learn about deployments; it never publishes anything, so every
worker runs one (unlike the registrar, of which one is active).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

from control.config import Settings
from control.kafka import consumer, end_offsets
from control.registrar import judge, limits_of
from control.registry.events import ControlStatus
from control.registry.state import Registry

log = logging.getLogger(__name__)
OnChange = Callable[[Registry, ControlStatus], None]


class RegistryFollower:
    """The registry as the control topic says now; `on_change` hears each accepted event."""

    def __init__(self, settings: Settings, on_change: OnChange | None = None) -> None:
        self.settings = settings
        self.registry = Registry()
        self.position = 0  # offset after the last event folded
        self._on_change = on_change
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="registry-follower", daemon=True)

    def start(self) -> RegistryFollower:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def wait_caught_up(self, timeout: float = 60.0) -> Registry:
        """Block until every event already on the topic is folded in."""
        end = end_offsets(self.settings, self.settings.topic("control"))[0]
        deadline = time.monotonic() + timeout
        while self.position < end:
            if time.monotonic() > deadline:
                raise TimeoutError(f"registry replay reached {self.position} of {end}")
            time.sleep(0.05)
        return self.registry

    def _run(self) -> None:
        c = consumer(self.settings, **{"enable.partition.eof": False})
        c.assign([TopicPartition(self.settings.topic("control"), 0, OFFSET_BEGINNING)])
        try:
            while not self._stop.is_set():
                msg = c.poll(0.2)
                if msg is None:
                    continue
                if msg.error():
                    if msg.error().code() != KafkaError._PARTITION_EOF:
                        log.warning("control topic: %s", msg.error())
                    continue
                self.registry, status = judge(self.registry, msg, limits_of(self.settings))
                self.position = msg.offset() + 1
                if status.accepted and self._on_change is not None:
                    try:
                        self._on_change(self.registry, status)
                    except Exception:  # a listener's bug must not stop the registry
                        log.exception("registry listener failed on %s", status.type)
        finally:
            c.close()
