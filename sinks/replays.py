"""Compare a replay with the live traffic it re-scored: `pipelines compare NAME --replay ID`.

Both sides are inference logs: the live ones (replay = '') and the replay's, joined by record
id in ClickHouse. A side's result of a record is the outputs of its last step that served it
(shadows and failed inferences aside; the newest if it was served twice). For each output
element: how many records both sides hold it for, how many differ (for integer outputs,
changed labels), the mean and largest absolute difference; for each output a histogram of
the absolute differences of all its elements (equal-width bins from 0 to the largest).
"""

from __future__ import annotations

from typing import Any

from sinks.storage import Storage

_SIDE = """
    SELECT record_id, argMax(outputs, (step, time)) AS o,
           argMax(output_dtypes, (step, time)) AS d
    FROM inference_logs
    WHERE workspace = {{workspace:String}} AND pipeline = {{pipeline:String}}
      AND replay = {replay} AND NOT shadow AND error IS NULL{only}
    GROUP BY record_id"""
_REPLAYED = ("\n      AND record_id IN (SELECT record_id FROM inference_logs WHERE workspace = "
             "{workspace:String} AND pipeline = {pipeline:String} AND replay = {replay:String})")
# A row per record both sides served: live outputs a, replay outputs b, the replay's dtypes.
PAIRS = f"""
SELECT record_id, live.o AS a, rep.o AS b, rep.d AS dtypes
FROM ({_SIDE.format(replay="''", only=_REPLAYED)}) AS live
INNER JOIN ({_SIDE.format(replay="{replay:String}", only="")}) AS rep USING (record_id)"""
# A row per record, output and element both sides hold: x live, y replay.
ELEMENTS = f"""
SELECT record_id, name, element, x, y, dtype FROM (
    SELECT record_id, name, a[name] AS xs, b[name] AS ys, dtypes[name] AS dtype
    FROM ({PAIRS}) ARRAY JOIN mapKeys(b) AS name
    WHERE mapContains(a, name) AND length(xs) = length(ys))
ARRAY JOIN xs AS x, ys AS y, arrayEnumerate(xs) AS element"""
STATS = f"""
SELECT name AS output, element, any(dtype) AS dtype, count() AS compared,
       countIf(x != y) AS changed, avg(abs(x - y)) AS mean_abs_diff,
       max(abs(x - y)) AS max_abs_diff
FROM ({ELEMENTS}) GROUP BY name, element ORDER BY name, element"""
HISTOGRAM = f"""
SELECT name AS output, bin, count() AS count FROM (
    SELECT name, abs(x - y) AS diff,
           transform(name, {{names:Array(String)}}, {{tops:Array(Float64)}}, 0.) AS top,
           if(top = 0, 0, least(toUInt32(floor(diff / top * {{bins:UInt32}})),
                                {{bins:UInt32}} - 1)) AS bin
    FROM ({ELEMENTS}))
GROUP BY name, bin ORDER BY name, bin"""
COUNTS = f"""
SELECT (SELECT count() FROM ({PAIRS})) AS compared,
       (SELECT uniqExact(record_id) FROM inference_logs WHERE workspace = {{workspace:String}}
          AND pipeline = {{pipeline:String}} AND replay = {{replay:String}}) AS replayed"""
INTEGER = ("int", "uint", "bool")


def compare(storage: Storage, workspace: str, pipeline: str, replay: str, bins: int = 10,
            timeout_s: float | None = None) -> dict[str, Any]:
    """The figures of one replay against the live results of the same records (see above)."""
    params: dict[str, Any] = {"workspace": workspace, "pipeline": pipeline, "replay": replay}
    counts = storage.query(COUNTS, params, timeout_s)[0]
    elements = storage.query(STATS, params, timeout_s)
    outputs: dict[str, dict[str, Any]] = {}
    for row in elements:
        out = outputs.setdefault(row["output"], {
            "output": row["output"], "dtype": row["dtype"],
            "labels": row["dtype"].startswith(INTEGER), "elements": [], "histogram": None})
        out["elements"].append({k: row[k] for k in (
            "element", "compared", "changed", "mean_abs_diff", "max_abs_diff")})
    tops = {name: max(e["max_abs_diff"] for e in out["elements"])
            for name, out in outputs.items()}
    if outputs:
        rows = storage.query(HISTOGRAM, {**params, "bins": bins, "names": list(tops),
                                         "tops": list(tops.values())}, timeout_s)
        for name, top in tops.items():
            counted = [0] * bins
            for row in rows:
                if row["output"] == name:
                    counted[row["bin"]] = row["count"]
            outputs[name]["histogram"] = {
                "edges": [top * i / bins for i in range(bins + 1)], "counts": counted}
    return {"workspace": workspace, "pipeline": pipeline, "replay": replay,
            "records_compared": counts["compared"], "records_replayed": counts["replayed"],
            "outputs": list(outputs.values())}
