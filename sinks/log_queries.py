"""Reads of the inference logs: newest first, counts, and pages in time order.

Every value a caller gives (workspace, pipeline, times, version, model, a page's position) is a
bound parameter; the only text in these statements is this module's own.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from schemas.errors import InferstreamError
from sinks.log_layout import COLUMNS

if TYPE_CHECKING:
    from sinks.storage import Storage

LOG_COLUMNS = COLUMNS  # every column of inference_logs, in reading order
# A row's place in time order; unique, since FINAL collapses rows of the same sorting key.
ORDER = ("time", "record_id", "step", "model", "shadow")
_ORDER_TYPES = ("DateTime64(6, 'UTC')", "String", "UInt16", "String", "Bool")
_TIME = "DateTime64(6, 'UTC')"
MAX_ROWS = 1_000_000  # the most rows one read returns; export pages through more
Name = Field(min_length=1, max_length=256)


class LogFilter(BaseModel):
    """Which logs: one pipeline of one workspace, optionally in [start, end), of one version or
    model, only failed inferences, only records that failed a validation (any, or `anomaly`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    workspace: str = Name
    pipeline: str = Name
    start: AwareDatetime | None = None
    end: AwareDatetime | None = None
    pipeline_version: int | None = Field(None, ge=0, le=2**32 - 1)
    model: str | None = Field(None, min_length=1, max_length=256)
    only_failures: bool = False
    only_anomalies: bool = False
    replay: str = Field("", max_length=256)  # "": live traffic; a replay id: its logs
    anomaly: str | None = Field(None, min_length=1, max_length=256)

    def model_post_init(self, _: Any) -> None:
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise InferstreamError(f"time range: --from {self.start} is not before "
                                   f"--to {self.end}")


class LogPosition(BaseModel):
    """A log's place in time order (its ORDER columns): where a page starts after."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    time: AwareDatetime
    record_id: str = Field(max_length=1024)
    step: int = Field(ge=0, le=2**16 - 1)
    model: str = Field(max_length=256)
    shadow: bool

    @classmethod
    def of(cls, row: dict[str, Any]) -> LogPosition:
        return cls(**{c: row[c] for c in ORDER})


def newest(storage: Storage, where: LogFilter, limit: int | None,
           timeout_s: float | None = None) -> list[dict[str, Any]]:
    """The newest `limit` logs (all with None), oldest first."""
    sql, params = _select(where)
    sql = f"SELECT {', '.join(LOG_COLUMNS)} {sql} ORDER BY {_descending()}"
    if limit is not None:
        sql += " LIMIT {limit:UInt64}"
        params["limit"] = limit
    return storage.query(sql, params, timeout_s)[::-1]


def count(storage: Storage, where: LogFilter, timeout_s: float | None = None) -> int:
    sql, params = _select(where)
    return int(storage.query(f"SELECT count() AS n {sql}", params, timeout_s)[0]["n"])


def count_upto(storage: Storage, where: LogFilter, cap: int,
               timeout_s: float | None = None) -> int:
    """How many logs match, counting no further than `cap` (a page's "more than cap")."""
    sql, params = _select(where)
    rows = storage.query(f"SELECT count() AS n FROM (SELECT 1 {sql} LIMIT {{cap:UInt64}})",
                         params | {"cap": cap}, timeout_s)
    return int(rows[0]["n"])


def nth_newest(storage: Storage, where: LogFilter, n: int,
               timeout_s: float | None = None) -> LogPosition | None:
    """The position of the n-th newest log (1: the newest), or None when there are fewer."""
    sql, params = _select(where)
    rows = storage.query(f"SELECT {', '.join(ORDER)} {sql} ORDER BY {_descending()} "
                         "LIMIT 1 OFFSET {skip:UInt64}", params | {"skip": n - 1}, timeout_s)
    return LogPosition.of(rows[0]) if rows else None


def page(storage: Storage, where: LogFilter, size: int, after: LogPosition | None = None,
         since: LogPosition | None = None, timeout_s: float | None = None
         ) -> list[dict[str, Any]]:
    """Up to `size` logs in time order, from `since` on (inclusive) and after `after`."""
    sql, params = _select(where)
    for op, prefix, position in ((">=", "since", since), (">", "after", after)):
        if position is not None:
            bound = ", ".join(f"{{{prefix}_{c}:{t}}}"
                              for c, t in zip(ORDER, _ORDER_TYPES, strict=True))
            sql += f" AND ({', '.join(ORDER)}) {op} ({bound})"
            params |= {f"{prefix}_{c}": getattr(position, c) for c in ORDER}
    return storage.query(f"SELECT {', '.join(LOG_COLUMNS)} {sql} ORDER BY {', '.join(ORDER)} "
                         "LIMIT {size:UInt64}", params | {"size": size}, timeout_s)


def _select(where: LogFilter) -> tuple[str, dict[str, Any]]:
    """`FROM inference_logs WHERE ...` and its parameters."""
    # Live traffic unless a replay is named: a replay's logs never mix with the live ones.
    clauses = ["workspace = {workspace:String}", "pipeline = {pipeline:String}",
               "replay = {replay:String}"]
    params: dict[str, Any] = {"workspace": where.workspace, "pipeline": where.pipeline,
                              "replay": where.replay}
    optional: list[tuple[str, datetime | int | str | None, str]] = [
        ("lo", where.start, f"time >= {{lo:{_TIME}}}"),
        ("hi", where.end, f"time < {{hi:{_TIME}}}"),
        ("pipeline_version", where.pipeline_version,
         "pipeline_version = {pipeline_version:UInt32}"),
        ("model", where.model, "model = {model:String}"),
        ("anomaly", where.anomaly, "has(anomalies, {anomaly:String})"),
    ]
    for name, value, clause in optional:
        if value is not None:
            clauses.append(clause)
            params[name] = value
    if where.only_failures:
        clauses.append("error IS NOT NULL")
    if where.only_anomalies:
        clauses.append("notEmpty(anomalies)")
    return f"FROM inference_logs WHERE {' AND '.join(clauses)}", params


def _descending() -> str:
    return ", ".join(f"{c} DESC" for c in ORDER)
