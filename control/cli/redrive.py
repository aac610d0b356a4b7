"""CLI commands for dead-letter redrives: `pipelines redrive`, `redrives`, `redrive-status`."""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, TimeElapsedColumn
from rich.progress import Progress as Bars

from control.cli.base import JsonFlag, client_of, err, out, parse_time, rows_table, to_json, when
from control.cli.pipelines import pipelines
from control.client import Client
from control.client.redrives import RedrivePlan
from control.offsets import Progress
from control.registry.redrives import ALREADY, CUT, FILTERED, LIMITED, NOT_INPUT, REDRIVE
from control.registry.state import Redrive

UNFINISHED = 3  # exit code: sent, but no worker finished it within --timeout
SKIPPED = {ALREADY: "skipped, already redriven", FILTERED: "skipped by the reason filter",
           LIMITED: "held back: redriven {limit} times already (--force sends them)",
           NOT_INPUT: "skipped: refused labels, no input records", CUT: "skipped: cut to fit "
           "the dead-letter topic, the original is lost", "undecodable": "skipped: no dead "
           "letter (undecodable)"}


def _time(text: str | None, option: str) -> datetime | None:
    if text is None:
        return None
    try:
        return parse_time(text)
    except ValueError as exc:
        raise typer.BadParameter(f"{option}: {exc}") from None


@pipelines.command("redrive")
def pipelines_redrive(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The pipeline whose dead letters go back")],
    from_: Annotated[str | None, typer.Option(
        "--from", help="Dead letters written at or after this time (ISO-8601, UTC unless a "
        "zone is given; default: the first)")] = None,
    to: Annotated[str | None, typer.Option(
        help="Dead letters written before this time (default: up to now)")] = None,
    reason_like: Annotated[str | None, typer.Option(
        help="Only dead letters whose reason contains this text; with a % it is a LIKE "
        "pattern of the whole reason (% any text, _ one character)")] = None,
    force: Annotated[bool, typer.Option(
        help="Also send letters already redriven INFERSTREAM_REDRIVE_LIMIT times")] = False,
    dry_run: Annotated[bool, typer.Option(
        help="Only list what would be redriven, counted by reason; send nothing")] = False,
    no_wait: Annotated[bool, typer.Option(
        "--no-wait", help="Return once the redrive is accepted; follow it with "
        "`pipelines redrive-status ID`")] = False,
    timeout: Annotated[float, typer.Option(
        help=f"Seconds to wait for a worker to finish it (exit code {UNFINISHED} when none "
        "did; it goes on)")] = 300.0,
    json_out: JsonFlag = False,
) -> None:
    """Send a pipeline's dead letters back through its deployed version, each exactly once.

    Letters an earlier redrive took are skipped; records that fail again return to the
    dead-letter topic with the new reason and their redrive count.
    """
    client = client_of(ctx)
    window = {"from_time": _time(from_, "--from"), "to_time": _time(to, "--to")}
    if dry_run:
        draft, registry = client.redrive_draft(name, reason_like=reason_like, force=force,
                                               **window)
        plan = client.plan_redrive(draft, registry)
        _report(draft, plan, None, json_out, dry_run=True)
        return
    redrive = client.redrive(name, reason_like=reason_like, force=force, **window)
    plan = client.plan_redrive(redrive)
    if no_wait:
        _report(redrive, plan, client.redrive_progress(redrive), json_out)
        return
    progress = _follow(client, redrive, plan, timeout, quiet=json_out)
    _report(redrive, plan, progress, json_out)
    if progress.stopped is not None:
        raise typer.Exit(UNFINISHED)
    if not progress.finished:
        err.print(f"[yellow]warning:[/] redrive {redrive.redrive_id} is not finished after "
                  f"{timeout:g}s; is a worker running (`inferstream worker`)? It goes on; "
                  f"`pipelines redrive-status {redrive.redrive_id}` follows it (exit code "
                  f"{UNFINISHED})", highlight=False)
        raise typer.Exit(UNFINISHED)


