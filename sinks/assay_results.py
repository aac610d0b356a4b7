"""Assay results: what each window records, its status and alert, and how it is stored.

One row per (assay, window start) in `assay_results` (a ReplacingMergeTree on computed_at):
storing a window again, as re-scoring does when late labels arrive, replaces its row.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from control.registry.assay_config import LOWER_IS_WORSE
from sinks.storage import Storage

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
        "alert_id": f"{result.assay_id}/{micros(result.window_start)}/{result.status}",
    }


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


def micros(moment: datetime) -> int:
    """Microseconds since the epoch."""
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
