"""A replay's inference logs in the real ClickHouse engine (chDB): stored beside the live logs of
the same records, left out of every live read (log queries, drift and performance assays,
labelled_logs), and compared with them as numpy does."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import numpy as np
import pytest

from sinks.assay_sql import logged_values
from sinks.labels import labelled_logs
from sinks.log_queries import LogFilter, count
from sinks.performance import labelled_values
from sinks.replays import compare
from sinks.storage import Storage
from sinks.tables import LOG_ROWS, KafkaPosition, log_rows, migrate
from tests.test_storage import T0, log_record

N = 6
LIVE = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
REPLAYED = np.array([0.1, 0.25, 0.1, 0.4, 0.9, 0.6])


@pytest.fixture
def stored(storage: Storage) -> Storage:
    """Live logs r0..r5 of fraud/scoring and replay x's logs of the same records, other scores;
    a label for each record."""
    migrate(storage)
    for replay, scores, first in (("", LIVE, 0), ("x", REPLAYED, 100)):
        records = [log_record(f"r{i}", T0 + timedelta(seconds=i), score=float(s), replay=replay)
                   for i, s in enumerate(scores)]
        positions = [KafkaPosition("ns.logs", 0, first + i) for i in range(N)]
        storage.insert(LOG_ROWS, log_rows(records, positions))
    storage.insert("labels", [{"workspace": "fraud", "pipeline": "scoring", "record_id": f"r{i}",
                               "label": 1.0, "time": T0, "kafka_topic": "l",
                               "kafka_partition": 0, "kafka_offset": i} for i in range(N)])
    return storage


def params(**more: Any) -> dict[str, Any]:
    return {"workspace": "fraud", "pipeline": "scoring", "model": "clf", "field": "score",
            "element": 1, "index": 0, "lo": T0, "hi": T0 + timedelta(hours=1), **more}


def test_live_reads_leave_the_replays_logs_out(stored: Storage) -> None:
    live = LogFilter(workspace="fraud", pipeline="scoring")
    assert count(stored, live) == N  # the replay's log of a record did not replace the live one
    assert count(stored, live.model_copy(update={"replay": "x"})) == N
    drift = stored.query(logged_values("output"), params())
    assert sorted(r["x"] for r in drift) == pytest.approx(LIVE)
    performance = stored.query(labelled_values("output"), params())
    assert sorted(r["x"] for r in performance) == pytest.approx(LIVE)
    labelled = labelled_logs(stored, "fraud", "scoring", 100)
    assert sorted(r["outputs"]["score"][0] for r in labelled) == pytest.approx(LIVE)


def test_compare_gives_numpys_figures(stored: Storage) -> None:
    found = compare(stored, "fraud", "scoring", "x", bins=4)
    assert (found["records_compared"], found["records_replayed"]) == (N, N)
    (score,) = found["outputs"]
    assert score["output"] == "score" and not score["labels"]
    live = np.stack([LIVE, 1 - LIVE], axis=1)
    replayed = np.stack([REPLAYED, 1 - REPLAYED], axis=1)
    diff = np.abs(live - replayed)
    elements = score["elements"]
    assert [e["element"] for e in elements] == [1, 2]
    assert [e["compared"] for e in elements] == [N, N]
    assert [e["changed"] for e in elements] == (diff > 1e-12).sum(axis=0).tolist()
    assert [e["mean_abs_diff"] for e in elements] == pytest.approx(diff.mean(axis=0))
    assert [e["max_abs_diff"] for e in elements] == pytest.approx(diff.max(axis=0))
    counts, edges = np.histogram(diff, bins=4, range=(0, diff.max()))
    assert score["histogram"]["counts"] == counts.tolist()
    assert score["histogram"]["edges"] == pytest.approx(edges)
    assert compare(stored, "fraud", "scoring", "nope")["outputs"] == []
