"""CLI commands for batch workloads: connections, orchestrations, tasks and their runs."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from control.cli.base import JsonFlag, client_of, out, rows_table, show, when
from control.registry.state import IN_PROCESS, TOPICS
from schemas.errors import InferstreamError
from sinks.runs import FAILED, KILLED, Run

connections = typer.Typer(help="Name sources and destinations: files, ClickHouse, topics.",
                          no_args_is_help=True)
orchestrations = typer.Typer(help="Define batch workloads: source → pipelines → destination.",
                             no_args_is_help=True)
tasks = typer.Typer(help="Run orchestrations once or on a schedule; see their runs.",
                    no_args_is_help=True)


def _pairs(items: list[str] | None, what: str) -> dict[str, str]:
    pairs = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{what} {item!r} is not KEY=VALUE")
        pairs[key] = value
    return pairs


# -- connections -------------------------------------------------------------------------------


@connections.command("create")
def connections_create(
    ctx: typer.Context, name: str,
    type: Annotated[str, typer.Option("--type", help="file, clickhouse or kafka")],
    detail: Annotated[list[str] | None, typer.Option(
        help="KEY=VALUE, repeatable: path, format, table, query, url, topic, …")] = None,
    json_out: JsonFlag = False,
) -> None:
    """Create a connection; secrets in its details are never printed back in full."""
    from control.registry.connections import masked

    c = client_of(ctx).create_connection(name, type, _pairs(detail, "detail"))
    show({"name": c.name, "type": c.type, "details": masked(c.details)}, json_out,
         message=f"created connection [bold]{c.name}[/] ({c.type})")


@connections.command("list")
def connections_list(ctx: typer.Context, json_out: JsonFlag = False) -> None:
    """List connections (details masked)."""
    from control.registry.connections import masked

    rows = [{"name": c.name, "type": c.type, "details": masked(c.details),
             "created_by": c.created_by} for c in client_of(ctx).connections()]
    show(rows, json_out, lambda: rows_table("connections", ["name", "type", "details", "by"], [
        (r["name"], r["type"], ", ".join(f"{k}={v}" for k, v in r["details"].items()),
         r["created_by"]) for r in rows]))


@connections.command("get")
def connections_get(ctx: typer.Context, name: str, json_out: JsonFlag = False) -> None:
    """Show one connection (details masked)."""
    from control.registry.connections import masked

    found = [c for c in client_of(ctx).connections() if c.name == name]
    if not found:
        raise InferstreamError(f"unknown connection {name!r}")
    c = found[0]
    show({"name": c.name, "type": c.type, "details": masked(c.details)}, json_out,
         lambda: rows_table(f"connection {name} ({c.type})", ["detail", "value"],
                            sorted(masked(c.details).items())))


@connections.command("preview")
def connections_preview(
    ctx: typer.Context, name: str,
    limit: Annotated[int, typer.Option(min=1, max=100_000, help="Rows to show")] = 20,
    json_out: JsonFlag = False,
) -> None:
    """Show the first rows of a ClickHouse connection's table on the platform's storage."""
    rows = client_of(ctx).table_rows(name, limit)
    columns = list(rows[0]) if rows else []
    show(rows, json_out, lambda: rows_table(f"{name}: first {len(rows)} rows", columns,
                                            [list(r.values()) for r in rows]))


@connections.command("delete")
def connections_delete(ctx: typer.Context, name: str) -> None:
    """Delete a connection that no orchestration uses."""
    client_of(ctx).delete_connection(name)
    out.print(f"deleted connection [bold]{name}[/]")


# -- orchestrations ----------------------------------------------------------------------------


@orchestrations.command("create")
def orchestrations_create(
    ctx: typer.Context, name: str,
    source: Annotated[str, typer.Option(help="Source connection")],
    pipeline: Annotated[list[str], typer.Option(help="Pipeline, repeatable, in chain order")],
    destination: Annotated[str, typer.Option(help="Destination connection")],
    errors: Annotated[str | None, typer.Option(help="Connection for bad rows + reason")] = None,
    batch_size: Annotated[int, typer.Option(help="Records per batch")] = 1000,
    carry: Annotated[list[str] | None, typer.Option(
        help="Source field copied to every result row, repeatable")] = None,
    mode: Annotated[str, typer.Option(
        help=f"{TOPICS}: through the pipelines' topics; {IN_PROCESS}: on the worker")] = TOPICS,
    param: Annotated[list[str] | None, typer.Option(
        help="NAME=DEFAULT (or NAME= for a required one), repeatable")] = None,
    json_out: JsonFlag = False,
) -> None:
    """Create an orchestration, or a new version of it when NAME exists."""
    parameters = {k: (v or None) for k, v in _pairs(param, "param").items()}
    v = client_of(ctx).create_orchestration(
        name, source=source, pipelines=pipeline, destination=destination, errors=errors,
        batch_size=batch_size, carry=carry or (), mode=mode, parameters=parameters)
    show(v, json_out, message=f"orchestration [bold]{name}[/] version [bold]{v.version}[/]: "
         f"{source} → {' → '.join(v.pipelines)} → {destination}")


@orchestrations.command("list")
def orchestrations_list(ctx: typer.Context, json_out: JsonFlag = False) -> None:
    """List orchestrations with their latest version."""
    rows = client_of(ctx).orchestrations()
    show(rows, json_out, lambda: rows_table(
        "orchestrations", ["name", "versions", "source", "pipelines", "destination", "mode"],
        [(o.name, len(o.versions), o.latest.source, " → ".join(o.latest.pipelines),
          o.latest.destination, o.latest.mode) for o in rows]))


# -- tasks -------------------------------------------------------------------------------------

ArgOption = Annotated[list[str] | None, typer.Option(
    "--arg", help="NAME=VALUE filling a parameter of the orchestration, repeatable")]


@tasks.command("run-once")
def tasks_run_once(
    ctx: typer.Context, orchestration: str,
    name: Annotated[str | None, typer.Option(help="Task name (default: generated)")] = None,
    version: Annotated[int | None, typer.Option(help="Orchestration version")] = None,
    arg: ArgOption = None,
    detach: Annotated[bool, typer.Option(help="Return at once; follow with `tasks runs`")
                      ] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the run")] = 3600.0,
    json_out: JsonFlag = False,
) -> None:
    """Run an orchestration once; shows progress and waits unless --detach."""
    import uuid

    client = client_of(ctx)
    task = client.create_task(name or f"{orchestration}-{uuid.uuid4().hex[:8]}", orchestration,
                              version=version, arguments=_pairs(arg, "arg"))
    if detach:
        show({"task": task.name, "run_id": task.event_id}, json_out,
             message=f"task [bold]{task.name}[/] started; run id {task.event_id}")
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=out, transient=True, disable=json_out) as bar:
        step = bar.add_task(f"{task.name}: pending", total=None)
        run = client.wait_for_run(task.event_id, timeout, lambda r: bar.update(
            step, description=f"{task.name}: {r.status}", completed=r.records_in))
    _show_run(run, json_out)
    if run.status in (FAILED, KILLED):
        raise typer.Exit(1)


@tasks.command("schedule")
def tasks_schedule(
    ctx: typer.Context, name: str, orchestration: str,
    cron: Annotated[str, typer.Option(help="Cron expression, e.g. '*/5 * * * *' (a 6th "
                                           "field is seconds)")],
    timezone: Annotated[str, typer.Option(help="IANA time zone of the schedule")] = "UTC",
    version: Annotated[int | None, typer.Option(help="Orchestration version")] = None,
    arg: ArgOption = None,
    json_out: JsonFlag = False,
) -> None:
    """Run an orchestration on a cron schedule: exactly once per tick across the workers."""
    task = client_of(ctx).create_task(name, orchestration, version=version, schedule=cron,
                                      timezone=timezone, arguments=_pairs(arg, "arg"))
    show(task, json_out, message=f"task [bold]{task.name}[/] runs {orchestration} "
         f"v{task.version} on '{cron}' ({timezone})")


@tasks.command("list")
def tasks_list(ctx: typer.Context, json_out: JsonFlag = False) -> None:
    """List tasks."""
    rows = client_of(ctx).tasks()
    show(rows, json_out, lambda: rows_table(
        "tasks", ["name", "orchestration", "schedule", "arguments", "state", "created"],
        [(t.name, f"{t.orchestration} v{t.version}",
          "once" if t.once else f"{t.schedule} ({t.timezone})",
          ", ".join(f"{k}={v}" for k, v in t.arguments.items()),
          "killed" if t.killed else "active", when(t.created_at)) for t in rows]))


@tasks.command("kill")
def tasks_kill(ctx: typer.Context, name: str) -> None:
    """Kill a task: its running run stops at the next batch; no further runs start."""
    client_of(ctx).kill_task(name)
    out.print(f"killed task [bold]{name}[/]")


@tasks.command("runs")
def tasks_runs(ctx: typer.Context, name: Annotated[str | None, typer.Argument()] = None,
               limit: Annotated[int, typer.Option()] = 50, json_out: JsonFlag = False) -> None:
    """Runs of a task (or of every task), newest first."""
    rows = client_of(ctx).runs(name, limit=limit)
    show(rows, json_out, lambda: rows_table(
        "runs", ["run", "task", "status", "started", "ended", "in", "out", "bad", "pipelines",
                 "error"],
        [(r.run_id, r.task, r.status, r.started_at and when(r.started_at),
          r.ended_at and when(r.ended_at), r.records_in, r.records_out, r.records_bad,
          ", ".join(f"{p} v{v}" for p, v in r.pipeline_versions.items()), r.error)
         for r in rows]))


@tasks.command("logs")
def tasks_logs(ctx: typer.Context, run_id: str, json_out: JsonFlag = False) -> None:
    """The log lines of one run."""
    lines = client_of(ctx).run_logs(run_id)
    show(lines, json_out, lambda: rows_table(f"run {run_id}", ["time", "level", "message"], [
        (when(line["time"]), line["level"], line["message"]) for line in lines]))


def _show_run(run: Run, json_out: bool) -> None:
    show(run, json_out, message=(
        f"run {run.run_id}: [bold]{run.status}[/] — {run.records_in} in, {run.records_out} "
        f"out, {run.records_bad} bad" + (f"; {run.error}" if run.error else "")))
