"""Replays: a past range of a pipeline's input topic scored again with one of its versions.

StartReplay names the replay, the version (any version of the pipeline, deployed or not) and
the offsets, a range per partition, that the client fixed from the times asked for; a worker
runs it (agents/serving/replay.py). StopReplay and ResumeReplay stop and resume it: its
progress is its consumer group's committed offsets, not the registry's. Pure, like the fold.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from control.registry.events import ControlEvent
from control.registry.rules import NAME, check_name, member, pipeline_of
from control.registry.state import Registry, Replay
from schemas.errors import Rejected

MAX_PARTITIONS = 10_000

Handler = Callable[[Registry, ControlEvent, Mapping[str, Any]], Registry]


def _start(state: Registry, event: ControlEvent, p: Mapping[str, Any]) -> Registry:
    ws = member(state, event)
    check_name("replay", p["replay_id"])
    key = (ws.name, p["replay_id"])
    if key in state.replays:
        raise Rejected(f"replay {p['replay_id']!r} already exists in workspace {ws.name!r}; "
                       "give the new one another id (or resume that one: ResumeReplay)")
    pipeline = pipeline_of(state, ws, p["pipeline"])
    if pipeline.version(p["version"]) is None:
        raise Rejected(f"pipeline {pipeline.name!r} has no version {p['version']} "
                       f"(it has 1..{len(pipeline.versions)})")
    ranges = tuple((r["partition"], r["start"], r["end"]) for r in p["ranges"])
    _check_ranges(ranges)
    to_topic = p.get("to_topic")
    if to_topic is not None:
        _check_side_name(to_topic, ws.name, pipeline.name)
    replay = Replay(ws.name, p["replay_id"], pipeline.name, p["version"], ranges, to_topic,
                    p.get("from_time"), p.get("to_time"), True, event.actor, event.time)
    return replace(state, replays={**state.replays, key: replay})


def _check_ranges(ranges: tuple[tuple[int, int, int], ...]) -> None:
    if not ranges:
        raise Rejected("a replay needs the offsets of at least one partition of the input "
                       "topic; the client fixes them from --from/--to")
    if len(ranges) > MAX_PARTITIONS:
        raise Rejected(f"a replay reads at most {MAX_PARTITIONS} partitions, not {len(ranges)}")
    partitions = [r[0] for r in ranges]
    if len(set(partitions)) != len(partitions):
        raise Rejected(f"each partition may have one range, got partitions {partitions}")
    for partition, start, end in ranges:
        if partition < 0 or start < 0 or end < start:
            raise Rejected(f"partition {partition}: offsets {start}..{end} are no range; a range "
                           "goes from a start offset up to an end at or past it, both >= 0")


def _check_side_name(name: str, workspace: str, pipeline: str) -> None:
    """A side topic is named, never given whole: the replay writes only under the pipeline's
    own replay prefix, so no name reaches a live topic, another pipeline's or the platform's."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise Rejected(
            f"invalid side topic name {name!r}: give a short name (1-63 lowercase letters, "
            "digits, '-' or '_', no dots), not a topic; the replay writes to "
            f"<namespace>.{workspace}.{pipeline}.replay.<name> and its dead letters to that "
            "topic's .dead")


def _set_running(running: bool) -> Handler:
    def handle(state: Registry, event: ControlEvent, p: Mapping[str, Any]) -> Registry:
        ws = member(state, event)
        key = (ws.name, p["replay_id"])
        found = state.replays.get(key)
        if found is None:
            raise Rejected(f"unknown replay {p['replay_id']!r} in workspace {ws.name!r}; "
                           "`inferstream replays list` shows them")
        if found.running == running:
            raise Rejected(f"replay {found.replay_id!r} is already "
                           f"{'running' if running else 'stopped'}")
        return replace(state, replays={**state.replays, key: replace(found, running=running)})
    return handle


REPLAY_HANDLERS: dict[str, Handler] = {
    "StartReplay": _start,
    "StopReplay": _set_running(False),
    "ResumeReplay": _set_running(True),
}
