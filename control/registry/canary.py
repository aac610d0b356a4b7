"""The registry's gated canaries (pure, like the fold): start, advance, hold, roll back, abort.

An operator starts a canary (StartCanary) on a deployed pipeline: the deployment keeps its
version and serves the canary version to the first step's share of records. A worker's canary
controller (agents/scheduling/canary_controller.py) judges each step once it has lasted
`every_s` and publishes AdvanceCanary (the last step promotes: the deployment's version becomes
the canary's), HoldCanary (too few records to judge) or RollbackCanary, under the ids of
`canary_event_id`, a function of the canary and the step only, so every worker and every
restart writes the same event, which the fold applies once. The fold also checks the order: a
step advances only from the one before it, after its time, and only while the canary runs; a
rollback applies only to the step it judged.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import timedelta
from itertools import pairwise
from typing import Any

from control.registry.events import ControlEvent
from control.registry.rules import member, pipeline_of
from control.registry.state import (
    ABORTED,
    PROMOTED,
    ROLLED_BACK,
    Canary,
    CanaryGates,
    Deployment,
    Pipeline,
    Registry,
)
from schemas.errors import Rejected

Handler = Callable[[Registry, ControlEvent, Mapping[str, Any]], Registry]
Deployable = Callable[[Registry, Pipeline, int], None]
MAX_EVERY_S = 366 * 86_400
# uuid5 namespace of the controller's event ids; fixed forever: changing it would let a
# restarted controller publish a step's event a second time under a new id.
CANARY_NAMESPACE = uuid.UUID("0b7e3f55-8c1d-5d7a-b3f2-4a9e6c2d1f80")
ADVANCE, HOLD, ROLLBACK = "advance", "hold", "rollback"


def canary_event_id(canary_id: str, what: str, step: int) -> str:
    """The id of the controller's event `what` (advance, hold, rollback) for a step of a
    canary (for a rollback, the step judged): the same in every worker and run."""
    return uuid.uuid5(CANARY_NAMESPACE, f"{canary_id}|{what}|{step}").hex


def check_steps(steps: list[int] | tuple[int, ...]) -> tuple[int, ...]:
    """Percent shares, strictly increasing from 1 to the last, 100; Rejected otherwise."""
    given = tuple(steps)
    if not given or given[-1] != 100 or any(not 0 < s <= 100 for s in given) or any(
            a >= b for a, b in pairwise(given)):
        raise Rejected(f"canary steps {list(given)} must be percentages that grow from 1 up to "
                       "a last step of 100, e.g. 5,25,50,100")
    if len(given) < 2:
        raise Rejected("a canary needs at least one step below 100 before it is promoted, "
                       "e.g. 10,100; to switch at once, deploy the version")
    return given


def due_at(canary: Canary) -> Any:
    """When the canary's current step is judged."""
    assert canary.step_at is not None
    return canary.step_at + timedelta(seconds=canary.every_s)


def _running(state: Registry, event: ControlEvent, p: Mapping[str, Any]
             ) -> tuple[tuple[str, str], Deployment, Canary]:
    ws = member(state, event)
    pipeline = pipeline_of(state, ws, p["pipeline"])
    key = (ws.name, pipeline.name)
    deployment = state.deployments.get(key)
    canary = deployment.canary if deployment is not None else None
    if deployment is None or not deployment.active or canary is None or not canary.running:
        ended = (f"; its last canary {canary.canary_id} was {canary.state}"
                 if canary is not None and not canary.running else "")
        raise Rejected(f"pipeline {pipeline.name!r} has no running canary{ended}")
    if "canary_id" in p and p["canary_id"] != canary.canary_id:
        raise Rejected(f"pipeline {pipeline.name!r} runs canary {canary.canary_id}, not "
                       f"{p['canary_id']}")
    return key, deployment, canary


def _with(state: Registry, key: tuple[str, str], deployment: Deployment) -> Registry:
    return replace(state, deployments={**state.deployments, key: deployment})


def start_canary(state: Registry, event: ControlEvent, p: Mapping[str, Any],
                 deployable: Deployable) -> Registry:
    """StartCanary: the deployment serves the canary version to the first step's share."""
    ws = member(state, event)
    pipeline = pipeline_of(state, ws, p["pipeline"])
    key = (ws.name, pipeline.name)
    deployment = state.deployments.get(key)
    if deployment is None or not deployment.active:
        raise Rejected(f"pipeline {pipeline.name!r} is not deployed; a canary ramps a deployed "
                       "pipeline up to another version (deploy one first)")
    if deployment.canary is not None and deployment.canary.running:
        raise Rejected(f"pipeline {pipeline.name!r} already runs canary "
                       f"{deployment.canary.canary_id} (v{deployment.canary.version}); abort it "
                       "first")
    number = p["version"]
    if pipeline.version(number) is None:
        raise Rejected(f"pipeline {pipeline.name!r} has no version {number} (it has "
                       f"1..{len(pipeline.versions)})")
    if number == deployment.version:
        raise Rejected(f"pipeline {pipeline.name!r} already serves version {number}; a canary "
                       "ramps up another version")
    deployable(state, pipeline, number)
    steps = check_steps(p["steps"])
    if not 0 < p["every_s"] <= MAX_EVERY_S:
        raise Rejected(f"a canary step lasts 1..{MAX_EVERY_S} s, not {p['every_s']}")
    gates = CanaryGates(p["max_dead_letter_pp"], p["max_error_pp"], p["max_p99_ratio"],
                        p["p99_slack_ms"], p["min_records"], tuple(p["assays"]))
    _check_gates(state, ws.name, pipeline.name, gates)
    canary = Canary(
        canary_id=f"{pipeline.name}-{event.event_id[:8]}", version=number, steps=steps,
        every_s=p["every_s"], hash_key=p["hash_key"], gates=gates, started_by=event.actor,
        started_at=event.time, step=1, step_at=event.time,
    )
    return _with(state, key, replace(deployment, canary=canary))


