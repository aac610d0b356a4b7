"""Builders of control events for tests: one small function per payload, with defaults.

Each builder returns an `Action` (event type, payload) whose payload holds every field of
its Avro record; `event()` wraps it in a ControlEvent and round trips it through the codec,
so a test folds exactly what a worker reading the control topic would. `event()` leaves it
unsigned (an open platform); `signed()` signs it with the actor's test key (`key_of`), as
on a secured platform, which `secured_user()` bootstraps.
"""

from __future__ import annotations

import copy
import functools
import hashlib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from control.registry.events import NAMESPACE, ControlEvent
from control.registry.fold import apply
from control.registry.signing import public_key_of
from control.registry.state import Registry
from schemas.errors import Rejected

Action = tuple[str, dict[str, Any]]
UnionItem = tuple[str, dict[str, Any]]  # how Avro reads a member of a union of records

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)  # whole milliseconds: timestamp-millis keeps them
ADMIN, WORKSPACE = "ann", "ws"


def event(
    action: Action, actor: str = ADMIN, workspace: str | None = WORKSPACE, offset: int = 0
) -> ControlEvent:
    """The event as a worker reads it from the control topic (encoded, then decoded)."""
    type_, payload = action
    written = ControlEvent(type=type_, payload=payload, actor=actor, workspace=workspace, time=T0)
    return ControlEvent.from_bytes(written.to_bytes(), offset=offset)


@functools.cache
def key_of(user: str) -> Ed25519PrivateKey:
    """A user's test key: the same on every run, so a failure replays exactly."""
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(user.encode()).digest())


def public_of(user: str) -> bytes:
    return public_key_of(key_of(user))


def signed(
    action: Action, actor: str = ADMIN, workspace: str | None = WORKSPACE, offset: int = 0,
    key: Ed25519PrivateKey | None = None,
) -> ControlEvent:
    """`event()`, signed with `key` (default: the actor's own test key)."""
    type_, payload = action
    written = ControlEvent(type=type_, payload=payload, actor=actor, workspace=workspace, time=T0)
    data = written.signed_with(key or key_of(actor)).to_bytes()
    return ControlEvent.from_bytes(data, offset=offset)


def secured_user(name: str, email: str | None = None, admin: bool = False) -> Action:
    """CreateUser with the user's test public key."""
    return "CreateUser", {"name": name, "email": email, "admin": admin,
                          "public_key": public_of(name)}


def given(state: Registry, *events: ControlEvent) -> Registry:
    """The registry after events that must all be accepted: a broken setup fails loudly."""
    for e in events:
        state = apply(state, e)
    return state


def reject(state: Registry, e: ControlEvent, *mentions: str) -> str:
    """Assert `e` is rejected with a reason naming each of `mentions`, and changes nothing."""
    snapshot = copy.deepcopy(state)
    with pytest.raises(Rejected) as caught:
        apply(state, e)
    reason = str(caught.value)
    for text in mentions:
        assert text in reason, f"{text!r} is not in the reason: {reason}"
    assert state == snapshot, "a rejected event changed the registry"
    return reason


def sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def artifact(
    content: bytes = b"model bytes", *, digest: str | None = None, size: int = 1024,
    fmt: str = "onnx", chunks: int = 1,
) -> dict[str, Any]:
    """An Artifact record (where a content-addressed blob lives in the artifact topic)."""
    return {
        "sha256": sha256(content) if digest is None else digest, "size": size, "format": fmt,
        "topic": "inferstream.artifacts", "partition": 0, "offset": 0, "chunks": chunks,
    }


def tensor_spec(name: str, dtype: str = "float32", shape: Sequence[int] = (-1, 4)) -> dict:
    return {"name": name, "dtype": dtype, "shape": list(shape)}


# -- users and workspaces --------------------------------------------------------------------


def create_user(name: str, email: str | None = None, admin: bool = False) -> Action:
    return "CreateUser", {"name": name, "email": email, "admin": admin, "public_key": None}


def deactivate_user(name: str) -> Action:
    return "DeactivateUser", {"name": name}


def create_workspace(name: str) -> Action:
    return "CreateWorkspace", {"name": name}


