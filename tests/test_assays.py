"""Assays on the real ClickHouse engine (chDB): every test vector of docs/assays.md.

Values are written as inference logs with controlled timestamps, so the vectors go through
the same SQL as live traffic: the baseline from the logs of one hour (or given as values),
the window from the logs of the next.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from agents.scheduling.assay_scheduler import AssayScheduler
from control.registry.state import Assay, Registry
from schemas import decode, encode
from schemas.codec import codec
from sinks.assays import (
    AssayConfig,
    AssayError,
    alert_record,
    baseline,
    due_windows,
    last_done,
    load_results,
    preview,
    run_window,
    save_result,
    status_of,
)
from sinks.storage import Storage
from sinks.tables import LOG_ROWS, log_rows

HOUR = timedelta(hours=1)
T0 = datetime(2024, 3, 1, tzinfo=UTC)  # baseline hour
T1 = T0 + HOUR  # first window


@dataclass(frozen=True)
class Vector:
    """One row of the ASSAYS.md table, with its window statistics."""

    id: str
    binning: str
    bins: int
    edges_given: tuple[float, ...] | None
    baseline: tuple[float, ...]
    window: tuple[float, ...]
    edges: tuple[float, ...]
    psi: float
    sumdiff: float
    maxdiff: float
    maxdiff_bin: int
    cumulative: float
    stats: tuple[int, float, float, float, float, float]  # count min max mean median std


V2_EDGES = (1, 2.8, 4.6, 6.4, 8.2, 10)
# fmt: off
VECTORS = [
    Vector("V1", "equal", 5, None, tuple(range(1, 21)),
           (1, 2, 3, 4, 5, 6, 6, 7, 8, 8, 9, 10, 11, 12, 13, 15, 16, 17, 19, 20),
           (1, 4.8, 8.6, 12.4, 16.2, 20), 0.069315, 0.100000, 0.100000, 2, 0.250000,
           (20, 1, 20, 9.6, 8.5, 5.508176)),
    Vector("V2", "equal", 5, None, tuple(range(1, 11)), (1, 2, 3, 4, 5, 9, 9, 10, 10, 10),
           V2_EDGES, 1.063533, 0.300000, 0.300000, 5, 0.400000,
           (10, 1, 10, 6.3, 7.0, 3.465545)),
    Vector("V3", "equal", 5, None, tuple(range(1, 11)), (-5, 0, 3, 4, 5, 6, 7, 8, 11, 20),
           V2_EDGES, 2.877326, 0.400000, 0.200000, 0, 0.400000,
           (10, -5, 20, 5.9, 5.5, 6.300000)),
    Vector("V4", "provided", 3, (0, 10, 20, 30), (0, 5, 5, 10, 12, 15, 18, 25, 29, 30),
           (-1, 3, 8, 10, 11, 22, 31, 35, 40, 50), (0, 10, 20, 30), 2.483708, 0.500000,
           0.400000, 4, 0.700000, (10, -1, 50, 20.9, 16.5, 16.422241)),
]
# fmt: on
SIX = 5e-7  # "to 6 decimals": the table's numbers are rounded to 6 places


def log_values(
    storage: Storage,
    start: datetime,
    values: Sequence[float],
    every: timedelta = timedelta(seconds=1),
    model: str = "clf",
    short: bool = False,
) -> None:
    """One inference log per value, at start, start + every, ...; the value is element 1.

    `short` logs a one-element tensor instead, so element 1 (the monitored one) is missing.
    """
    records = [
        {
            "time": start + i * every,
            "record_id": f"{model}-{'short-' if short else ''}{start.isoformat()}-{i}",
            "workspace": "fraud",
            "pipeline": "scoring",
            "pipeline_version": 1,
            "step": 0,
            "model": model,
            "model_version": 1,
            "shadow": False,
            "inputs": [{"name": "x", "dtype": "float64", "shape": [1], "values": [0.0]}],
            "outputs": [
                {
                    "name": "score",
                    "dtype": "float64",
                    "shape": [1] if short else [1, 2],
                    "values": [value] if short else [-1.0, value],
                }
            ],
            "elapsed_us": 10,
            "worker": "w1",
            "error": None,
        }
        for i, value in enumerate(values)
    ]
    storage.insert(LOG_ROWS, log_rows(records))


def config(vector: Vector | None = None, **overrides: Any) -> AssayConfig:
    """An assay of output `score`, element 1, over the logs of T0's hour, hourly windows."""
    fields: dict[str, Any] = {
        "assay_id": "drift",
        "workspace": "fraud",
        "pipeline": "scoring",
        "model": "clf",
        "field": "score",
        "index": 1,
        "baseline_start": T0,
        "baseline_end": T1,
        "width": HOUR,
    }
    if vector is not None:
        fields |= {"binning": vector.binning, "bins": vector.bins, "edges": vector.edges_given}
    return AssayConfig(**(fields | overrides))


