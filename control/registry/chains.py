"""The rules of a pipeline version's chain: what each step reads of the step before, and which
steps' outputs its results carry. Pure; fold.py applies them to new versions and deploys.

Rules grew: events written before dtypes and shapes were checked carry `rules` 1 and are still
judged by names only, so replaying the control topic folds exactly as it did; clients of now
write TYPED, and every rule here applies to their events.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from control.registry.state import ModelStep, ModelVersion, ShadowStep, Step, step_models
from control.registry.tensors import TensorSpec, described, feed_problem
from schemas.errors import Rejected

NAMES_ONLY, TYPED = 1, 2  # the values of a CreatePipelineVersion's, Deploy's, Rollback's `rules`
RULES = TYPED  # what this release's clients write
STEP_PREFIX = "step"  # results name an earlier step's output 'step<N>.<output>'

VersionOf = Callable[[ModelStep], ModelVersion]


def result_steps(requested: Sequence[int], steps: int) -> tuple[int, ...]:
    """The steps whose outputs results carry, in order (none requested: the last step)."""
    if not requested:
        return (steps,)
    wrong = sorted({n for n in requested if not 1 <= n <= steps})
    if wrong:
        raise Rejected(f"result steps {wrong} are not steps of this version (it has 1..{steps}); "
                       "name steps by their number in the chain")
    if len(set(requested)) != len(requested):
        raise Rejected(f"result steps {list(requested)} name a step twice; name each once")
    return tuple(sorted(requested))


def result_name(step: int, last: int, output: str) -> str:
    """An output's name in a result: the last step's as it is, another's 'step<N>.<output>'."""
    return output if step == last else f"{STEP_PREFIX}{step}.{output}"


def returned(step: Step) -> tuple[ModelStep, ...]:
    """The models whose outputs a step passes on: every route of a split; a shadow's champion."""
    models = step_models(step)
    return models[:1] if isinstance(step, ShadowStep) else models


def check_chain(version_of: VersionOf, steps: Sequence[Step], carried: Sequence[int],
                rules: int) -> None:
    """Each step must read its inputs from what every model of the step before returns.

    By names (all rules), then (TYPED) by dtype and shape, route by route; and the routes of a
    split whose outputs results carry must return the same outputs, or a consumer's fields would
    change with the route a record took. Raises Rejected naming the step, model and input.
    """
    if rules >= TYPED:
        _check_first_step(version_of, steps[0])
    for n in range(1, len(steps)):
        before = returned(steps[n - 1])
        outputs = [(m, {o.name: o for o in version_of(m).outputs}) for m in before]
        available = set.intersection(*(set(o) for _, o in outputs))
        for m in step_models(steps[n]):
            for spec in version_of(m).inputs:
                source = m.input_map.get(spec.name, spec.name)
                if source not in available:
                    raise Rejected(
                        f"step {n + 1} ({m.model} v{m.version}) needs input {spec.name!r} "
                        f"from field {source!r}, but step {n} outputs only "
                        f"{sorted(available)}; map it with input_map"
                    )
                if rules >= TYPED:
                    for giver, given in outputs:
                        _check_feed(n, giver, given[source], m, spec, len(before) > 1)
    if rules >= TYPED:
        for n in carried:
            _check_same_outputs(version_of, n, steps[n - 1])
        _check_result_names(version_of, steps, carried)


def _check_feed(n: int, giver: ModelStep, output: TensorSpec, taker: ModelStep,
                spec: TensorSpec, routed: bool) -> None:
    problem = feed_problem(output, spec)
    if problem is None:
        return
    route = f" route {giver.model} v{giver.version}" if routed else \
        f" ({giver.model} v{giver.version})"
    raise Rejected(
        f"step {n + 1} ({taker.model} v{taker.version}) input {described(spec)} cannot read "
        f"field {output.name!r} from step {n}{route}, which gives {output.dtype} "
        f"{list(output.shape)}: {problem}; chain a model that takes what the step before "
        "returns, or map another field with input_map"
    )


def _check_first_step(version_of: VersionOf, step: Step) -> None:
    # Records are decoded for the first model's inputs (the default route, the champion):
    # every other model of step 1 must find its inputs among them.
    first, *others = step_models(step)
    decoded = {s.name: s for s in version_of(first).inputs}
    for m in others:
        for spec in version_of(m).inputs:
            source = m.input_map.get(spec.name, spec.name)
            given = decoded.get(source)
            problem = "no such field" if given is None else feed_problem(given, spec)
            if problem is not None:
                raise Rejected(
                    f"step 1 ({m.model} v{m.version}) needs input {described(spec)} from field "
                    f"{source!r}, but records are decoded for {first.model} v{first.version}'s "
                    f"inputs {_listed(version_of(first).inputs)}: {problem}; route to models "
                    "that take the same inputs"
                )


def _check_same_outputs(version_of: VersionOf, n: int, step: Step) -> None:
    models = returned(step)
    first = set(version_of(models[0]).outputs)
    for other in models[1:]:
        if set(version_of(other).outputs) != first:
            a, b = models[0], other
            raise Rejected(
                f"step {n} routes return different outputs: {a.model} v{a.version} gives "
                f"{_listed(version_of(a).outputs)}, {b.model} v{b.version} gives "
                f"{_listed(version_of(b).outputs)}; the results carry step {n}'s outputs, "
                "whose fields would change with the route a record took. Route to models "
                "with the same outputs"
            )


def _check_result_names(version_of: VersionOf, steps: Sequence[Step],
                        carried: Sequence[int]) -> None:
    names: dict[str, int] = {}
    for n in carried:
        for spec in version_of(returned(steps[n - 1])[0]).outputs:
            name = result_name(n, len(steps), spec.name)
            if name in names:
                raise Rejected(f"results would carry {name!r} twice (steps {names[name]} and "
                               f"{n}); leave one of the steps out of the result steps")
            names[name] = n


def _listed(specs: Sequence[TensorSpec]) -> str:
    return ", ".join(described(s) for s in specs)
