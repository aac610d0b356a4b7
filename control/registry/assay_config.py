"""What an assay is: the monitored field, the baseline, the windows, binning and scores.

`AssayConfig` validates itself, so a definition that cannot work fails when it is made,
with what is wrong and the offending value, not when its first window runs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal, get_args

from schemas.errors import InferstreamError

IO = Literal["input", "output"]
Binning = Literal["quantile", "equal", "provided"]
Aggregation = Literal["density", "cumulative"]
Metric = Literal["psi", "sumdiff", "maxdiff"]

_CHOICES = {
    "io": get_args(IO),
    "binning": get_args(Binning),
    "aggregation": get_args(Aggregation),
    "metric": get_args(Metric),
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
    if ranged == (c.baseline_values is not None):
        fail("give the baseline either as a time range (start and end) or as values, not both")
    if ranged:
        if c.baseline_start is None or c.baseline_end is None:
            fail("a baseline time range needs both a start and an end")
        elif c.baseline_start >= c.baseline_end:
            fail(f"baseline start {c.baseline_start} is not before its end {c.baseline_end}")
    elif not c.baseline_values:
        fail("the baseline values are empty; give at least one value")
    if c.first_window_start is None:
        fail("first_window_start is missing; it is needed when the baseline is given as values")
    if c.width <= timedelta(0) or c.step <= timedelta(0):
        fail(f"window width {c.width} and interval {c.interval} must be positive")
    if c.width % timedelta(microseconds=1) or c.step % timedelta(microseconds=1):
        fail("window width and interval must be whole microseconds")
    if not 1 <= c.bins <= MAX_BINS:
        fail(f"bins {c.bins} is outside 1..{MAX_BINS}")
    if c.binning == "provided":
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
    if w is not None and a is not None and w > a:
        fail(f"warning threshold {w} is above alert threshold {a}")
    if not 0 < c.epsilon < 1:
        fail(f"epsilon {c.epsilon} must be between 0 and 1")


def bin_labels(edges: Sequence[float]) -> list[str]:
    """Labels of the k + 2 bins of docs/assays.md: < e0, [e0, e1], (e1, e2], ..., > ek."""
    if not edges:
        return []
    e = [f"{x:.4g}" for x in edges]
    inner = [f"({e[i - 1]}, {e[i]}]" for i in range(1, len(e))]
    if inner:
        inner[0] = "[" + inner[0][1:]
    return [f"< {e[0]}", *inner, f"> {e[-1]}"]
