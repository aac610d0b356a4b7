"""Batch workloads in the registry: connections, orchestrations (versioned) and tasks."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

IN_PROCESS, TOPICS = "in-process", "topics"


@dataclass(frozen=True)
class Connection:
    """A named source or destination: a file location, a ClickHouse table/query, a topic."""

    workspace: str
    name: str
    type: str  # file | clickhouse | kafka
    details: Mapping[str, str]
    created_by: str
    created_at: datetime


@dataclass(frozen=True)
class OrchestrationVersion:
    """Read `source`, run the records through `pipelines` in turn, write to `destination`."""

    workspace: str
    orchestration: str
    version: int
    source: str
    pipelines: tuple[str, ...]
    destination: str
    errors: str | None  # where bad rows go, with the reason; None: they only count
    batch_size: int
    carry: tuple[str, ...]  # source fields copied to every result row
    mode: str  # topics: through the pipelines' Kafka topics; in-process: on the worker
    parameters: Mapping[str, str | None]  # name -> default (None: required)
    created_by: str
    created_at: datetime


@dataclass(frozen=True)
class Orchestration:
    workspace: str
    name: str
    versions: tuple[OrchestrationVersion, ...]

    @property
    def latest(self) -> OrchestrationVersion:
        return self.versions[-1]


@dataclass(frozen=True)
class Task:
    """Runs one orchestration version once, or on a cron schedule, with arguments."""

    workspace: str
    name: str
    orchestration: str
    version: int
    schedule: str | None  # cron expression; None: run once
    timezone: str
    arguments: Mapping[str, str]
    killed: bool
    created_by: str
    created_at: datetime
    killed_at: datetime | None = None
    event_id: str = ""  # the creating event: a run-once task's run id

    @property
    def once(self) -> bool:
        return self.schedule is None