def delete_workspace(name: str = WORKSPACE) -> Action:
    return "DeleteWorkspace", {"name": name}


def add_member(user: str, role: str = "collaborator") -> Action:
    return "AddMember", {"user": user, "role": role}


def remove_member(user: str) -> Action:
    return "RemoveMember", {"user": user}


# -- models ----------------------------------------------------------------------------------


def upload_model(
    name: str, content: bytes = b"model bytes", *, inputs: Sequence[str | dict] = ("x",),
    outputs: Sequence[str | dict] = ("y",), framework: str = "onnx",
    files: Mapping[str, bytes] | None = None, artifact_record: dict | None = None,
    description: str | None = None, allow_interface_change: bool | None = None,
) -> Action:
    """Upload `content` as a model; inputs and outputs are names (float32, shape [-1, 4]).
    allow_interface_change None: as written before the interface check (never compared)."""
    def specs(items: Sequence[str | dict]) -> list[dict]:
        return [tensor_spec(i) if isinstance(i, str) else i for i in items]

    return "UploadModel", {
        "name": name,
        "framework": framework,
        "artifact": artifact(content) if artifact_record is None else artifact_record,
        "files": [{"name": n, "artifact": artifact(c)} for n, c in (files or {}).items()],
        "inputs": specs(inputs),
        "outputs": specs(outputs),
        "description": description,
        "allow_interface_change": allow_interface_change,
    }


# -- pipelines -------------------------------------------------------------------------------


def model_step(model: str, version: int = 1, input_map: Mapping[str, str] | None = None) -> dict:
    """A ModelStep record; input_map maps a model input to the field that feeds it."""
    return {"model": model, "version": version, "input_map": dict(input_map or {})}


def random_split(
    *routes: tuple[float, dict], hash_key: str | None = None
) -> UnionItem:
    return NAMESPACE + "RandomSplit", {
        "routes": [{"weight": w, "step": s} for w, s in routes], "hash_key": hash_key,
    }


def key_split(field: str, routes: Sequence[tuple[str, dict]], default: dict) -> UnionItem:
    return NAMESPACE + "KeySplit", {
        "field": field,
        "routes": [{"value": v, "step": s} for v, s in routes],
        "default": default,
    }


def shadow(champion: dict, *challengers: dict) -> UnionItem:
    return NAMESPACE + "ShadowStep", {"champion": champion, "challengers": list(challengers)}


def create_pipeline(name: str, description: str | None = None) -> Action:
    return "CreatePipeline", {"name": name, "description": description}


def create_pipeline_version(pipeline: str, *steps: dict | UnionItem,
                            result_steps: Sequence[int] = (), rules: int = 1,
                            validations: dict[str, str] | None = None) -> Action:
    """A pipeline version; a plain dict step is a ModelStep. rules 1: as written before typed
    chain checks (control/registry/chains.py); validations: name -> expression."""
    items = [(NAMESPACE + "ModelStep", s) if isinstance(s, dict) else s for s in steps]
    return "CreatePipelineVersion", {
        "pipeline": pipeline, "steps": items, "result_steps": list(result_steps), "rules": rules,
        "validations": [{"name": n, "expression": e} for n, e in (validations or {}).items()]}


# -- deployments -----------------------------------------------------------------------------


def deploy(
    pipeline: str, version: int | None = None, batch_size: int = 64, batch_wait_ms: int = 20,
    rules: int = 1,
) -> Action:
    return "Deploy", {
        "pipeline": pipeline, "version": version,
        "batch_size": batch_size, "batch_wait_ms": batch_wait_ms, "rules": rules,
    }


def undeploy(pipeline: str, cause: dict | None = None) -> Action:
    return "Undeploy", {"pipeline": pipeline, "cause": cause}


def rollback(pipeline: str, version: int | None = None, rules: int = 1,
             cause: dict | None = None) -> Action:
    return "Rollback", {"pipeline": pipeline, "version": version, "rules": rules, "cause": cause}


def pause_route(pipeline: str, step: int, route: int, cause: dict | None = None) -> Action:
    return "PauseRoute", {"pipeline": pipeline, "step": step, "route": route, "cause": cause}


