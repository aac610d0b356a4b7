"""Runs every active assay when its windows close, backfilling windows missed meanwhile.

One worker runs them: with chDB the one that owns the storage, with a ClickHouse
server the Faust group leader. Results are keyed by (assay, window start), so a
window run twice (say, across a leader change) is stored once.

Performance assays are scored again while their labels arrive: at most every `rescore_every`
(INFERSTREAM_ASSAY_RESCORE_S), one query re-scores every stored window that closed within the
assay's label wait (default 7 days), and a window whose labelled count or score changed is
stored again (the new result replaces the old, keyed by window start). A window publishes
an alert when it reaches a status worse than any it published before, so once per (assay,
window, status); the alert is published, and the broker has it, before its result is stored:
a crash between the two may publish it twice (a rule fires once per alert anyway), never not
at all, and an alert the broker does not take leaves the window unstored, to run again at
the next tick.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from control.config import Settings
from control.kafka import deliver, producer
from control.registry.state import Registry
from schemas.codec import codec
from schemas.errors import BrokerError
from sinks.assays import (
    AssayConfig,
    AssayResult,
    Baseline,
    alert_record,
    baseline,
    due_windows,
    last_done,
    load_results,
    preview,
    run_window,
    save_result,
    to_alert,
)
from sinks.labels import labels_stored
from sinks.storage import Storage

log = logging.getLogger(__name__)
MAX_WINDOWS_PER_TICK = 50  # a long backfill proceeds a slice per tick, so the worker stays live
Publish = Callable[[bytes, bytes], None]  # key, value -> the alerts topic; raises if not taken


def alerts_topic(settings: Settings) -> Publish:
    """Publish to the alerts topic and wait for the broker: BrokerError if it did not take the
    alert, so its window is not stored and alerts again at the next tick."""
    p = producer(settings)

    def publish(key: bytes, value: bytes) -> None:
        problem = deliver(p, settings.topic("alerts"), key, value)
        if problem:
            raise BrokerError(f"alert not published ({problem}); its window runs again")

    return publish


class AssayScheduler:
    """Computes due assay windows, stores their results and publishes breaches."""

    def __init__(self, publish: Publish, rescore_every: timedelta = timedelta(0)) -> None:
        self.publish = publish
        self.rescore_every = rescore_every
        self._baselines: dict[tuple[str, str], tuple[Any, Baseline]] = {}
        self._rescored: dict[str, datetime] = {}  # assay id -> when its windows were re-scored
        self._labels_seen: dict[str, int] = {}  # assay id -> labels stored at its last re-score

    def tick(self, storage: Storage, registry: Registry, now: datetime | None = None
             ) -> list[AssayResult]:
        """Run every window that has closed and has no result yet, and re-score the performance
        windows whose labels changed; returns the results stored. Blocking."""
        now = now or datetime.now(UTC)
        done: list[AssayResult] = []
        for (workspace, name), assay in getattr(registry, "assays", {}).items():
            if not assay.active:
                continue
            config = assay.config
            try:
                if config.performance:
                    done += self._rescore(storage, assay, now)
                starts = due_windows(config, last_done(storage, workspace, config.assay_id), now,
                                     MAX_WINDOWS_PER_TICK)
                if not starts:
                    continue
                base = self._baseline(storage, (workspace, name), config)
                for start in starts:
                    done.append(self._store(storage, assay, run_window(storage, config, start,
                                                                       base), None))
            except Exception:  # one broken assay must not stop the others
                log.exception("assay %s/%s failed", workspace, name)
        return done

    def _store(self, storage: Storage, assay: Any, result: AssayResult,
               previous: AssayResult | None) -> AssayResult:
        """Publish the window's alert if it is new, then store the result."""
        alerting = to_alert(result, previous)
        if alerting is not None:
            result = alerting
            alert = alert_record(result, assay.created_by,
                                 previous.status if previous is not None else None)
            self.publish(f"{assay.workspace}/{assay.name}".encode(),
                         codec("AssayAlert").encode(alert))  # type: ignore[arg-type]
        save_result(storage, result)
        return result

    def _rescore(self, storage: Storage, assay: Any, now: datetime) -> list[AssayResult]:
        """Score again the stored windows of a performance assay that may still get labels."""
        config: AssayConfig = assay.config
        last = self._rescored.get(config.assay_id)
        if last is not None and now - last < self.rescore_every:
            return []
        self._rescored[config.assay_id] = now
        labels = labels_stored(storage, assay.workspace, config.pipeline)
        if self._labels_seen.get(config.assay_id) == labels:
            return []  # no label arrived since: the windows score as they did
        stored = load_results(storage, assay.workspace, config.assay_id,
                              now - config.label_wait - config.width)
        stored = [r for r in stored if r.window_end + config.label_wait >= now]
        if not stored:
            return []
        fresh = preview(storage, config, stored[0].window_start, stored[-1].window_end)
        before = {r.window_start: r for r in stored}
        changed = []
        for result in fresh:
            old = before.get(result.window_start)
            if old is None or (old.labelled == result.labelled and _same(old.score,
                                                                         result.score)):
                continue
            changed.append(self._store(storage, assay, _with_alerted(result, old), old))
        # Only now: a re-score that failed (an alert the broker did not take) runs again.
        self._labels_seen[config.assay_id] = labels
        return changed

    def _baseline(self, storage: Storage, key: tuple[str, str], config: Any) -> Baseline:
        cached = self._baselines.get(key)
        if cached is None or cached[0] != config:
            cached = (config, baseline(storage, config))
            self._baselines[key] = cached
        return cached[1]


def _same(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return a == b or (math.isnan(a) and math.isnan(b))


def _with_alerted(result: AssayResult, old: AssayResult) -> AssayResult:
    return replace(result, alerted=old.alerted)
