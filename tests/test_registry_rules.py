"""The registry's rules that act on alerts, and route pauses: accepted and rejected (no Kafka)."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from datetime import timedelta

import fastavro
import pytest
from registry_events import (
    CLASSIFIER,
    SCALER,
    T0,
    action_cause,
    create_assay,
    create_connection,
    create_orchestration,
    create_pipeline,
    create_pipeline_version,
    create_rule,
    delete_rule,
    deploy,
    event,
    given,
    model_step,
    pause_route,
    pause_rule,
    random_split,
    reject,
    resume_route,
    resume_rule,
    rollback,
    undeploy,
    upload_model,
    ws_members,
)

from control.registry.alert_rules import (
    action_event_id,
    action_of,
    alert_identity,
    cause_of,
    matching_rules,
)
from control.registry.events import NAMESPACE, ControlEvent
from control.registry.fold import apply, fold, result_of
from control.registry.state import AlertRule, Registry
from schemas.codec import HISTORY_DIR, MARKER

HOUR = timedelta(hours=1)
LATER = T0 + 3 * HOUR  # event time of the actions: after the alerts below


@pytest.fixture
def platform() -> Registry:
    """ws (ann owner, bob collaborator, carol no member): fraud v1 (scaler) and v2 (scaler ->
    classifier), v2 deployed after v1; assays drift and spare of fraud; pipeline split serves a
    three-way random split; orchestration nightly; pipeline other has an assay of its own."""
    return given(
        Registry(), *ws_members(), *(event(a) for a in (
            SCALER, CLASSIFIER, create_pipeline("fraud"),
            create_pipeline_version("fraud", model_step("scaler")),
            create_pipeline_version("fraud", model_step("scaler"), model_step("classifier")),
            deploy("fraud", 1), deploy("fraud", 2),
            create_assay("drift"), create_assay("spare"),
            create_pipeline("other"), create_pipeline_version("other", model_step("scaler")),
            create_assay("elsewhere", "other"),
            upload_model("b", b"b v1", inputs=["x"], outputs=["y"]),
            create_pipeline("split"),
            create_pipeline_version("split", random_split(
                (1.0, model_step("scaler")), (1.0, model_step("b")), (2.0, model_step("b")))),
            deploy("split"),
            create_connection("inbox"), create_connection("outbox"),
            create_orchestration("nightly", parameters={"day": None}),
        )))


def with_rule(state: Registry, *actions: tuple, at: object = T0) -> Registry:
    return given(state, *(replace(event(a), time=at) for a in actions))


def acted(action: tuple, at: object = LATER, actor: str = "bob") -> ControlEvent:
    return replace(event(action, actor=actor), time=at)


def rule_of(state: Registry, name: str) -> AlertRule:
    return state.alert_rules[("ws", name)]


def cause(state: Registry, name: str, **alert: object) -> dict:
    rule = rule_of(state, name)
    assay_id = state.assays[("ws", "drift")].assay_id
    return action_cause(name, rule.rule_id, assay_id=assay_id, **alert)


# -- creating rules ----------------------------------------------------------------------------


def test_a_rule_is_created_with_its_assay_id_and_defaults(platform: Registry) -> None:
    state = with_rule(platform, create_rule("back", assay="drift", on=("warning", "alert")))
    rule = rule_of(state, "back")
    assert (rule.pipeline, rule.assay, rule.assay_id) == (
        "fraud", "drift", platform.assays[("ws", "drift")].assay_id)
    assert rule.on == ("warning", "alert") and rule.active and rule.fired_count == 0
    assert rule.rule_id.startswith("back-") and rule.created_by == "ann"


@pytest.mark.parametrize(("action", "mentions"), [
    (create_rule("x", "nope"), ("unknown pipeline 'nope'",)),
    (create_rule("x", assay="ghost"), ("unknown assay 'ghost'",)),
    (create_rule("x", assay="elsewhere"), ("monitors pipeline 'other'", "not 'fraud'")),
    (create_rule("x", on=()), ("warning and/or alert",)),
    (create_rule("x", on=("alert", "panic")), ("'panic'",)),
    (create_rule("x", action="explode"), ("unknown action 'explode'",)),
    (create_rule("x", version=9), ("no version 9", "1..2")),
    (create_rule("x", action="undeploy", version=1), ("undeploy takes", "version")),
    (create_rule("x", action="pause_route", step=1, route=1), ("not a split",)),
    (create_rule("x", "split", action="pause_route", step=1), ("route",)),
    (create_rule("x", "split", action="pause_route", step=1, route=4), ("routes 1..3", "not 4")),
    (create_rule("x", "other", action="pause_route", step=1, route=1), ("not deployed",)),
    (create_rule("x", action="run_task", orchestration="ghost"), ("unknown orchestration",)),
    (create_rule("x", action="run_task", orchestration="nightly"), ("needs arguments ['day']",)),
    (create_rule("x", cooldown_s=-1), ("cool-down -1 s",)),
    (create_rule("Bad Name"), ("invalid rule name",)),
])
def test_a_rule_that_cannot_work_is_refused_with_the_reason(
    platform: Registry, action: tuple, mentions: tuple[str, ...]
) -> None:
    reject(platform, event(action), *mentions)


def test_rules_are_paused_resumed_and_deleted_once_each(platform: Registry) -> None:
    state = with_rule(platform, create_rule("back"))
    reject(state, event(create_rule("back")), "already exists")
    reject(state, event(create_rule("x"), actor="carol"), "not a member")
    paused = given(state, event(pause_rule("back")))
    assert not rule_of(paused, "back").active
    reject(paused, event(pause_rule("back")), "already paused")
    resumed = given(paused, event(resume_rule("back")))
    assert rule_of(resumed, "back").active
    reject(resumed, event(resume_rule("back")), "already active")
    gone = given(resumed, event(delete_rule("back")))
    assert ("ws", "back") not in gone.alert_rules
    reject(gone, event(delete_rule("back")), "unknown rule 'back'", "it has none")


# -- actions with a cause --------------------------------------------------------------------


def test_an_alert_fires_its_rule_once_and_the_rule_records_it(platform: Registry) -> None:
    state = with_rule(platform, create_rule("back", assay="drift"))
    why = cause(state, "back")
    action = acted(rollback("fraud", cause=why))
    after = given(state, action)
    assert after.deployments[("ws", "fraud")].version == 1
    made = result_of(state, after, action)  # the status record: what the audit log shows
    assert made["version"] == "1" and made["rule"] == "back"
    assert made["cause"].startswith(f"alert of assay {why['assay_id']} on pipeline fraud, "
                                    f"window {T0.isoformat()}") and "psi 0.4 reached 0.25" \
        in made["cause"]
    rule = rule_of(after, "back")
    assert rule.fired_count == 1 and rule.last_fired_at == LATER
    assert rule.last_alert == alert_identity(why["assay_id"], T0, "alert") in rule.fired

    # The same alert again, under another event id (a second executor's, say): refused.
    again = given(after, event(deploy("fraud", 2)))
    reject(again, acted(rollback("fraud", cause=why)), "already fired rule 'back'", "once")
    # Another window's alert fires it again.
    later = given(again, acted(rollback("fraud", cause=cause(state, "back",
                                                            window_start=T0 + HOUR))))
    assert rule_of(later, "back").fired_count == 2


def test_an_alert_of_a_window_before_the_current_deployment_does_not_act(
        platform: Registry) -> None:
    """Late labels can alert a window that a version rolled back since was serving: acting on
    it would roll back the good version too."""
    state = with_rule(platform, create_rule("back"))
    state = given(state, acted(rollback("fraud", cause=cause(state, "back"))))  # to v1, LATER
    older = cause(state, "back", window_start=T0 - HOUR)  # ended at T0, before LATER
    reject(state, acted(rollback("fraud", cause=older), at=LATER + HOUR),
           "before version 1 of 'fraud' was deployed", "does not act on it")
    # A window that saw the current deployment still acts (here: undeploys, by another rule).
    state = with_rule(state, create_rule("stop", action="undeploy"))
    fresh = cause(state, "stop", window_start=LATER)
    assert not given(state, acted(undeploy("fraud", cause=fresh), at=LATER + 2 * HOUR)
                     ).deployments[("ws", "fraud")].active


def test_a_rule_in_its_cool_down_or_paused_does_not_fire(platform: Registry) -> None:
    state = with_rule(platform, create_rule("back", cooldown_s=3600))
    state = given(state, acted(rollback("fraud", cause=cause(state, "back"))),
                  event(deploy("fraud", 2)))
    second = cause(state, "back", window_start=T0 + HOUR)
    reject(state, acted(rollback("fraud", cause=second), at=LATER + HOUR / 2),
           "cool-down until", (LATER + HOUR).isoformat())
    assert given(state, acted(rollback("fraud", cause=second), at=LATER + HOUR))

    paused = given(state, event(pause_rule("back")))
    reject(paused, acted(rollback("fraud", cause=second), at=LATER + 2 * HOUR),
           "rule 'back' is paused")


@pytest.mark.parametrize(("action", "alert", "mentions"), [
    (rollback("fraud"), {"status": "warning"}, ("acts on alert", "not on 'warning'")),
    (rollback("fraud"), {"pipeline": "other"}, ("pipeline 'fraud'", "not 'other'")),
    (undeploy("fraud"), {}, ("acts by rollback", "not by Undeploy")),
    (rollback("split"), {}, ("acts on pipeline 'fraud'", "not on 'split'")),
    (rollback("fraud"), {"window_start": T0 - 5 * HOUR}, ("after the alert",)),
])
def test_an_action_that_does_not_fit_its_rule_is_refused(
    platform: Registry, action: tuple, alert: dict, mentions: tuple[str, ...]
) -> None:
    state = with_rule(platform, create_rule("back", assay="drift"), at=T0 - HOUR)
    why = {**cause(state, "back"), **alert}
    if "window_start" in alert:  # an alert scored before the rule was made
        why["alert_time"] = alert["window_start"] + HOUR
    type_, payload = action
    reject(state, acted((type_, {**payload, "cause": why})), *mentions)


def test_an_action_of_a_deleted_or_recreated_rule_is_refused(platform: Registry) -> None:
    state = with_rule(platform, create_rule("back"))
    why = cause(state, "back")
    gone = given(state, event(delete_rule("back")))
    reject(gone, acted(rollback("fraud", cause=why)), "'back'", "does not have")
    again = with_rule(gone, create_rule("back"))
    reject(again, acted(rollback("fraud", cause=why)), "does not have")


def test_the_rule_only_needs_an_assay_of_its_pipeline_when_it_names_none(
        platform: Registry) -> None:
    state = with_rule(platform, create_rule("any", action="undeploy"))
    spare = {**cause(state, "any"), "assay_id": platform.assays[("ws", "spare")].assay_id}
    after = given(state, acted(undeploy("fraud", cause=spare)))
    assert not after.deployments[("ws", "fraud")].active
    named = with_rule(platform, create_rule("drift-only", assay="drift"))
    reject(named, acted(rollback("fraud", cause={**spare, "rule": "drift-only", "rule_id":
                                                 rule_of(named, "drift-only").rule_id})),
           "alerts of assay 'drift'")


def test_a_run_task_rule_creates_a_run_once_task_named_after_the_alert(
        platform: Registry) -> None:
    state = with_rule(platform, create_rule("rescore", action="run_task",
                                            orchestration="nightly", arguments={"day": "x"}))
    rule = rule_of(state, "rescore")
    alert = {"assay_id": "drift-1", "window_start": T0, "window_end": T0 + HOUR,
             "status": "alert", "score": 0.5, "threshold": 0.25, "metric": "psi",
             "time": T0 + HOUR, "pipeline": "fraud", "workspace": "ws"}
    type_, payload = action_of(rule, cause_of(rule, alert))
    assert type_ == "CreateTask" and payload["schedule"] is None
    after = given(state, ControlEvent.from_bytes(ControlEvent(
        type_, payload, "bob", "ws", event_id=action_event_id(rule, alert),
        time=LATER).to_bytes()))
    task = after.tasks[("ws", payload["name"])]
    assert task.once and task.arguments == {"day": "x"} and task.event_id == \
        action_event_id(rule, alert)
    assert payload["name"].startswith("rescore-") and rule_of(after, "rescore").fired_count == 1


def test_action_ids_depend_on_the_rule_and_the_alert_only(platform: Registry) -> None:
    state = with_rule(platform, create_rule("back"), create_rule("other-rule"))
    back, other = rule_of(state, "back"), rule_of(state, "other-rule")
    alert = {"assay_id": "a-1", "window_start": T0, "status": "alert"}
    assert action_event_id(back, alert) == action_event_id(back, {**alert, "score": 9})
    assert len({action_event_id(back, alert), action_event_id(other, alert),
                action_event_id(back, {**alert, "status": "warning"}),
                action_event_id(back, {**alert, "window_start": T0 + HOUR})}) == 4


def test_matching_rules_are_the_active_ones_of_the_alert(platform: Registry) -> None:
    state = with_rule(platform, create_rule("a", assay="drift"), create_rule(
        "b", on=("warning",)), create_rule("c"), create_rule("d"), pause_rule("d"))
    drift = platform.assays[("ws", "drift")].assay_id
    alert = {"workspace": "ws", "pipeline": "fraud", "assay_id": drift, "status": "alert"}
    assert [r.name for r in matching_rules(state, alert)] == ["a", "c"]
    assert [r.name for r in matching_rules(state, {**alert, "status": "warning"})] == ["b"]
    assert [r.name for r in matching_rules(state, {**alert, "assay_id": "spare-1"})] == ["c"]
    assert not list(matching_rules(state, {**alert, "workspace": "lab"}))


# -- old events, route pauses ----------------------------------------------------------------


def test_events_written_before_causes_existed_fold_as_they_did(platform: Registry) -> None:
    """A Rollback written with the ControlEvent schema of before (no cause) is read with cause
    null and folds exactly as an operator's rollback."""
    old = json.loads((HISTORY_DIR / "inferstream.control.ControlEvent.1556749a4fd41613.avsc"
                      ).read_text())
    parsed = fastavro.parse_schema(old)
    out = io.BytesIO()
    fastavro.schemaless_writer(out, parsed, {
        "event_id": "old-rollback", "time": LATER, "actor": "bob", "workspace": "ws",
        "payload": (NAMESPACE + "Rollback", {"pipeline": "fraud", "version": None,
                                             "rules": 1}), "signature": None})
    written = ControlEvent.from_bytes(MARKER + bytes.fromhex("1556749a4fd41613")
                                      + out.getvalue(), offset=99)
    assert written.payload["cause"] is None
    now = ControlEvent.from_bytes(ControlEvent(
        "Rollback", {"pipeline": "fraud", "version": None, "rules": 1, "cause": None}, "bob",
        "ws", event_id="old-rollback", time=LATER).to_bytes(), offset=99)
    assert apply(platform, written) == apply(platform, now)
    assert apply(platform, written).deployments[("ws", "fraud")].version == 1


