"""`inferstream assays`: create, list, preview, pause, resume and delete assays; their results."""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, get_args

import typer

from control.cli.base import (
    JsonFlag,
    client_of,
    format_duration,
    out,
    parse_duration,
    parse_time,
    rows_table,
    show,
    to_json,
    when,
)
from control.registry.assay_config import AssayConfig
from control.registry.assay_config import Metric as MetricName
from control.registry.state import Assay
from schemas.errors import InferstreamError
from sinks.assays import AssayResult

assays = typer.Typer(
    help="Watch a model's inputs or outputs for drift, or its predictions against their "
    "labels: assays and their results.",
    no_args_is_help=True,
)


class Binning(StrEnum):
    quantile = "quantile"
    equal = "equal"
    provided = "provided"


class Aggregation(StrEnum):
    density = "density"
    cumulative = "cumulative"


Metric = StrEnum("Metric", {m: m for m in get_args(MetricName)})  # type: ignore[misc]


class Prediction(StrEnum):
    value = "value"
    threshold = "threshold"
    argmax = "argmax"


class Average(StrEnum):
    class_ = "class"
    macro = "macro"


def _time(name: str, help: str) -> Any:
    return typer.Option(name, parser=parse_time, metavar="TIME", help=help)


def _duration(help: str) -> Any:
    return typer.Option(parser=parse_duration, metavar="DURATION", help=help)


# The flags that define an assay, shared by `create` and `preview`; None means "not given".
Pipeline = Annotated[str | None, typer.Option(help="Pipeline whose inference logs are read")]
Model = Annotated[str | None, typer.Option(help="Model of a step of the pipeline")]
Output = Annotated[str | None, typer.Option("--output", metavar="FIELD",
                                            help="Monitor this output of the model")]
Input = Annotated[str | None, typer.Option("--input", metavar="FIELD",
                                           help="Monitor this input of the model")]
Index = Annotated[int | None, typer.Option(
    help="Element of the field in one record, flattened row-major, 0-based (default: 0)")]
BaselineFrom = Annotated[datetime | None, _time(
    "--baseline-from", "Baseline: the logs from TIME (ISO-8601, UTC when no zone)")]
BaselineTo = Annotated[datetime | None, _time("--baseline-to", "... to TIME (excluded)")]
BaselineValues = Annotated[Path | None, typer.Option(
    exists=True, dir_okay=False, help="Baseline: given values, a JSON list of numbers")]
Width = Annotated[timedelta | None, _duration("Window width: 30s, 5m, 1h, 1d... (default: 1d)")
                  ]
Interval = Annotated[timedelta | None, _duration(
    "From one window start to the next (default: the width)")]
Start = Annotated[datetime | None, _time(
    "--start", "First window start (default: the baseline's end)")]
BinningFlag = Annotated[Binning | None, typer.Option(
    help="Edges at baseline quantiles, equal widths, or --edges (default: quantile)")]
Bins = Annotated[int | None, typer.Option(help="Bins k, plus two outlier bins (default: 5)")]
Edges = Annotated[list[str] | None, typer.Option(
    help="Provided binning: k+1 edges (or k), comma separated or repeated")]
AggregationFlag = Annotated[Aggregation | None, typer.Option(
    help="cumulative: score the cumulative densities (default: density)")]
MetricFlag = Annotated[Metric | None, typer.Option(  # type: ignore[valid-type]
    help="Score (default: psi). Drift: psi, sumdiff, maxdiff. Against labels (no baseline): "
    "accuracy, precision, recall, f1, log_loss, roc_auc; mae, rmse, mape")]
WarningFlag = Annotated[float | None, typer.Option(
    help="Warn when the score reaches this (falls to it for accuracy, precision, recall, f1, "
    "roc_auc)")]
AlertFlag = Annotated[float | None, typer.Option(
    help="Alert when the score reaches this (falls to it, as for --warning)")]
PredictionFlag = Annotated[Prediction | None, typer.Option(
    help="Classification metrics: the predicted class is the element (value), element >= "
    "--decision-threshold (threshold), or the field's argmax (default: value)")]
DecisionThreshold = Annotated[float | None, typer.Option(
    help="With --prediction threshold: the positive-class probability that predicts 1 "
    "(default: 0.5)")]
PositiveClass = Annotated[float | None, typer.Option(
    help="The class precision, recall and f1 score, and the positive label of log_loss and "
    "roc_auc (default: 1)")]
AverageFlag = Annotated[Average | None, typer.Option(
    help="precision, recall, f1: of --positive-class (class) or the mean over classes "
    "(macro) (default: class)")]
LabelWait = Annotated[timedelta | None, _duration(
    "Performance metrics: score a window again as labels arrive, until this long after it "
    "closed (default: 7d)")]
Epsilon = Annotated[float | None, typer.Option(
    help="Stands for a zero density in psi (default: 0.005)")]
FromFlag = Annotated[datetime | None, _time("--from", "Windows starting at or after TIME")]
ToFlag = Annotated[datetime | None, _time("--to", "Windows starting before TIME")]
Plot = Annotated[Path | None, typer.Option(
    metavar="FILE.png", help="Draw the score over time and one window's bins to a PNG")]
