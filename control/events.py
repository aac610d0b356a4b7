"""Control events: the envelope every operator action travels in on the control topic."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from schemas.codec import codec

NAMESPACE = "inferstream.control."
EVENT_TYPES = (
    "CreateUser", "DeactivateUser", "CreateWorkspace", "AddMember", "RemoveMember",
    "UploadModel", "CreatePipeline", "CreatePipelineVersion", "Deploy", "Undeploy", "Rollback",
    "CreateAssay", "PauseAssay", "ResumeAssay", "DeleteAssay",
    "CreateConnection", "DeleteConnection", "CreateOrchestration", "CreateTask", "KillTask",
)


def _now_ms() -> datetime:
    """Now, at the millisecond precision the schema keeps, so an event equals itself read back."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


@dataclass(frozen=True, slots=True)
class ControlEvent:
    """One control event: who did what, where, when; `offset` is set once read from the topic."""

    type: str
    payload: dict[str, Any]
    actor: str
    workspace: str | None = None
    event_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    time: datetime = field(default_factory=_now_ms)
    offset: int = -1

    def to_bytes(self) -> bytes:
        """The event as a ControlEvent Avro record."""
        return codec("ControlEvent").encode({
            "event_id": self.event_id,
            "time": self.time,
            "actor": self.actor,
            "workspace": self.workspace,
            "payload": (NAMESPACE + self.type, self.payload),
        })

    @classmethod
    def from_bytes(cls, data: bytes, offset: int = -1) -> ControlEvent:
        """Decode an event; DecodeError when the bytes are not one."""
        record = codec("ControlEvent").decode(data)
        type_name, payload = record["payload"]
        return cls(
            type=type_name.removeprefix(NAMESPACE),
            payload=payload,
            actor=record["actor"],
            workspace=record["workspace"],
            event_id=record["event_id"],
            time=record["time"],
            offset=offset,
        )


@dataclass(frozen=True, slots=True)
class ControlStatus:
    """The outcome of one control event, as published on the status topic."""

    event_id: str
    offset: int
    type: str
    actor: str
    workspace: str | None
    accepted: bool
    reason: str | None = None
    result: dict[str, str] = field(default_factory=dict)
    time: datetime = field(default_factory=_now_ms)

    def to_bytes(self) -> bytes:
        return codec("ControlStatus").encode({
            "event_id": self.event_id, "offset": self.offset, "type": self.type,
            "actor": self.actor, "workspace": self.workspace,
            "status": "accepted" if self.accepted else "rejected",
            "reason": self.reason, "result": self.result, "time": self.time,
        })

    @classmethod
    def from_bytes(cls, data: bytes) -> ControlStatus:
        r = codec("ControlStatus").decode(data)
        return cls(
            event_id=r["event_id"], offset=r["offset"], type=r["type"], actor=r["actor"],
            workspace=r["workspace"], accepted=r["status"] == "accepted", reason=r["reason"],
            result=dict(r["result"]), time=r["time"],
        )