def check_vector(result: Any, vector: Vector) -> None:
    assert result.edges == pytest.approx(vector.edges, abs=SIX)
    assert result.psi == pytest.approx(vector.psi, abs=SIX)
    assert result.sumdiff == pytest.approx(vector.sumdiff, abs=SIX)
    assert result.maxdiff == pytest.approx(vector.maxdiff, abs=SIX)
    assert result.maxdiff_bin == vector.maxdiff_bin
    assert result.cumulative == pytest.approx(vector.cumulative, abs=SIX)
    count, low, high, mean, median, std = vector.stats
    w = result.window
    assert w.count == count
    assert (w.min, w.max, w.mean, w.median, w.std) == pytest.approx(
        (low, high, mean, median, std), abs=SIX
    )
    assert sum(result.window_counts) == count
    assert len(result.window_counts) == len(result.baseline_counts) == vector.bins + 2
    assert sum(result.window_densities) == pytest.approx(1.0)
    assert sum(result.baseline_densities) == pytest.approx(1.0)


@pytest.mark.parametrize("vector", VECTORS, ids=[v.id for v in VECTORS])
def test_vector_through_preview_of_logged_baseline(storage: Storage, vector: Vector) -> None:
    log_values(storage, T0, vector.baseline)
    log_values(storage, T1, vector.window)
    log_values(storage, T1, [1e9] * 5, model="other")  # another model's logs stay out
    (result,) = preview(storage, config(vector), T1, T1 + HOUR)
    check_vector(result, vector)
    assert (result.window_start, result.window_end) == (T1, T1 + HOUR)
    base = np.array(vector.baseline, dtype=float)
    assert result.baseline.count == len(base)
    assert (result.baseline.mean, result.baseline.median, result.baseline.std) == pytest.approx(
        (base.mean(), np.median(base), base.std()), abs=1e-9
    )

    # The score is the chosen metric's, or the cumulative one with cumulative aggregation.
    for overrides, expected in [
        ({"metric": "psi"}, vector.psi),
        ({"metric": "sumdiff"}, vector.sumdiff),
        ({"metric": "maxdiff"}, vector.maxdiff),
        ({"aggregation": "cumulative"}, vector.cumulative),
    ]:
        (scored,) = preview(storage, config(vector, **overrides), T1, T1 + HOUR)
        assert scored.score == pytest.approx(expected, abs=SIX), overrides


@pytest.mark.parametrize("vector", VECTORS, ids=[v.id for v in VECTORS])
def test_vector_with_baseline_given_as_values(storage: Storage, vector: Vector) -> None:
    log_values(storage, T1, vector.window)
    given = config(
        vector,
        baseline_start=None,
        baseline_end=None,
        baseline_values=vector.baseline,
        first_window_start=T1,
    )
    check_vector(run_window(storage, given, T1), vector)


@pytest.mark.parametrize("vector", VECTORS, ids=[v.id for v in VECTORS])
def test_vector_through_the_scheduled_path(storage: Storage, vector: Vector) -> None:
    log_values(storage, T0, vector.baseline)
    log_values(storage, T1, vector.window)  # window 0: the vector's window
    log_values(storage, T1 + HOUR, vector.baseline)  # window 1: like the baseline
    assay = config(vector, warning_threshold=0.05, alert_threshold=1.0)
    now = T1 + 2 * HOUR + timedelta(minutes=30)  # the third window is still open
    due = due_windows(assay, last_done(storage, "fraud", "drift"), now)
    assert due == [T1, T1 + HOUR]
    base = baseline(storage, assay)
    for start in due:
        save_result(storage, run_window(storage, assay, start, base))
    assert due_windows(assay, last_done(storage, "fraud", "drift"), now) == []

    saved = load_results(storage, "fraud", "drift")
    expected = "alert" if vector.psi >= 1.0 else "warning"
    assert [(r.window_start, r.status) for r in saved] == [(T1, expected), (T1 + HOUR, "ok")]
    check_vector(saved[0], vector)
    assert saved[0].baseline == base.stats
    assert saved[1].psi == pytest.approx(0.0, abs=1e-12)
    # Running a window again replaces its saved result instead of adding one.
    save_result(storage, run_window(storage, assay, T1, base))
    assert len(load_results(storage, "fraud", "drift")) == 2


