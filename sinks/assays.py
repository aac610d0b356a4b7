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

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from control.registry.assay_config import LOWER_IS_WORSE, AssayConfig, AssayError
from sinks import assay_sql, performance
from sinks.storage import Storage

__all__ = [
    "AssayConfig",
    "AssayError",
    "AssayResult",
    "Baseline",
    "WindowStats",
    "alert_record",
    "baseline",
    "due_windows",
    "last_done",
    "load_results",
    "preview",
    "run_window",
    "save_result",
    "status_of",
    "to_alert",
]

Status = Literal["ok", "warning", "alert", "no_data"]


@dataclass(frozen=True)
class WindowStats:
    """count (NaN included) and min, max, mean, median, population std (NaN skipped)."""

    count: int
    min: float | None = None
    max: float | None = None
    mean: float | None = None
    median: float | None = None
    std: float | None = None


@dataclass(frozen=True)
class Baseline:
    """The baseline's edges (k + 1), bin counts and densities (k + 2), and statistics."""

    edges: tuple[float, ...]
    counts: tuple[int, ...]
    densities: tuple[float, ...]
    stats: WindowStats


@dataclass(frozen=True)
class AssayResult:
    """One window of one assay: what docs/assays.md says each result records."""

    assay_id: str
    workspace: str
    pipeline: str
    model: str
    io: str
    field: str
    field_index: int
    window_start: datetime
    window_end: datetime
    binning: str
    aggregation: str
    metric: str
    score: float | None  # the metric's score, or cumulative with cumulative aggregation
    status: Status
    warning_threshold: float | None
    alert_threshold: float | None
    psi: float | None
    sumdiff: float | None
    maxdiff: float | None
    maxdiff_bin: int | None
    cumulative: float | None
    edges: tuple[float, ...]
    baseline_counts: tuple[int, ...]
    baseline_densities: tuple[float, ...]
    window_counts: tuple[int, ...]
    window_densities: tuple[float, ...]
    window: WindowStats
    baseline: WindowStats
    computed_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    labelled: int | None = None  # performance metrics: the labelled rows scored; None: drift
    alerted: tuple[str, ...] = ()  # statuses published for this window (alerts once each)

    @property
    def lower_is_worse(self) -> bool:
        """Whether a lower score is worse (accuracy...): thresholds are reached from above."""
        return self.metric in LOWER_IS_WORSE


def status_of(score: float | None, warning: float | None, alert: float | None,
              lower_is_worse: bool = False) -> Status:
    """alert if score >= alert threshold, else warning if >= warning threshold, else ok;
    with `lower_is_worse` (accuracy...) the same with <=."""
    if score is None:
        return "no_data"
    if lower_is_worse:
        score, warning, alert = -score, _negated(warning), _negated(alert)
    if alert is not None and score >= alert:
        return "alert"
    if warning is not None and score >= warning:
        return "warning"
    return "ok"


def _negated(value: float | None) -> float | None:
    return None if value is None else -value


SEVERITY = {"no_data": 0, "ok": 0, "warning": 1, "alert": 2}


def to_alert(result: AssayResult, previous: AssayResult | None) -> AssayResult | None:
    """`result` with its status added to `alerted` when it must be published, else None.

    A window publishes each status once, and only one worse than any it published before:
    a re-scored window that stays at alert, or falls back to warning, says nothing new."""
    if result.status not in ("warning", "alert"):
        return None
    before = previous.alerted if previous is not None else ()
    if result.status in before or any(SEVERITY[s] >= SEVERITY[result.status] for s in before):
        return None
    return replace(result, alerted=(*before, result.status))


