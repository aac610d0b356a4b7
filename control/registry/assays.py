"""The registry's rules for assays: create, pause, resume and delete (pure, like the fold).

An assay monitors one element of one input or output of a model that a pipeline runs. What
it computes is `assay_config.AssayConfig`, whose validation is pure too; its
AssayError becomes the Rejected reason. The payload converters here are the one place that
maps a CreateAssay record to an AssayConfig and back, for the fold and for the client.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import timedelta
from typing import Any

from control.registry.assay_config import AssayConfig, AssayError
from control.registry.events import NAMESPACE, ControlEvent
from control.registry.rules import check_name, member, pipeline_of
from control.registry.state import Assay, ModelVersion, Pipeline, Registry, Workspace, step_models
from schemas.errors import Rejected

Handler = Callable[[Registry, ControlEvent, Mapping[str, Any]], Registry]


# -- CreateAssay payload <-> AssayConfig -----------------------------------------------------


def assay_payload(name: str, config: AssayConfig) -> dict[str, Any]:
    """The CreateAssay payload that makes an assay `name` of `config` (its id is ignored)."""
    baseline: tuple[str, dict[str, Any]] | None
    if config.baseline_values is not None:
        baseline = (NAMESPACE + "BaselineValues", {"values": list(config.baseline_values)})
    elif config.baseline_start is None and config.baseline_end is None:
        baseline = None  # a performance metric: predictions against labels
    else:
        baseline = (NAMESPACE + "BaselineRange",
                    {"start": config.baseline_start, "end": config.baseline_end})
    return {
        "name": name, "pipeline": config.pipeline, "model": config.model, "io": config.io,
        "field": config.field, "index": config.index, "baseline": baseline,
        "width_s": _whole_seconds(config.width, "window width"),
        "interval_s": _whole_seconds(config.step, "window interval"),
        "first_window_start": config.first_window_start, "binning": config.binning,
        "bins": config.bins, "edges": None if config.edges is None else list(config.edges),
        "aggregation": config.aggregation, "metric": config.metric,
        "warning_threshold": config.warning_threshold,
        "alert_threshold": config.alert_threshold, "epsilon": config.epsilon,
        "prediction": config.prediction, "decision_threshold": config.decision_threshold,
        "positive_class": config.positive_class, "average": config.average,
        "label_wait_s": _whole_seconds(config.label_wait, "label wait"),
    }


def config_of(workspace: str, assay_id: str, p: Mapping[str, Any]) -> AssayConfig:
    """The AssayConfig a CreateAssay payload describes; AssayError says what cannot work."""
    # A CreateAssay written before performance metrics has a baseline and none of their
    # fields: the defaults below are what it always meant.
    kind, baseline = p["baseline"] or ("", None)
    ranged = kind.rsplit(".", 1)[-1] == "BaselineRange"
    return AssayConfig(
        assay_id=assay_id, workspace=workspace, pipeline=p["pipeline"], model=p["model"],
        field=p["field"], index=p["index"], io=p["io"],
        baseline_start=baseline["start"] if ranged else None,
        baseline_end=baseline["end"] if ranged else None,
        baseline_values=None if ranged or baseline is None else tuple(baseline["values"]),
        width=_seconds(assay_id, "window width", p["width_s"]),
        interval=None if p["interval_s"] is None else _seconds(
            assay_id, "window interval", p["interval_s"]),
        first_window_start=p["first_window_start"], binning=p["binning"], bins=p["bins"],
        edges=None if p["edges"] is None else tuple(p["edges"]),
        aggregation=p["aggregation"], metric=p["metric"],
        warning_threshold=p["warning_threshold"], alert_threshold=p["alert_threshold"],
        epsilon=p["epsilon"], prediction=p.get("prediction", "value"),
        decision_threshold=p.get("decision_threshold", 0.5),
        positive_class=p.get("positive_class", 1.0), average=p.get("average", "class"),
        label_wait=_seconds(assay_id, "label wait", p.get("label_wait_s", 604_800)),
    )


def _whole_seconds(span: timedelta, what: str) -> int:
    if span % timedelta(seconds=1):
        raise AssayError(f"{what} {span} is not a whole number of seconds")
    return span // timedelta(seconds=1)


def _seconds(assay_id: str, what: str, seconds: int) -> timedelta:
    try:
        return timedelta(seconds=seconds)
    except OverflowError as exc:
        raise AssayError(f"assay {assay_id!r}: {what} of {seconds} s is too long") from exc


# -- rules -----------------------------------------------------------------------------------


def _create_assay(state: Registry, event: ControlEvent, p: Mapping[str, Any]) -> Registry:
    ws = member(state, event)
    check_name("assay", p["name"])
    key = (ws.name, p["name"])
    if key in state.assays:
        raise Rejected(
            f"assay {p['name']!r} already exists in workspace {ws.name!r}; "
            "pick another name, or delete it first"
        )
    pipeline = pipeline_of(state, ws, p["pipeline"])
    versions = _versions_used(state, ws, pipeline, p["model"])
    _check_field(versions, pipeline, p["io"], p["field"], p["index"])
    try:
        config = config_of(ws.name, p["name"], p)
        # The id outlives a delete: results of an earlier assay of the same name stay apart.
        config = replace(config, assay_id=f"{p['name']}-{event.event_id[:8]}")
    except AssayError as exc:
        raise Rejected(str(exc)) from exc
    assay = Assay(ws.name, p["name"], config, True, event.actor, event.time)
    return replace(state, assays={**state.assays, key: assay})


def _versions_used(
    state: Registry, ws: Workspace, pipeline: Pipeline, model: str
) -> list[ModelVersion]:
    """The versions of `model` that some version of `pipeline` runs (shadows included)."""
    if not pipeline.versions:
        raise Rejected(
            f"pipeline {pipeline.name!r} has no version yet, so no model to monitor; "
            "create a version first"
        )
    steps = [m for v in pipeline.versions for step in v.steps for m in step_models(step)]
    used = sorted({m.version for m in steps if m.model == model})
    if not used:
        raise Rejected(
            f"model {model!r} is not used by any version of pipeline {pipeline.name!r}; "
            f"it uses {sorted({m.model for m in steps})}"
        )
    found = state.models[(ws.name, model)]
    return [v for v in found.versions if v.version in used]


def _check_field(
    versions: list[ModelVersion], pipeline: Pipeline, io: str, field: str, index: int
) -> None:
    """The field must be an input (output) of one of the versions, and long enough."""
    model = versions[0].model
    specs = [s for v in versions for s in (v.inputs if io == "input" else v.outputs)]
    shapes = [s.shape for s in specs if s.name == field]
    if not shapes:
        listed = ", ".join(f"v{v.version}" for v in versions)
        raise Rejected(
            f"model {model!r} has no {io} {field!r} in the versions pipeline "
            f"{pipeline.name!r} runs ({listed}); its {io}s are {sorted({s.name for s in specs})}"
        )
    if index < 0:
        raise Rejected(f"index {index} of {io} {field!r} is negative; elements count from 0")
    sizes = [_elements(shape) for shape in shapes]
    known = [n for n in sizes if n is not None]
    if len(known) == len(sizes) and index >= max(known):
        raise Rejected(
            f"index {index} is past the end of {io} {field!r} of model {model!r}: a record "
            f"has {max(known)} element(s) of it (shape {list(shapes[0])}); "
            "elements count from 0"
        )


def _elements(shape: tuple[int, ...]) -> int | None:
    """Elements of one record's tensor (the first dimension is the batch); None: unknown."""
    if not shape or any(d <= 0 for d in shape[1:]):
        return None
    return math.prod(shape[1:])


