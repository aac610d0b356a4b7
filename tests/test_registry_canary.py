"""Gated canaries without Kafka: the fold's rules, the split's share and stickiness, the gates."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import numpy as np
import pytest
from registry_events import (
    ADMIN,
    T0,
    create_assay,
    create_pipeline,
    create_pipeline_version,
    deploy,
    event,
    given,
    key_of,
    model_step,
    reject,
    undeploy,
    upload_model,
    ws_members,
)

from agents.scheduling.canary_controller import CanaryController
from agents.scheduling.canary_gates import Side, judge
from agents.scheduling.rule_executor import Identity
from agents.serving.canary import bucket, in_canary, split
from control.cli.base import canary_line, to_json
from control.registry.canary import canary_event_id
from control.registry.events import ControlEvent
from control.registry.fold import apply, fold, result_of
from control.registry.state import ABORTED, PROMOTED, ROLLED_BACK, Canary, Registry

S = timedelta(seconds=1)
KEY = ("ws", "fraud")


def start(version: int = 2, steps: tuple[int, ...] = (10, 50, 100), every_s: int = 60,
          **gates: object) -> tuple[str, dict]:
    return "StartCanary", {
        "pipeline": "fraud", "version": version, "steps": list(steps), "every_s": every_s,
        "hash_key": gates.pop("hash_key", None), "max_dead_letter_pp": 1.0,
        "max_error_pp": 1.0, "max_p99_ratio": 1.5, "p99_slack_ms": 5.0, "min_records": 100,
        "assays": [], **gates}


def at(action: tuple[str, dict], seconds: float, actor: str = ADMIN,
       event_id: str | None = None) -> ControlEvent:
    e = replace(event(action, actor=actor), time=T0 + seconds * S)
    return replace(e, event_id=event_id) if event_id else e


@pytest.fixture
def platform() -> Registry:
    """fraud v1 deployed; v2 and v3 exist (v3 identical to v1)."""
    return given(Registry(), *ws_members(), *(event(a) for a in (
        upload_model("scaler", b"s", inputs=["x"], outputs=["y"]),
        create_pipeline("fraud"),
        *(create_pipeline_version("fraud", model_step("scaler"), rules=2) for _ in range(3)),
        deploy("fraud", 1), create_assay("drift"))))


def canary_of(state: Registry) -> Canary:
    c = state.deployments[KEY].canary
    assert c is not None
    return c


def advance(state: Registry, step: int, seconds: float, fresh_id: bool = False
            ) -> ControlEvent:
    """The controller's AdvanceCanary (its deterministic id), or a copy under a new id."""
    c = canary_of(state)
    return at(("AdvanceCanary", {"pipeline": "fraud", "canary_id": c.canary_id, "step": step,
                                 "evidence": f"ok {step}"}), seconds, "bob",
              None if fresh_id else canary_event_id(c.canary_id, "advance", step))


def test_a_canary_advances_step_by_step_and_promotes_itself(platform: Registry) -> None:
    begun = at(start(), 0)
    state = apply(platform, begun)
    c = canary_of(state)
    assert result_of(platform, state, begun)["canary_id"] == c.canary_id
    assert (c.version, c.step, c.share, c.running, c.step_at) == (2, 1, 10, True, T0)
    assert state.deployments[KEY].version == 1  # the current version stays until promotion
    reject(state, advance(state, 2, 59), "judged at")  # before `every`
    reject(state, advance(state, 3, 61), "cannot advance to step 3")  # never skipped
    state = apply(state, advance(state, 2, 61))
    assert (canary_of(state).step, canary_of(state).share) == (2, 50)
    reject(state, advance(state, 2, 130), "already applied")  # the same event: once
    reject(state, advance(state, 2, 130, fresh_id=True), "cannot advance to step 2")
    state = apply(state, advance(state, 3, 125))
    d = state.deployments[KEY]
    assert (d.version, d.history, canary_of(state).state) == (2, (1, 2), PROMOTED)
    assert canary_of(state).share == 0
    reject(state, advance(state, 4, 300), "no running canary", "promoted")


def test_the_same_event_id_is_applied_once(platform: Registry) -> None:
    state = apply(platform, at(start(), 0))
    first = advance(state, 2, 61)
    state = apply(state, first)
    with pytest.raises(Exception, match=r"replay|already"):
        apply(state, first)


