"""Task runs in ClickHouse: one row per run (its newest state wins) and its log lines."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from sinks.storage import Storage

PENDING, RUNNING, SUCCEEDED, PARTIAL, FAILED, KILLED = (
    "pending", "running", "succeeded", "partially succeeded", "failed", "killed")
FINISHED = (SUCCEEDED, PARTIAL, FAILED, KILLED)

TASK_RUNS = """
CREATE TABLE IF NOT EXISTS task_runs (
    run_id String,
    workspace LowCardinality(String),
    task LowCardinality(String),
    orchestration LowCardinality(String),
    orchestration_version UInt32,
    trigger LowCardinality(String),
    scheduled_for Nullable(DateTime64(6, 'UTC')),
    status LowCardinality(String),
    started_at Nullable(DateTime64(6, 'UTC')),
    ended_at Nullable(DateTime64(6, 'UTC')),
    records_in UInt64,
    records_out UInt64,
    records_bad UInt64,
    pipeline_versions Map(String, UInt32),
    arguments Map(String, String),
    worker LowCardinality(String),
    error Nullable(String),
    updated_at DateTime64(6, 'UTC')
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY (workspace, task, run_id)
"""

TASK_RUN_LOGS = """
CREATE TABLE IF NOT EXISTS task_run_logs (
    run_id String,
    time DateTime64(6, 'UTC'),
    level LowCardinality(String),
    message String
)
ENGINE = MergeTree
ORDER BY (run_id, time)
"""


@dataclass(frozen=True)
class Run:
    """The state of one run of a task; saving it again replaces the older state."""

    run_id: str
    workspace: str
    task: str
    orchestration: str
    orchestration_version: int
    trigger: str  # once | cron
    scheduled_for: datetime | None
    status: str = PENDING
    started_at: datetime | None = None
    ended_at: datetime | None = None
    records_in: int = 0
    records_out: int = 0
    records_bad: int = 0
    pipeline_versions: dict[str, int] = field(default_factory=dict)
    arguments: dict[str, str] = field(default_factory=dict)
    worker: str = ""
    error: str | None = None
    updated_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


def save_run(storage: Storage, run: Run) -> Run:
    """Store a run's current state (stamped now) and return it."""
    run = replace(run, updated_at=datetime.now(UTC))
    storage.insert("task_runs", [asdict(run)])
    return run


def log_line(storage: Storage, run_id: str, message: str, level: str = "info") -> None:
    storage.insert("task_run_logs", [{"run_id": run_id, "time": datetime.now(UTC),
                                      "level": level, "message": message}])


def runs(reader: Storage, workspace: str, task: str | None = None, limit: int = 100
         ) -> list[Run]:
    """Newest runs first, of one task or of every task in a workspace."""
    where, params = "workspace = {ws:String}", {"ws": workspace, "n": limit}
    if task is not None:
        where += " AND task = {task:String}"
        params["task"] = task
    rows = reader.query(f"SELECT * FROM task_runs FINAL WHERE {where} "
                        "ORDER BY coalesce(started_at, updated_at) DESC LIMIT {n:UInt32}", params)
    return [run_from_row(row) for row in rows]


def run_by_id(reader: Storage, run_id: str) -> Run | None:
    rows = reader.query("SELECT * FROM task_runs FINAL WHERE run_id = {id:String}",
                        {"id": run_id})
    return run_from_row(rows[0]) if rows else None


def run_logs(reader: Storage, run_id: str) -> list[dict[str, Any]]:
    return reader.query("SELECT time, level, message FROM task_run_logs "
                        "WHERE run_id = {id:String} ORDER BY time", {"id": run_id})


def unfinished(reader: Storage) -> list[Run]:
    rows = reader.query("SELECT * FROM task_runs FINAL WHERE status IN ('pending', 'running')")
    return [run_from_row(row) for row in rows]


def run_from_row(row: dict[str, Any]) -> Run:
    fields = Run.__dataclass_fields__
    values: dict[str, Any] = {k: v for k, v in row.items() if k in fields}
    values["pipeline_versions"] = dict(values.get("pipeline_versions") or {})
    values["arguments"] = dict(values.get("arguments") or {})
    return Run(**values)

