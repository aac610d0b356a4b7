"""Assays exactly as docs/assays.md defines them, computed in ClickHouse SQL.

An assay compares a baseline (a time range of the logs, or given values) with successive
windows of one element of one input or output of one model. Python here only validates,
picks window starts and names the results; edges, bins, counts, densities, scores and
statistics come from the statements in `sinks.assay_sql`.

Beyond docs/assays.md: a window without values gets status `no_data` and no score, and the
statistics (min, max, mean, median, std) skip NaN, which still counts in `count` and bin 0.
A performance metric (accuracy, ..., mape) scores the window against its labels instead
(sinks.performance): no baseline and no bins, and `labelled` says how many rows it scored.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from control.registry.assay_config import AssayConfig, AssayError
from sinks import assay_sql, performance
from sinks.assay_results import (
    SEVERITY,
    AssayResult,
    Baseline,
    Status,
    WindowStats,
    alert_record,
    last_done,
    load_results,
    micros,
    result_from_row,
    result_row,
    save_result,
    status_of,
    to_alert,
)
from sinks.storage import Storage

__all__ = [
    "SEVERITY",
    "AssayConfig",
    "AssayError",
    "AssayResult",
    "Baseline",
    "Status",
    "WindowStats",
    "alert_record",
    "baseline",
    "due_windows",
    "last_done",
    "load_results",
    "preview",
    "result_from_row",
    "result_row",
    "run_window",
    "save_result",
    "status_of",
    "to_alert",
]

def baseline(storage: Storage, config: AssayConfig) -> Baseline:
    """Edges, counts, densities and statistics of the assay's baseline (none: performance)."""
    if config.performance:
        return Baseline((), (), (), WindowStats(0))
    if config.baseline_values is not None:
        source, params = assay_sql.GIVEN_VALUES, {"baseline_values": list(config.baseline_values)}
    else:
        assert config.baseline_start is not None and config.baseline_end is not None
        source = assay_sql.logged_values(config.io)
        params = _field_params(config, config.baseline_start, config.baseline_end)
    provided = len(config.edges) if config.edges is not None else 0
    if provided:
        params["provided_edges"] = list(config.edges or ())
    edges = assay_sql.edges_expression(config.binning, config.bins, provided)
    row = storage.query(assay_sql.baseline_query(source, edges), params)[0]
    if row["numbers"] == 0:
        where = (
            "the given values"
            if config.baseline_values is not None
            else f"logs of {config.pipeline}/{config.model} {config.io} {config.field!r}"
            f"[{config.index}] in [{config.baseline_start}, {config.baseline_end})"
        )
        raise AssayError(
            f"assay {config.assay_id!r}: the baseline has no values ({row['n']} rows, none a "
            f"number) in {where}; pick a range with traffic or give values"
        )
    if list(row["edges"]) != sorted(row["edges"]):
        raise AssayError(
            f"assay {config.assay_id!r}: edges {row['edges']} are not ascending: the baseline "
            f"minimum is above the first provided edge; give {config.bins + 1} edges"
        )
    return Baseline(tuple(row["edges"]), tuple(row["counts"]), tuple(row["densities"]), _stats(row))


def run_window(
    storage: Storage, config: AssayConfig, start: datetime, base: Baseline | None = None
) -> AssayResult:
    """The result of the window [start, start + width); not saved."""
    return _windows(storage, config, [start], base)[0]


def preview(
    storage: Storage,
    config: AssayConfig,
    start: datetime,
    end: datetime,
    base: Baseline | None = None,
) -> list[AssayResult]:
    """Results of the windows from `start` every interval that end by `end`; not saved."""
    starts = []
    moment = start
    while moment + config.width <= end:
        starts.append(moment)
        moment += config.step
    return _windows(storage, config, starts, base)


def due_windows(
    config: AssayConfig, last_done: datetime | None, now: datetime, limit: int | None = None
) -> list[datetime]:
    """Starts of the windows that have closed by `now` and start after `last_done`.

    Pure: the scheduler passes the newest saved window start, so windows missed while
    nothing ran are all returned (oldest first, at most `limit`).
    """
    first, step = config.start, config.step
    index = 0 if last_done is None or last_done < first else (last_done - first) // step + 1
    starts: list[datetime] = []
    while first + index * step + config.width <= now and (limit is None or len(starts) < limit):
        starts.append(first + index * step)
        index += 1
    return starts