def resume_route(pipeline: str, step: int, route: int) -> Action:
    return "ResumeRoute", {"pipeline": pipeline, "step": step, "route": route}


def start_replay(replay_id: str, pipeline: str, version: int = 1,
                 ranges: tuple[tuple[int, int, int], ...] = ((0, 0, 10),),
                 to_topic: str | None = None, from_time: datetime | None = None,
                 to_time: datetime | None = None) -> Action:
    return "StartReplay", {"replay_id": replay_id, "pipeline": pipeline, "version": version,
                           "ranges": [{"partition": p, "start": s, "end": e}
                                      for p, s, e in ranges],
                           "to_topic": to_topic, "from_time": from_time, "to_time": to_time}


def stop_replay(replay_id: str) -> Action:
    return "StopReplay", {"replay_id": replay_id}


def resume_replay(replay_id: str) -> Action:
    return "ResumeReplay", {"replay_id": replay_id}


def redrive(pipeline: str, *ranges: tuple[int, int, int], reason_like: str | None = None,
            limit: int | None = 3, from_time: datetime | None = None,
            to_time: datetime | None = None) -> Action:
    """Redrive the dead letters of `ranges`: (partition, start, end) offsets, end exclusive."""
    return "Redrive", {
        "pipeline": pipeline, "ranges": [{"partition": p, "start": s, "end": e}
                                         for p, s, e in ranges],
        "from_time": from_time, "to_time": to_time, "reason_like": reason_like, "limit": limit}


# -- assays ----------------------------------------------------------------------------------

HOUR_S = 3600


def baseline_range(start: datetime = T0, end: datetime | None = None) -> UnionItem:
    """An assay baseline from the logs of [start, end) (default: T0's hour)."""
    end = end or start + timedelta(hours=1)
    return NAMESPACE + "BaselineRange", {"start": start, "end": end}


def baseline_values(*values: float) -> UnionItem:
    return NAMESPACE + "BaselineValues", {"values": [float(v) for v in values]}


PERFORMANCE: UnionItem = ("", {})  # create_assay's baseline of a performance metric: none


def create_assay(
    name: str, pipeline: str = "fraud", model: str = "scaler", field: str = "y", *,
    io: str = "output", index: int = 0, baseline: UnionItem | None = None,
    width_s: int = HOUR_S, interval_s: int | None = None,
    first_window_start: datetime | None = None, binning: str = "quantile", bins: int = 5,
    edges: Sequence[float] | None = None, aggregation: str = "density", metric: str = "psi",
    warning: float | None = None, alert: float | None = None, epsilon: float = 0.005,
    prediction: str = "value", positive_class: float = 1.0, average: str = "class",
    label_wait_s: int = 7 * 86_400,
) -> Action:
    """An assay of `model`'s `field` in `pipeline`, hourly windows after a baseline hour
    (performance metrics take no baseline: pass `baseline=PERFORMANCE`)."""
    return "CreateAssay", {
        "name": name, "pipeline": pipeline, "model": model, "io": io, "field": field,
        "index": index, "baseline": None if baseline is PERFORMANCE else (
            baseline or baseline_range()), "width_s": width_s,
        "interval_s": interval_s, "first_window_start": first_window_start,
        "binning": binning, "bins": bins, "edges": None if edges is None else list(edges),
        "aggregation": aggregation, "metric": metric, "warning_threshold": warning,
        "alert_threshold": alert, "epsilon": epsilon, "prediction": prediction,
        "decision_threshold": 0.5, "positive_class": positive_class, "average": average,
        "label_wait_s": label_wait_s,
    }


def pause_assay(name: str) -> Action:
    return "PauseAssay", {"name": name}


def resume_assay(name: str) -> Action:
    return "ResumeAssay", {"name": name}


def delete_assay(name: str) -> Action:
    return "DeleteAssay", {"name": name}


# -- rules that act on alerts ---------------------------------------------------------------


