"""The registry as a pure fold over control events: apply(state, event) -> state.

Who may send an event is checked first (security.py: signature, replay, role); the rules of
what it does live here (pipelines, deployments), in models.py, users.py, assays.py, workloads.py,
api_keys.py and alert_rules.py (rules that act on alerts, route pauses); the checks they
share are in rules.py. A broken rule raises Rejected with a reason a person can act on, and
the caller keeps the state it had. No I/O.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from functools import lru_cache, partial
from typing import Any

from control.registry.alert_rules import RULE_HANDLERS, caused, describe
from control.registry.api_keys import API_KEY_HANDLERS
from control.registry.assays import ASSAY_HANDLERS
from control.registry.canary import canary_handlers, ended_by_undeploy, kept_canary
from control.registry.chains import NAMES_ONLY, TYPED, check_chain, result_steps
from control.registry.collector import collector_paused
from control.registry.events import EVENT_TYPES, ControlEvent
from control.registry.models import MODEL_HANDLERS
from control.registry.redrives import REDRIVE_HANDLERS, redrive_id
from control.registry.replays import REPLAY_HANDLERS
from control.registry.rules import check_name, member, pipeline_of
from control.registry.security import authenticate, authorize
from control.registry.state import (
    Deployment,
    KeySplit,
    ModelStep,
    ModelVersion,
    Pipeline,
    PipelineVersion,
    RandomSplit,
    Registry,
    ShadowStep,
    Step,
)
from control.registry.users import USER_HANDLERS
from control.registry.validations import chain_outputs, chain_widths, check_validations
from control.registry.workloads import WORKLOAD_HANDLERS
from schemas.errors import Rejected

MAX_BATCH_SIZE = 10_000  # the default of Settings.max_batch_size (INFERSTREAM_MAX_BATCH_SIZE)
MAX_BATCH_WAIT_MS = 60_000

Handler = Callable[[Registry, ControlEvent, Mapping[str, Any]], Registry]


@dataclass(frozen=True, slots=True)
class Limits:
    """The platform's bounds on what an event may ask for (from Settings).

    A rule of the fold like any other: every process that folds the control topic (the
    registrar, workers, clients) must use the same limits, or they judge events differently.
    """

    max_batch_size: int = MAX_BATCH_SIZE


LIMITS = Limits()


def apply(state: Registry, event: ControlEvent, limits: Limits = LIMITS) -> Registry:
    """The registry after `event`; raises Rejected (and changes nothing) when a rule is broken.

    First who sent it (signature, replay, role: security.py), then what it does.
    """
    handler = _handlers(limits).get(event.type)
    if handler is None:
        raise Rejected(f"unknown event type {event.type!r}; known: {', '.join(EVENT_TYPES)}")
    authenticate(state, event)
    authorize(state, event)
    try:
        after = handler(state, event, event.payload)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        # Avro guarantees the fields; this catches payloads built by hand around the codec.
        raise Rejected(f"malformed {event.type} payload: {exc!r}") from exc
    return after.evolve(applied=state.applied.add(event.event_id, event.offset))


def fold(events: Iterable[ControlEvent], state: Registry | None = None,
         limits: Limits = LIMITS) -> Registry:
    """Apply events in order, skipping rejected ones, as every replay of the topic does;
    without the cyclic collector meanwhile (control.registry.collector says why)."""
    state = state or Registry()
    with collector_paused():
        for event in events:
            with contextlib.suppress(Rejected):
                state = apply(state, event, limits)
    return state


def result_of(before: Registry, after: Registry, event: ControlEvent) -> dict[str, str]:
    """What an accepted event made, for its status record (e.g. the new version number); for
    a rule's action also why (the audit log shows it)."""
    return {**_made(after, event), **cause_result(event)}


def cause_result(event: ControlEvent) -> dict[str, str]:
    """For an action a rule published, its rule and why, for its status accepted or not (the
    audit log shows what an alert did, and why an action did nothing); else nothing."""
    cause = event.payload.get("cause")
    try:
        return {} if not cause else {"rule": str(cause["rule"]), "cause": describe(cause)}
    except (KeyError, TypeError, AttributeError, ValueError):  # a hand-built payload
        return {}


