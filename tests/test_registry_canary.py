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
from registry_events import rollback as roll_back

from agents.scheduling.canary_gates import Side, judge
from agents.scheduling.identity import Identity
from agents.serving.canary import bucket, in_canary, split
from control.cli.base import canary_line, to_json
from control.registry.canary import canary_event_id
from control.registry.events import ControlEvent
from control.registry.fold import apply, fold, result_of
from control.registry.state import ABORTED, PROMOTED, ROLLED_BACK, Canary, Registry
from schemas.errors import Rejected

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
    with pytest.raises(Rejected, match=r"replay|already"):
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
    back = ("RollbackCanary", {"pipeline": "fraud", "canary_id": "other", "step": 1,
                               "reason": "x"})
    reject(state, at(back, 70), "not other")
    state = apply(state, at(("RollbackCanary", {"pipeline": "fraud", "canary_id": cid,
                                                "step": 1, "reason": "dead-letter rate"}), 70))
    c = canary_of(state)
    assert (c.state, c.reason, state.deployments[KEY].version) == (
        ROLLED_BACK, "dead-letter rate", 1)
    reject(state, at(("RollbackCanary", {"pipeline": "fraud", "canary_id": cid, "step": 1,
                                         "reason": "again"}), 80), "no running canary")


def rollback(state: Registry, step: int, seconds: float) -> ControlEvent:
    """The controller's RollbackCanary of a step it judged (its deterministic id)."""
    c = canary_of(state)
    return at(("RollbackCanary", {"pipeline": "fraud", "canary_id": c.canary_id, "step": step,
                                  "reason": f"bad at {step}"}), seconds, "bob",
              canary_event_id(c.canary_id, "rollback", step))


def test_a_rollback_applies_only_to_the_step_it_judged(platform: Registry) -> None:
    """Two schedule owners judge step 1: A advances it, B rolls it back. Whichever comes
    second is refused; B's verdict on step 1 cannot end the canary at step 2."""
    state = apply(platform, at(start(), 0))
    a_advances, b_rolls_back = advance(state, 2, 61), rollback(state, 1, 61)
    advanced = apply(state, a_advances)
    reject(advanced, b_rolls_back, "at step 2", "cannot rollback at step 1")
    assert canary_of(advanced).running and canary_of(advanced).step == 2
    rolled_back = apply(state, b_rolls_back)
    reject(rolled_back, a_advances, "no running canary", "rolled back")
    # A rollback of step 2 is its own event, judged once step 2 is due.
    reject(advanced, rollback(advanced, 2, 90), "judged at")
    assert canary_of(apply(advanced, rollback(advanced, 2, 122))).state == ROLLED_BACK


def test_deploy_or_rollback_keeps_the_canary_it_replaced_ended(platform: Registry) -> None:
    state = apply(platform, at(start(), 0))  # v1 serves, the canary ramps v2
    deployed = apply(state, at(deploy("fraud", 3, rules=2), 5))
    c = canary_of(deployed)
    assert (c.canary_id, c.version, c.state, c.reason, c.ended_at, c.share) == (
        canary_of(state).canary_id, 2, ABORTED, "replaced: ann deployed v3", T0 + 5 * S, 0)
    # v3 serves (after v1), a canary ramps v2; rolling back to v1 ends it the same way
    running = apply(deployed, at(start(2), 6))
    rolled = apply(running, at(roll_back("fraud", rules=2), 7))
    c = canary_of(rolled)
    assert (rolled.deployments[KEY].version, c.canary_id, c.state, c.reason) == (
        1, canary_of(running).canary_id, ABORTED, "replaced: ann rolled back v1")
    # An ended canary stays as it ended.
    aborted = apply(state, at(("AbortCanary", {"pipeline": "fraud", "reason": "no"}), 3))
    assert canary_of(apply(aborted, at(deploy("fraud", 3), 5))) == canary_of(aborted)


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
           canary_event_id("c-1", "hold", 2), canary_event_id("c-1", "rollback", 2),
           canary_event_id("c-1", "rollback", 3), canary_event_id("c-2", "advance", 2)}
    assert len(ids) == 6


# -- the split ----------------------------------------------------------------------------------


def test_a_keyed_split_is_sticky_and_a_canary_key_stays_as_the_share_grows() -> None:
    keys = [f"user-{i}" for i in range(5000)]
    sides = {share: {k for k in keys if in_canary(k, share, 0.99)} for share in (5, 25, 50, 100)}
    assert sides[5] <= sides[25] <= sides[50] <= sides[100] == set(keys)
    for share, chosen in sides.items():
        assert abs(len(chosen) / len(keys) - share / 100) < 0.03, share
    assert bucket("user-1") == int.from_bytes(
        __import__("hashlib").blake2b(b"user-1", digest_size=8).digest(), "big") % 10_000


def test_a_keyed_split_keeps_each_value_on_its_side_as_the_share_grows() -> None:
    """split() by a hash key: the same records on the canary side in every batch and with
    any draws at a share, the canary side at 5% within the one at 25%, in proportion."""
    records = [{"user": i % 2000} for i in range(10_000)]
    sides = {}
    for share in (5, 25):
        first = split(records, share, "user", lambda m: m["user"], np.random.default_rng(1))
        again = split(records[::-1], share, "user", lambda m: m["user"],
                      np.random.default_rng(2))
        users = {m["user"] for m in first[1]}
        assert users == {m["user"] for m in again[1]}, share  # sticky, whatever the draws
        assert not users & {m["user"] for m in first[0]}  # a value takes one side
        assert abs(len(first[1]) / len(records) - share / 100) < 0.03, share
        sides[share] = users
    assert sides[5] < sides[25]


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
    (side(2, p99_ms=60.0), ["p99 time per record of v2 60.00 ms", "limit 7.00 ms"]),
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
    nobody = Identity(None, None)
    assert nobody.actor(platform, c.started_by) == "ann"
    assert nobody.actor(replace(platform, secured=True), c.started_by) is None  # logs, waits
    bot = Identity("canary-bot", key_of("canary-bot"))
    assert bot.actor(replace(platform, secured=True), c.started_by) == "canary-bot"
    e = ControlEvent("AbortCanary", {"pipeline": "fraud", "reason": None}, "canary-bot", "ws")
    assert bot.sign(e).signature is not None
    assert bot.sign(replace(e, actor="ann")).signature is None  # not the worker's to sign
