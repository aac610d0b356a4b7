"""Ground truth and performance assays on the real ClickHouse engine (chDB).

Every metric is compared with scikit-learn's on the same rows, to 1e-9: inference logs and
labels are written to the tables the worker writes, and the score comes from the same SQL
as live traffic. Labels go through the label sink's write path (without Kafka), so
out-of-order, re-sent and replayed labels are the sink's own.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from sklearn import metrics

from agents.scheduling.assay_scheduler import AssayScheduler
from control.config import Settings
from control.console.assays import chart_data
from control.registry.assay_config import AssayConfig, AssayError
from control.registry.state import Assay, Registry
from schemas.codec import codec
from schemas.errors import BrokerError
from sinks.assays import load_results, preview, status_of
from sinks.label_sink import LabelMessage, LabelSink
from sinks.labels import BadLabel, decode_label, labels_topic_pattern, pipeline_of_topic
from sinks.storage import Storage
from sinks.tables import LOG_ROWS, KafkaPosition, log_rows, migrate

HOUR = timedelta(hours=1)
T1 = datetime(2024, 3, 1, 1, tzinfo=UTC)  # the window [T1, T1 + 1 h)
N = 240
TOL = 1e-9
SETTINGS = Settings(namespace="perf", bootstrap_servers="127.0.0.1:1")  # never connected to


class Owner:
    """The log sink's part the label sink uses: the storage it owns."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def open(self) -> Storage:
        return self.storage


def log_records(storage: Storage, pipeline: str, start: datetime, ids: Sequence[str],
                outputs: dict[str, np.ndarray], every: timedelta = timedelta(seconds=10)) -> None:
    """One inference log of model clf per id, at start, start + every, ...; `outputs` holds
    each output's row per record."""
    storage.insert(LOG_ROWS, log_rows([{
        "time": start + i * every, "record_id": rid, "workspace": "fraud",
        "pipeline": pipeline, "pipeline_version": 1, "step": 0, "model": "clf",
        "model_version": 1, "shadow": False,
        "inputs": [{"name": "x", "dtype": "float64", "shape": [1], "values": [0.0]}],
        "outputs": [{"name": name, "dtype": "float64", "shape": [1, len(np.atleast_1d(v[i]))],
                     "values": [float(e) for e in np.atleast_1d(v[i])]}
                    for name, v in outputs.items()],
        "elapsed_us": 10, "worker": "w1", "error": None} for i, rid in enumerate(ids)]))


def send_labels(sink: LabelSink, pipeline: str, labels: Sequence[tuple[str, Any]],
                first_offset: int = 0, time_ms: int | None = None) -> int:
    """Labels as JSON messages of the pipeline's labels topic, through the sink's write."""
    topic = f"perf.fraud.{pipeline}.labels"
    messages = [LabelMessage(
        (f'{{"id": "{rid}", "label": {value}'
         + (f', "time": {time_ms + i}' if time_ms is not None else "") + "}").encode(),
        rid.encode(), 1_700_000_000_000, KafkaPosition(topic, 0, first_offset + i))
        for i, (rid, value) in enumerate(labels)]
    return sink.write(messages)


@pytest.fixture(scope="module")
def data(chdb: Storage) -> Iterator[dict[str, Any]]:
    """One window of N logs of pipeline `scoring`: a class, a binary probability with ties,
    three-class probabilities and a regression value; N - 40 of them labelled."""
    migrate(chdb)
    rng = np.random.default_rng(7)
    ids = [f"r{i}" for i in range(N)]
    cls = rng.integers(0, 3, N).astype(float)
    proba = np.round(rng.random(N), 1)  # ties on purpose
    three = rng.dirichlet([1, 1, 1], N)
    value = rng.normal(10, 3, N)
    y3 = np.where(rng.random(N) < 0.6, cls, rng.integers(0, 3, N)).astype(float)
    y2 = (rng.random(N) < proba * 0.8 + 0.1).astype(float)
    y3p = np.array([rng.choice(3, p=p) for p in three], dtype=float)
    yr = value + rng.normal(0, 2, N)
    yr[:5] = 0.0  # mape divides by max(|y|, eps)
    outputs = {"cls": cls, "score": np.stack([1 - proba, proba], axis=1), "proba": three,
                "value": value}
    sink = LabelSink(SETTINGS, Owner(chdb))  # type: ignore[arg-type]
    labelled = slice(0, N - 40)  # the last 40 have no label (yet)
    # Each output is a pipeline of its own, with its kind of label for the same record ids.
    for name, y in [("cls", y3), ("score", y2), ("proba", y3p), ("value", yr)]:
        log_records(chdb, f"p-{name}", T1, ids, {name: outputs[name]})
        send_labels(sink, f"p-{name}", list(zip(ids[labelled], y[labelled].tolist(),
                                                strict=True)))
    yield {"cls": cls, "proba": proba, "three": three, "value": value, "y3": y3[labelled],
           "y2": y2[labelled], "y3p": y3p[labelled], "yr": yr[labelled], "n": N - 40,
           "labelled": labelled}