def _made(after: Registry, event: ControlEvent) -> dict[str, str]:
    key = (event.workspace or "", _payload_name(event))
    match event.type:
        case "CreateAssay":
            name = event.payload["name"]
            return {"assay": name, "assay_id": after.assays[(key[0], name)].assay_id}
        case "UploadModel":
            return {"model": key[1], "version": str(after.models[key].latest.version)}
        case "CreatePipelineVersion":
            return {"pipeline": key[1], "version": str(len(after.pipelines[key].versions))}
        case "Deploy" | "Rollback":
            return {"pipeline": key[1], "version": str(after.deployments[key].version)}
        case "CreateOrchestration":
            name = event.payload["name"]
            found = after.orchestrations[(key[0], name)]
            return {"orchestration": name, "version": str(found.latest.version)}
        case "CreateTask":
            return {"task": event.payload["name"], "run_id": event.event_id}
        case "StartCanary":
            canary = after.deployments[key].canary
            return {"pipeline": key[1], "canary_id": canary.canary_id if canary else ""}
        case "CreateRule":
            name = event.payload["name"]
            return {"rule": name, "rule_id": after.alert_rules[(key[0], name)].rule_id}
        case "StartReplay":
            found = after.replays[(key[0], event.payload["replay_id"])]
            return {"replay": found.replay_id, "pipeline": found.pipeline,
                    "version": str(found.version), "records": str(found.records)}
        case "Redrive":
            return {"pipeline": key[1], "redrive_id": redrive_id(key[1], event.event_id)}
    return {}


def _payload_name(event: ControlEvent) -> str:
    p = event.payload
    return p.get("pipeline") or p.get("name") or p.get("user") or ""


# -- pipelines -------------------------------------------------------------------------------


def _create_pipeline(state: Registry, event: ControlEvent, p: Mapping[str, Any]) -> Registry:
    ws = member(state, event)
    check_name("pipeline", p["name"])
    key = (ws.name, p["name"])
    if key in state.pipelines:
        raise Rejected(f"pipeline {p['name']!r} already exists in workspace {ws.name!r}")
    pipeline = Pipeline(ws.name, p["name"], p["description"], event.actor, event.time)
    return replace(state, pipelines={**state.pipelines, key: pipeline})


def _existing_version(pipeline: Pipeline, number: int) -> int:
    if pipeline.version(number) is None:
        raise Rejected(
            f"pipeline {pipeline.name!r} has no version {number} "
            f"(it has 1..{len(pipeline.versions)})"
        )
    return number


def _model_step(state: Registry, ws: str, r: Mapping[str, Any], where: str) -> ModelStep:
    model = state.models.get((ws, r["model"]))
    if model is None:
        raise Rejected(f"{where}: unknown model {r['model']!r} in workspace {ws!r}")
    if model.version(r["version"]) is None:
        raise Rejected(
            f"{where}: model {r['model']!r} has no version {r['version']} "
            f"(it has 1..{len(model.versions)})"
        )
    return ModelStep(r["model"], r["version"], dict(r["input_map"]))


