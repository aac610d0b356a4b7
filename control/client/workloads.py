"""The Python client's batch workloads: connections, orchestrations, tasks and runs.

A mixin of control.client.Client, kept apart so each file stays one subject.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from control.registry.state import TOPICS, Connection, Orchestration, OrchestrationVersion, Task
from schemas.errors import Rejected, StatusTimeout
from sinks import reads
from sinks.runs import Run, run_from_row

if TYPE_CHECKING:
    from control.config import Settings
    from control.registry.events import ControlStatus
    from control.registry.state import Registry


class WorkloadClient:
    """Methods of Client for batch workloads."""

    settings: Settings

    if TYPE_CHECKING:
        def send(self, type: str, payload: Mapping[str, Any], **kw: Any) -> ControlStatus: ...
        def registry(self) -> Registry: ...
        def _ws(self, workspace: str | None) -> str: ...
        def _readable(self, workspace: str | None) -> tuple[str, Registry]: ...
        def _actor(self) -> str: ...
        def _read(self, name: str, args: reads.Args) -> Any: ...

    # -- connections -------------------------------------------------------------------------

    def create_connection(self, name: str, type: str, details: Mapping[str, str],
                          workspace: str | None = None) -> Connection:
        ws = self._ws(workspace)
        self.send("CreateConnection", {"name": name, "type": type, "details": dict(details)},
                  workspace=ws)
        return self.registry().connections[(ws, name)]

    def delete_connection(self, name: str, workspace: str | None = None) -> None:
        self.send("DeleteConnection", {"name": name}, workspace=self._ws(workspace))

    def connections(self, workspace: str | None = None) -> list[Connection]:
        ws, registry = self._readable(workspace)
        return [c for (w, _), c in sorted(registry.connections.items()) if w == ws]

    def table_rows(self, connection: str, limit: int = 20,
                   workspace: str | None = None) -> list[dict[str, Any]]:
        """The first rows of a ClickHouse connection's table on the platform's storage."""
        ws, registry = self._readable(workspace)
        found = registry.connections.get((ws, connection))
        args = reads.TableRows(workspace=ws, connection=connection, limit=limit,
                               table=(found.details.get("table") if found else None) or "_")
        refused = reads.READS["table_rows"].refuse(registry, args)
        if refused:
            raise Rejected(refused)
        return self._read("table_rows", args)

    # -- orchestrations ----------------------------------------------------------------------

    def create_orchestration(
        self, name: str, *, source: str, pipelines: Sequence[str], destination: str,
        errors: str | None = None, batch_size: int = 1000, carry: Sequence[str] = (),
        mode: str = TOPICS, parameters: Mapping[str, str | None] | None = None,
        workspace: str | None = None,
    ) -> OrchestrationVersion:
        """A new orchestration, or a new version of one when the name exists."""
        ws = self._ws(workspace)
        self.send("CreateOrchestration", {
            "name": name, "source": source, "pipelines": list(pipelines),
            "destination": destination, "errors": errors, "batch_size": batch_size,
            "carry": list(carry), "mode": mode, "parameters": dict(parameters or {}),
        }, workspace=ws)
        return self.registry().orchestrations[(ws, name)].latest

    def orchestrations(self, workspace: str | None = None) -> list[Orchestration]:
        ws, registry = self._readable(workspace)
        return [o for (w, _), o in sorted(registry.orchestrations.items()) if w == ws]

    # -- tasks and runs ----------------------------------------------------------------------

    def create_task(self, name: str, orchestration: str, *, version: int | None = None,
                    schedule: str | None = None, timezone: str = "UTC",
                    arguments: Mapping[str, str] | None = None,
                    workspace: str | None = None) -> Task:
        """Run an orchestration once (no schedule) or on a cron schedule in a time zone."""
        ws = self._ws(workspace)
        self.send("CreateTask", {
            "name": name, "orchestration": orchestration, "version": version,
            "schedule": schedule, "timezone": timezone, "arguments": dict(arguments or {}),
        }, workspace=ws)
        return self.registry().tasks[(ws, name)]

    def kill_task(self, name: str, workspace: str | None = None) -> None:
        """Stop a task: its running run ends `killed` at the next batch; no more runs start."""
        self.send("KillTask", {"name": name}, workspace=self._ws(workspace))

    def tasks(self, workspace: str | None = None) -> list[Task]:
        ws, registry = self._readable(workspace)
        return [t for (w, _), t in sorted(registry.tasks.items()) if w == ws]

    def runs(self, task: str | None = None, workspace: str | None = None,
             limit: int = 100) -> list[Run]:
        ws = self._readable(workspace)[0]
        rows = self._read("runs", reads.Runs(workspace=ws, task=task, limit=limit))
        return [run_from_row(row) for row in rows]

    def run(self, run_id: str) -> Run | None:
        """A run by id; the worker (or this process) checks that you may read its workspace."""
        found = self._read("run", reads.RunById(run_id=run_id))
        if found is None:
            return None
        run = run_from_row(found)
        self._readable(run.workspace)  # a run is read by its workspace's members
        return run

    def run_logs(self, run_id: str) -> list[dict[str, Any]]:
        if self.run(run_id) is None:
            return []
        return self._read("run_logs", reads.RunById(run_id=run_id))

    def wait_for_run(self, run_id: str, timeout: float = 3600.0,
                     progress: Callable[[Run], None] | None = None) -> Run:
        """Poll a run until it finishes; `progress` hears every state it passes through."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.run(run_id)
            if run is not None:
                if progress:
                    progress(run)
                if run.finished:
                    return run
            time.sleep(0.5)
        raise StatusTimeout(f"run {run_id} did not finish within {timeout:.0f}s; is a worker "
                            "running (`inferstream worker`)? `tasks runs` shows where it is")
