"""`inferstream logs`: a pipeline's inference logs as a table, JSON, or exported files."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
from rich.table import Table

from control.cli.base import JsonFlag, client_of, err, out, parse_time
from control.client.log_export import FORMATS, LogExport, json_value, outputs_text

DEFAULT_LIMIT = 100


def logs(
    ctx: typer.Context,
    pipeline: Annotated[str, typer.Argument(help="Pipeline whose inference logs to show")],
    start: Annotated[datetime | None, typer.Option(
        "--from", parser=parse_time, metavar="TIME",
        help="Only logs at or after TIME (ISO-8601, UTC when no zone is given)")] = None,
    end: Annotated[datetime | None, typer.Option(
        "--to", parser=parse_time, metavar="TIME", help="Only logs before TIME")] = None,
    limit: Annotated[int | None, typer.Option(
        min=0, help=f"At most N, the newest (default: {DEFAULT_LIMIT}; all when exporting)")
    ] = None,
    version: Annotated[int | None, typer.Option(help="Only this pipeline version")] = None,
    model: Annotated[str | None, typer.Option(help="Only this model's inferences")] = None,
    failures: Annotated[bool, typer.Option(
        "--failures", help="Only failed inferences (error set)")] = False,
    anomalies: Annotated[bool, typer.Option(
        "--anomalies", help="Only records that failed a validation (the logs of the step that "
        "made their results)")] = False,
    anomaly: Annotated[str | None, typer.Option(
        metavar="CHECK", help="Only records that failed the validation CHECK")] = None,
    export: Annotated[Path | None, typer.Option(
        help=f"Write the logs to a file ({', '.join(FORMATS)}) instead of printing them")
    ] = None,
    split_rows: Annotated[int, typer.Option(
        min=1, help="With --export: more rows than this go to FILE-0001.ext, FILE-0002.ext, ...")
    ] = 1_000_000,
    json_out: JsonFlag = False,
) -> None:
    """Show a pipeline's inference logs, oldest first (the newest --limit of them)."""
    client = client_of(ctx)
    filters: dict[str, Any] = {"pipeline_version": version, "model": model,
                               "only_failures": failures, "only_anomalies": anomalies,
                               "anomaly": anomaly}
    if export is not None:
        _export(client, pipeline, start, end, limit, filters, export, split_rows, json_out)
        return
    rows = client.logs(pipeline, start, end, DEFAULT_LIMIT if limit is None else limit,
                       **filters)
    if json_out:
        print(json.dumps(json_value(rows), indent=2))
        return
    if not rows:
        out.print(f"no inference logs of pipeline {pipeline!r} match")
        return
    out.print(_table(f"inference logs of {pipeline} ({len(rows)})", rows))


def _table(title: str, rows: list[dict[str, Any]]) -> Table:
    """Time, record and model stay whole; outputs, anomalies (when a row has any: the
    validations its record failed) and errors wrap in what width is left."""
    table = Table(title=title)
    flagged = any(r.get("anomalies") for r in rows)
    for name, wrap in [("time", False), ("record", False), ("version", False),
                       ("model", False), ("outputs", True), ("ms", False),
                       *([("anomalies", True)] if flagged else []), ("error", True)]:
        table.add_column(name, no_wrap=not wrap, overflow="fold")
    for r in rows:
        model = f"{r['step']}:{r['model']}:v{r['model_version']}"
        anomalies = [escape(", ".join(r.get("anomalies") or ()))] if flagged else []
        table.add_row(
            r["time"].strftime("%Y-%m-%d %H:%M:%S"), r["record_id"],
            str(r["pipeline_version"]), model + (" shadow" if r["shadow"] else ""),
            outputs_text(r, 60), f"{r['elapsed_us'] / 1000:.1f}", *anomalies,
            r["error"] or "")
    return table


def _export(client: Any, pipeline: str, start: datetime | None, end: datetime | None,
            limit: int | None, filters: dict[str, Any], path: Path, split_rows: int,
            quiet: bool) -> None:
    total = client.count_logs(pipeline, start, end, **filters)
    if limit is not None:
        total = min(total, limit)
    export = LogExport(path, split_rows, split=total > split_rows)
    columns = (*Progress.get_default_columns()[:2], BarColumn(), MofNCompleteColumn(),
               TimeRemainingColumn())
    try:
        with Progress(*columns, console=err, transient=True, disable=quiet) as bar:
            task = bar.add_task(f"exporting {path.name}", total=total)
            for page in client.iter_logs(pipeline, start, end, limit, **filters):
                export.write(page)
                bar.update(task, completed=export.rows)
    finally:
        files = export.close()
    if quiet:
        print(json.dumps({"rows": export.rows, "files": [str(f.resolve()) for f in files]},
                         indent=2))
        return
    where = files[0].resolve() if len(files) == 1 else f"{len(files)} files: " + ", ".join(
        str(f.resolve()) for f in files)
    out.print(f"exported {export.rows} inference logs of {pipeline} to {where}",
              highlight=False, soft_wrap=True)