def _check_gates(state: Registry, ws: str, pipeline: str, gates: CanaryGates) -> None:
    for name, value in (("max dead-letter rate increase (pp)", gates.max_dead_letter_pp),
                        ("max error rate increase (pp)", gates.max_error_pp),
                        ("p99 slack (ms)", gates.p99_slack_ms)):
        if not math.isfinite(value) or not 0 <= value <= 100_000:
            raise Rejected(f"canary gate {name} {value} must be a number from 0")
    if not math.isfinite(gates.max_p99_ratio) or gates.max_p99_ratio < 1:
        raise Rejected(f"canary gate p99 ratio {gates.max_p99_ratio} must be at least 1")
    if not 1 <= gates.min_records <= 10_000_000:
        raise Rejected(f"canary min records {gates.min_records} is outside 1..10000000")
    for name in gates.assays:
        assay = state.assays.get((ws, name))
        if assay is None:
            raise Rejected(f"unknown assay {name!r} in workspace {ws!r}; create it first")
        if assay.config.pipeline != pipeline:
            raise Rejected(f"assay {name!r} monitors pipeline {assay.config.pipeline!r}, not "
                           f"{pipeline!r}; a canary is gated by its own pipeline's assays")


def _check_due(canary: Canary, step: int, event: ControlEvent, what: str) -> None:
    if step != canary.step + (1 if what == ADVANCE else 0):
        raise Rejected(f"canary {canary.canary_id} is at step {canary.step} of "
                       f"{len(canary.steps)}; it cannot {what} {'to' if what == ADVANCE else 'at'}"
                       f" step {step} (a step advances only from the one before, once)")
    if event.time < due_at(canary):
        raise Rejected(f"canary {canary.canary_id} step {canary.step} is judged at "
                       f"{due_at(canary).isoformat()}, not at {event.time.isoformat()}")


def advance_canary(state: Registry, event: ControlEvent, p: Mapping[str, Any]) -> Registry:
    """AdvanceCanary: the next step's share, or at the last step the promotion."""
    key, deployment, canary = _running(state, event, p)
    if p["step"] > len(canary.steps):
        raise Rejected(f"canary {canary.canary_id} has steps 1..{len(canary.steps)}, not "
                       f"{p['step']}")
    _check_due(canary, p["step"], event, ADVANCE)
    canary = replace(canary, step=p["step"], step_at=event.time, evidence=p["evidence"])
    if canary.step < len(canary.steps):
        return _with(state, key, replace(deployment, canary=canary))
    promoted = replace(canary, state=PROMOTED, ended_at=event.time)
    return _with(state, key, replace(
        deployment, version=canary.version, history=(*deployment.history, canary.version),
        deployed_by=event.actor, deployed_at=event.time, paused_routes=frozenset(),
        canary=promoted))


def hold_canary(state: Registry, event: ControlEvent, p: Mapping[str, Any]) -> Registry:
    """HoldCanary: a due step waits for records; said once per step."""
    key, deployment, canary = _running(state, event, p)
    _check_due(canary, p["step"], event, HOLD)
    if canary.held == canary.step:
        raise Rejected(f"canary {canary.canary_id} step {canary.step} already waits")
    return _with(state, key, replace(deployment, canary=replace(
        canary, held=canary.step, evidence=p["reason"])))


def _ended(state_name: str) -> Handler:
    def handler(state: Registry, event: ControlEvent, p: Mapping[str, Any]) -> Registry:
        key, deployment, canary = _running(state, event, p)
        if state_name == ROLLED_BACK:
            # A verdict on the step it judged only: another worker may have advanced it since.
            _check_due(canary, p["step"], event, ROLLBACK)
        reason = p.get("reason") or f"aborted by {event.actor}"
        return _with(state, key, replace(deployment, canary=replace(
            canary, state=state_name, reason=reason, ended_at=event.time)))

    return handler


def ended_by_undeploy(deployment: Deployment, event: ControlEvent) -> Deployment:
    """An undeployed pipeline's running canary ends (aborted): nothing serves either side."""
    return replace(deployment, canary=kept_canary(deployment, event,
                                                  f"undeployed by {event.actor}"))


def kept_canary(deployment: Deployment | None, event: ControlEvent, reason: str
                ) -> Canary | None:
    """The deployment's last canary, for `pipelines get` and `status`; a running one ends
    (aborted, for `reason`) since what served it is undeployed or replaced."""
    canary = deployment.canary if deployment is not None else None
    if canary is None or not canary.running:
        return canary
    return replace(canary, state=ABORTED, ended_at=event.time, reason=reason)


def canary_handlers(deployable: Deployable) -> dict[str, Handler]:
    """The fold's handlers of canary events; `deployable` is the fold's check that a version
    can be served (it lives with deployments)."""

    def start(state: Registry, event: ControlEvent, p: Mapping[str, Any]) -> Registry:
        return start_canary(state, event, p, deployable)

    return {
        "StartCanary": start,
        "AdvanceCanary": advance_canary,
        "HoldCanary": hold_canary,
        "RollbackCanary": _ended(ROLLED_BACK),
        "AbortCanary": _ended(ABORTED),
    }
