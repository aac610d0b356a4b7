"""The registry's rules that act on assay alerts, and route pauses (pure, like the fold).

A rule (CreateRule) says: when an assay of a pipeline raises an alert (or warning), publish an
action, which is itself a control event of an existing type (Rollback, Undeploy, PauseRoute,
CreateTask) carrying a `cause`: the rule and the alert. `caused` wraps those types' handlers:
an event with a cause must match an active rule that this alert has not fired yet, out of its
cool-down, and the firing is recorded in the rule. An event without a cause folds as before.

The rule executor (agents/scheduling/rule_executor.py) builds the action with `action_of`
under the id `action_event_id`, a function of the rule and the alert only, so every worker
that sees the alert, and every restart, writes the same event, which the fold applies once.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from control.registry.chains import RULES
from control.registry.events import ControlEvent
from control.registry.rules import check_name, member, pipeline_of
from control.registry.state import (
    ACTIONS,
    PAUSE_ROUTE,
    ROLLBACK,
    RUN_TASK,
    UNDEPLOY,
    AlertRule,
    KeySplit,
    RandomSplit,
    Registry,
    Workspace,
)
from schemas.errors import Rejected

Handler = Callable[[Registry, ControlEvent, Mapping[str, Any]], Registry]
STATUSES = ("warning", "alert")
EVENT_OF_ACTION = {ROLLBACK: "Rollback", UNDEPLOY: "Undeploy", PAUSE_ROUTE: "PauseRoute",
                   RUN_TASK: "CreateTask"}
MAX_COOLDOWN_S = 366 * 86_400
# uuid5 namespace of action event ids; fixed forever: changing it would let a restarted
# executor publish an alert's action a second time under a new id.
ACTIONS_NAMESPACE = uuid.UUID("6f1c3a52-2d0e-5b8e-9a57-1e8d1c0b7a41")


# -- alerts and their actions (shared with the executor) -------------------------------------


def alert_identity(assay_id: str, window_start: datetime, status: str) -> str:
    """An alert's identity: a window scored again to the same status is the same alert."""
    return f"{assay_id}@{window_start.isoformat()}#{status}"


def cause_of(rule: AlertRule, alert: Mapping[str, Any]) -> dict[str, Any]:
    """The ActionCause record of `rule` fired by an AssayAlert record."""
    return {
        "rule": rule.name, "rule_id": rule.rule_id, "assay_id": alert["assay_id"],
        "pipeline": alert["pipeline"], "status": alert["status"],
        "window_start": alert["window_start"], "window_end": alert["window_end"],
        "score": float(alert["score"]), "threshold": float(alert["threshold"]),
        "metric": alert["metric"], "alert_time": alert["time"],
    }


def describe(cause: Mapping[str, Any]) -> str:
    """The cause in a line, for the audit log: which alert fired which rule."""
    return (f"{cause['status']} of assay {cause['assay_id']} on pipeline {cause['pipeline']}, "
            f"window {cause['window_start'].isoformat()} to {cause['window_end'].isoformat()}: "
            f"{cause['metric']} {cause['score']:.6g} reached {cause['threshold']:.6g}; "
            f"rule {cause['rule']} ({cause['rule_id']})")


def action_event_id(rule: AlertRule, alert: Mapping[str, Any]) -> str:
    """The id of the action `rule` publishes for `alert`: the same in every worker and run."""
    identity = alert_identity(alert["assay_id"], alert["window_start"], alert["status"])
    return uuid.uuid5(ACTIONS_NAMESPACE, f"{rule.rule_id}|{identity}").hex