def test_status_thresholds() -> None:
    assert status_of(0.3, None, None) == "ok"
    assert status_of(0.3, 0.1, None) == "warning"
    assert status_of(0.3, 0.1, 0.3) == "alert"  # >= the threshold
    assert status_of(0.3, 0.3, 0.5) == "warning"
    assert status_of(0.29, 0.3, 0.5) == "ok"
    assert status_of(0.3, None, 0.2) == "alert"
    assert status_of(None, 0.1, 0.2) == "no_data"


def test_status_of_a_window_follows_its_score(storage: Storage) -> None:
    v2 = VECTORS[1]  # psi 1.063533
    log_values(storage, T0, v2.baseline)
    log_values(storage, T1, v2.window)
    for thresholds, status in [
        ({}, "ok"),
        ({"warning_threshold": 0.5}, "warning"),
        ({"warning_threshold": 0.5, "alert_threshold": 1.0}, "alert"),
        ({"warning_threshold": 1.1, "alert_threshold": 2.0}, "ok"),
    ]:
        (result,) = preview(storage, config(v2, **thresholds), T1, T1 + HOUR)
        assert result.status == status, thresholds
        alert = alert_record(result, actor="ann")
        assert (alert is None) == (status == "ok")

    (alerted,) = preview(
        storage, config(v2, warning_threshold=0.5, alert_threshold=1.0), T1, T1 + HOUR
    )
    sent = decode("AssayAlert", encode("AssayAlert", alert_record(alerted, actor="ann") or {}))
    assert (sent["status"], sent["threshold"], sent["actor"]) == ("alert", 1.0, "ann")
    assert sent["score"] == pytest.approx(v2.psi, abs=SIX)
    assert (sent["window_start"], sent["window_end"]) == (T1, T1 + HOUR)


def test_sliding_windows_share_values(storage: Storage) -> None:
    log_values(storage, T0, range(1, 11))
    # Hour h of the window period holds h + 1 values equal to h + 1, the first exactly at
    # the start of the hour.
    for hour in range(4):
        log_values(storage, T1 + hour * HOUR, [hour + 1.0] * (hour + 1), timedelta(minutes=7))
    sliding = config(binning="equal", width=2 * HOUR, interval=HOUR)
    results = preview(storage, sliding, T1, T1 + 4 * HOUR)
    assert [r.window_start for r in results] == [T1, T1 + HOUR, T1 + 2 * HOUR]
    # [0h, 2h) = 1 + 2, [1h, 3h) = 2 + 3, [2h, 4h) = 3 + 4: each value in two windows
    assert [r.window.count for r in results] == [3, 5, 7]
    # A value exactly on T1 + 2h belongs to the windows from 1h and 2h, not to [0h, 2h).
    assert [(r.window.min, r.window.max) for r in results] == [(1, 2), (2, 3), (3, 4)]

    hopping = config(binning="equal", width=HOUR, interval=2 * HOUR)  # gaps between windows
    assert [r.window.count for r in preview(storage, hopping, T1, T1 + 4 * HOUR)] == [1, 3]


def test_bins_nan_edges_and_missing_elements(storage: Storage) -> None:
    log_values(storage, T0, range(1, 21))
    quantile = config(binning="quantile", bins=5)
    base = baseline(storage, quantile)
    expected = np.quantile(np.arange(1, 21, dtype=float), np.linspace(0, 1, 6))
    assert base.edges == pytest.approx(tuple(expected), abs=1e-12)
    assert base.counts[-1] == 0 and base.counts[5] == 4  # the baseline max lands in bin k
    # A value exactly on an edge (bit for bit) falls in the lower bin; NaN in bin 0.
    log_values(storage, T1, [base.edges[1], math.nan, base.edges[0], 0.5, 21.0])
    log_values(storage, T1, [3.0], short=True)  # element 1 missing: no value, not a 0
    result = run_window(storage, quantile, T1, base)
    assert result.window_counts == (2, 2, 0, 0, 0, 0, 1)
    assert result.window.count == 5  # NaN counted, the short record not
    assert result.window.min == 0.5 and result.window.max == 21.0  # statistics skip NaN

    # Ties make equal edges; they are kept and the bins between stay empty.
    log_values(storage, T0 + timedelta(minutes=30), [7.0] * 40, model="tied")
    tied = baseline(storage, config(binning="quantile", bins=4, model="tied"))
    assert tied.edges == (7.0,) * 5 and tied.counts == (0, 40, 0, 0, 0, 0)


