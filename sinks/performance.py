"""Performance assays: a window's predictions scored against their ground-truth labels.

Each window of the monitored model's inference logs is joined by record id with the
pipeline's labels (the `labels` table, latest label of a record) and scored in ClickHouse
SQL, as scikit-learn's metrics define the scores (tests/test_performance.py checks them to
1e-9):
- accuracy, precision, recall, f1 over predicted classes (`prediction`: the element itself,
  1 when it is >= `decision_threshold` else 0, or the argmax of the field); precision,
  recall and f1 of `positive_class` (sklearn's average="binary" with pos_label, or its
  average=None entry of that class) or their macro mean over the classes seen in the
  window's labels and predictions (a class without predictions scores 0, as sklearn's
  zero_division does);
- log_loss of the positive-class probability (the element; probabilities are clipped to
  [eps, 1 - eps] as sklearn does), or with prediction "argmax" the multiclass one, the
  field holding every class's probability; roc_auc (ties count a half, as sklearn's);
- mae, rmse, mape of the predicted value (mape divides by max(|label|, eps), as sklearn).
A row whose prediction is NaN is not scored; `labelled` counts the rows scored. A window
without labelled rows has no score (status `no_data`).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from control.registry.assay_config import AssayConfig
from sinks import assay_sql
from sinks.storage import Storage

EPS = "2.220446049250313e-16"  # numpy's finfo(float64).eps, as sklearn clips and divides

# The classes of a window (labels and predictions), and per class its true positives, and
# how often it is predicted and labelled: precision, recall and f1 per class follow.
_TP = "arrayCount((a, b) -> a = c AND b = c, ps, ys)"
_PRED = "arrayCount(a -> a = c, ps)"
_TRUE = "arrayCount(b -> b = c, ys)"
_PER_CLASS = {
    "precision": f"if({_PRED} = 0, 0., {_TP} / {_PRED})",
    "recall": f"if({_TRUE} = 0, 0., {_TP} / {_TRUE})",
    "f1": f"if({_PRED} + {_TRUE} = 0, 0., 2 * {_TP} / ({_PRED} + {_TRUE}))",
}
_CLIP = f"greatest(least({{p}}, 1 - {EPS}), {EPS})"


def predicted_class(prediction: str) -> str:
    """The predicted class of a row from its element `x` or its whole field `row`."""
    if prediction == "threshold":
        return "if(x >= {decision_threshold:Float64}, 1., 0.)"
    if prediction == "argmax":  # the lowest index on ties, as numpy's argmax
        return "toFloat64(arrayFirstIndex(v -> v = arrayMax(row), row) - 1)"
    return "x"


def score_expression(config: AssayConfig) -> str:
    """The metric over the window's scored rows (`ok`), as one aggregate expression."""
    metric, positive = config.metric, "{positive_class:Float64}"
    if metric == "accuracy":
        return "avgIf(p = y, ok)"
    if metric in _PER_CLASS:
        if config.average == "macro":
            return (f"arrayAvg(arrayMap(c -> {_PER_CLASS[metric]}, "
                    "arraySort(arrayDistinct(arrayConcat(ps, ys)))))")
        return f"arrayMap(c -> {_PER_CLASS[metric]}, [{positive}])[1]"
    if metric == "log_loss":
        if config.prediction == "argmax":  # every class's probability: the true one's
            true_p = "if(y >= 0 AND y < length(row) AND y = floor(y), row[toUInt32(y) + 1], 0.)"
            return f"-avgIf(ln({_CLIP.format(p=true_p)}), ok)"
        return (f"-avgIf(if(y = {positive}, ln({_CLIP.format(p='x')}), "
                f"ln({_CLIP.format(p='1 - x')})), ok)")
    if metric == "roc_auc":  # undefined unless both kinds of label are in the window
        return (f"if(countIf(ok AND y = {positive}) = 0 OR countIf(ok AND y != {positive}) = 0,"
                f" NULL, arrayAUC(groupArrayIf(x, ok), groupArrayIf(toUInt8(y = {positive}),"
                " ok)))")
    if metric == "mae":
        return "avgIf(abs(x - y), ok)"
    if metric == "rmse":
        return "sqrt(avgIf((x - y) * (x - y), ok))"
    if metric == "mape":
        return f"avgIf(abs(x - y) / greatest(abs(y), {EPS}), ok)"
    raise ValueError(f"{metric!r} is not a performance metric")


def labelled_values(io: str) -> str:
    """Time, field, element and label (if any) of the monitored model's live logs (no
    replay's) over [lo, hi)."""
    column = {"input": "inputs", "output": "outputs"}[io]
    return f"""
        SELECT logs.time AS time, logs.{column}[{{field:String}}] AS row,
               row[{{element:UInt32}}] AS x, truth.label AS y, truth.known AS known
        FROM inference_logs AS logs
        LEFT JOIN (
            SELECT record_id, label, toUInt8(1) AS known FROM labels FINAL
            WHERE workspace = {{workspace:String}} AND pipeline = {{pipeline:String}}
        ) AS truth ON logs.record_id = truth.record_id
        WHERE logs.workspace = {{workspace:String}}
          AND logs.pipeline = {{pipeline:String}}
          AND logs.model = {{model:String}}
          AND logs.replay = ''
          AND logs.time >= {{lo:DateTime64(6, 'UTC')}}
          AND logs.time < {{hi:DateTime64(6, 'UTC')}}
          AND length(logs.{column}[{{field:String}}]) > {{index:UInt32}}"""


def windows_query(config: AssayConfig) -> str:
    """Per window: count and statistics of all its rows, its labelled rows and the score.

    Windows are assigned as for drift assays (sinks.assay_sql.windows_query)."""
    per_class = config.metric in _PER_CLASS
    arrays = ("groupArrayIf(p, ok) AS ps, groupArrayIf(y, ok) AS ys," if per_class else "")
    return f"""
        SELECT window_index, labelled, if(labelled = 0, NULL, raw_score) AS score,
               n, numbers, min, max, mean, median, std
        FROM
        (
            SELECT window_index, {arrays}
                countIf(ok) AS labelled, {score_expression(config)} AS raw_score,
                {assay_sql.STATS}
            FROM
            (
                SELECT x, row, y, {predicted_class(config.prediction)} AS p,
                    (known = 1 AND NOT isNaN(x)) AS ok,
                    arrayJoin(range(
                        if(d >= span, intDiv(d - span, hop) + 1, 0),
                        least(intDiv(d, hop), {{windows:Int64}} - 1) + 1)) AS window_index
                FROM
                (
                    SELECT x, row, y, known,
                        toUnixTimestamp64Micro(time) - {{start_us:Int64}} AS d,
                        {{width_us:Int64}} AS span, {{interval_us:Int64}} AS hop
                    FROM ({labelled_values(config.io)})
                )
            )
            GROUP BY window_index
        )
        ORDER BY window_index"""


def score_windows(storage: Storage, config: AssayConfig, starts: list[datetime],
                  micros: int) -> dict[int, dict[str, Any]]:
    """Rows of `windows_query` by window index, for windows from starts[0] every interval."""
    params = {
        "workspace": config.workspace, "pipeline": config.pipeline, "model": config.model,
        "field": config.field, "index": config.index, "element": config.index + 1,
        "lo": starts[0], "hi": starts[-1] + config.width,
        "width_us": config.width // timedelta(microseconds=1),
        "interval_us": config.step // timedelta(microseconds=1),
        "windows": len(starts), "start_us": micros,
        "decision_threshold": config.decision_threshold,
        "positive_class": config.positive_class,
    }
    return {row["window_index"]: row for row in storage.query(windows_query(config), params)}