Window = Annotated[datetime | None, _time(
    "--window", "With --plot: the window starting at TIME (default: the latest)")]

_RENAMED = {"baseline_from": "baseline_start", "baseline_to": "baseline_end",
            "start": "first_window_start", "warning": "warning_threshold",
            "alert": "alert_threshold"}


def _options(flags: dict[str, Any]) -> dict[str, Any]:
    """AssayConfig fields from the flags given (None: not given, AssayConfig's default)."""
    options = {_RENAMED.get(k, k): v for k, v in flags.items()
               if v is not None and k not in ("ctx", "name", "output", "input_", "json_out",
                                               "baseline_values", "edges", "plot", "window_at",
                                               "range_from", "range_to")}
    options = {k: v.value if isinstance(v, StrEnum) else v for k, v in options.items()}
    if flags["output"] is not None and flags["input_"] is not None:
        raise typer.BadParameter("give --output FIELD or --input FIELD, not both")
    if flags["output"] is not None or flags["input_"] is not None:
        options["io"] = "output" if flags["output"] is not None else "input"
        options["field"] = flags["output"] or flags["input_"]
    if flags["edges"]:
        try:
            options["edges"] = tuple(float(e) for part in flags["edges"]
                                     for e in part.split(",") if e.strip())
        except ValueError as exc:
            raise typer.BadParameter(f"--edges {flags['edges']}: {exc}") from exc
    if flags["baseline_values"] is not None:
        options["baseline_values"] = _values(flags["baseline_values"])
    return options


def _values(path: Path) -> tuple[float, ...]:
    try:
        values = json.loads(path.read_text())
        if not isinstance(values, list):
            raise ValueError(f"a {type(values).__name__}, not a list")
        return tuple(float(v) for v in values)
    except (ValueError, TypeError) as exc:
        raise InferstreamError(
            f"--baseline-values {path}: expected a JSON list of numbers, {exc}") from exc


@assays.command("create")
def assays_create(
    ctx: typer.Context, name: str, pipeline: Pipeline = None, model: Model = None,
    output: Output = None, input_: Input = None, index: Index = None,
    baseline_from: BaselineFrom = None, baseline_to: BaselineTo = None,
    baseline_values: BaselineValues = None, width: Width = None, interval: Interval = None,
    start: Start = None, binning: BinningFlag = None, bins: Bins = None, edges: Edges = None,
    aggregation: AggregationFlag = None, metric: MetricFlag = None, warning: WarningFlag = None,
    alert: AlertFlag = None, epsilon: Epsilon = None, prediction: PredictionFlag = None,
    decision_threshold: DecisionThreshold = None, positive_class: PositiveClass = None,
    average: AverageFlag = None, label_wait: LabelWait = None, json_out: JsonFlag = False,
) -> None:
    """Create an assay: it scores each window of a model's input or output against a baseline
    (drift), or the window's predictions against their labels (performance)."""
    options = _options(dict(locals()))
    missing = [flag for flag, key in [("--pipeline", "pipeline"), ("--model", "model"),
                                      ("--output or --input", "field")] if key not in options]
    if missing:
        raise typer.BadParameter(f"missing {', '.join(missing)}")
    assay = client_of(ctx).create_assay(name, **options)
    show(_assay_json(assay), json_out, message=f"created assay [bold]{name}[/] "
         f"(id {assay.assay_id}): {_what(assay.config)}, {_windows(assay.config)}")


@assays.command("list")
def assays_list(ctx: typer.Context, json_out: JsonFlag = False) -> None:
    """List the workspace's assays."""
    rows = client_of(ctx).assays()
    show([_assay_json(a) for a in rows], json_out, lambda: rows_table(
        "assays", ["name", "state", "monitors", "baseline", "windows", "scoring", "thresholds",
                   "created by"],
        [(a.name, "active" if a.active else "paused", _what(a.config), _baseline(a.config),
          _windows(a.config), _scoring(a.config), _thresholds(a.config), a.created_by)
         for a in rows]))


@assays.command("results")
def assays_results(
    ctx: typer.Context, name: str, range_from: FromFlag = None, range_to: ToFlag = None,
    plot: Plot = None, window_at: Window = None, json_out: JsonFlag = False,
) -> None:
    """Show an assay's stored results, one row per window; --plot draws them."""
    client = client_of(ctx)
    results = client.assay_results(name, range_from, range_to)
    _report(results, f"assay {name}", json_out, plot, window_at)