def test_empty_window_and_empty_baseline(storage: Storage) -> None:
    log_values(storage, T0, range(1, 11))
    (result,) = preview(storage, config(binning="equal"), T1, T1 + HOUR)
    assert (result.status, result.score, result.window.count) == ("no_data", None, 0)
    with pytest.raises(AssayError, match="the baseline has no values"):
        baseline(storage, config(model="nobody"))


def test_provided_k_edges_put_the_baseline_minimum_in_front(storage: Storage) -> None:
    log_values(storage, T0, [0, 5, 5, 10, 12, 15, 18, 25, 29, 30])
    base = baseline(storage, config(binning="provided", bins=3, edges=(10, 20, 30)))
    assert base.edges == (0, 10, 20, 30) and base.counts == (0, 4, 3, 3, 0)
    with pytest.raises(AssayError, match="not ascending"):
        baseline(storage, config(binning="provided", bins=3, edges=(-5, 20, 30)))


def test_due_windows_backfill() -> None:
    tumbling = config(first_window_start=T1)
    assert due_windows(tumbling, None, T1 + HOUR - timedelta(microseconds=1)) == []
    assert due_windows(tumbling, None, T1 + HOUR) == [T1]  # closed at its end
    now = T1 + 3 * HOUR + timedelta(minutes=30)
    assert due_windows(tumbling, None, now) == [T1, T1 + HOUR, T1 + 2 * HOUR]
    assert due_windows(tumbling, T1 + HOUR, now) == [T1 + 2 * HOUR]
    assert due_windows(tumbling, T1 + 2 * HOUR, now) == []
    assert due_windows(tumbling, None, now, limit=2) == [T1, T1 + HOUR]
    sliding = config(first_window_start=T1, width=2 * HOUR, interval=HOUR)
    assert due_windows(sliding, None, T1 + 3 * HOUR) == [T1, T1 + HOUR]
    assert config().first_window_start == T1  # defaults to the end of the baseline


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"metric": "kl"}, "metric 'kl' is not one of psi, sumdiff, maxdiff"),
        ({"binning": "provided", "bins": 3, "edges": (0, 1)}, "needs 4 edges"),
        ({"binning": "provided", "bins": 2, "edges": (3, 1, 2)}, "ascending"),
        ({"edges": (1, 2)}, "use binning 'provided'"),
        ({"baseline_values": (1.0,)}, "not both"),
        ({"baseline_end": T0}, "is not before its end"),
        ({"baseline_start": datetime(2024, 3, 1)}, "has no timezone"),
        ({"width": timedelta(0)}, "must be positive"),
        ({"bins": 0}, "bins 0 is outside"),
        ({"warning_threshold": 2.0, "alert_threshold": 1.0}, "above alert threshold"),
        ({"index": -1}, "negative"),
        ({"io": "both"}, "io 'both'"),
        (
            {"baseline_start": None, "baseline_end": None, "baseline_values": (1.0,)},
            "first_window_start is missing",
        ),
    ],
)
def test_config_errors_say_what_is_wrong(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(AssayError, match=message):
        config(**overrides)


@pytest.mark.parametrize("vector", VECTORS, ids=[v.id for v in VECTORS])
def test_vector_through_the_scheduler_agent(storage: Storage, vector: Vector) -> None:
    """The worker's scheduler: due windows from the registry, results saved, breaches sent."""
    log_values(storage, T0, vector.baseline)
    log_values(storage, T1, vector.window)
    assay = Assay("fraud", "drift", config(vector, warning_threshold=0.05, alert_threshold=1.0),
                  True, "ann", T0)
    paused = Assay("fraud", "paused", config(vector, assay_id="paused"), False, "ann", T0)
    registry = Registry(assays={("fraud", "drift"): assay, ("fraud", "paused"): paused})
    sent: list[tuple[bytes, bytes]] = []
    scheduler = AssayScheduler(lambda key, value: sent.append((key, value)))

    done = scheduler.tick(storage, registry, T1 + HOUR + timedelta(minutes=1))
    assert [r.window_start for r in done] == [T1]
    check_vector(load_results(storage, "fraud", "drift")[0], vector)
    assert load_results(storage, "fraud", "paused") == []
    alert = codec("AssayAlert").decode(sent[0][1])
    assert (sent[0][0], alert["status"], alert["actor"]) == (
        b"fraud/drift", "alert" if vector.psi >= 1.0 else "warning", "ann")
    assert alert["score"] == pytest.approx(vector.psi, abs=SIX)
    assert scheduler.tick(storage, registry, T1 + HOUR + timedelta(minutes=2)) == []  # once