def _step(state: Registry, ws: str, item: tuple[str, Mapping[str, Any]], where: str) -> Step:
    kind, r = item
    kind = kind.rsplit(".", 1)[-1]
    if kind == "ModelStep":
        return _model_step(state, ws, r, where)
    if kind == "RandomSplit":
        routes = tuple(
            (w["weight"], _model_step(state, ws, w["step"], f"{where} route {i + 1}"))
            for i, w in enumerate(r["routes"])
        )
        if not routes or any(not math.isfinite(w) or w <= 0 for w, _ in routes):
            raise Rejected(
                f"{where}: a random split needs routes with positive weights, "
                f"got {[w for w, _ in routes]}"
            )
        return RandomSplit(routes, r["hash_key"])
    if kind == "KeySplit":
        routes = tuple(
            (k["value"], _model_step(state, ws, k["step"], f"{where} key {k['value']!r}"))
            for k in r["routes"]
        )
        values = [v for v, _ in routes]
        if not routes:
            raise Rejected(f"{where}: a key split needs routes (and a default)")
        if len(set(values)) != len(values):
            repeated = sorted({v for v in values if values.count(v) > 1})
            raise Rejected(f"{where}: each key split route needs its own value, not {repeated}")
        return KeySplit(r["field"], routes, _model_step(state, ws, r["default"], where))
    challengers = tuple(
        _model_step(state, ws, c, f"{where} challenger {i + 1}")
        for i, c in enumerate(r["challengers"])
    )
    if not challengers:
        raise Rejected(f"{where}: a shadow step needs at least one challenger")
    return ShadowStep(_model_step(state, ws, r["champion"], where), challengers)


def _check_chain(state: Registry, ws: str, steps: tuple[Step, ...], carried: tuple[int, ...],
                 rules: int) -> None:
    def version(s: ModelStep) -> ModelVersion:
        return state.models[(ws, s.model)].versions[s.version - 1]

    check_chain(version, steps, carried, rules)


def _create_pipeline_version(
    state: Registry, event: ControlEvent, p: Mapping[str, Any]
) -> Registry:
    ws = member(state, event)
    pipeline = pipeline_of(state, ws, p["pipeline"])
    if not p["steps"]:
        raise Rejected(f"pipeline {pipeline.name!r}: a version needs at least one step")
    steps = tuple(
        _step(state, ws.name, item, f"step {i + 1}") for i, item in enumerate(p["steps"])
    )
    carried = result_steps(p.get("result_steps") or (), len(steps))
    _check_chain(state, ws.name, steps, carried, p.get("rules", NAMES_ONLY))
    def version_of(s: ModelStep) -> ModelVersion:
        return state.models[(ws.name, s.model)].versions[s.version - 1]

    # Written before validations existed: none, and nothing more to judge.
    checks = check_validations(p["validations"], chain_outputs(version_of, steps),
                               chain_widths(version_of, steps)) if p.get("validations") else ()
    version = PipelineVersion(
        ws.name, pipeline.name, len(pipeline.versions) + 1, steps, event.actor, event.time,
        carried, checks,
    )
    pipeline = pipeline.with_version(version)
    return state.evolve(pipelines={**state.pipelines, (ws.name, pipeline.name): pipeline})


# -- deployments -----------------------------------------------------------------------------


def _deploy(state: Registry, event: ControlEvent, p: Mapping[str, Any],
            limits: Limits = LIMITS) -> Registry:
    ws = member(state, event)
    pipeline = pipeline_of(state, ws, p["pipeline"])
    if not pipeline.versions:
        raise Rejected(f"pipeline {pipeline.name!r} has no version to deploy; create one first")
    number = _existing_version(
        pipeline, len(pipeline.versions) if p["version"] is None else p["version"]
    )
    most = limits.max_batch_size
    if not 1 <= p["batch_size"] <= most:
        why = ("a batch holds at least one record" if p["batch_size"] < 1 else
               f"the platform's limit INFERSTREAM_MAX_BATCH_SIZE is {most}")
        raise Rejected(f"batch size {p['batch_size']} is outside 1..{most}: {why}")
    if not 0 <= p["batch_wait_ms"] <= MAX_BATCH_WAIT_MS:
        raise Rejected(f"batch wait {p['batch_wait_ms']} ms is outside 0..{MAX_BATCH_WAIT_MS}")
    _check_deployable(state, pipeline, number, p.get("rules", NAMES_ONLY))
    return _deployed(state, event, pipeline, number, p["batch_size"], p["batch_wait_ms"])


def _check_deployable(state: Registry, pipeline: Pipeline, number: int, rules: int) -> None:
    """A version made before the chain rules grew may break them: deploying it is refused."""
    version = pipeline.versions[number - 1]
    try:
        _check_chain(state, pipeline.workspace, version.steps, version.returned_steps, rules)
    except Rejected as exc:
        raise Rejected(
            f"pipeline {pipeline.name!r} version {number} cannot be served: {exc}. Create a "
            "version whose steps fit each other and deploy that"
        ) from None


