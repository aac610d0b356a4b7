"""Runs every active assay when its windows close, backfilling windows missed meanwhile.

One worker runs them: with chDB the one that owns the storage, with a ClickHouse
server the Faust group leader. Results are keyed by (assay, window start), so a
window run twice (say, across a leader change) is stored once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from control.registry.state import Registry
from schemas.codec import codec
from sinks.assays import (
    AssayResult,
    Baseline,
    alert_record,
    baseline,
    due_windows,
    last_done,
    run_window,
    save_result,
)
from sinks.storage import Storage

log = logging.getLogger(__name__)
MAX_WINDOWS_PER_TICK = 50  # a long backfill proceeds a slice per tick, so the worker stays live
Publish = Callable[[bytes, bytes], None]  # key, value -> the alerts topic


class AssayScheduler:
    """Computes due assay windows, stores their results and publishes breaches."""

    def __init__(self, publish: Publish) -> None:
        self.publish = publish
        self._baselines: dict[tuple[str, str], tuple[Any, Baseline]] = {}

    def tick(self, storage: Storage, registry: Registry, now: datetime | None = None
             ) -> list[AssayResult]:
        """Run every window that has closed and has no result yet; blocking."""
        now = now or datetime.now(UTC)
        done: list[AssayResult] = []
        for (workspace, name), assay in getattr(registry, "assays", {}).items():
            if not assay.active:
                continue
            config = assay.config
            try:
                starts = due_windows(config, last_done(storage, workspace, config.assay_id), now,
                                     MAX_WINDOWS_PER_TICK)
                if not starts:
                    continue
                base = self._baseline(storage, (workspace, name), config)
                for start in starts:
                    result = run_window(storage, config, start, base)
                    save_result(storage, result)
                    done.append(result)
                    alert = alert_record(result, assay.created_by)
                    if alert is not None:
                        self.publish(f"{workspace}/{name}".encode(),
                                     codec("AssayAlert").encode(alert))
            except Exception:  # one broken assay must not stop the others
                log.exception("assay %s/%s failed", workspace, name)
        return done

    def _baseline(self, storage: Storage, key: tuple[str, str], config: Any) -> Baseline:
        cached = self._baselines.get(key)
        if cached is None or cached[0] != config:
            cached = (config, baseline(storage, config))
            self._baselines[key] = cached
        return cached[1]
