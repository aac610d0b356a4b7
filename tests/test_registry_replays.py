"""Replays in the pure parts: the fold's rules for StartReplay/StopReplay/ResumeReplay, events
written before replays existed folding as they did, which replay a worker runs next, and the
replay id in the inference logs' bytes."""

from __future__ import annotations

import io
import json
from dataclasses import replace

import fastavro
import numpy as np
import pytest
from registry_events import (
    SCALER,
    T0,
    add_member,
    create_assay,
    create_pipeline,
    create_pipeline_version,
    create_user,
    create_workspace,
    deploy,
    event,
    given,
    model_step,
    reject,
    resume_replay,
    rollback,
    start_replay,
    stop_replay,
    undeploy,
    ws_members,
)

from agents.records.avro_logs import LogWriter
from agents.records.inference import Call
from agents.serving.replay import ReplayState, next_replay
from control.config import Settings
from control.registry.events import NAMESPACE, ControlEvent
from control.registry.fold import fold, result_of
from control.registry.state import Registry
from control.replays import dead_topic, group, side_topic, transactional_id
from schemas.codec import HISTORY_DIR, MARKER, codec
from sinks.log_blocks import block_logs, decode_block

BEFORE_REPLAYS = "1556749a4fd41613"  # the ControlEvent schema main wrote before replays


@pytest.fixture
def platform() -> Registry:
    """ws (ann owner, bob collaborator, carol no member): fraud v1 and v2, v1 deployed."""
    return given(Registry(), *ws_members(), *(event(a) for a in (
        SCALER, create_pipeline("fraud"),
        create_pipeline_version("fraud", model_step("scaler")),
        create_pipeline_version("fraud", model_step("scaler", input_map={"x": "y"})),
        deploy("fraud", 1))))


def test_a_replay_is_started_with_its_fixed_ranges(platform: Registry) -> None:
    e = event(start_replay("r1", "fraud", 2, ((0, 5, 10), (1, 0, 3)), from_time=T0))
    state = given(platform, e)
    r = state.replays[("ws", "r1")]
    assert (r.pipeline, r.version, r.ranges, r.to_topic, r.running) == (
        "fraud", 2, ((0, 5, 10), (1, 0, 3)), None, True)
    assert r.records == 8 and r.from_time == T0 and r.to_time is None
    assert result_of(platform, state, e) == {"replay": "r1", "pipeline": "fraud",
                                             "version": "2", "records": "8"}
    # Any version, deployed or not; the deployment is not touched.
    assert state.deployments == platform.deployments


@pytest.mark.parametrize(("action", "mention"), [
    (start_replay("r1", "fraud", 3), "no version 3"),
    (start_replay("r1", "nope"), "unknown pipeline"),
    (start_replay("R 1", "fraud"), "invalid replay name"),
    (start_replay("r1", "fraud", ranges=()), "at least one partition"),
    (start_replay("r1", "fraud", ranges=((0, 9, 3),)), "no range"),
    (start_replay("r1", "fraud", ranges=((0, 0, 3), (0, 3, 4))), "one range"),
    # A side topic is a name under the pipeline's own replay prefix, never a whole topic:
    # neither this pipeline's live topics, nor another workspace's or pipeline's, nor one
    # whose .dead is the live dead-letter topic, nor the platform's.
    *((start_replay("r1", "fraud", to_topic=topic), "invalid side topic name") for topic in (
        "ns.ws.fraud.output", "inferstream.other.fraud.input", "inferstream.ws.other.output",
        "inferstream.ws.fraud", "ns.logs", "bad topic!", "Side", "", "-x", "x" * 64)),
])
def test_a_replay_that_cannot_work_is_refused(platform: Registry, action: tuple,
                                              mention: str) -> None:
    reject(platform, event(action), mention)


def test_a_side_topic_is_named_under_the_pipelines_replay_prefix(platform: Registry) -> None:
    state = given(platform, event(start_replay("r1", "fraud", to_topic="side")),
                  event(start_replay("r2", "fraud")))
    s = Settings(namespace="inferstream")
    named, default = state.replays[("ws", "r1")], state.replays[("ws", "r2")]
    assert (side_topic(s, named), dead_topic(s, named)) == (
        "inferstream.ws.fraud.replay.side", "inferstream.ws.fraud.replay.side.dead")
    assert (side_topic(s, default), dead_topic(s, default)) == (
        "inferstream.ws.fraud.replay.r2", "inferstream.ws.fraud.replay.r2.dead")


def test_replays_of_different_workspaces_never_share_a_group(platform: Registry) -> None:
    # Joined with '-', workspace a-b's replay c and workspace a's replay b-c were one group.
    s = Settings(namespace="inferstream")
    made = given(platform, event(start_replay("b-c", "fraud"))).replays[("ws", "b-c")]
    one, other = replace(made, workspace="a"), replace(made, workspace="a-b", replay_id="c")
    assert group(s, one) == transactional_id(s, one) == "inferstream.replay.a.b-c"
    assert group(s, other) == transactional_id(s, other) == "inferstream.replay.a-b.c"