def performance(field: str, metric: str, **overrides: Any) -> AssayConfig:
    return AssayConfig(**{
        "assay_id": f"{field}-{metric}", "workspace": "fraud", "pipeline": f"p-{field}",
        "model": "clf", "field": field, "metric": metric, "first_window_start": T1,
        "width": HOUR, **overrides})


def score(storage: Storage, config: AssayConfig, labelled: int) -> float:
    [result] = preview(storage, config, T1, T1 + HOUR)
    assert result.labelled == labelled and result.window.count == N
    assert result.score is not None
    return result.score


def reference(data: dict[str, Any], case: str) -> tuple[AssayConfig, float]:
    """An assay and scikit-learn's value of its metric on the same rows."""
    lab = data["labelled"]
    cls, y3 = data["cls"][lab], data["y3"]
    p2, y2 = data["proba"][lab], data["y2"]
    hard = (p2 >= 0.5).astype(float)
    three, y3p = data["three"][lab], data["y3p"]
    argmax = three.argmax(axis=1).astype(float)
    value, yr = data["value"][lab], data["yr"]
    name, _, arg = case.partition(":")
    if name == "accuracy-value":
        return performance("cls", "accuracy"), metrics.accuracy_score(y3, cls)
    if name == "accuracy-threshold":
        return (performance("score", "accuracy", index=1, prediction="threshold"),
                metrics.accuracy_score(y2, hard))
    if name == "accuracy-argmax":
        return (performance("proba", "accuracy", prediction="argmax"),
                metrics.accuracy_score(y3p, argmax))
    if name in ("precision", "recall", "f1"):
        fn = {"precision": metrics.precision_score, "recall": metrics.recall_score,
              "f1": metrics.f1_score}[name]
        if arg == "macro":
            return (performance("cls", name, average="macro"),
                    fn(y3, cls, average="macro", zero_division=0))
        if arg == "binary":
            return (performance("score", name, index=1, prediction="threshold"),
                    fn(y2, hard, average="binary", zero_division=0))
        c = int(arg)  # average=None: the per-class array, one class each
        return (performance("cls", name, positive_class=float(c)),
                fn(y3, cls, average=None, labels=[0, 1, 2], zero_division=0)[c])
    if name == "log_loss-binary":
        return performance("score", "log_loss", index=1), metrics.log_loss(y2, p2)
    if name == "log_loss-argmax":
        return (performance("proba", "log_loss", prediction="argmax"),
                metrics.log_loss(y3p, three, labels=[0, 1, 2]))
    if name == "roc_auc":
        return performance("score", "roc_auc", index=1), metrics.roc_auc_score(y2, p2)
    if name == "mae":
        return performance("value", "mae"), metrics.mean_absolute_error(yr, value)
    if name == "rmse":
        return performance("value", "rmse"), metrics.root_mean_squared_error(yr, value)
    if name == "mape":
        return (performance("value", "mape"),
                metrics.mean_absolute_percentage_error(yr, value))
    raise AssertionError(case)


CASES = ["accuracy-value", "accuracy-threshold", "accuracy-argmax",
         *(f"{m}:{a}" for m in ("precision", "recall", "f1")
           for a in ("0", "1", "2", "binary", "macro")),
         "log_loss-binary", "log_loss-argmax", "roc_auc", "mae", "rmse", "mape"]


@pytest.mark.parametrize("case", CASES)
def test_metric_equals_scikit_learn(chdb: Storage, data: dict[str, Any], case: str) -> None:
    config, expected = reference(data, case)
    got = score(chdb, config, data["n"])
    assert got == pytest.approx(float(expected), rel=TOL, abs=TOL), case
    assert expected > 0  # a score of 0 would not tell a wrong formula from a right one


def test_the_reference_data_has_ties_and_unlabelled_rows(data: dict[str, Any]) -> None:
    lab = data["labelled"]
    assert len(np.unique(data["proba"][lab])) < data["n"] / 10  # many tied probabilities
    assert data["n"] < N and 0.0 in data["yr"][:5]