def alert_record(result: AssayResult, actor: str | None = None,
                 previous_status: str | None = None) -> dict[str, Any] | None:
    """The AssayAlert record of a window that reached a threshold, else None."""
    if result.status not in ("warning", "alert") or result.score is None:
        return None
    threshold = result.alert_threshold if result.status == "alert" else result.warning_threshold
    assert threshold is not None
    return {
        "time": result.computed_at,
        "status": result.status,
        "assay_id": result.assay_id,
        "actor": actor,
        "workspace": result.workspace,
        "pipeline": result.pipeline,
        "model": result.model,
        "io": result.io,
        "field": result.field,
        "index": result.field_index,
        "window_start": result.window_start,
        "window_end": result.window_end,
        "metric": result.metric,
        "aggregation": result.aggregation,
        "score": result.score,
        "threshold": threshold,
        "warning_threshold": result.warning_threshold,
        "alert_threshold": result.alert_threshold,
        "lower_is_worse": result.lower_is_worse,
        "labelled": result.labelled,
        "previous_status": previous_status,
        "alert_id": f"{result.assay_id}/{_micros(result.window_start)}/{result.status}",
    }


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


def save_result(storage: Storage, result: AssayResult) -> None:
    """Store one result; saving the same window again replaces it (newest computed_at)."""
    token = f"assay-{result.assay_id}-{result.window_start.isoformat()}-"
    token += result.computed_at.isoformat()
    storage.insert("assay_results", [result_row(result)], dedup_token=token)


def load_results(
    storage: Storage,
    workspace: str,
    assay_id: str,
    start: datetime | None = None,
    end: datetime | None = None,
) -> list[AssayResult]:
    """Saved results of one assay, oldest window first, optionally with start in [start, end)."""
    where = "workspace = {workspace:String} AND assay_id = {assay_id:String}"
    params: dict[str, Any] = {"workspace": workspace, "assay_id": assay_id}
    if start is not None:
        where += " AND window_start >= {lo:DateTime64(6, 'UTC')}"
        params["lo"] = start
    if end is not None:
        where += " AND window_start < {hi:DateTime64(6, 'UTC')}"
        params["hi"] = end
    sql = f"SELECT * FROM assay_results FINAL WHERE {where} ORDER BY window_start"
    return [result_from_row(row) for row in storage.query(sql, params)]


def last_done(storage: Storage, workspace: str, assay_id: str) -> datetime | None:
    """Start of the newest saved window of an assay, or None."""
    rows = storage.query(
        "SELECT max(window_start) AS last, count() AS n FROM assay_results "
        "WHERE workspace = {workspace:String} AND assay_id = {assay_id:String}",
        {"workspace": workspace, "assay_id": assay_id},
    )
    return rows[0]["last"] if rows[0]["n"] else None


def _windows(
    storage: Storage, config: AssayConfig, starts: list[datetime], base: Baseline | None
) -> list[AssayResult]:
    if not starts:
        return []
    if config.performance:
        return _scored(config, starts, performance.score_windows(
            storage, config, starts, _micros(starts[0])))
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
        "start_us": _micros(starts[0]),
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


def _micros(moment: datetime) -> int:
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


_STATS = ("count", "min", "max", "mean", "median", "std")
_TUPLES = ("edges", "baseline_counts", "baseline_densities", "window_counts", "window_densities",
           "alerted")


def result_row(result: AssayResult) -> dict[str, Any]:
    row = {
        name: getattr(result, name)
        for name in AssayResult.__dataclass_fields__
        if name not in ("window", "baseline")
    }
    for prefix in ("window", "baseline"):
        stats = getattr(result, prefix)
        row |= {f"{prefix}_{name}": getattr(stats, name) for name in _STATS}
    for name in _TUPLES:
        row[name] = list(row[name])
    return row


def result_from_row(row: dict[str, Any]) -> AssayResult:
    stats = {
        prefix: WindowStats(*(row.pop(f"{prefix}_{name}") for name in _STATS))
        for prefix in ("window", "baseline")
    }
    known = AssayResult.__dataclass_fields__  # a column added by a later migration is skipped
    values = {k: tuple(v) if k in _TUPLES else v for k, v in row.items() if k in known}
    return AssayResult(**values, **stats)
