"""What an assay is: the monitored field, the baseline, the windows, binning and scores.

A drift metric (psi, sumdiff, maxdiff) scores a window's distribution against a baseline; a
performance metric scores the window's predictions against their ground-truth labels and
takes no baseline (docs/assays.md).

`AssayConfig` validates itself, so a definition that cannot work fails when it is made,
with what is wrong and the offending value, not when its first window runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal, get_args

from schemas.errors import InferstreamError

IO = Literal["input", "output"]
Binning = Literal["quantile", "equal", "provided"]
Aggregation = Literal["density", "cumulative"]
Metric = Literal["psi", "sumdiff", "maxdiff", "accuracy", "precision", "recall", "f1",
                 "log_loss", "roc_auc", "mae", "rmse", "mape"]
Prediction = Literal["value", "threshold", "argmax"]
Average = Literal["class", "macro"]

DRIFT_METRICS = frozenset({"psi", "sumdiff", "maxdiff"})
CLASS_METRICS = frozenset({"accuracy", "precision", "recall", "f1"})  # of predicted classes
PROBABILITY_METRICS = frozenset({"log_loss", "roc_auc"})  # of positive-class probabilities
REGRESSION_METRICS = frozenset({"mae", "rmse", "mape"})
# A score that falls as the model gets worse: its thresholds are reached from above.
LOWER_IS_WORSE = frozenset({"accuracy", "precision", "recall", "f1", "roc_auc"})
LABEL_WAIT = timedelta(days=7)

_CHOICES = {
    "io": get_args(IO),
    "binning": get_args(Binning),
    "aggregation": get_args(Aggregation),
    "metric": get_args(Metric),
    "prediction": get_args(Prediction),
    "average": get_args(Average),
}
MAX_BINS = 1000


class AssayError(InferstreamError):
    """An assay definition that cannot work, or a baseline without values."""


@dataclass(frozen=True)
class AssayConfig:
    """What to monitor, against what, how often, and when to warn or alert."""

    assay_id: str
    workspace: str
    pipeline: str
    model: str  # the model of the step whose inference logs are read
    field: str  # the input or output name
    index: int = 0  # element of the field, flattened row-major, 0-based
    io: IO = "output"
    baseline_start: datetime | None = None  # baseline as the logs in [start, end) ...
    baseline_end: datetime | None = None
    baseline_values: tuple[float, ...] | None = None  # ... or as given values
    width: timedelta = timedelta(hours=24)
    interval: timedelta | None = None  # None: tumbling windows (interval = width)
    first_window_start: datetime | None = None  # None: the end of a baseline range
    binning: Binning = "quantile"
    bins: int = 5
    edges: tuple[float, ...] | None = None  # "provided": k + 1 edges, or k (min put in front)
    aggregation: Aggregation = "density"
    metric: Metric = "psi"
    warning_threshold: float | None = None
    alert_threshold: float | None = None
    epsilon: float = 0.005  # replaces a zero density in the psi term
    # Performance metrics: how a prediction becomes a class, which class is scored, and how
    # long after a window closes it is scored again as labels arrive.
    prediction: Prediction = "value"
    decision_threshold: float = 0.5
    positive_class: float = 1.0
    average: Average = "class"
    label_wait: timedelta = LABEL_WAIT

    def __post_init__(self) -> None:
        if self.interval is None:
            object.__setattr__(self, "interval", self.width)
        if self.first_window_start is None:
            object.__setattr__(self, "first_window_start", self.baseline_end)
        for name in ("baseline_values", "edges"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(float(v) for v in value))
        _validate(self)

    @property
    def step(self) -> timedelta:
        """How far each window starts after the last (the interval, never None)."""
        assert self.interval is not None
        return self.interval

    @property
    def performance(self) -> bool:
        """Whether the metric scores predictions against labels (no baseline, no bins)."""
        return self.metric not in DRIFT_METRICS

    @property
    def lower_is_worse(self) -> bool:
        """Whether a lower score is worse (accuracy...): thresholds are reached from above."""
        return self.metric in LOWER_IS_WORSE

    @property
    def start(self) -> datetime:
        """Start of the first window (never None)."""
        assert self.first_window_start is not None
        return self.first_window_start


def _validate(c: AssayConfig) -> None:
    def fail(what: str) -> None:
        raise AssayError(f"assay {c.assay_id!r}: {what}")

    for name in ("assay_id", "workspace", "pipeline", "model", "field"):
        if not getattr(c, name):
            fail(f"{name} is empty; name the {name.replace('_', ' ')} to monitor")
    for name, allowed in _CHOICES.items():
        if getattr(c, name) not in allowed:
            fail(f"{name} {getattr(c, name)!r} is not one of {', '.join(allowed)}")
    if c.index < 0:
        fail(f"index {c.index} is negative; elements count from 0")
    for name in ("baseline_start", "baseline_end", "first_window_start"):
        moment = getattr(c, name)
        if moment is not None and moment.utcoffset() is None:
            fail(f"{name} {moment} has no timezone; give it in UTC")
    ranged = c.baseline_start is not None or c.baseline_end is not None
    if c.performance:
        _validate_performance(c, fail, ranged or c.baseline_values is not None)
    elif ranged == (c.baseline_values is not None):
        fail("give the baseline either as a time range (start and end) or as values, not both")
    if ranged:
        if c.baseline_start is None or c.baseline_end is None:
            fail("a baseline time range needs both a start and an end")
        elif c.baseline_start >= c.baseline_end:
            fail(f"baseline start {c.baseline_start} is not before its end {c.baseline_end}")
    elif not c.baseline_values and not c.performance:
        fail("the baseline values are empty; give at least one value")
    if c.first_window_start is None:
        fail("first_window_start is missing; it is needed when the baseline is given as values"
             " and for a performance metric")
    if c.width <= timedelta(0) or c.step <= timedelta(0):
        fail(f"window width {c.width} and interval {c.interval} must be positive")
    if c.width % timedelta(microseconds=1) or c.step % timedelta(microseconds=1):
        fail("window width and interval must be whole microseconds")
    if not 1 <= c.bins <= MAX_BINS:
        fail(f"bins {c.bins} is outside 1..{MAX_BINS}")
    if c.performance:
        pass  # no bins: binning, bins and edges keep their defaults and mean nothing
    elif c.binning == "provided":
        if c.edges is None or len(c.edges) not in (c.bins, c.bins + 1):
            given = "no edges" if c.edges is None else f"{len(c.edges)} edges"
            fail(
                f"provided binning with {c.bins} bins needs {c.bins + 1} edges "
                f"(or {c.bins}, with the baseline minimum put in front); got {given}"
            )
        elif any(math.isnan(e) for e in c.edges) or list(c.edges) != sorted(c.edges):
            fail(f"provided edges {list(c.edges)} must be numbers in ascending order")
    elif c.edges is not None:
        fail(f"edges are given but binning is {c.binning!r}; use binning 'provided'")
    for name in ("warning_threshold", "alert_threshold"):
        value = getattr(c, name)
        if value is not None and not value >= 0:
            fail(f"{name} {value} must be a number >= 0")
    w, a = c.warning_threshold, c.alert_threshold
    if w is not None and a is not None and c.lower_is_worse and w < a:
        fail(f"warning threshold {w} is below alert threshold {a}; a lower {c.metric} is "
             "worse, so the warning comes first, above the alert")
    elif w is not None and a is not None and not c.lower_is_worse and w > a:
        fail(f"warning threshold {w} is above alert threshold {a}")
    if not 0 < c.epsilon < 1:
        fail(f"epsilon {c.epsilon} must be between 0 and 1")


def _validate_performance(c: AssayConfig, fail: Callable[[str], None], baseline: bool) -> None:
    if baseline:
        fail(f"metric {c.metric!r} scores predictions against their labels and takes no "
             "baseline; leave the baseline out, or pick a drift metric (psi, sumdiff, maxdiff)")
    if c.aggregation != "density":
        fail(f"aggregation {c.aggregation!r} is for drift metrics; leave it out for {c.metric!r}")
    if c.metric in PROBABILITY_METRICS and c.prediction == "threshold":
        fail(f"{c.metric} scores the probability itself; prediction 'threshold' is for "
             "accuracy, precision, recall and f1")
    if c.metric == "roc_auc" and c.prediction == "argmax":
        fail("roc_auc is binary here: monitor the positive-class probability (prediction "
             "'value'), not the argmax of the field")
    if c.metric in REGRESSION_METRICS and c.prediction != "value":
        fail(f"{c.metric} compares the predicted value with the label; prediction "
             f"{c.prediction!r} is for classifiers")
    if not 0 <= c.decision_threshold <= 1:
        fail(f"decision threshold {c.decision_threshold} must be a probability in [0, 1]")
    if not math.isfinite(c.positive_class):
        fail(f"positive class {c.positive_class} must be a finite number (a class index)")
    if c.label_wait < timedelta(0) or c.label_wait % timedelta(seconds=1):
        fail(f"label wait {c.label_wait} must be a whole number of seconds >= 0")


def bin_labels(edges: Sequence[float]) -> list[str]:
    """Labels of the k + 2 bins of docs/assays.md: < e0, [e0, e1], (e1, e2], ..., > ek."""
    if not edges:
        return []
    e = [f"{x:.4g}" for x in edges]
    inner = [f"({e[i - 1]}, {e[i]}]" for i in range(1, len(e))]
    if inner:
        inner[0] = "[" + inner[0][1:]
    return [f"< {e[0]}", *inner, f"> {e[-1]}"]