def _follow(client: Client, redrive: Redrive, plan: RedrivePlan, timeout: float,
            quiet: bool) -> Progress:
    """Wait for the worker to read the redrive's ranges, with a progress bar of dead letters
    considered (offsets read of those covered)."""
    columns = (*Bars.get_default_columns()[:1], BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    deadline = time.monotonic() + timeout
    with Bars(*columns, console=err, transient=True, disable=quiet) as bar:
        task = bar.add_task(f"redriving {plan.outcomes[REDRIVE]} of {plan.considered} dead "
                            "letters", total=None)
        while True:
            progress = client.redrive_progress(redrive)
            bar.update(task, completed=progress.done, total=progress.total)
            if progress.finished or progress.stopped is not None \
                    or time.monotonic() >= deadline:
                return progress
            time.sleep(0.5)


def _report(redrive: Redrive, plan: RedrivePlan, progress: Progress | None,
            json_out: bool, dry_run: bool = False) -> None:
    if json_out:
        print(json.dumps(_summary(redrive, plan, progress, dry_run), indent=2))
        return
    what = "would redrive" if dry_run else (
        "redrove" if progress is not None and progress.finished else "redriving")
    head = (f"pipeline [bold]{escape(redrive.pipeline)}[/]: {what} "
            f"[bold]{plan.outcomes[REDRIVE]}[/] of {plan.considered} dead letters")
    out.print(head if dry_run else f"{head} (redrive {redrive.redrive_id})")
    if progress is not None and progress.stopped is not None:
        out.print(f"  [red]stopped[/] after {progress.done} of {progress.total} offsets, for "
                  f"good: {escape(progress.stopped)}; the worker goes on with the redrives "
                  "after it", highlight=False)
    for outcome, text in SKIPPED.items():
        if plan.outcomes[outcome]:
            out.print(f"  {plan.outcomes[outcome]} " + text.format(limit=redrive.limit))
    if plan.reasons:
        out.print(rows_table("by reason", ["dead letters", "reason"],
                             [(n, escape(reason)) for reason, n in plan.reasons.most_common()]))


def _summary(redrive: Redrive, plan: RedrivePlan, progress: Progress | None,
             dry_run: bool) -> dict[str, Any]:
    return {
        **({} if dry_run else {"redrive_id": redrive.redrive_id}), "pipeline": redrive.pipeline,
        "dry_run": dry_run, "considered": plan.considered, "redriven": plan.outcomes[REDRIVE],
        "skipped": {o: plan.outcomes[o] for o in (*SKIPPED,) if plan.outcomes[o]},
        "by_reason": dict(plan.reasons.most_common()),
        "ranges": [{"partition": p, "start": s, "end": e} for p, s, e in redrive.ranges],
        "limit": redrive.limit,
        **({} if progress is None else {"finished": progress.finished,
                                        "offsets_done": progress.done,
                                        "offsets_total": progress.total,
                                        "stopped": progress.stopped}),
    }


@pipelines.command("redrives")
def pipelines_redrives(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Argument(help="Only this pipeline's redrives")] = None,
    json_out: JsonFlag = False,
) -> None:
    """List the workspace's dead-letter redrives, oldest first, with their progress."""
    client = client_of(ctx)
    found = [(r, client.redrive_progress(r)) for r in client.redrives(name)]
    if json_out:
        print(json.dumps([{**to_json(r), "finished": p.finished, "offsets_done": p.done,
                           "offsets_total": p.total, "stopped": p.stopped} for r, p in found],
                         indent=2))
        return
    out.print(rows_table("redrives", ["id", "pipeline", "offsets", "reason like", "limit",
                                      "done", "by", "created"],
                         [(r.redrive_id, r.pipeline, _ranges(r), escape(r.reason_like or "-"),
                           r.limit or "forced",
                           f"{p.done}/{p.total}" + (" stopped" if p.stopped else ""),
                           r.created_by,
                           when(r.created_at)) for r, p in found]))


def _ranges(r: Redrive) -> str:
    return ", ".join(f"{p}:{s}..{e}" for p, s, e in r.ranges)


@pipelines.command("redrive-status")
def pipelines_redrive_status(
    ctx: typer.Context,
    redrive_id: Annotated[str, typer.Argument(help="The redrive's id (`pipelines redrives`)")],
    json_out: JsonFlag = False,
) -> None:
    """Show what a redrive does (counts by outcome and reason) and how far it is."""
    client = client_of(ctx)
    redrive = client.redrive_of(redrive_id)
    _report(redrive, client.plan_redrive(redrive), client.redrive_progress(redrive), json_out)
