"""The health of deployments and workers, from the workers' heartbeats and the registry.

Workers publish a heartbeat to `<ns>.workers` (agents.heartbeat). A deployment is healthy when
at least one fresh, live worker serves its deployed version and no fresh worker refused it.
Pure apart from `read_heartbeats`, so the CLI (`inferstream status`) and the console share it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

from agents.heartbeat import Heartbeat
from control.config import Settings
from control.kafka import read_until_end
from control.registry.state import Deployment

STALE_BEATS = 3  # heartbeats a worker may miss before it counts as stale


@dataclass
class DeploymentHealth:
    """One active deployment as the fresh workers report it."""

    workspace: str
    pipeline: str
    version: int
    serving: list[str] = field(default_factory=list)  # fresh, live workers at `version`
    other_versions: dict[str, int] = field(default_factory=dict)  # worker -> version it serves
    refused: dict[str, str] = field(default_factory=dict)  # worker -> reason
    records_in: int = 0  # totals of the fresh workers since each started
    records_out: int = 0
    dead_lettered: int = 0
    lag: int | None = None  # records waiting in the input topic; None: no worker reported it
    problems: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not self.problems


@dataclass
class WorkerHealth:
    """A worker whose heartbeat is on the topic."""

    worker: str
    last_seen: datetime
    age_s: float
    stale: bool
    ready: bool
    alive: bool
    serving: dict[str, int]


@dataclass
class PlatformHealth:
    deployments: list[DeploymentHealth]
    workers: list[WorkerHealth]

    @property
    def healthy(self) -> bool:
        return all(d.healthy for d in self.deployments)


def summarise(deployments: Iterable[Deployment], beats: Iterable[Heartbeat], now: datetime,
              stale_s: float | None = None) -> PlatformHealth:
    """What the heartbeats say about each active deployment. A heartbeat older than stale_s
    (default: STALE_BEATS of the worker's own interval) is stale and counts for nothing."""
    workers: list[WorkerHealth] = []
    fresh: list[Heartbeat] = []
    for beat in sorted(beats, key=lambda b: b.worker):
        age = beat.age_s(now)
        stale = age > (stale_s if stale_s is not None else STALE_BEATS * beat.interval_s)
        workers.append(WorkerHealth(beat.worker, beat.time, round(age, 1), stale, beat.ready,
                                    beat.alive, beat.serving))
        if not stale:
            fresh.append(beat)
    rows = []
    for d in sorted(deployments, key=lambda d: (d.workspace, d.pipeline)):
        if not d.active:
            continue
        name = f"{d.workspace}/{d.pipeline}"
        row = DeploymentHealth(d.workspace, d.pipeline, d.version)
        for beat in fresh:
            served = beat.serving.get(name)
            if served == d.version:
                if beat.alive:  # else it holds the version but takes no records
                    row.serving.append(beat.worker)
            elif served is not None:
                row.other_versions[beat.worker] = served
            if name in beat.refused:
                row.refused[beat.worker] = beat.refused[name]
            counts = beat.metrics.get(name) or {}
            row.records_in += counts.get("in", 0)
            row.records_out += counts.get("out", 0)
            row.dead_lettered += counts.get("dead", 0)
            if counts.get("lag") is not None:
                row.lag = (row.lag or 0) + counts["lag"]
        if not row.serving:
            row.problems.append(f"no fresh, live worker serves version {d.version}")
        row.problems += [f"refused by {w}" for w in sorted(row.refused)]
        rows.append(row)
    return PlatformHealth(rows, workers)


def read_heartbeats(settings: Settings,
                    on_skip: Callable[[str], None] | None = None) -> list[Heartbeat]:
    """The latest heartbeat of every worker that has not deleted its own (a clean stop);
    on_skip hears of each record that is not a heartbeat."""
    latest: dict[bytes, bytes | None] = {}
    for msg in read_until_end(settings, settings.topic("workers")):
        latest[msg.key()] = msg.value()
    beats = []
    for key, value in latest.items():
        if value is None:
            continue
        try:
            beats.append(Heartbeat.from_bytes(value))
        except ValueError as exc:  # not ours to judge: say so and go on
            if on_skip is not None:
                on_skip(f"skipping record {key!r} of the workers topic: {exc}")
    return beats