def test_a_paused_route_is_kept_in_the_deployment_until_the_next_deploy(
        platform: Registry) -> None:
    state = given(platform, event(pause_route("split", 1, 2)))
    assert state.deployments[("ws", "split")].paused_routes == {(1, 2)}
    reject(state, event(pause_route("split", 1, 2)), "already paused")
    state = given(state, event(pause_route("split", 1, 3)))
    reject(state, event(pause_route("split", 1, 1)), "last open route")
    reject(state, event(pause_route("split", 2, 1)), "steps 1..1")
    reject(state, event(pause_route("fraud", 1, 1)), "not a split")
    reject(state, event(resume_route("split", 1, 1)), "already open")
    resumed = given(state, event(resume_route("split", 1, 3)))
    assert resumed.deployments[("ws", "split")].paused_routes == {(1, 2)}
    redeployed = given(resumed, event(deploy("split")))
    assert redeployed.deployments[("ws", "split")].paused_routes == frozenset()


def test_a_rule_pauses_a_route(platform: Registry) -> None:
    state = with_rule(platform, create_rule("canary", "split", "pause_route", step=1, route=3))
    rule = rule_of(state, "canary")
    why = action_cause("canary", rule.rule_id, pipeline="split")
    after = given(state, acted(pause_route("split", 1, 3, cause=why)))
    assert after.deployments[("ws", "split")].paused_routes == {(1, 3)}
    reject(after, acted(pause_route("split", 1, 2, cause=why)), "already fired")


def test_a_replay_of_the_log_gives_the_same_rules(platform: Registry) -> None:
    events = [replace(event(create_rule("back"), offset=1000), time=T0)]
    state = fold(events, platform)
    why = cause(state, "back")
    events.append(replace(acted(rollback("fraud", cause=why)), offset=1001))
    events.append(replace(acted(rollback("fraud", cause=why)), offset=1002))  # refused
    assert fold(events, platform) == fold(events, platform)
    assert rule_of(fold(events, platform), "back").fired_count == 1
