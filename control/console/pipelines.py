"""Pipelines: each version's steps drawn as a chain (splits and shadows as branches), the
deployment history (deploys, undeploys, rollbacks: who and when), and the pipeline's replays;
?replay= compares one with the live results (`pipelines compare`, docs/replay.md)."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from control.console.reading import read
from control.console.web import context, feeds_of, render
from control.registry.state import KeySplit, ModelStep, RandomSplit, ShadowStep, Step
from sinks import reads

TITLE, PATH = "Pipelines", "/pipelines"


@dataclass(frozen=True)
class Branch:
    """One model a step may run, and why it runs: a route's share or key, shadow, default."""

    label: str | None
    model: str
    version: int
    inputs: str  # the input map, "model input <- field", or ""


@dataclass(frozen=True)
class Link:
    """One step of the chain, as drawn: a kind and its branches (one for a plain model)."""

    number: int
    kind: str  # model | random split | key split | shadow
    note: str | None
    branches: list[Branch]


def _branch(label: str | None, step: ModelStep) -> Branch:
    inputs = ", ".join(f"{k} ← {v}" for k, v in sorted(step.input_map.items()))
    return Branch(label, step.model, step.version, inputs)


def link_of(number: int, step: Step) -> Link:
    match step:
        case ModelStep():
            return Link(number, "model", None, [_branch(None, step)])
        case RandomSplit():
            note = f"hashed on {step.hash_key}" if step.hash_key else "random"
            return Link(number, "random split", note,
                        [_branch(f"{share:g}", s) for share, s in step.routes])
        case KeySplit():
            return Link(number, "key split", f"on {step.field}",
                        [*(_branch(f"= {key}", s) for key, s in step.routes),
                         _branch("default", step.default)])
        case ShadowStep():
            return Link(number, "shadow", "challengers' results are logged, not returned",
                        [_branch("champion", step.champion),
                         *(_branch("shadow", s) for s in step.challengers)])
    raise TypeError(step)


async def page(request: web.Request) -> web.Response:
    """Every pipeline of the shown workspaces; ?pipeline= narrows to one (a link to it)."""
    ctx = context(request)
    wanted = request.query.get("pipeline")
    shown = set(ctx.shown)
    found = [p for (ws, name), p in sorted(ctx.registry.pipelines.items())
             if ws in shown and (not wanted or name == wanted)]
    changes = feeds_of(request).changes.copy()  # atomic: the follower appends meanwhile
    history: dict[tuple[str, str], list] = {(p.workspace, p.name): [] for p in found}
    for c in reversed(changes):  # one pass, newest first
        if (key := (c.workspace, c.pipeline)) in history:
            history[key].append(c)
    chains = {(p.workspace, p.name, v.version): [link_of(i, s) for i, s in
                                                 enumerate(v.steps, 1)]
              for p in found for v in p.versions}
    replays = {(p.workspace, p.name): sorted(
        (r for (ws, _), r in ctx.registry.replays.items()
         if ws == p.workspace and r.pipeline == p.name), key=lambda r: r.created_at)
        for p in found}
    compared = None
    chosen = request.query.get("replay")
    if chosen and len(found) == 1 and any(r.replay_id == chosen
                                          for r in replays[(found[0].workspace, wanted)]):
        compared = await read(request, "compare_replay", reads.CompareReplay(
            workspace=found[0].workspace, pipeline=found[0].name, replay=chosen))
    return render(request, "pipelines.html", ctx=ctx, pipelines=found, history=history,
                  chains=chains, replays=replays, compared=compared)


ROUTES = [web.get(PATH, page)]
