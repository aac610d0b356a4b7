"""`inferstream status`: every deployment and the workers serving it, from their heartbeats.

Workers publish a heartbeat to `<ns>.workers` (agents.heartbeat); this command reads the
registry, those heartbeats and the workers' answers to deploys newer than them
(control.client.health), so it works from any machine that reaches Kafka. A deployment
is healthy when at least one fresh, live worker serves its deployed version and no fresh worker
refused it. Exit code 0 when every active deployment is healthy, 1 otherwise.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from control.cli.base import (
    JsonFlag,
    canary_line,
    client_of,
    err,
    out,
    routes_text,
    to_json,
    when,
)
from control.client.health import STALE_BEATS, DeploymentHealth, PlatformHealth, read_health


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
    that refused it and why, records in/out/dead-lettered, the lag, a
    canary in progress and paused split routes; then the workers whose
    heartbeats are stale.

    Exit code 0 when a fresh worker serves every deployment at its deployed
    version and no worker refused it; 1 otherwise.
    """
    health = read_health(client_of(ctx), stale_s, _warn)
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
        if d.canary is not None and (d.canary.running or d.canary.ended_at is not None):
            out.print(f"{name}: {escape(canary_line(d.canary))}", highlight=False)
        if d.paused_routes:  # paused by an operator or a rule: its share goes to the others
            out.print(f"{name}: paused routes (step:route) {routes_text(d.paused_routes)}",
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


def _warn(message: str) -> None:
    err.print(f"[yellow]warning:[/] {escape(message)}", highlight=False)