def test_labels_replayed_resent_and_out_of_order_are_stored_once(chdb: Storage) -> None:
    migrate(chdb)
    sink = LabelSink(SETTINGS, Owner(chdb))  # type: ignore[arg-type]
    log_records(chdb, "order", T1, ["a", "b"], {"cls": np.array([1.0, 0.0])})
    day = 86_400_000
    late, early = 1_709_300_000_000 + day, 1_709_300_000_000
    assert send_labels(sink, "order", [("a", 1)], 0, late) == 1
    assert send_labels(sink, "order", [("a", 0)], 1, early) == 1  # older: loses
    assert send_labels(sink, "order", [("a", 1)], 0, late) == 1  # replayed offsets
    assert send_labels(sink, "order", [("b", 1), ("b", 0)], 2, early) == 2  # then a fix
    rows = chdb.query("SELECT record_id, label, count() OVER (PARTITION BY record_id) AS n "
                      "FROM labels FINAL WHERE pipeline = 'order' ORDER BY record_id")
    assert [(r["record_id"], r["label"], r["n"]) for r in rows] == [("a", 1.0, 1),
                                                                   ("b", 0.0, 1)]
    joined = chdb.query("SELECT record_id, outputs['cls'][1] AS p, label, label_time "
                        "FROM labelled_logs WHERE pipeline = 'order' ORDER BY record_id")
    assert [(r["record_id"], r["p"], r["label"]) for r in joined] == [("a", 1.0, 1.0),
                                                                     ("b", 0.0, 0.0)]
    assert joined[0]["label_time"] == datetime(2024, 3, 2, 13, 33, 20, tzinfo=UTC)


def test_a_late_label_rescores_the_window_and_alerts_once(chdb: Storage) -> None:
    migrate(chdb)
    sink = LabelSink(SETTINGS, Owner(chdb))  # type: ignore[arg-type]
    ids = [f"late{i}" for i in range(10)]
    log_records(chdb, "late", T1, ids, {"cls": np.ones(10)})
    send_labels(sink, "late", [(rid, 1) for rid in ids[:4]])  # 4 of 4 right so far
    config = AssayConfig(assay_id="acc", workspace="fraud", pipeline="late", model="clf",
                         field="cls", metric="accuracy", first_window_start=T1, width=HOUR,
                         warning_threshold=0.8, alert_threshold=0.6, label_wait=HOUR * 24)
    registry = Registry(assays={("fraud", "acc"): Assay("fraud", "acc", config, True, "ann",
                                                        T1)})
    sent: list[dict[str, Any]] = []
    scheduler = AssayScheduler(lambda k, v: sent.append(codec("AssayAlert").decode(v)))
    now = T1 + HOUR + timedelta(minutes=1)

    [first] = scheduler.tick(chdb, registry, now)
    assert (first.score, first.labelled, first.status, sent) == (1.0, 4, "ok", [])
    assert scheduler.tick(chdb, registry, now + timedelta(minutes=1)) == []  # nothing new

    send_labels(sink, "late", [(rid, 0) for rid in ids[4:7]], 100)  # 4 of 7: alert
    # The broker does not take the alert: the window stays as stored, to alert next tick.
    publish = scheduler.publish
    scheduler.publish = _refused
    assert scheduler.tick(chdb, registry, now + timedelta(minutes=2)) == []
    [kept] = load_results(chdb, "fraud", "acc")
    assert (kept.labelled, kept.status, kept.alerted, sent) == (4, "ok", (), [])
    scheduler.publish, scheduler._rescored = publish, {}
    [again] = scheduler.tick(chdb, registry, now + timedelta(minutes=2))
    assert (again.score, again.labelled, again.status) == (pytest.approx(4 / 7), 7, "alert")
    [stored] = load_results(chdb, "fraud", "acc")
    assert (stored.score, stored.labelled, stored.alerted) == (again.score, 7, ("alert",))
    assert [(a["status"], a["labelled"], a["previous_status"], a["lower_is_worse"],
             a["threshold"]) for a in sent] == [("alert", 7, "ok", True, 0.6)]
    assert sent[0]["alert_id"] == f"acc/{int(T1.timestamp()) * 1_000_000}/alert"

    send_labels(sink, "late", [(ids[7], 1), (ids[8], 0)], 200)  # 5 of 9: still alert
    [third] = scheduler.tick(chdb, registry, now + timedelta(minutes=3))
    assert (third.labelled, third.status, len(sent)) == (9, "alert", 1)  # once per status
    beyond = T1 + HOUR * 26  # past the label wait: labels no longer re-score the window
    send_labels(sink, "late", [(ids[9], 1)], 300)
    later = scheduler.tick(chdb, registry, beyond)
    assert T1 not in [r.window_start for r in later] and len(later) == 25  # the new windows
    assert load_results(chdb, "fraud", "acc")[0].labelled == 9


