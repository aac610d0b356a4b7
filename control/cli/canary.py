"""CLI commands of gated canaries: `pipelines canary` starts one, `pipelines abort-canary`
stops it (docs/canary.md)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from control.cli.base import JsonFlag, canary_line, client_of, parse_duration, show
from control.cli.pipelines import pipelines


def _steps(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",")]
    except ValueError:
        raise typer.BadParameter(f"--steps {text!r}: give percentages like 5,25,50,100"
                                 ) from None


def _seconds(text: str) -> int:
    try:
        return int(parse_duration(text).total_seconds())
    except ValueError as exc:
        raise typer.BadParameter(f"--every: {exc}") from None


@pipelines.command("canary")
def pipelines_canary(
    ctx: typer.Context, name: str,
    version: Annotated[int, typer.Option(help="The version to ramp up to")],
    steps: Annotated[str, typer.Option(
        help="Percent of records per step, growing to a last step of 100 (the promotion)")
    ] = "5,25,50,100",
    every: Annotated[str, typer.Option(
        help="How long a step lasts before it is judged, e.g. 30s, 10m, 1h")] = "10m",
    hash_key: Annotated[str | None, typer.Option(
        help="A record field whose value picks the side, sticky per value; default: random")
    ] = None,
    max_dead_letter_pp: Annotated[float, typer.Option(
        help="Roll back when the canary's dead-letter rate exceeds the current version's by "
             "more than this many percentage points")] = 1.0,
    max_error_pp: Annotated[float, typer.Option(
        help="Roll back when the canary's error rate (logs with an error) exceeds the current "
             "version's by more than this many percentage points")] = 1.0,
    max_p99_ratio: Annotated[float, typer.Option(
        help="Roll back when the canary's p99 time per record (a predict call's time over "
             "its records) exceeds this many times the current version's ...")] = 1.5,
    p99_slack_ms: Annotated[float, typer.Option(
        help="... and the current version's plus this many milliseconds")] = 5.0,
    min_records: Annotated[int, typer.Option(
        help="Records each version needs in a step to be judged; fewer: the step waits")] = 100,
    assay: Annotated[list[str] | None, typer.Option(
        help="An assay of the pipeline that must not be in warning or alert during a step; "
             "repeatable. Its windows cover the whole pipeline, both versions' records: drift "
             "of the input data rolls back any canary")] = None,
    json_out: JsonFlag = False,
) -> None:
    """Ramp a deployed pipeline up to another version, step by step, while it stays healthy.

    The worker that runs schedules judges each step after --every and advances it, promotes
    the version at the last step, or rolls back to the current version and says why; each is
    an event in the audit log. `pipelines get` and `status` show where it stands.
    """
    d = client_of(ctx).start_canary(
        name, version, _steps(steps), _seconds(every), hash_key=hash_key,
        max_dead_letter_pp=max_dead_letter_pp, max_error_pp=max_error_pp,
        max_p99_ratio=max_p99_ratio, p99_slack_ms=p99_slack_ms, min_records=min_records,
        assays=assay or [])
    assert d.canary is not None
    show(d, json_out, message=f"pipeline [bold]{name}[/] v{d.version}: "
         + escape(canary_line(d.canary)))


@pipelines.command("abort-canary")
def pipelines_abort_canary(
    ctx: typer.Context, name: str,
    reason: Annotated[str | None, typer.Option(help="Why, for the audit log")] = None,
    json_out: JsonFlag = False,
) -> None:
    """Stop a running canary: every record goes to the current version again."""
    d = client_of(ctx).abort_canary(name, reason)
    assert d.canary is not None
    show(d, json_out, message=f"pipeline [bold]{name}[/] v{d.version}: "
         + escape(canary_line(d.canary)))
