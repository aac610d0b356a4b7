"""The typed reads of the storage: everything the CLI and the client read from ClickHouse.

A read has a name, arguments that validate themselves (no SQL text, ever), the workspace it
reads (for the caller's permission), and a function over a Storage that returns JSON-able
rows. A process with the storage at hand runs them itself (`run_read`); the worker that owns
the chDB folder serves them to other processes at `POST /reads/{name}` (agents/web.py), after
checking that the caller may read that workspace. Either way the same function runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from control.registry.assay_config import AssayConfig
from sinks import log_queries
from sinks.assays import last_done, load_results, preview, result_row
from sinks.labels import labelled_logs
from sinks.log_queries import MAX_ROWS, LogFilter, LogPosition
from sinks.replays import compare
from sinks.runs import run_by_id, run_logs, runs

if TYPE_CHECKING:
    from control.registry.state import Registry
    from sinks.storage import Storage

Name = Field(min_length=1, max_length=256)


class Args(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)


class Logs(Args):
    where: LogFilter
    limit: int | None = Field(100, ge=1, le=MAX_ROWS)


class CountLogs(Args):
    where: LogFilter


class CountLogsUpTo(Args):
    where: LogFilter
    cap: int = Field(ge=1, le=MAX_ROWS)


class NthNewestLog(Args):
    where: LogFilter
    n: int = Field(ge=1, le=2**62)


class LogPage(Args):
    where: LogFilter
    size: int = Field(ge=1, le=MAX_ROWS)
    after: LogPosition | None = None
    since: LogPosition | None = None


class AssayResults(Args):
    workspace: str = Name
    assay_id: str = Name
    start: AwareDatetime | None = None
    end: AwareDatetime | None = None


class LastAssayWindow(Args):
    workspace: str = Name
    assay_id: str = Name


class PreviewAssay(Args):
    config: AssayConfig
    start: AwareDatetime
    end: AwareDatetime


class LabelledLogs(Args):
    workspace: str = Name
    pipeline: str = Name
    limit: int = Field(100, ge=1, le=MAX_ROWS)


class CompareReplay(Args):
    workspace: str = Name
    pipeline: str = Name
    replay: str = Name
    bins: int = Field(10, ge=1, le=1000)


class Runs(Args):
    workspace: str = Name
    task: str | None = Field(None, min_length=1, max_length=256)
    limit: int = Field(100, ge=1, le=100_000)


class RunById(Args):
    run_id: str = Name


class TableRows(Args):
    """The first rows of a ClickHouse connection's table on the platform's storage."""

    workspace: str = Name
    connection: str = Name
    table: str = Field(max_length=256,
                       pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")
    limit: int = Field(20, ge=1, le=100_000)


@dataclass(frozen=True)
class Read:
    """One read: its arguments, what it returns, and which workspace it reads (None: the
    thing asked for does not exist, so there is nothing to refuse); `refuse` says why the
    registry does not allow these arguments, if it does not."""

    args: type[Args]
    run: Callable[[Storage, Any, float | None], Any]
    workspace: Callable[[Storage, Any], str | None]
    refuse: Callable[[Registry, Any], str | None] = lambda registry, args: None


def _run_workspace(storage: Storage, a: RunById) -> str | None:
    found = run_by_id(storage, a.run_id)
    return found.workspace if found else None


def _run(storage: Storage, a: RunById, timeout_s: float | None) -> dict[str, Any] | None:
    found = run_by_id(storage, a.run_id)
    return asdict(found) if found else None


def _table_rows(storage: Storage, a: TableRows, timeout_s: float | None
                ) -> list[dict[str, Any]]:
    database, _, table = a.table.rpartition(".")
    source = "{database:Identifier}.{table:Identifier}" if database else "{table:Identifier}"
    return storage.query(f"SELECT * FROM {source} LIMIT {{limit:UInt64}}",
                         {"database": database, "table": table, "limit": a.limit}, timeout_s)


def _not_a_table_of(registry: Registry, a: TableRows) -> str | None:
    """Only a table that one of the workspace's ClickHouse connections names on this storage."""
    found = registry.connections.get((a.workspace, a.connection))
    if found is None or found.type != "clickhouse" or found.details.get("url") \
            or found.details.get("table") != a.table:
        return (f"workspace {a.workspace!r} has no ClickHouse connection {a.connection!r} to "
                f"table {a.table!r} on the platform's storage")
    return None


READS: dict[str, Read] = {
    "logs": Read(Logs, lambda s, a, t: log_queries.newest(s, a.where, a.limit, t),
                 lambda s, a: a.where.workspace),
    "count_logs": Read(CountLogs, lambda s, a, t: log_queries.count(s, a.where, t),
                       lambda s, a: a.where.workspace),
    "count_logs_upto": Read(
        CountLogsUpTo, lambda s, a, t: log_queries.count_upto(s, a.where, a.cap, t),
        lambda s, a: a.where.workspace),
    "nth_newest_log": Read(
        NthNewestLog,
        lambda s, a, t: _dump(log_queries.nth_newest(s, a.where, a.n, t)),
        lambda s, a: a.where.workspace),
    "log_page": Read(LogPage,
                     lambda s, a, t: log_queries.page(s, a.where, a.size, a.after, a.since, t),
                     lambda s, a: a.where.workspace),
    "assay_results": Read(
        AssayResults,
        lambda s, a, t: [result_row(r) for r in load_results(s, a.workspace, a.assay_id,
                                                             a.start, a.end)],
        lambda s, a: a.workspace),
    "last_assay_window": Read(
        LastAssayWindow, lambda s, a, t: last_done(s, a.workspace, a.assay_id),
        lambda s, a: a.workspace),
    "preview_assay": Read(
        PreviewAssay,
        lambda s, a, t: [result_row(r) for r in preview(s, a.config, a.start, a.end)],
        lambda s, a: a.config.workspace),
    "labelled_logs": Read(
        LabelledLogs,
        lambda s, a, t: labelled_logs(s, a.workspace, a.pipeline, a.limit, t),
        lambda s, a: a.workspace),
    "compare_replay": Read(
        CompareReplay,
        lambda s, a, t: compare(s, a.workspace, a.pipeline, a.replay, a.bins, t),
        lambda s, a: a.workspace),
    "runs": Read(Runs, lambda s, a, t: [asdict(r) for r in runs(s, a.workspace, a.task,
                                                                a.limit)],
                 lambda s, a: a.workspace),
    "run": Read(RunById, _run, _run_workspace),
    "run_logs": Read(RunById, lambda s, a, t: run_logs(s, a.run_id), _run_workspace),
    "table_rows": Read(TableRows, _table_rows, lambda s, a: a.workspace, _not_a_table_of),
}


def run_read(storage: Storage, name: str, args: Args, timeout_s: float | None = None) -> Any:
    """Run the read `name` with its (validated) arguments."""
    return READS[name].run(storage, args, timeout_s)


def _dump(position: LogPosition | None) -> dict[str, Any] | None:
    return None if position is None else position.model_dump()