def _refused(key: bytes, value: bytes) -> None:
    raise BrokerError("alert not published (not delivered to alerts within 30 s)")


def test_thresholds_of_a_lower_is_worse_metric() -> None:
    assert status_of(0.95, 0.9, 0.8, lower_is_worse=True) == "ok"
    assert status_of(0.9, 0.9, 0.8, lower_is_worse=True) == "warning"
    assert status_of(0.8, 0.9, 0.8, lower_is_worse=True) == "alert"
    assert status_of(0.7, 0.8, 0.9) == "ok" and status_of(0.95, 0.8, 0.9) == "alert"
    assert status_of(None, 0.9, 0.8, lower_is_worse=True) == "no_data"
    assert performance("value", "mae", warning_threshold=1, alert_threshold=2)
    with pytest.raises(AssayError, match=r"warning threshold 0\.8 is below alert threshold 0\.9"):
        performance("cls", "accuracy", warning_threshold=0.8, alert_threshold=0.9)
    with pytest.raises(AssayError, match="takes no baseline"):
        performance("cls", "f1", baseline_values=(1.0,))
    with pytest.raises(AssayError, match="roc_auc is binary"):
        performance("proba", "roc_auc", prediction="argmax")


def test_a_window_without_labels_has_no_score(chdb: Storage, data: dict[str, Any]) -> None:
    [result] = preview(chdb, performance("cls", "accuracy"), T1 + HOUR, T1 + HOUR * 2)
    assert (result.score, result.labelled, result.status) == (None, 0, "no_data")


@pytest.mark.parametrize(("raw", "key", "reason"), [
    (b'{"id": "r1", "label": "cat"}', None, "label 'cat' is text"),
    (b'{"label": 1}', None, "no record id"),
    (b'{"id": "r1"}', None, 'no "label"'),
    (b'{"id": "r1", "label": 1, "time": "yesterday"}', None, "neither ISO-8601"),
    (b'{"id": "r1", "label": NaN}', None, "not a finite number"),
    (b"[1, 2]", None, "expected a JSON object"),
    (b"\xc3\x01garbage!!", None, "not an inferstream.data.Label"),
    (b"", b"r1", "empty message value"),
])
def test_a_bad_label_says_why(raw: bytes, key: bytes | None, reason: str) -> None:
    with pytest.raises(BadLabel, match=reason.replace("(", r"\(")):
        decode_label(raw, key, 0)


def test_label_formats_and_topics() -> None:
    avro = codec("Label").encode({"id": "r9", "label": 2.0,
                                  "time": datetime(2024, 3, 1, tzinfo=UTC)})
    assert decode_label(avro, None, 0).label == 2.0
    assert decode_label(avro, None, 0).time == datetime(2024, 3, 1, tzinfo=UTC)
    keyed = decode_label(b'{"label": true}', b"r7", 1_709_251_200_000)
    assert (keyed.record_id, keyed.label, keyed.time) == ("r7", 1.0, datetime(
        2024, 3, 1, tzinfo=UTC))
    iso = decode_label(b'{"id": 5, "label": 0.5, "time": "2024-03-01T02:00:00+02:00"}', None, 0)
    assert (iso.record_id, iso.time) == ("5", datetime(2024, 3, 1, tzinfo=UTC))
    assert pipeline_of_topic("t.x", "t.x.fraud.scoring.labels") == ("fraud", "scoring")
    pattern = re.compile(labels_topic_pattern("t.x"))
    assert pattern.match("t.x.fraud.scoring.labels")
    assert not pattern.match("t.x.fraud.scoring.input") and not pattern.match("tax.a.b.labels")
    assert math.isclose(decode_label(b'{"id": "a", "label": 3}', None, 0).label, 3.0)
    assert decode_label(b'{"id": "a", "label": 3}', None, 0).label == 3.0


def test_the_console_chart_of_a_performance_assay(chdb: Storage, data: dict[str, Any]) -> None:
    config = performance("cls", "accuracy", warning_threshold=0.5, alert_threshold=0.3)
    found = preview(chdb, config, T1, T1 + HOUR * 2)
    chart = chart_data(Assay("fraud", "acc", config, True, "ann", T1), found)
    assert chart["lower_is_worse"] is True and chart["metric"] == "accuracy"
    assert [(w["labelled"], w["count"], w["status"]) for w in chart["windows"]] == [
        (data["n"], N, "ok"), (0, 0, "no_data")]
    assert chart["windows"][0]["labels"] == []  # no bins to draw
