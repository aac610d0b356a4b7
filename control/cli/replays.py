"""CLI commands for replays: `pipelines replay`, `pipelines replay-status`, `pipelines compare`
and `replays list|status|stop|resume` (docs/replay.md)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from control.cli.base import JsonFlag, client_of, err, out, parse_time, rows_table, show, when
from control.cli.pipelines import pipelines
from control.client.replays import ReplayStatus

replays = typer.Typer(help="List, watch, stop and resume replays of past traffic.",
                      no_args_is_help=True)
NoWait = Annotated[bool, typer.Option("--no-wait", help="Return once the event is accepted")]


def _summary(s: ReplayStatus) -> dict[str, Any]:
    r = s.replay
    return {"replay": r.replay_id, "pipeline": r.pipeline, "version": r.version,
            "state": s.state, "done": s.progress.done, "records": s.progress.total,
            "side_topic": s.side_topic, "dead_topic": s.dead_topic,
            "from": r.from_time, "to": r.to_time,
            "ranges": [{"partition": p, "start": a, "end": b} for p, a, b in r.ranges],
            "created_by": r.created_by, "created_at": r.created_at}


def _watch(ctx: typer.Context, replay_id: str, json_out: bool) -> None:
    """Show a progress bar (offsets committed of the range's) until the replay is done or
    stopped; then its summary."""
    client = client_of(ctx)
    if json_out:
        status = client.wait_replay(replay_id)
    else:
        with Progress(TextColumn("replay [bold]{task.fields[id]}[/]"), BarColumn(),
                      MofNCompleteColumn(), TimeElapsedColumn(), console=err) as bar:
            task = bar.add_task("replay", total=None, id=replay_id)
            status = client.wait_replay(replay_id, on_progress=lambda s: bar.update(
                task, completed=s.progress.done, total=s.progress.total))
    _show(status, json_out)
    if status.state != "done":
        raise typer.Exit(1)


def _show(status: ReplayStatus, json_out: bool) -> None:
    s = _summary(status)
    show(s, json_out, message=(
        f"replay [bold]{s['replay']}[/] of {s['pipeline']} v{s['version']}: {s['state']}, "
        f"{s['done']} of {s['records']} records; results in {s['side_topic']}, dead letters "
        f"in {s['dead_topic']}"))


@pipelines.command("replay")
def pipelines_replay(
    ctx: typer.Context, name: str,
    version: Annotated[int, typer.Option(help="The pipeline version that scores the records "
                                              "(deployed or not)")],
    start: Annotated[datetime | None, typer.Option(
        "--from", parser=parse_time, metavar="TIME",
        help="Records written at or after TIME (ISO-8601; default: the topic's start)")] = None,
    end: Annotated[datetime | None, typer.Option(
        "--to", parser=parse_time, metavar="TIME",
        help="Records written before TIME (default: the topic's end now)")] = None,
    from_offset: Annotated[int | None, typer.Option(
        min=0, help="Instead of times: from this offset, in every partition")] = None,
    to_offset: Annotated[int | None, typer.Option(
        min=0, help="Instead of times: up to this offset (excluded), in every partition")
    ] = None,
    to_topic: Annotated[str | None, typer.Option(
        metavar="NAME", help="The side topic's name: results go to "
        "<namespace>.<workspace>.<pipeline>.replay.NAME, dead letters to its .dead "
        "(default NAME: the replay's id)")] = None,
    replay_id: Annotated[str | None, typer.Option(
        "--id", help="The replay's id (default: r and 8 random hex digits)")] = None,
    no_wait: NoWait = False,
    json_out: JsonFlag = False,
) -> None:
    """Score a past range of the pipeline's input topic again with VERSION, into a side topic,
    exactly once; the live output, offsets and metrics are left alone. Waits with a progress
    bar until it is done (exit 1 if it was stopped)."""
    client = client_of(ctx)
    r = client.start_replay(name, version, start=start, end=end, start_offset=from_offset,
                            end_offset=to_offset, to_topic=to_topic, replay_id=replay_id)
    if not json_out:
        out.print(f"started replay [bold]{r.replay_id}[/] of {name} v{version}: "
                  f"{r.records} records")
    if no_wait:
        if json_out:
            _show(client.replay_status(r.replay_id), True)
        return
    _watch(ctx, r.replay_id, json_out)


@pipelines.command("compare")
def pipelines_compare(
    ctx: typer.Context, name: str,
    replay: Annotated[str, typer.Option(help="The replay's id")],
    bins: Annotated[int, typer.Option(min=1, max=1000, help="Histogram bins")] = 10,
    json_out: JsonFlag = False,
) -> None:
    """Per output, the differences between the live results and the replay's over the same
    records: records compared, changed labels (integer outputs), mean and largest absolute
    difference of each element, and a histogram of the absolute differences."""
    found = client_of(ctx).compare_replay(name, replay, bins)
    if json_out:
        show(found, True)
        return
    out.print(f"replay [bold]{replay}[/] of {name}: {found['records_compared']} records "
              f"compared (of {found['records_replayed']} replayed)")
    for o in found["outputs"]:
        out.print(rows_table(
            f"{o['output']} ({o['dtype']})",
            ["element", "compared", "changed labels" if o["labels"] else "changed",
             "mean |diff|", "max |diff|"],
            [(e["element"], e["compared"], e["changed"], f"{e['mean_abs_diff']:.6g}",
              f"{e['max_abs_diff']:.6g}") for e in o["elements"]]))
        h = o["histogram"]
        edges, counts = h["edges"], h["counts"]
        top = max(counts) or 1
        for i, count in enumerate(counts):
            bar = "█" * round(30 * count / top)
            out.print(f"  [{edges[i]:.3g}, {edges[i + 1]:.3g}) {bar} {count}")


@replays.command("list")
def replays_list(ctx: typer.Context,
                 pipeline: Annotated[str | None, typer.Option(help="Only this pipeline's")
                                     ] = None,
                 json_out: JsonFlag = False) -> None:
    """The workspace's replays, oldest first, with their progress."""
    found = client_of(ctx).replays(pipeline)
    show([_summary(s) for s in found], json_out, lambda: rows_table(
        "replays", ["replay", "pipeline", "version", "state", "done", "records", "side topic",
                    "started"],
        [(s.replay.replay_id, s.replay.pipeline, s.replay.version, s.state, s.progress.done,
          s.progress.total, s.side_topic, when(s.replay.created_at)) for s in found]))


@pipelines.command("replay-status")
@replays.command("status")
def replays_status(ctx: typer.Context, replay_id: str, json_out: JsonFlag = False) -> None:
    """Where a replay stands: running, stopped or done, and records done of its range (`replays
    status` and `pipelines replay-status` are one command)."""
    _show(client_of(ctx).replay_status(replay_id), json_out)


@replays.command("stop")
def replays_stop(ctx: typer.Context, replay_id: str, json_out: JsonFlag = False) -> None:
    """Stop a replay after its current batch; its progress stays for `replays resume`."""
    client_of(ctx).stop_replay(replay_id)
    show({"replay": replay_id, "running": False}, json_out,
         message=f"stopped replay [bold]{replay_id}[/]")


@replays.command("resume")
def replays_resume(ctx: typer.Context, replay_id: str, no_wait: NoWait = False,
                   json_out: JsonFlag = False) -> None:
    """Go on with a stopped replay from its committed progress; waits until it is done."""
    client_of(ctx).resume_replay(replay_id)
    if no_wait:
        show({"replay": replay_id, "running": True}, json_out,
             message=f"resumed replay [bold]{replay_id}[/]")
        return
    _watch(ctx, replay_id, json_out)
