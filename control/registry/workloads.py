"""The registry's rules for batch workloads: connections, orchestrations and tasks (pure)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from control.registry.connections import ConnectionSpec, ConnectorError, validate
from control.registry.events import ControlEvent
from control.registry.rules import check_name, member, pipeline_of
from control.registry.state import (
    IN_PROCESS,
    TOPICS,
    Connection,
    Orchestration,
    OrchestrationVersion,
    Registry,
    Task,
)
from schemas.errors import Rejected

Handler = Callable[[Registry, ControlEvent, Mapping[str, Any]], Registry]
PARAMETER = re.compile(r"[a-z_][a-z0-9_]{0,62}")
MAX_BATCH = 100_000


def _create_connection(state: Registry, event: ControlEvent, p: Mapping[str, Any]) -> Registry:
    ws = member(state, event)
    check_name("connection", p["name"])
    key = (ws.name, p["name"])
    if key in state.connections:
        raise Rejected(f"connection {p['name']!r} already exists in workspace {ws.name!r}")
    try:
        validate(ConnectionSpec(p["name"], p["type"], dict(p["details"])))
    except ConnectorError as exc:
        raise Rejected(str(exc)) from exc
    connection = Connection(ws.name, p["name"], p["type"], dict(p["details"]), event.actor,
                            event.time)
    return replace(state, connections={**state.connections, key: connection})


def _delete_connection(state: Registry, event: ControlEvent, p: Mapping[str, Any]) -> Registry:
    ws = member(state, event)
    key = (ws.name, p["name"])
    if key not in state.connections:
        raise Rejected(f"unknown connection {p['name']!r} in workspace {ws.name!r}")
    users = sorted(o.name for (w, _), o in state.orchestrations.items() if w == ws.name
                   and p["name"] in (o.latest.source, o.latest.destination, o.latest.errors))
    if users:
        raise Rejected(f"connection {p['name']!r} is used by orchestrations {users}; "
                       "give them other connections first")
    return replace(state, connections={k: c for k, c in state.connections.items() if k != key})


def _create_orchestration(state: Registry, event: ControlEvent, p: Mapping[str, Any]
                          ) -> Registry:
    ws = member(state, event)
    check_name("orchestration", p["name"])
    for role in ("source", "destination", "errors"):
        name = p[role]
        if name is not None and (ws.name, name) not in state.connections:
            raise Rejected(f"{role} connection {name!r} does not exist in workspace "
                           f"{ws.name!r}; create it first")
    if not p["pipelines"]:
        raise Rejected("an orchestration runs at least one pipeline")
    for pipeline in p["pipelines"]:
        pipeline_of(state, ws, pipeline)
    if not 1 <= p["batch_size"] <= MAX_BATCH:
        raise Rejected(f"batch size {p['batch_size']} is outside 1..{MAX_BATCH}")
    if p["mode"] not in (TOPICS, IN_PROCESS):
        raise Rejected(f"mode {p['mode']!r} is neither {TOPICS!r} nor {IN_PROCESS!r}")
    bad = [name for name in p["parameters"] if not PARAMETER.fullmatch(name)]
    if bad:
        raise Rejected(f"parameter names {bad} must be lowercase identifiers")
    key = (ws.name, p["name"])
    found = state.orchestrations.get(key) or Orchestration(ws.name, p["name"], ())
    version = OrchestrationVersion(
        ws.name, p["name"], len(found.versions) + 1, p["source"], tuple(p["pipelines"]),
        p["destination"], p["errors"], p["batch_size"], tuple(p["carry"]), p["mode"],
        dict(p["parameters"]), event.actor, event.time,
    )
    found = replace(found, versions=(*found.versions, version))
    return replace(state, orchestrations={**state.orchestrations, key: found})


def _create_task(state: Registry, event: ControlEvent, p: Mapping[str, Any]) -> Registry:
    ws = member(state, event)
    check_name("task", p["name"])
    key = (ws.name, p["name"])
    if key in state.tasks:
        raise Rejected(f"task {p['name']!r} already exists in workspace {ws.name!r}")
    orchestration = state.orchestrations.get((ws.name, p["orchestration"]))
    if orchestration is None:
        raise Rejected(f"unknown orchestration {p['orchestration']!r} in workspace {ws.name!r}")
    number = p["version"] if p["version"] is not None else len(orchestration.versions)
    if not 0 < number <= len(orchestration.versions):
        raise Rejected(f"orchestration {orchestration.name!r} has no version {number} "
                       f"(it has 1..{len(orchestration.versions)})")
    if p["schedule"] is not None and not croniter.is_valid(p["schedule"]):
        raise Rejected(f"schedule {p['schedule']!r} is not a cron expression "
                       "(five fields, e.g. '*/5 * * * *')")
    try:
        ZoneInfo(p["timezone"])
    except (ZoneInfoNotFoundError, ValueError):
        raise Rejected(f"unknown time zone {p['timezone']!r}; use an IANA name such as "
                       "'Europe/Berlin' or 'UTC'") from None
    parameters = orchestration.versions[number - 1].parameters
    unknown = sorted(set(p["arguments"]) - set(parameters))
    if unknown:
        raise Rejected(f"arguments {unknown} are not parameters of {orchestration.name!r} "
                       f"v{number}; it takes {sorted(parameters)}")
    missing = sorted(n for n, default in parameters.items()
                     if default is None and n not in p["arguments"])
    if missing:
        raise Rejected(f"orchestration {orchestration.name!r} needs arguments {missing}")
    task = Task(ws.name, p["name"], orchestration.name, number, p["schedule"], p["timezone"],
                dict(p["arguments"]), False, event.actor, event.time, event_id=event.event_id)
    return replace(state, tasks={**state.tasks, key: task})


def _kill_task(state: Registry, event: ControlEvent, p: Mapping[str, Any]) -> Registry:
    ws = member(state, event)
    key = (ws.name, p["name"])
    task = state.tasks.get(key)
    if task is None:
        raise Rejected(f"unknown task {p['name']!r} in workspace {ws.name!r}")
    if task.killed:
        raise Rejected(f"task {p['name']!r} was already killed")
    task = replace(task, killed=True, killed_at=event.time)
    return replace(state, tasks={**state.tasks, key: task})


WORKLOAD_HANDLERS: dict[str, Handler] = {
    "CreateConnection": _create_connection,
    "DeleteConnection": _delete_connection,
    "CreateOrchestration": _create_orchestration,
    "CreateTask": _create_task,
    "KillTask": _kill_task,
}