def test_a_hold_is_said_once_a_step_and_a_rollback_ends_it(platform: Registry) -> None:
    state = apply(platform, at(start(), 0))
    cid = canary_of(state).canary_id
    hold = ("HoldCanary", {"pipeline": "fraud", "canary_id": cid, "step": 1,
                           "reason": "too few records"})
    reject(state, at(hold, 30), "judged at")
    state = apply(state, at(hold, 60))
    assert canary_of(state).evidence == "too few records" and canary_of(state).step == 1
    reject(state, at(hold, 70), "already waits")
    back = ("RollbackCanary", {"pipeline": "fraud", "canary_id": "other", "reason": "x"})
    reject(state, at(back, 70), "not other")
    state = apply(state, at(("RollbackCanary", {"pipeline": "fraud", "canary_id": cid,
                                                "reason": "dead-letter rate"}), 70))
    c = canary_of(state)
    assert (c.state, c.reason, state.deployments[KEY].version) == (
        ROLLED_BACK, "dead-letter rate", 1)
    reject(state, at(("RollbackCanary", {"pipeline": "fraud", "canary_id": cid,
                                         "reason": "again"}), 80), "no running canary")


def test_an_operator_aborts_and_undeploy_ends_a_canary(platform: Registry) -> None:
    state = apply(platform, at(start(), 0))
    reject(state, at(start(3), 1), "already runs canary")
    aborted = apply(state, at(("AbortCanary", {"pipeline": "fraud", "reason": None}), 5))
    assert (canary_of(aborted).state, canary_of(aborted).reason) == (ABORTED, "aborted by ann")
    undeployed = apply(state, at(undeploy("fraud"), 5))
    assert canary_of(undeployed).state == ABORTED and not canary_of(undeployed).running
    # A new canary may start once the last one ended.
    assert canary_of(apply(aborted, at(start(3), 6))).version == 3


@pytest.mark.parametrize(("action", "mentions"), [
    (start(1), ["already serves version 1"]),
    (start(9), ["no version 9"]),
    (start(steps=(10, 50)), ["last step of 100"]),
    (start(steps=(50, 10, 100)), ["grow"]),
    (start(steps=(100,)), ["at least one step below 100"]),
    (start(every_s=0), ["1..", "not 0"]),
    (start(max_p99_ratio=0.5), ["at least 1"]),
    (start(min_records=0), ["min records 0"]),
    (start(assays=["nope"]), ["unknown assay 'nope'"]),
])
def test_a_canary_that_cannot_run_is_refused_with_the_reason(
        platform: Registry, action: tuple, mentions: list[str]) -> None:
    reject(platform, at(action, 0), *mentions)


def test_a_canary_needs_a_deployed_pipeline_and_a_collaborator(platform: Registry) -> None:
    reject(apply(platform, at(undeploy("fraud"), 0)), at(start(), 1), "not deployed")
    reject(platform, at(start(), 0, actor="carol"), "carol")


def test_events_before_canaries_fold_as_they_did(platform: Registry) -> None:
    """A deployment that never had a canary folds to what it was (canary None), and an old
    event stream's registry equals itself folded with the new handlers."""
    events = [event(deploy("fraud", 2)), event(undeploy("fraud"))]
    state = fold(events, platform)
    assert state.deployments[KEY].canary is None
    assert state.deployments[KEY].version == 2 and not state.deployments[KEY].active


def test_event_ids_are_a_function_of_canary_and_step() -> None:
    assert canary_event_id("c-1", "advance", 2) == canary_event_id("c-1", "advance", 2)
    ids = {canary_event_id("c-1", "advance", 2), canary_event_id("c-1", "advance", 3),
           canary_event_id("c-1", "hold", 2), canary_event_id("c-1", "rollback"),
           canary_event_id("c-2", "advance", 2)}
    assert len(ids) == 5


# -- the split ----------------------------------------------------------------------------------