def create_rule(
    name: str, pipeline: str = "fraud", action: str = "rollback", *, assay: str | None = None,
    on: Sequence[str] = ("alert",), version: int | None = None, step: int | None = None,
    route: int | None = None, orchestration: str | None = None,
    arguments: Mapping[str, str] | None = None, cooldown_s: int = 0,
) -> Action:
    return "CreateRule", {
        "name": name, "pipeline": pipeline, "assay": assay, "on": list(on), "action": action,
        "version": version, "step": step, "route": route, "orchestration": orchestration,
        "arguments": dict(arguments or {}), "cooldown_s": cooldown_s,
    }


def pause_rule(name: str) -> Action:
    return "PauseRule", {"name": name}


def resume_rule(name: str) -> Action:
    return "ResumeRule", {"name": name}


def delete_rule(name: str) -> Action:
    return "DeleteRule", {"name": name}


def action_cause(rule: str, rule_id: str, assay_id: str = "drift-00000000",
                 pipeline: str = "fraud", status: str = "alert",
                 window_start: datetime = T0, score: float = 0.4) -> dict[str, Any]:
    """An ActionCause record: `rule` fired by an alert of `assay_id` on the window at start."""
    return {"rule": rule, "rule_id": rule_id, "assay_id": assay_id, "pipeline": pipeline,
            "status": status, "window_start": window_start,
            "window_end": window_start + timedelta(hours=1), "score": score, "threshold": 0.25,
            "metric": "psi", "alert_time": window_start + timedelta(hours=1)}


# -- batch workloads -------------------------------------------------------------------------


def create_connection(name: str, type_: str = "file",
                      details: Mapping[str, str] | None = None) -> Action:
    """A connection; by default a file source of parquet files."""
    return "CreateConnection", {
        "name": name, "type": type_, "details": dict(details or {"path": "in/*.parquet"}),
    }


def delete_connection(name: str) -> Action:
    return "DeleteConnection", {"name": name}


def create_orchestration(
    name: str, source: str = "inbox", pipelines: Sequence[str] = ("fraud",),
    destination: str = "outbox", *, errors: str | None = None, batch_size: int = 1000,
    carry: Sequence[str] = (), mode: str = "topics",
    parameters: Mapping[str, str | None] | None = None,
) -> Action:
    return "CreateOrchestration", {
        "name": name, "source": source, "pipelines": list(pipelines),
        "destination": destination, "errors": errors, "batch_size": batch_size,
        "carry": list(carry), "mode": mode, "parameters": dict(parameters or {}),
    }


def create_task(
    name: str, orchestration: str = "nightly", *, version: int | None = None,
    schedule: str | None = None, timezone: str = "UTC",
    arguments: Mapping[str, str] | None = None, cause: dict | None = None,
) -> Action:
    return "CreateTask", {
        "name": name, "orchestration": orchestration, "version": version,
        "schedule": schedule, "timezone": timezone, "arguments": dict(arguments or {}),
        "cause": cause,
    }


def kill_task(name: str) -> Action:
    return "KillTask", {"name": name}


def create_api_key(name: str, key_id: str = "0123456789abcdef",
                   scopes: tuple[str, ...] = ("infer",), secret_sha256: bytes = bytes(32),
                   expires_at: datetime | None = None) -> Action:
    return "CreateApiKey", {"name": name, "key_id": key_id, "secret_sha256": secret_sha256,
                            "scopes": list(scopes), "expires_at": expires_at}


def revoke_api_key(name: str) -> Action:
    return "RevokeApiKey", {"name": name}


