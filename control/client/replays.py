"""The Python client's replays: start, stop, resume, watch and compare them (docs/replay.md).

A mixin of control.client.Client, kept apart so each file stays one subject.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from control import replays as kafka
from control.offsets import Progress
from control.registry.state import Replay
from control.replays import ReplayError
from sinks import reads

if TYPE_CHECKING:
    from control.config import Settings
    from control.registry.events import ControlStatus
    from control.registry.state import Registry


@dataclass(frozen=True)
class ReplayStatus:
    """A replay and how far it got."""

    replay: Replay
    progress: Progress
    side_topic: str
    dead_topic: str

    @property
    def state(self) -> str:
        if self.progress.finished:
            return "done"
        return "running" if self.replay.running else "stopped"


class ReplayClient:
    """Methods of Client for replays."""

    settings: Settings

    if TYPE_CHECKING:
        def send(self, type: str, payload: Mapping[str, Any], **kw: Any) -> ControlStatus: ...
        def registry(self) -> Registry: ...
        def _ws(self, workspace: str | None) -> str: ...
        def _readable(self, workspace: str | None) -> tuple[str, Registry]: ...
        def _read(self, name: str, args: reads.Args) -> Any: ...

    def start_replay(self, pipeline: str, version: int, *, start: datetime | None = None,
                     end: datetime | None = None, start_offset: int | None = None,
                     end_offset: int | None = None, to_topic: str | None = None,
                     replay_id: str | None = None, workspace: str | None = None) -> Replay:
        """Re-score the pipeline's input records in [start, end) (times; None: from the
        topic's start, up to its end now) or [start_offset, end_offset) (in every partition)
        with `version`, into the side topic `<ns>.<ws>.<pipeline>.replay.<to_topic>` (a
        name; default: the replay's id). The offsets are fixed now."""
        if (start is not None or end is not None) and (
                start_offset is not None or end_offset is not None):
            raise ReplayError("give a replay times (--from/--to) or offsets "
                              "(--from-offset/--to-offset), not both")
        if start is not None and end is not None and end <= start:
            raise ReplayError(f"--from {start} is not before --to {end}")
        ws = self._ws(workspace)
        topic = self.settings.pipeline_topic(ws, pipeline, "input")
        ranges = kafka.ranges_of(self.settings, topic, start, end, start_offset, end_offset)
        replay_id = replay_id or f"r{uuid.uuid4().hex[:8]}"
        self.send("StartReplay", {
            "replay_id": replay_id, "pipeline": pipeline, "version": version,
            "ranges": [{"partition": p, "start": s, "end": e} for p, s, e in ranges],
            "to_topic": to_topic, "from_time": start, "to_time": end}, workspace=ws)
        return self.registry().replays[(ws, replay_id)]

    def stop_replay(self, replay_id: str, workspace: str | None = None) -> Replay:
        """Stop a replay after its current batch; its progress stays for resume_replay."""
        ws = self._ws(workspace)
        self.send("StopReplay", {"replay_id": replay_id}, workspace=ws)
        return self.registry().replays[(ws, replay_id)]

    def resume_replay(self, replay_id: str, workspace: str | None = None) -> Replay:
        ws = self._ws(workspace)
        self.send("ResumeReplay", {"replay_id": replay_id}, workspace=ws)
        return self.registry().replays[(ws, replay_id)]

    def replays(self, pipeline: str | None = None, workspace: str | None = None
                ) -> list[ReplayStatus]:
        """The workspace's replays (of one pipeline), oldest first, with their progress."""
        ws, registry = self._readable(workspace)
        found = sorted((r for (w, _), r in registry.replays.items()
                        if w == ws and pipeline in (None, r.pipeline)),
                       key=lambda r: r.created_at)
        return [self._status(r) for r in found]

    def replay_status(self, replay_id: str, workspace: str | None = None) -> ReplayStatus:
        ws, registry = self._readable(workspace)
        found = registry.replays.get((ws, replay_id))
        if found is None:
            raise ReplayError(f"unknown replay {replay_id!r} in workspace {ws!r}; "
                              "`inferstream replays list` shows them")
        return self._status(found)

    def _status(self, replay: Replay) -> ReplayStatus:
        return ReplayStatus(replay, kafka.progress(self.settings, replay),
                            kafka.side_topic(self.settings, replay),
                            kafka.dead_topic(self.settings, replay))

    def wait_replay(self, replay_id: str, timeout: float | None = None,
                    on_progress: Callable[[ReplayStatus], None] | None = None,
                    every_s: float = 0.5, workspace: str | None = None) -> ReplayStatus:
        """Wait until the replay is done or stopped (or `timeout` passed); on_progress is
        called with each look at it."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.replay_status(replay_id, workspace)
            if on_progress is not None:
                on_progress(status)
            if status.state != "running" or (deadline is not None
                                             and time.monotonic() > deadline):
                return status
            time.sleep(every_s)

    def compare_replay(self, pipeline: str, replay_id: str, bins: int = 10,
                       workspace: str | None = None) -> dict[str, Any]:
        """Per output, the differences between the live results and the replay's over the same
        records (sinks/replays.py)."""
        ws, registry = self._readable(workspace)
        found = registry.replays.get((ws, replay_id))
        if found is None or found.pipeline != pipeline:
            raise ReplayError(f"pipeline {pipeline!r} has no replay {replay_id!r} in workspace "
                              f"{ws!r}; `inferstream replays list` shows them")
        return self._read("compare_replay", reads.CompareReplay(
            workspace=ws, pipeline=pipeline, replay=replay_id, bins=bins))