def test_a_keyed_split_is_sticky_and_a_canary_key_stays_as_the_share_grows() -> None:
    keys = [f"user-{i}" for i in range(5000)]
    sides = {share: {k for k in keys if in_canary(k, share, 0.99)} for share in (5, 25, 50, 100)}
    assert sides[5] <= sides[25] <= sides[50] <= sides[100] == set(keys)
    for share, chosen in sides.items():
        assert abs(len(chosen) / len(keys) - share / 100) < 0.03, share
    assert all(bucket(k) == bucket(k) for k in keys[:10])
    assert bucket("user-1") == int.from_bytes(
        __import__("hashlib").blake2b(b"user-1", digest_size=8).digest(), "big") % 10_000


def test_an_unkeyed_split_draws_its_share_at_random() -> None:
    rng = np.random.default_rng(7)
    current, canary = split(list(range(10_000)), 25, None, lambda m: None, rng)
    assert abs(len(canary) - 2500) < 200 and len(current) + len(canary) == 10_000
    # a record without its key field draws too, even with a hash key given
    current, canary = split(list(range(10_000)), 25, "user", lambda m: None, rng)
    assert abs(len(canary) - 2500) < 200


# -- the gates ----------------------------------------------------------------------------------


def running(platform: Registry) -> Canary:
    return canary_of(apply(platform, at(start(), 0)))


def side(version: int, records: int = 1000, dead: int = 0, errors: int = 0,
         p99_ms: float = 2.0) -> Side:
    return Side(version, records, dead, records, errors, p99_ms)


def test_gates_advance_a_healthy_canary_with_the_evidence(platform: Registry) -> None:
    v = judge(running(platform), side(1), side(2, p99_ms=6.5))
    assert v.action == "advance" and "v2: 1000 records" in v.text and "v1:" in v.text


@pytest.mark.parametrize(("candidate", "mentions"), [
    (side(2, records=900, dead=100), ["dead-letter rate of v2 10.00%", "limit 1.00%"]),
    (side(2, errors=50), ["error rate of v2 5.00%", "limit 1.00%"]),
    (side(2, p99_ms=60.0), ["p99 batch time of v2 60.0 ms", "limit 7.0 ms"]),
])
def test_gates_roll_back_naming_the_measure_both_values_and_the_limit(
        platform: Registry, candidate: Side, mentions: list[str]) -> None:
    v = judge(running(platform), side(1), candidate)
    assert v.action == "rollback"
    for text in mentions:
        assert text in v.text, v.text
    assert "v1" in v.text


def test_gates_hold_with_too_few_records_and_roll_back_on_an_assay(platform: Registry) -> None:
    v = judge(running(platform), side(1), side(2, records=40))
    assert v.action == "hold" and "v2 had 40 of the 100 needed" in v.text
    v = judge(running(platform), side(1), side(2), ["assay drift is in alert"])
    assert v.action == "rollback" and "drift" in v.text


# -- what operators see ---------------------------------------------------------------------------


def test_get_and_status_say_where_a_canary_stands(platform: Registry) -> None:
    state = apply(platform, at(start(), 0))
    line = canary_line(canary_of(state))
    assert line.startswith(f"canary {canary_of(state).canary_id} → v2: step 1/3 at 10%")
    assert "next decision 2024-05-01 12:01:00 UTC" in line
    hold = ("HoldCanary", {"pipeline": "fraud", "canary_id": canary_of(state).canary_id,
                           "step": 1, "reason": "too few records to judge"})
    assert "waiting: too few records to judge" in canary_line(canary_of(apply(state,
                                                                               at(hold, 60))))
    ended = apply(state, at(("AbortCanary", {"pipeline": "fraud", "reason": "not today"}), 9))
    assert canary_line(canary_of(ended)).endswith("aborted at 2024-05-01 12:00:09 UTC: not today")
    shown = to_json(state.deployments[KEY])
    assert shown["canary"]["steps"] == [10, 50, 100] and shown["canary"]["gates"][
        "max_p99_ratio"] == 1.5


def test_the_controller_signs_as_the_worker_and_acts_on_an_open_platform_as_the_starter(
        platform: Registry) -> None:
    c = running(platform)
    controller = object.__new__(CanaryController)  # no Kafka clients: only whom it acts as
    controller.identity = Identity(None, None)
    assert controller._actor(platform, c) == "ann"
    assert controller._actor(replace(platform, secured=True), c) is None  # logs why, waits
    controller.identity = Identity("canary-bot", key_of("canary-bot"))
    assert controller._actor(replace(platform, secured=True), c) == "canary-bot"