def _windows(
    storage: Storage, config: AssayConfig, starts: list[datetime], base: Baseline | None
) -> list[AssayResult]:
    if not starts:
        return []
    if config.performance:
        return _scored(config, starts, performance.score_windows(
            storage, config, starts, micros(starts[0])))
    base = base or baseline(storage, config)
    step_us = config.step // timedelta(microseconds=1)
    params = _field_params(config, starts[0], starts[-1] + config.width)
    params |= {
        "edges": list(base.edges),
        "baseline_counts": list(base.counts),
        "epsilon": config.epsilon,
        "width_us": config.width // timedelta(microseconds=1),
        "interval_us": step_us,
        "windows": len(starts),
        "start_us": micros(starts[0]),
    }
    sql = assay_sql.windows_query(assay_sql.logged_values(config.io))
    found = {row["window_index"]: row for row in storage.query(sql, params)}
    empty = (0,) * (len(base.edges) + 1)
    results = []
    for index, start in enumerate(starts):
        row = found.get(index)
        counts = tuple(row["counts"]) if row else empty
        scores = {k: row[k] if row else None for k in ("psi", "sumdiff", "maxdiff", "cumulative")}
        score = scores["cumulative" if config.aggregation == "cumulative" else config.metric]
        results.append(
            AssayResult(
                assay_id=config.assay_id,
                workspace=config.workspace,
                pipeline=config.pipeline,
                model=config.model,
                io=config.io,
                field=config.field,
                field_index=config.index,
                window_start=start,
                window_end=start + config.width,
                binning=config.binning,
                aggregation=config.aggregation,
                metric=config.metric,
                score=score,
                status=status_of(score, config.warning_threshold, config.alert_threshold),  # drift
                warning_threshold=config.warning_threshold,
                alert_threshold=config.alert_threshold,
                maxdiff_bin=row["maxdiff_bin"] if row else None,
                edges=base.edges,
                baseline_counts=base.counts,
                baseline_densities=tuple(row["baseline_densities"]) if row else base.densities,
                window_counts=counts,
                window_densities=tuple(row["window_densities"]) if row else (0.0,) * len(counts),
                window=_stats(row) if row else WindowStats(0),
                baseline=base.stats,
                **scores,
            )
        )
    return results


def _scored(config: AssayConfig, starts: list[datetime], found: dict[int, dict[str, Any]]
            ) -> list[AssayResult]:
    """Results of a performance assay's windows from its rows (sinks.performance)."""
    results = []
    for index, start in enumerate(starts):
        row = found.get(index)
        score = row["score"] if row else None
        results.append(AssayResult(
            assay_id=config.assay_id, workspace=config.workspace, pipeline=config.pipeline,
            model=config.model, io=config.io, field=config.field, field_index=config.index,
            window_start=start, window_end=start + config.width, binning=config.binning,
            aggregation=config.aggregation, metric=config.metric, score=score,
            status=status_of(score, config.warning_threshold, config.alert_threshold,
                             config.lower_is_worse),
            warning_threshold=config.warning_threshold, alert_threshold=config.alert_threshold,
            psi=None, sumdiff=None, maxdiff=None, maxdiff_bin=None, cumulative=None, edges=(),
            baseline_counts=(), baseline_densities=(), window_counts=(), window_densities=(),
            window=_stats(row) if row else WindowStats(0), baseline=WindowStats(0),
            labelled=row["labelled"] if row else 0))
    return results


def _field_params(config: AssayConfig, lo: datetime, hi: datetime) -> dict[str, Any]:
    return {
        "workspace": config.workspace,
        "pipeline": config.pipeline,
        "model": config.model,
        "field": config.field,
        "index": config.index,
        "element": config.index + 1,  # ClickHouse arrays are 1-based
        "lo": lo,
        "hi": hi,
    }


def _stats(row: dict[str, Any]) -> WindowStats:
    return WindowStats(row["n"], row["min"], row["max"], row["mean"], row["median"], row["std"])


