"""A canary's log measures in the real ClickHouse engine (chDB): the p99 is of the time per
record of each predict call, so a canary served in far smaller micro-batches is not flattered
by its short batch times."""

from __future__ import annotations

from datetime import timedelta

from agents.scheduling.canary_gates import Side, judge
from control.registry.canary_state import Canary, CanaryGates
from sinks.canary_measures import log_measures
from sinks.storage import Storage
from sinks.tables import LOG_ROWS, KafkaPosition, log_rows
from tests.test_storage import T0, log_record

MS = timedelta(milliseconds=1)


def calls(version: int, sizes: list[int], us_per_record: int, first: int, **extra: object
          ) -> list[dict]:
    """The logs of predict calls of `sizes` records each, a call every 10 ms."""
    logs = []
    for i, size in enumerate(sizes):
        at = T0 + (first + i) * 10 * MS
        logs += [log_record(f"v{version}-{first + i}-{r}", at, pipeline_version=version,
                            elapsed_us=us_per_record * size, **extra) for r in range(size)]
    return logs


def test_the_p99_is_per_record_of_each_call_whatever_the_batch_sizes(storage: Storage) -> None:
    # v1: calls of 20 records at 1 ms a record (20 ms a call); v2, the canary at a small
    # share: calls of 1 or 2 records at 8 ms a record (8-16 ms a call, shorter than v1's).
    logs = (calls(1, [20] * 10, 1000, 0) + calls(2, [1, 2] * 10, 8000, 100)
            + calls(2, [5], 1, 300, shadow=True)  # a shadow's call: not traffic's time
            + calls(2, [5], 1, 400, replay="x"))  # a replay's: not live
    storage.insert(LOG_ROWS, log_rows(logs, [KafkaPosition("l", 0, i) for i in range(len(logs))]))
    m = log_measures(storage, "fraud", "scoring", (1, 2), T0, T0 + timedelta(seconds=10))
    assert (m[1].records, m[1].p99_us) == (200, 1000.0)
    assert (m[2].records, m[2].p99_us) == (30, 8000.0)
    assert m[2].logs == 35  # the shadow's logs count for the error rate
    canary = Canary("c", 2, (5, 100), 60, None, CanaryGates(1, 1, 1.5, 5, 20, ()), "ann", T0,
                    step=1, step_at=T0)
    sides = [Side(v, m[v].records, 0, m[v].logs, m[v].errors, m[v].p99_us / 1000) for v in (1, 2)]
    verdict = judge(canary, *sides)
    assert verdict.action == "rollback" and "p99 time per record of v2 8.00 ms" in verdict.text
