"""What a canary's gates read from the inference logs: each version's records, errors and p99
batch time over a step (docs/canary.md says what each measure means)."""

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
    p99_us: float  # p99 of its non-shadow logs' elapsed_us: the model call of a micro-batch


NONE = LogMeasures(0, 0, 0, 0.0)


def log_measures(storage: Storage, workspace: str, pipeline: str, versions: Sequence[int],
                 since: datetime, until: datetime) -> dict[int, LogMeasures]:
    """Each of `versions`' measures over live logs (a replay's are not traffic it served)
    timed in [since, until); a version without logs gets NONE."""
    rows = storage.query(
        "SELECT pipeline_version AS v, uniqExactIf(record_id, NOT shadow) AS records, "
        "count() AS logs, countIf(error IS NOT NULL) AS errors, "
        "quantileExactIf(0.99)(elapsed_us, NOT shadow) AS p99 FROM inference_logs "
        "WHERE workspace = {ws:String} AND pipeline = {pipeline:String} AND replay = '' "
        "AND pipeline_version IN {versions:Array(UInt32)} "
        "AND time >= {lo:DateTime64(6, 'UTC')} AND time < {hi:DateTime64(6, 'UTC')} "
        "GROUP BY pipeline_version",
        {"ws": workspace, "pipeline": pipeline, "versions": list(versions), "lo": since,
         "hi": until})
    found = {int(r["v"]): LogMeasures(int(r["records"]), int(r["logs"]), int(r["errors"]),
                                      float(r["p99"] or 0.0)) for r in rows}
    return {v: found.get(v, NONE) for v in versions}
