"""The health of deployments and workers, from the workers' heartbeats and the registry.

Workers publish a heartbeat to `<ns>.workers` (agents.heartbeat). A deployment is healthy when
at least one fresh, live worker serves its deployed version and no fresh worker refused it.
A heartbeat lags a worker by up to its interval, so a worker's answer to a deploy or rollback
(on the status topic) that is newer than its heartbeat counts too: `inferstream status` agrees
with a deploy that just said a worker serves the version. `read_health` does all of it; the CLI
(`inferstream status`) and the console share it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from agents.heartbeat import Heartbeat
from control.config import Settings
from control.kafka import read_until_end
from control.registrar import limits_of
from control.registry.events import ControlEvent, ControlStatus
from control.registry.fold import fold
from control.registry.rules import may_read
from control.registry.state import Canary, Deployment
from schemas.errors import DecodeError

if TYPE_CHECKING:
    from control.client.client import Client

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
    canary: Canary | None = None  # the deployment's last canary, running or ended
    paused_routes: list[tuple[int, int]] = field(default_factory=list)  # (step, route)

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
        row = DeploymentHealth(d.workspace, d.pipeline, d.version, canary=d.canary,
                               paused_routes=sorted(d.paused_routes))
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


def _read_workers(settings: Settings, on_skip: Callable[[str], None] | None
                  ) -> tuple[list[Heartbeat], set[str]]:
    """The latest heartbeats, and the workers that deleted theirs."""
    latest: dict[bytes, bytes | None] = {}
    for msg in read_until_end(settings, settings.topic("workers")):
        latest[msg.key()] = msg.value()
    beats, stopped = [], set()
    for key, value in latest.items():
        if value is None:
            stopped.add(key.decode(errors="replace"))
            continue
        try:
            beats.append(Heartbeat.from_bytes(value))
        except ValueError as exc:  # not ours to judge: say so and go on
            if on_skip is not None:
                on_skip(f"skipping record {key!r} of the workers topic: {exc}")
    return beats, stopped


@dataclass(frozen=True)
class ServingReport:
    """A worker's answer to a deploy or rollback: it serves `version` of `pipeline` ("ws/name")
    since `time`, or (version None) it refused it for `reason`."""

    worker: str
    pipeline: str
    version: int | None
    time: datetime
    reason: str | None = None


def serving_reports(events: Iterable[ControlEvent],
                    statuses: Iterable[ControlStatus]) -> list[ServingReport]:
    """The workers' answers among `statuses`, oldest first, named by the events they answer."""
    pipelines = {e.event_id: f"{e.workspace}/{e.payload.get('pipeline')}" for e in events
                 if e.type in ("Deploy", "Rollback")}
    reports = []
    for s in statuses:
        worker, pipeline = s.result.get("worker"), pipelines.get(s.event_id)
        if not worker or pipeline is None:  # the registrar's verdict, or not a deploy
            continue
        if s.accepted and s.result.get("serving"):
            reports.append(ServingReport(worker, pipeline, int(s.result["serving"]), s.time))
        elif not s.accepted:
            reports.append(ServingReport(worker, pipeline, None, s.time, s.reason or "refused"))
    return sorted(reports, key=lambda r: r.time)


def with_reports(beats: Iterable[Heartbeat], reports: Iterable[ServingReport],
                 interval_s: float, stopped: Iterable[str] = ()) -> list[Heartbeat]:
    """Each worker's heartbeat updated by its answers to deploys made since it beat: what it
    would publish now. A worker that answered but has not beat yet gets a beat of its answers
    (with `interval_s`, the operator's INFERSTREAM_HEARTBEAT_S, to judge its staleness); one
    that deleted its heartbeat (`stopped`) is gone, whatever it answered."""
    latest, gone = {b.worker: b for b in beats}, set(stopped)
    for r in reports:  # oldest first: the newest answer wins
        if r.worker in gone:
            continue
        beat = latest.get(r.worker) or Heartbeat(r.worker, r.time, interval_s, ready=True,
                                                 alive=True)
        if r.time <= beat.time and r.worker in latest:
            continue  # the heartbeat already tells
        serving, refused = dict(beat.serving), dict(beat.refused)
        if r.version is not None:
            serving[r.pipeline] = r.version
            refused.pop(r.pipeline, None)
        else:
            refused[r.pipeline] = r.reason or "refused"
        latest[r.worker] = replace(beat, time=max(beat.time, r.time), serving=serving,
                                   refused=refused)
    return list(latest.values())


def read_health(client: Client, stale_s: float | None = None,
                on_skip: Callable[[str], None] | None = None) -> PlatformHealth:
    """The health of every deployment of the workspaces the client's user may read, now."""
    settings = client.settings
    events = client.events()
    registry, actor = fold(events, limits=limits_of(settings)), client._actor()
    deployments = [d for (ws, _), d in registry.deployments.items()
                   if may_read(registry, actor, ws)]
    statuses = []
    for msg in read_until_end(settings, settings.topic("control.status")):
        try:
            statuses.append(ControlStatus.from_bytes(msg.value()))
        except DecodeError:
            continue
    beats, stopped = _read_workers(settings, on_skip)
    beats = with_reports(beats, serving_reports(events, statuses), settings.heartbeat_s, stopped)
    return summarise(deployments, beats, datetime.now(UTC), stale_s)