def test_replays_are_stopped_resumed_and_named_once(platform: Registry) -> None:
    state = given(platform, event(start_replay("r1", "fraud")))
    reject(state, event(start_replay("r1", "fraud", 2)), "already exists")
    reject(state, event(resume_replay("r1")), "already running")
    stopped = given(state, event(stop_replay("r1")))
    assert not stopped.replays[("ws", "r1")].running
    reject(stopped, event(stop_replay("r1")), "already stopped")
    reject(stopped, event(stop_replay("r2")), "unknown replay")
    reject(stopped, event(stop_replay("r1"), actor="carol"), "not a member")
    assert given(stopped, event(resume_replay("r1"), actor="bob")).replays[
        ("ws", "r1")].running


def _old(type_: str, payload: dict, offset: int) -> ControlEvent:
    """An event as the release before replays wrote it."""
    schema = fastavro.parse_schema(json.loads(
        (HISTORY_DIR / f"inferstream.control.ControlEvent.{BEFORE_REPLAYS}.avsc").read_text()))
    out = io.BytesIO()
    fastavro.schemaless_writer(out, schema, {
        "event_id": f"e{offset}", "time": T0, "actor": "ann", "workspace": "ws",
        "payload": (NAMESPACE + type_, payload), "signature": None})
    return ControlEvent.from_bytes(MARKER + bytes.fromhex(BEFORE_REPLAYS) + out.getvalue(),
                                   offset=offset)


def test_events_written_before_replays_fold_as_they_did() -> None:
    actions = [create_user("ann"), create_user("bob"), create_workspace("ws"),
               add_member("bob"), SCALER, create_pipeline("fraud"),
               create_pipeline_version("fraud", model_step("scaler")),
               create_pipeline_version("fraud", model_step("scaler", input_map={"x": "y"})),
               deploy("fraud", 1), deploy("fraud", 2), rollback("fraud"), create_assay("drift"),
               undeploy("fraud")]
    old = [_old(t, p, i) for i, (t, p) in enumerate(actions)]
    now = [ControlEvent.from_bytes(ControlEvent(t, p, "ann", "ws", event_id=f"e{i}", time=T0)
                                   .to_bytes(), offset=i) for i, (t, p) in enumerate(actions)]
    assert [e.payload for e in old] == [e.payload for e in now]
    before, after = fold(old), fold(now)
    assert before == after and before.replays == {}
    assert len(before.applied) == len(actions)  # every one of them folds


def test_the_worker_runs_the_oldest_running_replay_not_done_here(platform: Registry) -> None:
    state = given(platform, *(replace(event(start_replay(r, "fraud")), time=T0.replace(hour=h))
                              for r, h in (("late", 14), ("early", 13), ("first", 12))))
    state = given(state, event(stop_replay("first")))
    assert next_replay(state, {}, 0.0).replay_id == "early"
    known = {("ws", "early"): ReplayState(done=True)}
    assert next_replay(state, known, 0.0).replay_id == "late"
    known[("ws", "late")] = ReplayState(error="broker away", retry_at=10.0)
    assert next_replay(state, known, 5.0) is None  # waits after a failure
    assert next_replay(state, known, 10.0).replay_id == "late"
    assert next_replay(given(state, event(resume_replay("first"))), known, 5.0
                       ).replay_id == "first"


def test_the_logs_of_a_replay_name_it_and_live_logs_name_none() -> None:
    x, y = np.ones((2, 3), np.float32), np.zeros((2,), np.int64)
    for replay in ("", "r1"):
        writer = LogWriter("ws", "fraud", 2, "w1", replay=replay)
        one = codec("InferenceLog").decode(writer.encode(1, "a", 1, "clf", 2, False,
                                                         {"x": x[:1]}, {"y": y[:1]}, 5, None))
        assert one["replay"] == replay
        (block,) = writer.blocks(1, 1, "clf", 2, False, 5, Call({"x": x}, [0, 1, 2],
                                                                 {"y": y}, [0, 1, 2]),
                                 ["a", "b"])
        assert [log["replay"] for log in block_logs(decode_block(block))] == [replay, replay]
    assert LogWriter("ws", "fraud", 2, "w1").encode(
        1, "a", 1, "clf", 2, False, {}, {}, 5, "failed")[2:10] == codec(
        "InferenceLog").fingerprint


def test_replay_status_is_one_command_under_two_names() -> None:
    from control.cli.pipelines import pipelines
    from control.cli.replays import replays
    by_name = {(group, c.name): c.callback for group, typer_app in (
        ("pipelines", pipelines), ("replays", replays)) for c in typer_app.registered_commands}
    assert by_name[("pipelines", "replay-status")] is by_name[("replays", "status")]
