"""Pipeline steps in the three shapes they travel in: JSON (people), dataclasses, Avro.

JSON shapes, as in a `--steps-file` or the Python client:
  {"model": "clf", "version": 2, "input_map": {"x": "features"}}   version omitted = latest
  {"random_split": {"routes": [{"weight": 0.9, "model": "a"}, ...], "hash_key": "customer"}}
  {"key_split": {"field": "country", "routes": [{"value": "de", "model": "a"}],
                 "default": {"model": "b"}}}
  {"shadow": {"champion": {"model": "a"}, "challengers": [{"model": "b"}]}}

A whole version is a list of steps, or {"steps": [...], "result_steps": [1, 2]} to carry the
outputs of other steps than the last in its results.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from control.registry.state import KeySplit, ModelStep, RandomSplit, ShadowStep, Step
from schemas.errors import InferstreamError

NS = "inferstream.control."
LatestVersion = Callable[[str], int]  # model name -> its latest version number


class StepError(InferstreamError):
    """A step description that cannot be understood."""


def parse_model_ref(text: str, latest: LatestVersion) -> ModelStep:
    """'clf' or 'clf:2' (as typed on the command line) as a model step."""
    name, _, version = text.partition(":")
    try:
        number = int(version.removeprefix("v")) if version else latest(name)
    except ValueError:
        raise StepError(f"bad model reference {text!r}: use MODEL or MODEL:VERSION") from None
    return ModelStep(name, number)


def step_from_json(spec: Mapping[str, Any], latest: LatestVersion) -> Step:
    """A step from its JSON description; model versions left out resolve to the latest."""
    def model(m: Mapping[str, Any]) -> ModelStep:
        if "model" not in m:
            raise StepError(f"a model step needs 'model': {dict(m)}")
        version = m.get("version")
        return ModelStep(
            m["model"], int(version) if version is not None else latest(m["model"]),
            dict(m.get("input_map", {})),
        )

    try:
        if "random_split" in spec:
            s = spec["random_split"]
            return RandomSplit(
                tuple((float(r["weight"]), model(r)) for r in s["routes"]), s.get("hash_key")
            )
        if "key_split" in spec:
            s = spec["key_split"]
            return KeySplit(
                s["field"], tuple((str(r["value"]), model(r)) for r in s["routes"]),
                model(s["default"]),
            )
        if "shadow" in spec:
            s = spec["shadow"]
            return ShadowStep(model(s["champion"]), tuple(model(c) for c in s["challengers"]))
        return model(spec)
    except (KeyError, TypeError, ValueError) as exc:
        raise StepError(f"cannot read step {dict(spec)}: missing or bad {exc}") from exc


def version_from_json(doc: Any) -> tuple[list[Any], list[int]]:
    """A version's JSON (a list of steps, or an object of steps and result_steps) as its steps
    (still JSON) and result steps (empty: the last)."""
    if isinstance(doc, list):
        return doc, []
    if isinstance(doc, Mapping) and isinstance(doc.get("steps"), list):
        unknown = sorted(set(doc) - {"steps", "result_steps"})
        numbers = doc.get("result_steps") or []
        if unknown or not isinstance(numbers, list) or not all(
                type(n) is int for n in numbers):
            raise StepError(
                "a version is a list of steps, or an object with 'steps' (a list) and "
                f"'result_steps' (a list of step numbers); got keys {sorted(doc)}"
                + (f", unknown {unknown}" if unknown else f", result_steps {numbers!r}")
            )
        return doc["steps"], numbers
    raise StepError(f"a version is a list of steps or an object with 'steps', not "
                    f"{type(doc).__name__}")


def step_to_avro(step: Step) -> tuple[str, dict[str, Any]]:
    """The step as the (record name, record) pair of the CreatePipelineVersion union."""
    def model(m: ModelStep) -> dict[str, Any]:
        return {"model": m.model, "version": m.version, "input_map": dict(m.input_map)}

    match step:
        case ModelStep():
            return NS + "ModelStep", model(step)
        case RandomSplit():
            routes = [{"weight": w, "step": model(m)} for w, m in step.routes]
            return NS + "RandomSplit", {"routes": routes, "hash_key": step.hash_key}
        case KeySplit():
            routes = [{"value": v, "step": model(m)} for v, m in step.routes]
            return NS + "KeySplit", {
                "field": step.field, "routes": routes, "default": model(step.default)
            }
        case ShadowStep():
            return NS + "ShadowStep", {
                "champion": model(step.champion),
                "challengers": [model(c) for c in step.challengers],
            }
    raise StepError(f"not a step: {step!r}")


def step_to_json(step: Step) -> dict[str, Any]:
    """The step as JSON, the inverse of step_from_json."""
    def model(m: ModelStep) -> dict[str, Any]:
        out: dict[str, Any] = {"model": m.model, "version": m.version}
        if m.input_map:
            out["input_map"] = dict(m.input_map)
        return out

    match step:
        case ModelStep():
            return model(step)
        case RandomSplit():
            return {"random_split": {
                "routes": [{"weight": w, **model(m)} for w, m in step.routes],
                "hash_key": step.hash_key,
            }}
        case KeySplit():
            return {"key_split": {
                "field": step.field,
                "routes": [{"value": v, **model(m)} for v, m in step.routes],
                "default": model(step.default),
            }}
        case ShadowStep():
            return {"shadow": {
                "champion": model(step.champion),
                "challengers": [model(c) for c in step.challengers],
            }}
    raise StepError(f"not a step: {step!r}")