def every_action() -> list[Action]:
    """One action of each payload type, with nested records filled in."""
    return [
        secured_user("ann", email="ann@example.com", admin=True),
        deactivate_user("bob"),
        create_workspace("ws"),
        delete_workspace("ws"),
        add_member("carol", "viewer"),
        remove_member("bob"),
        upload_model(
            "scaler", files={"vocab.txt": b"a\nb\n"}, description="scales x",
            inputs=[tensor_spec("x", "float32", [-1, 4])],
            outputs=[tensor_spec("y", "float64", [-1, 4]), tensor_spec("tag", "string", [-1])],
        ),
        create_pipeline("fraud", description="scores payments"),
        create_pipeline_version(
            "fraud",
            model_step("scaler", 1, {"x": "features"}),
            random_split((0.9, model_step("a")), (0.1, model_step("b")), hash_key="user"),
            key_split("country", [("fr", model_step("a"))], default=model_step("b")),
            shadow(model_step("a"), model_step("b", 2)),
        ),
        deploy("fraud", version=2, batch_size=128, batch_wait_ms=5),
        undeploy("fraud", cause=action_cause("rollback-on-drift", "rollback-on-drift-1234abcd")),
        rollback("fraud", version=1, cause=action_cause("r", "r-1", status="warning")),
        create_assay(
            "drift", io="input", field="x", index=2, baseline=baseline_values(1, 2.5, 3),
            first_window_start=T0, interval_s=600, binning="provided", bins=2,
            edges=[0, 1.5, 3], aggregation="cumulative", metric="maxdiff", warning=0.1,
            alert=0.25, epsilon=0.001,
        ),
        pause_assay("drift"),
        resume_assay("drift"),
        delete_assay("drift"),
        create_connection("events", "kafka", {"topic": "events", "key_field": "id"}),
        delete_connection("events"),
        create_orchestration("nightly", errors="rejects", carry=["id"], mode="in-process",
                             parameters={"day": None, "limit": "10"}),
        create_task("nightly-3am", schedule="0 3 * * *", timezone="Europe/Berlin",
                    arguments={"day": "2024-05-01"}, version=1),
        kill_task("nightly-3am"),
        create_api_key("scorer", scopes=("infer", "read"), expires_at=T0),
        revoke_api_key("scorer"),
        create_rule("pause-b", action="pause_route", assay="drift", on=("warning", "alert"),
                    step=2, route=2, cooldown_s=3600),
        pause_rule("pause-b"),
        resume_rule("pause-b"),
        delete_rule("pause-b"),
        pause_route("fraud", 2, 1, cause=action_cause("pause-b", "pause-b-0000abcd")),
        resume_route("fraud", 2, 1),
        start_replay("r1", "fraud", 2, ((0, 5, 10), (1, 0, 3)), to_topic="side",
                     from_time=T0, to_time=T0),
        stop_replay("r1"),
        resume_replay("r1"),
        redrive("fraud", (0, 10, 20), reason_like="missing%field", limit=None, from_time=T0,
                to_time=T0 + timedelta(hours=1)),
        *canary_actions(),
    ]


def canary_actions() -> list[Action]:
    """One of each canary event, as a worker or an operator writes them."""
    return [
        ("StartCanary", {"pipeline": "fraud", "version": 2, "steps": [5, 25, 100],
                         "every_s": 600, "hash_key": "user", "max_dead_letter_pp": 1.0,
                         "max_error_pp": 0.5, "max_p99_ratio": 1.5, "p99_slack_ms": 5.0,
                         "min_records": 100, "assays": ["drift"]}),
        ("AdvanceCanary", {"pipeline": "fraud", "canary_id": "fraud-0000abcd", "step": 2,
                           "evidence": "v2: 120 records"}),
        ("HoldCanary", {"pipeline": "fraud", "canary_id": "fraud-0000abcd", "step": 2,
                        "reason": "too few records"}),
        ("RollbackCanary", {"pipeline": "fraud", "canary_id": "fraud-0000abcd",
                            "step": 2, "reason": "dead-letter rate"}),
        ("AbortCanary", {"pipeline": "fraud", "reason": None}),
    ]


# -- a platform to start from ----------------------------------------------------------------

SCALER = upload_model("scaler", b"scaler v1", inputs=["x"], outputs=["y"])
CLASSIFIER = upload_model("classifier", b"classifier v1", inputs=["y"], outputs=["label"])
OTHER = upload_model("other", b"other v1", inputs=["x"], outputs=["z"])


def ws_members() -> list[ControlEvent]:
    """ann (first user, so admin), bob and carol; workspace ws: ann owner, bob collaborator,
    carol no member."""
    return [
        event(create_user("ann")),
        event(create_user("bob")),
        event(create_user("carol")),
        event(create_workspace("ws")),
        event(add_member("bob")),
    ]