@assays.command("preview")
def assays_preview(
    ctx: typer.Context,
    range_from: Annotated[datetime, _time("--from", "First window start (required)")],
    range_to: Annotated[datetime, _time("--to", "Windows must end by TIME (required)")],
    name: Annotated[str | None, typer.Argument(
        help="A registered assay; flags given change it for this preview")] = None,
    pipeline: Pipeline = None, model: Model = None, output: Output = None,
    input_: Input = None, index: Index = None, baseline_from: BaselineFrom = None,
    baseline_to: BaselineTo = None, baseline_values: BaselineValues = None,
    width: Width = None, interval: Interval = None, start: Start = None,
    binning: BinningFlag = None, bins: Bins = None, edges: Edges = None,
    aggregation: AggregationFlag = None, metric: MetricFlag = None, warning: WarningFlag = None,
    alert: AlertFlag = None, epsilon: Epsilon = None, prediction: PredictionFlag = None,
    decision_threshold: DecisionThreshold = None, positive_class: PositiveClass = None,
    average: AverageFlag = None, label_wait: LabelWait = None, plot: Plot = None,
    window_at: Window = None, json_out: JsonFlag = False,
) -> None:
    """Run an assay over a past range without saving anything: NAME, or the flags of create."""
    options = _options(dict(locals()))
    client = client_of(ctx)
    if name is not None:
        config = _changed(client.assay_config(name), options)
    else:
        options.setdefault("first_window_start", range_from)
        config = client.define_assay("preview", **options)
    results = client.preview_assay(config, range_from, range_to)
    _report(results, f"preview of assay {name}" if name else "preview", json_out, plot, window_at)


def _changed(config: AssayConfig, options: dict[str, Any]) -> AssayConfig:
    """A registered assay's config with the flags given for a preview."""
    if "baseline_values" in options:
        options = {"baseline_start": None, "baseline_end": None, **options}
    elif "baseline_start" in options or "baseline_end" in options:
        options = {"baseline_values": None, **options}
    if "width" in options and "interval" not in options and config.step == config.width:
        options["interval"] = options["width"]  # tumbling stays tumbling
    return dataclasses.replace(config, **options)


@assays.command("pause")
def assays_pause(ctx: typer.Context, name: str, json_out: JsonFlag = False) -> None:
    """Stop running an assay; its results stay."""
    assay = client_of(ctx).pause_assay(name)
    show(_assay_json(assay), json_out, message=f"paused assay [bold]{name}[/]")


@assays.command("resume")
def assays_resume(ctx: typer.Context, name: str, json_out: JsonFlag = False) -> None:
    """Run a paused assay again; the windows it missed are scored too."""
    assay = client_of(ctx).resume_assay(name)
    show(_assay_json(assay), json_out, message=f"resumed assay [bold]{name}[/]")


@assays.command("delete")
def assays_delete(ctx: typer.Context, name: str, json_out: JsonFlag = False) -> None:
    """Delete an assay; its stored results stay, and the name is free again."""
    status = client_of(ctx).delete_assay(name)
    show(status, json_out, message=f"deleted assay [bold]{name}[/]")


# -- output ------------------------------------------------------------------------------------


def _report(results: list[AssayResult], title: str, json_out: bool, plot: Path | None,
            window_at: datetime | None) -> None:
    drawn = None
    if plot is not None:
        from control.client.assay_plot import plot_results  # matplotlib only when drawing

        drawn = plot_results(results, plot, title, window_at).resolve()
    if json_out:
        print(json.dumps({"results": to_json(results), "plot": drawn and str(drawn)}, indent=2))
        return
    if not results:
        out.print(f"{title}: no windows in that range")
    else:
        metric = "cumulative" if results[0].aggregation == "cumulative" else results[0].metric
        out.print(rows_table(
            f"{title}: {metric}",
            ["window start", "window end", "values", "labelled", "score", "status"],
            [(when(r.window_start), when(r.window_end), r.window.count,
              "-" if r.labelled is None else r.labelled, _num(r.score), r.status)
             for r in results]))
    if drawn is not None:
        out.print(f"plot written to {drawn}", highlight=False, soft_wrap=True)


def _assay_json(assay: Assay) -> dict[str, Any]:
    return {"assay_id": assay.assay_id, **to_json(assay)}


def _num(value: float | None) -> str | None:
    return None if value is None else f"{value:.6f}"


def _what(c: AssayConfig) -> str:
    return f"{c.io} {c.field}[{c.index}] of model {c.model} in pipeline {c.pipeline}"


def _baseline(c: AssayConfig) -> str:
    if c.performance:
        return f"labels, re-scored for {format_duration(c.label_wait)}"
    if c.baseline_values is not None:
        return f"{len(c.baseline_values)} given values"
    assert c.baseline_start is not None and c.baseline_end is not None
    return f"{when(c.baseline_start)} to {when(c.baseline_end)}"


def _windows(c: AssayConfig) -> str:
    return (f"windows of {format_duration(c.width)} every {format_duration(c.step)} "
            f"from {when(c.start)}")


def _scoring(c: AssayConfig) -> str:
    if c.performance:
        return f"{c.metric} ({'lower' if c.lower_is_worse else 'higher'} is worse)"
    bins = f"{c.binning} {c.bins}" + (f" {list(c.edges)}" if c.edges else "")
    score = "cumulative" if c.aggregation == "cumulative" else c.metric
    return f"{score}, {bins} bins"


def _thresholds(c: AssayConfig) -> str:
    parts = [f"{n} {v:g}" for n, v in [("warning", c.warning_threshold),
                                        ("alert", c.alert_threshold)] if v is not None]
    return ", ".join(parts) or "-"

