"""`inferstream status`: every deployment and the workers serving it, from their heartbeats.

Workers publish a heartbeat to `<ns>.workers` (agents.heartbeat); this command reads the
registry and those heartbeats, so it works from any machine that reaches Kafka. A deployment
is healthy when at least one fresh, live worker serves its deployed version and no fresh worker
refused it. Exit code 0 when every active deployment is healthy, 1 otherwise.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from agents.heartbeat import Heartbeat
from control.cli.base import JsonFlag, client_of, err, out, to_json, when
from control.config import Settings
from control.kafka import read_until_end
from control.registry.rules import may_read
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


def read_heartbeats(settings: Settings) -> list[Heartbeat]:
    """The latest heartbeat of every worker that has not deleted its own (a clean stop)."""
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
            err.print(f"[yellow]warning:[/] skipping record {key!r} of the workers topic: {exc}",
                      highlight=False)
    return beats


def status(
    ctx: typer.Context,
    stale_s: Annotated[float | None, typer.Option(
        min=0, help="Seconds after which a worker's last heartbeat is stale (default: "
        f"{STALE_BEATS} times the worker's heartbeat interval, INFERSTREAM_HEARTBEAT_S)")] = None,
    json_out: JsonFlag = False,
) -> None:
    """Summarise deployments and the health of the workers serving them.

    Per active deployment of the workspaces you may read: its version, the
    workers serving it (fresh heartbeats), those on another version, those
    that refused it and why, records in/out/dead-lettered, and the lag; then
    the workers whose heartbeats are stale.

    Exit code 0 when a fresh worker serves every deployment at its deployed
    version and no worker refused it; 1 otherwise.
    """
    client = client_of(ctx)
    registry, actor = client.registry(), client._actor()
    deployments = [d for (ws, _), d in registry.deployments.items()
                   if may_read(registry, actor, ws)]
    health = summarise(deployments, read_heartbeats(client.settings), datetime.now(UTC),
                       stale_s)
    if json_out:
        print(json.dumps({"healthy": health.healthy, "deployments": [
            {**to_json(d), "healthy": d.healthy} for d in health.deployments],
            "workers": to_json(health.workers)}, indent=2))
    else:
        print_health(health)
    if not health.healthy:
        raise typer.Exit(1)


def print_health(health: PlatformHealth) -> None:
    """The table of deployments, then the reasons and stale workers a table cell cannot hold."""
    if health.deployments:
        out.print(_table(health.deployments))
    else:
        out.print("no active deployments in the workspaces you may read")
    for d in health.deployments:  # the reasons, too long for a table cell
        name = escape(f"{d.workspace}/{d.pipeline}")
        if not d.serving:
            out.print(f"[red]{name}:[/] no fresh, live worker serves version {d.version}",
                      highlight=False)
        for w, why in sorted(d.refused.items()):
            out.print(f"[red]{name}:[/] refused by {escape(w)}: {escape(why)}", highlight=False)
    for w in health.workers:
        if w.stale:
            out.print(f"[yellow]stale:[/] worker {escape(w.worker)} last seen "
                      f"{when(w.last_seen)} UTC ({w.age_s:g}s ago)", highlight=False)
        elif not w.alive:
            out.print(f"[red]not alive:[/] worker {escape(w.worker)} takes no records",
                      highlight=False)
    fresh = sum(not w.stale for w in health.workers)
    verdict = "[green]healthy[/]" if health.healthy else "[red]unhealthy[/]"
    out.print(f"{verdict}: {fresh} fresh worker(s), {len(health.workers) - fresh} stale")


def _table(rows: list[DeploymentHealth]) -> Table:
    t = Table(title="deployments")
    t.add_column("pipeline")
    # Short headings: the table fits 80 columns. "other": workers serving another version.
    for column in ("ver", "serving", "other", "refused"):
        t.add_column(column)
    for column in ("in", "out", "dead", "lag"):
        t.add_column(column, justify="right")
    t.add_column("health")
    for r in rows:
        t.add_row(*(escape(cell) for cell in (
            f"{r.workspace}/{r.pipeline}", f"v{r.version}", ", ".join(r.serving) or "-",
            ", ".join(f"{w}: v{v}" for w, v in sorted(r.other_versions.items())) or "-",
            ", ".join(sorted(r.refused)) or "-", str(r.records_in), str(r.records_out),
            str(r.dead_lettered), "-" if r.lag is None else str(r.lag))),
            "[green]ok[/]" if r.healthy else "[red]problem[/]")
    return t