def _deployed(
    state: Registry, event: ControlEvent, pipeline: Pipeline, number: int,
    batch_size: int, batch_wait_ms: int,
) -> Registry:
    key = (pipeline.workspace, pipeline.name)
    before = state.deployments.get(key)
    history = before.history if before else ()
    # A running canary ramped up from the replaced version: it ends, and stays on record.
    verb = "rolled back" if event.type == "Rollback" else "deployed"
    deployment = Deployment(
        pipeline.workspace, pipeline.name, number, True, batch_size, batch_wait_ms,
        (*history, number), event.actor, event.time,
        canary=kept_canary(before, event, f"replaced: {event.actor} {verb} v{number}"),
    )
    return replace(state, deployments={**state.deployments, key: deployment})


def _undeploy(state: Registry, event: ControlEvent, p: Mapping[str, Any]) -> Registry:
    ws = member(state, event)
    pipeline = pipeline_of(state, ws, p["pipeline"])
    key = (ws.name, pipeline.name)
    deployment = state.deployments.get(key)
    if deployment is None or not deployment.active:
        raise Rejected(f"pipeline {pipeline.name!r} is not deployed")
    deployment = replace(ended_by_undeploy(deployment, event), active=False,
                         deployed_by=event.actor, deployed_at=event.time)
    return state.evolve(deployments={**state.deployments, key: deployment})


def _rollback(state: Registry, event: ControlEvent, p: Mapping[str, Any]) -> Registry:
    ws = member(state, event)
    pipeline = pipeline_of(state, ws, p["pipeline"])
    deployment = state.deployments.get((ws.name, pipeline.name))
    if deployment is None:
        raise Rejected(f"pipeline {pipeline.name!r} was never deployed; deploy it first")
    # Back means an older version: by default the newest one deployed before the current.
    number = p["version"]
    if number is None:
        earlier = [v for v in deployment.history if v < deployment.version]
        if not earlier:
            raise Rejected(
                f"pipeline {pipeline.name!r} has no deployed version older than "
                f"{deployment.version} to roll back to; name one with --version"
            )
        number = max(earlier)
    _existing_version(pipeline, number)
    if number >= deployment.version:
        raise Rejected(
            f"rolling back goes to a version older than the current {deployment.version}, "
            f"not {number}; deploy version {number} instead"
        )
    _check_deployable(state, pipeline, number, p.get("rules", NAMES_ONLY))
    return _deployed(
        state, event, pipeline, number, deployment.batch_size, deployment.batch_wait_ms
    )


@lru_cache(maxsize=8)
def _handlers(limits: Limits) -> dict[str, Handler]:
    return {**_HANDLERS, "Deploy": partial(_deploy, limits=limits)}


_HANDLERS: dict[str, Handler] = {
    **USER_HANDLERS,
    **MODEL_HANDLERS,
    "CreatePipeline": _create_pipeline,
    "CreatePipelineVersion": _create_pipeline_version,
    "Deploy": _deploy,
    # A rule may publish these (and PauseRoute): with a `cause`, the rule is checked and its
    # firing recorded (alert_rules.caused); without one they fold as they always did.
    "Undeploy": caused(_undeploy, "Undeploy"),
    "Rollback": caused(_rollback, "Rollback"),
    **ASSAY_HANDLERS,
    **WORKLOAD_HANDLERS,
    "CreateTask": caused(WORKLOAD_HANDLERS["CreateTask"], "CreateTask"),
    **API_KEY_HANDLERS,
    **RULE_HANDLERS,
    **REPLAY_HANDLERS,
    **REDRIVE_HANDLERS,
    # A canary's version is checked as a deploy's, by the chain rules of its time (typed),
    # fixed so that a replay folds the same after the rules grow again.
    **canary_handlers(lambda state, pipeline, number: _check_deployable(
        state, pipeline, number, TYPED)),
}
