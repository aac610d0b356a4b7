"""What a canary's gates read from the inference logs: each version's records, errors and p99
time per record over a step (docs/canary.md says what each measure means)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sinks.storage import Storage


@dataclass(frozen=True)
class LogMeasures:
    """One pipeline version's inference logs over a period."""

    records: int  # distinct records it served (a result)
    logs: int  # its inference logs, shadows' included
    errors: int  # of those, the ones with an error
    p99_us: float  # p99 over its non-shadow logs of the time per record of their predict call


NONE = LogMeasures(0, 0, 0, 0.0)
_LIVE_LOGS = (
    "FROM inference_logs WHERE workspace = {ws:String} AND pipeline = {pipeline:String} "
    "AND replay = '' AND pipeline_version IN {versions:Array(UInt32)} "
    "AND time >= {lo:DateTime64(6, 'UTC')} AND time < {hi:DateTime64(6, 'UTC')} ")
# A predict call's logs share the batch's time, the worker, the step, the model and the call's
# elapsed_us: grouped by those they are one call, whose size divides its time. The canary's
# share is served as its own, smaller, micro-batch: its batch time alone would flatter it.
_PER_RECORD = (
    "SELECT v, quantileExactWeighted(0.99)(intDiv(elapsed_us * 1000, n), n) AS p99_ns FROM ("
    "SELECT pipeline_version AS v, elapsed_us, count() AS n " + _LIVE_LOGS + "AND NOT shadow "
    "GROUP BY pipeline_version, worker, time, step, model, model_version, elapsed_us"
    ") GROUP BY v")


def log_measures(storage: Storage, workspace: str, pipeline: str, versions: Sequence[int],
                 since: datetime, until: datetime) -> dict[int, LogMeasures]:
    """Each of `versions`' measures over live logs (a replay's are not traffic it served)
    timed in [since, until); a version without logs gets NONE."""
    params = {"ws": workspace, "pipeline": pipeline, "versions": list(versions), "lo": since,
              "hi": until}
    rows = storage.query(
        "SELECT pipeline_version AS v, uniqExactIf(record_id, NOT shadow) AS records, "
        "count() AS logs, countIf(error IS NOT NULL) AS errors " + _LIVE_LOGS
        + "GROUP BY pipeline_version", params)
    p99 = {int(r["v"]): float(r["p99_ns"] or 0) / 1000
           for r in storage.query(_PER_RECORD, params)}
    found = {int(r["v"]): LogMeasures(int(r["records"]), int(r["logs"]), int(r["errors"]),
                                      p99.get(int(r["v"]), 0.0)) for r in rows}
    return {v: found.get(v, NONE) for v in versions}