def action_of(rule: AlertRule, cause: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The event type and payload that carry out `rule`, with its cause."""
    match rule.action:
        case "rollback":
            payload = {"pipeline": rule.pipeline, "version": rule.version, "rules": RULES}
        case "undeploy":
            payload = {"pipeline": rule.pipeline}
        case "pause_route":
            payload = {"pipeline": rule.pipeline, "step": rule.step, "route": rule.route}
        case _:
            payload = {"name": task_name(rule, cause), "orchestration": rule.orchestration,
                       "version": None, "schedule": None, "timezone": "UTC",
                       "arguments": dict(rule.arguments)}
    return EVENT_OF_ACTION[rule.action], {**payload, "cause": dict(cause)}


ON_DEPLOYMENT = ("Rollback", "Undeploy", "PauseRoute")  # actions that change what is served


def task_name(rule: AlertRule, cause: Mapping[str, Any]) -> str:
    """A run-once task's name: the rule's and a digest of the alert, unique and Kafka-safe."""
    identity = alert_identity(cause["assay_id"], cause["window_start"], cause["status"])
    digest = uuid.uuid5(ACTIONS_NAMESPACE, f"{rule.rule_id}|{identity}").hex[:10]
    return f"{rule.name[:50]}-{digest}"


def matching_rules(registry: Registry, alert: Mapping[str, Any]) -> Iterator[AlertRule]:
    """The active rules of the alert's workspace and pipeline whose assay and status it fits."""
    for (workspace, _), rule in sorted(registry.alert_rules.items()):
        if (workspace == alert["workspace"] and rule.active
                and rule.pipeline == alert["pipeline"] and alert["status"] in rule.on
                and rule.assay_id in (None, alert["assay_id"])):
            yield rule


def check_firing(rule: AlertRule, cause: Mapping[str, Any], at: datetime) -> None:
    """Raise Rejected unless `cause` may fire `rule` at event time `at`."""
    what = f"rule {rule.name!r}"
    if not rule.active:
        raise Rejected(f"{what} is paused; resume it to let alerts fire it")
    if cause["pipeline"] != rule.pipeline:
        raise Rejected(f"{what} acts on pipeline {rule.pipeline!r}, not {cause['pipeline']!r}")
    if rule.assay_id is not None and cause["assay_id"] != rule.assay_id:
        raise Rejected(f"{what} acts on alerts of assay {rule.assay!r} ({rule.assay_id}), "
                       f"not of {cause['assay_id']!r}")
    if cause["status"] not in rule.on:
        raise Rejected(f"{what} acts on {' and '.join(rule.on)}, not on {cause['status']!r}")
    if cause["alert_time"] < rule.created_at:
        raise Rejected(f"{what} was created at {rule.created_at.isoformat()}, after the alert "
                       f"({cause['alert_time'].isoformat()}); it acts on later alerts only")
    identity = alert_identity(cause["assay_id"], cause["window_start"], cause["status"])
    if identity in rule.fired:
        raise Rejected(f"alert {identity} already fired {what}; an alert fires a rule once")
    if rule.last_fired_at is not None:
        until = rule.last_fired_at + timedelta(seconds=rule.cooldown_s)
        if at < until:
            raise Rejected(f"{what} is in its cool-down until {until.isoformat()} (it fired "
                           f"at {rule.last_fired_at.isoformat()}); alert {identity} is not "
                           "acted on")


def _check_current(state: Registry, rule: AlertRule, cause: Mapping[str, Any]) -> None:
    """An alert acts on a deployment only if its window saw it: labels that come late can
    alert a window of a version that has been rolled back (or replaced) since, which says
    nothing of what is served now."""
    deployment = state.deployments.get((rule.workspace, rule.pipeline))
    if deployment is not None and deployment.deployed_at >= cause["window_end"]:
        raise Rejected(
            f"the alert's window ended at {cause['window_end'].isoformat()}, before version "
            f"{deployment.version} of {rule.pipeline!r} was deployed "
            f"({deployment.deployed_at.isoformat()}): it says nothing of what is served now, "
            f"so rule {rule.name!r} does not act on it")


def caused(handler: Handler, event_type: str) -> Handler:
    """`handler` for events that a rule may publish: with a cause, checked and recorded."""

    def checked(state: Registry, event: ControlEvent, p: Mapping[str, Any]) -> Registry:
        cause = p.get("cause")
        if cause is None:
            return handler(state, event, p)  # an operator's event, folded as it always was
        ws = member(state, event)
        rule = state.alert_rules.get((ws.name, cause["rule"]))
        if rule is None or rule.rule_id != cause["rule_id"]:
            raise Rejected(f"{event_type} names rule {cause['rule']!r} ({cause['rule_id']}) as "
                           f"its cause, which workspace {ws.name!r} does not have (deleted?)")
        if EVENT_OF_ACTION[rule.action] != event_type:
            raise Rejected(f"rule {rule.name!r} acts by {rule.action}, not by {event_type}")
        if p.get("pipeline", rule.pipeline) != rule.pipeline:
            raise Rejected(f"rule {rule.name!r} acts on pipeline {rule.pipeline!r}, "
                           f"not on {p['pipeline']!r}")
        check_firing(rule, cause, event.time)
        if event_type in ON_DEPLOYMENT:
            _check_current(state, rule, cause)
        after = handler(state, event, p)
        identity = alert_identity(cause["assay_id"], cause["window_start"], cause["status"])
        rule = replace(rule, fired=rule.fired | {identity}, fired_count=rule.fired_count + 1,
                       last_fired_at=event.time, last_alert=identity)
        return replace(after, alert_rules={**after.alert_rules, (ws.name, rule.name): rule})

    return checked


# -- rules -------------------------------------------------------------------------------------


def _create_rule(state: Registry, event: ControlEvent, p: Mapping[str, Any]) -> Registry:
    ws = member(state, event)
    check_name("rule", p["name"])
    key = (ws.name, p["name"])
    if key in state.alert_rules:
        raise Rejected(f"rule {p['name']!r} already exists in workspace {ws.name!r}; pick "
                       "another name, or delete it first")
    pipeline = pipeline_of(state, ws, p["pipeline"])
    assay_id = None
    if p["assay"] is not None:
        assay = state.assays.get((ws.name, p["assay"]))
        if assay is None:
            raise Rejected(f"unknown assay {p['assay']!r} in workspace {ws.name!r}")
        if assay.config.pipeline != pipeline.name:
            raise Rejected(f"assay {assay.name!r} monitors pipeline {assay.config.pipeline!r}, "
                           f"not {pipeline.name!r}; a rule acts on its own pipeline's alerts")
        assay_id = assay.assay_id
    on = tuple(s for s in STATUSES if s in p["on"])
    if not on or len(on) != len(set(p["on"])):
        raise Rejected(f"a rule fires on {' and/or '.join(STATUSES)}, not on {list(p['on'])}")
    if not 0 <= p["cooldown_s"] <= MAX_COOLDOWN_S:
        raise Rejected(f"cool-down {p['cooldown_s']} s is outside 0..{MAX_COOLDOWN_S} s")
    _check_action(state, ws, p)
    rule = AlertRule(
        workspace=ws.name, name=p["name"], rule_id=f"{p['name']}-{event.event_id[:8]}",
        pipeline=pipeline.name, assay=p["assay"], assay_id=assay_id, on=on,
        action=p["action"], version=p["version"], step=p["step"], route=p["route"],
        orchestration=p["orchestration"], arguments=dict(p["arguments"]),
        cooldown_s=p["cooldown_s"], active=True, created_by=event.actor, created_at=event.time,
    )
    return replace(state, alert_rules={**state.alert_rules, key: rule})


def _check_action(state: Registry, ws: Workspace, p: Mapping[str, Any]) -> None:
    """What the action needs exists now (it is checked again when the rule fires)."""
    action, pipeline = p["action"], state.pipelines[(ws.name, p["pipeline"])]
    if action not in ACTIONS:
        raise Rejected(f"unknown action {action!r}; a rule can {', '.join(ACTIONS)}")
    given = {f for f in ("version", "step", "route", "orchestration") if p[f] is not None}
    needs = {ROLLBACK: set(), UNDEPLOY: set(), PAUSE_ROUTE: {"step", "route"},
             RUN_TASK: {"orchestration"}}[action]
    allowed = needs | ({"version"} if action == ROLLBACK else set())
    if needs - given or given - allowed:
        raise Rejected(f"action {action} takes {sorted(allowed) or 'nothing more'}; "
                       f"got {sorted(given) or 'nothing'}")
    if p["arguments"] and action != RUN_TASK:
        raise Rejected(f"action {action} takes no task arguments")
    if action == ROLLBACK and p["version"] is not None and pipeline.version(p["version"]) is None:
        raise Rejected(f"pipeline {pipeline.name!r} has no version {p['version']} to roll back "
                       f"to (it has 1..{len(pipeline.versions)})")
    if action == PAUSE_ROUTE:
        deployment = state.deployments.get((ws.name, pipeline.name))
        if deployment is None or not deployment.active:
            raise Rejected(f"pipeline {pipeline.name!r} is not deployed, so it has no route to "
                           "pause; deploy it first")
        _split_route(state, ws.name, pipeline.name, deployment.version, p["step"], p["route"])
    if action == RUN_TASK:
        found = state.orchestrations.get((ws.name, p["orchestration"]))
        if found is None:
            raise Rejected(f"unknown orchestration {p['orchestration']!r} in workspace "
                           f"{ws.name!r}; create it first")
        missing = sorted(n for n, default in found.latest.parameters.items()
                         if default is None and n not in p["arguments"])
        if missing:
            raise Rejected(f"orchestration {found.name!r} needs arguments {missing}")


def _rule(state: Registry, ws: Workspace, name: str) -> AlertRule:
    rule = state.alert_rules.get((ws.name, name))
    if rule is None:
        known = sorted(n for w, n in state.alert_rules if w == ws.name)
        raise Rejected(f"unknown rule {name!r} in workspace {ws.name!r}; it has "
                       + (str(known) if known else "none"))
    return rule


def _set_active(active: bool) -> Handler:
    def handler(state: Registry, event: ControlEvent, p: Mapping[str, Any]) -> Registry:
        rule = _rule(state, member(state, event), p["name"])
        if rule.active == active:
            raise Rejected(f"rule {rule.name!r} is already {'active' if active else 'paused'}")
        rule = replace(rule, active=active)
        return replace(state, alert_rules={**state.alert_rules, (rule.workspace, rule.name): rule})

    return handler


def _delete_rule(state: Registry, event: ControlEvent, p: Mapping[str, Any]) -> Registry:
    rule = _rule(state, member(state, event), p["name"])
    key = (rule.workspace, rule.name)
    return replace(state, alert_rules={k: r for k, r in state.alert_rules.items() if k != key})


# -- routes ------------------------------------------------------------------------------------


def _split_route(state: Registry, ws: str, pipeline: str, number: int, step: int,
                 route: int) -> int:
    """How many routes the split `step` of the version has; Rejected unless `route` is one."""
    version = state.pipelines[(ws, pipeline)].versions[number - 1]
    if not 0 < step <= len(version.steps):
        raise Rejected(f"pipeline {pipeline!r} v{number} has steps 1..{len(version.steps)}, "
                       f"not {step}")
    split = version.steps[step - 1]
    if not isinstance(split, RandomSplit | KeySplit):
        raise Rejected(f"step {step} of pipeline {pipeline!r} v{number} is not a split, so it "
                       "has no route to pause")
    if not 0 < route <= len(split.routes):
        raise Rejected(f"step {step} of pipeline {pipeline!r} v{number} has routes "
                       f"1..{len(split.routes)}, not {route}")
    return len(split.routes)


def _route_paused(paused: bool) -> Handler:
    def handler(state: Registry, event: ControlEvent, p: Mapping[str, Any]) -> Registry:
        ws = member(state, event)
        pipeline = pipeline_of(state, ws, p["pipeline"])
        key = (ws.name, pipeline.name)
        deployment = state.deployments.get(key)
        if deployment is None or not deployment.active:
            raise Rejected(f"pipeline {pipeline.name!r} is not deployed")
        step, route = p["step"], p["route"]
        routes = _split_route(state, ws.name, pipeline.name, deployment.version, step, route)
        where = f"route {route} of step {step} of pipeline {pipeline.name!r}"
        now = deployment.paused_routes
        if ((step, route) in now) == paused:
            raise Rejected(f"{where} is already {'paused' if paused else 'open'}")
        after = now | {(step, route)} if paused else now - {(step, route)}
        split = state.pipelines[key].versions[deployment.version - 1].steps[step - 1]
        if isinstance(split, RandomSplit) and sum(s == step for s, _ in after) == routes:
            raise Rejected(f"{where} is its last open route; a split needs one to send records "
                           "to (undeploy the pipeline to stop it)")
        deployment = replace(deployment, paused_routes=frozenset(after))
        return replace(state, deployments={**state.deployments, key: deployment})

    return handler


RULE_HANDLERS: dict[str, Handler] = {
    "CreateRule": _create_rule,
    "PauseRule": _set_active(False),
    "ResumeRule": _set_active(True),
    "DeleteRule": _delete_rule,
    "PauseRoute": caused(_route_paused(True), "PauseRoute"),
    "ResumeRoute": _route_paused(False),
}