def _assay(state: Registry, ws: Workspace, name: str) -> Assay:
    assay = state.assays.get((ws.name, name))
    if assay is None:
        known = sorted(n for w, n in state.assays if w == ws.name)
        raise Rejected(
            f"unknown assay {name!r} in workspace {ws.name!r}"
            + (f"; it has {known}" if known else "; it has none")
        )
    return assay


def _set_active(active: bool) -> Handler:
    def handler(state: Registry, event: ControlEvent, p: Mapping[str, Any]) -> Registry:
        assay = _assay(state, member(state, event), p["name"])
        if assay.active == active:
            now = "active" if active else "paused"
            fix = "pause it first" if active else "resume it to run it again"
            raise Rejected(f"assay {assay.name!r} is already {now}; {fix}")
        assay = replace(assay, active=active)
        return replace(state, assays={**state.assays, (assay.workspace, assay.name): assay})

    return handler


def _delete_assay(state: Registry, event: ControlEvent, p: Mapping[str, Any]) -> Registry:
    assay = _assay(state, member(state, event), p["name"])
    key = (assay.workspace, assay.name)
    return replace(state, assays={k: a for k, a in state.assays.items() if k != key})


ASSAY_HANDLERS: dict[str, Handler] = {
    "CreateAssay": _create_assay,
    "PauseAssay": _set_active(False),
    "ResumeAssay": _set_active(True),
    "DeleteAssay": _delete_assay,
}
