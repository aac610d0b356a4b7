"""Control events: the envelope every operator action travels in on the control topic."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from schemas.codec import avro_long, codec
from schemas.errors import DecodeError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

NAMESPACE = "inferstream.control."
EVENT_TYPES = (
    "CreateUser", "DeactivateUser", "CreateWorkspace", "DeleteWorkspace", "AddMember",
    "RemoveMember",
    "UploadModel", "CreatePipeline", "CreatePipelineVersion", "Deploy", "Undeploy", "Rollback",
    "CreateAssay", "PauseAssay", "ResumeAssay", "DeleteAssay",
    "CreateConnection", "DeleteConnection", "CreateOrchestration", "CreateTask", "KillTask",
    "CreateApiKey", "RevokeApiKey",
    "CreateRule", "PauseRule", "ResumeRule", "DeleteRule", "PauseRoute", "ResumeRoute",
    "StartReplay", "StopReplay", "ResumeReplay",
    "Redrive",
    "StartCanary", "AdvanceCanary", "HoldCanary", "RollbackCanary", "AbortCanary",
)


def _now_ms() -> datetime:
    """Now, at the millisecond precision the schema keeps, so an event equals itself read back."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


@dataclass(frozen=True, slots=True)
class ControlEvent:
    """One control event: who did what, where, when; `offset` is set once read from the topic.

    `signature` is the actor's Ed25519 signature over `unsigned_bytes()`; `signed` keeps those
    bytes as the writer wrote them, so a signature still checks after the schema grew.
    """

    type: str
    payload: dict[str, Any]
    actor: str
    workspace: str | None = None
    event_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    time: datetime = field(default_factory=_now_ms)
    offset: int = -1
    signature: bytes | None = None
    signed: bytes = field(default=b"", compare=False, repr=False)

    def to_bytes(self) -> bytes:
        """The event as a ControlEvent Avro record."""
        return self._encode(self.signature)

    def unsigned_bytes(self) -> bytes:
        """What the signature covers: the single-object encoding with signature null."""
        return self.signed or self._encode(None)

    def signed_with(self, key: Ed25519PrivateKey) -> ControlEvent:
        """This event with the actor's signature."""
        data = self._encode(None)
        return replace(self, signature=key.sign(data), signed=data)

    def _encode(self, signature: bytes | None) -> bytes:
        return codec("ControlEvent").encode({
            "event_id": self.event_id,
            "time": self.time,
            "actor": self.actor,
            "workspace": self.workspace,
            "payload": (NAMESPACE + self.type, self.payload),
            "signature": signature,
        })

    @classmethod
    def from_bytes(cls, data: bytes, offset: int = -1) -> ControlEvent:
        """Decode an event; DecodeError when the bytes are not one."""
        record = codec("ControlEvent").decode(data)
        type_name, payload = record["payload"]
        signature = record.get("signature")
        return cls(
            type=type_name.removeprefix(NAMESPACE),
            payload=payload,
            actor=record["actor"],
            workspace=record["workspace"],
            event_id=record["event_id"],
            time=record["time"],
            offset=offset,
            signature=signature,
            signed=_unsigned(bytes(data), signature),
        )


def _unsigned(data: bytes, signature: bytes | None) -> bytes:
    """The bytes as written with the signature set to null, cut from the end of `data`.

    The signature is the envelope's last field: a union whose branch 1 (bytes) is written as
    0x02, the length and the bytes; branch 0 (null) as 0x00. Nothing to cut: `data` itself.
    """
    if signature is None:
        return data
    tail = b"\x02" + avro_long(len(signature)) + signature
    if not data.endswith(tail):
        raise DecodeError("a control event's signature must be its envelope's last field")
    return data[: -len(tail)] + b"\x00"


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
