"""A picture of an assay's results: score over time with its thresholds, and one window's bins
(for a performance assay, which has no bins: the labelled records of each window).

Drawn with matplotlib's Agg backend (no display needed), through a Figure of its own
rather than pyplot, so nothing global is touched.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
from matplotlib.figure import Figure

from control.registry.assay_config import DRIFT_METRICS, bin_labels
from schemas.errors import InferstreamError
from sinks.assays import AssayResult

STATUS_COLOURS = {"ok": "tab:green", "warning": "tab:orange", "alert": "tab:red",
                  "no_data": "tab:gray"}


def chosen_window(results: Sequence[AssayResult], start: datetime | None) -> AssayResult:
    """The window starting at `start` (else the last one starting before it); default latest."""
    if not results:
        raise InferstreamError("no assay results to plot: no window has been scored yet")
    if start is None:
        return results[-1]
    earlier = [r for r in results if r.window_start <= start]
    if not earlier:
        raise InferstreamError(
            f"no window starts at or before {start.isoformat()}; the first starts "
            f"{results[0].window_start.isoformat()}"
        )
    return earlier[-1]


def plot_results(results: Sequence[AssayResult], path: Path, title: str,
                 window: datetime | None = None) -> Path:
    """Draw the results to a PNG at `path`; returns the path written."""
    chosen = chosen_window(results, window)
    figure = Figure(figsize=(10, 8), layout="constrained")
    FigureCanvasAgg(figure)
    score_axes, bins_axes = figure.subplots(2, 1)

    scored = [r for r in results if r.score is not None]
    metric = "cumulative" if chosen.aggregation == "cumulative" else chosen.metric
    score_axes.plot([r.window_start for r in scored], [r.score for r in scored],
                    color="tab:blue", linewidth=1, zorder=1)
    score_axes.scatter([r.window_start for r in scored], [r.score for r in scored],
                       c=[STATUS_COLOURS[r.status] for r in scored], zorder=2)
    for value, name, colour in [(chosen.warning_threshold, "warning", "tab:orange"),
                                (chosen.alert_threshold, "alert", "tab:red")]:
        if value is not None:
            score_axes.axhline(value, color=colour, linestyle="--", label=f"{name} {value:g}")
    score_axes.axvline(chosen.window_start, color="gray", linestyle=":",
                       label=f"window {chosen.window_start:%Y-%m-%d %H:%M}")
    worse = " (lower is worse)" if chosen.lower_is_worse else ""
    score_axes.set_title(f"{title}: {metric} per window{worse}")
    score_axes.set_ylabel(metric)
    score_axes.set_xlabel("window start (UTC)")
    score_axes.legend(loc="best")
    locator = AutoDateLocator()
    score_axes.xaxis.set_major_locator(locator)
    score_axes.xaxis.set_major_formatter(ConciseDateFormatter(locator))

    if chosen.metric not in DRIFT_METRICS:
        _labelled(bins_axes, results, chosen)
    else:
        _bins(bins_axes, chosen, metric)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=100)
    return path


def _labelled(axes: Axes, results: Sequence[AssayResult], chosen: AssayResult) -> None:
    """How many labelled records each window's score is over, the chosen one marked."""
    axes.bar([r.window_start for r in results], [r.labelled or 0 for r in results],
             width=(chosen.window_end - chosen.window_start) * 0.8, align="edge",
             color=[STATUS_COLOURS[r.status] for r in results])
    axes.axvline(chosen.window_start, color="gray", linestyle=":")
    score = "no data" if chosen.score is None else f"{chosen.metric} {chosen.score:.6f}"
    axes.set_title(f"labelled records per window; window {chosen.window_start:%Y-%m-%d %H:%M}: "
                   f"{chosen.labelled or 0} of {chosen.window.count}, {score}, {chosen.status}")
    axes.set_ylabel("labelled records")
    locator = AutoDateLocator()
    axes.xaxis.set_major_locator(locator)
    axes.xaxis.set_major_formatter(ConciseDateFormatter(locator))


def _bins(bins_axes: Axes, chosen: AssayResult, metric: str) -> None:
    labels = bin_labels(chosen.edges)
    places = range(len(labels))
    bins_axes.bar([i - 0.2 for i in places], chosen.baseline_densities, width=0.4,
                  label="baseline", color="tab:gray")
    bins_axes.bar([i + 0.2 for i in places], chosen.window_densities, width=0.4,
                  label="window", color=STATUS_COLOURS[chosen.status])
    bins_axes.set_xticks(list(places), labels, rotation=20, ha="right")
    score = "no data" if chosen.score is None else f"{metric} {chosen.score:.6f}"
    bins_axes.set_title(
        f"window {chosen.window_start:%Y-%m-%d %H:%M} to {chosen.window_end:%Y-%m-%d %H:%M} "
        f"({chosen.window.count} values): {score}, {chosen.status}")
    bins_axes.set_ylabel("density")
    bins_axes.legend()
