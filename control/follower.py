"""Follows the control topic from its start and keeps the registry current, in a thread.

Workers use it to learn about deployments; it never publishes anything, so every
worker runs one (unlike the registrar, of which one is active).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable

from confluent_kafka import OFFSET_BEGINNING, KafkaException, TopicPartition

from control.config import Settings
from control.kafka import consumer, end_offsets, poll_batch
from control.registrar import BATCH, judge, limits_of
from control.registry.collector import collector_paused
from control.registry.events import ControlStatus
from control.registry.state import Registry
from schemas.errors import BrokerError

log = logging.getLogger(__name__)
OnChange = Callable[[Registry, ControlStatus], None]


class RegistryFollower:
    """The registry as the control topic says now; `on_change` hears each accepted event."""

    def __init__(self, settings: Settings, on_change: OnChange | None = None) -> None:
        self.settings = settings
        self._folded: tuple[Registry, int] = (Registry(), 0)  # one tuple: read whole, at once
        self._on_change = on_change
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="registry-follower", daemon=True)

    @property
    def registry(self) -> Registry:
        return self._folded[0]

    @property
    def position(self) -> int:
        """The offset after the last event folded."""
        return self._folded[1]

    def snapshot(self) -> tuple[Registry, int]:
        """The registry and the offset after the last event in it, read together."""
        return self._folded

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
        limits = limits_of(self.settings)
        with contextlib.ExitStack() as replaying:
            # Replaying the history: no cyclic collection meanwhile (control.registry.collector).
            replaying.enter_context(collector_paused())
            try:
                history = end_offsets(self.settings, self.settings.topic("control"))[0]
            except (BrokerError, KafkaException, KeyError):  # unreachable: no pause; it waits
                history = 0
            try:
                while not self._stop.is_set():
                    for msg in poll_batch(c, 0.2, BATCH):
                        if msg.error():
                            log.warning("control topic: %s", msg.error())
                            continue
                        registry, status = judge(self.registry, msg, limits)
                        self._folded = (registry, msg.offset() + 1)
                        if status.accepted and self._on_change is not None:
                            try:
                                self._on_change(registry, status)
                            except Exception:  # a listener's bug must not stop the registry
                                log.exception("registry listener failed on %s", status.type)
                    if self.position >= history:
                        replaying.close()
            finally:
                c.close()
