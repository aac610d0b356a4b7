"""CLI commands for pipelines: create, version, deploy, undeploy, roll back, pause routes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from control.cli.base import (
    JsonFlag,
    canary_line,
    client_of,
    err,
    out,
    routes_text,
    rows_table,
    show,
    to_json,
    when,
)
from control.cli.rules import step_route
from control.registry.chains import RULES
from control.registry.events import ControlStatus
from control.registry.state import Deployment, Validation
from control.registry.steps import parse_model_ref, step_to_json, version_from_json
from schemas.errors import InferstreamError

UNCONFIRMED = 3  # exit code: deployed, but no worker said it serves the version in time
pipelines = typer.Typer(help="Create, version, deploy, undeploy and roll back pipelines.",
                        no_args_is_help=True)
WaitWorkers = Annotated[float, typer.Option(
    help="Seconds to wait for a worker to serve it (or refuse); 0: don't wait. When no worker "
    f"confirms in time the version is still deployed, but the exit code is {UNCONFIRMED}")]


# -- pipelines ---------------------------------------------------------------------------------


@pipelines.command("create")
def pipelines_create(ctx: typer.Context, name: str,
                     description: Annotated[str | None, typer.Option()] = None,
                     json_out: JsonFlag = False) -> None:
    """Create a pipeline (its steps come with its versions)."""
    p = client_of(ctx).create_pipeline(name, description)
    show(p, json_out, message=f"created pipeline [bold]{p.name}[/]")


@pipelines.command("version")
def pipelines_version(
    ctx: typer.Context, name: str,
    step: Annotated[list[str] | None, typer.Option(
        help="A model step MODEL[:VERSION], repeatable, in chain order")] = None,
    steps_file: Annotated[Path | None, typer.Option(
        exists=True, help="JSON list of steps (splits, shadows): see docs/cli.md")] = None,
    result_steps: Annotated[str | None, typer.Option(
        help="Steps whose outputs results carry, e.g. 1,3 (default: the last); an earlier "
             "step's output is named step<N>.<output>")] = None,
    validation: Annotated[list[str] | None, typer.Option(
        help="A check NAME=EXPR, repeatable: a record whose EXPR is true carries NAME in its "
             "result's anomalies, e.g. 'high-risk=risk > 0.95' (docs/data-plane.md)")] = None,
    json_out: JsonFlag = False,
) -> None:
    """Create a new immutable version of a pipeline from its steps."""
    if bool(step) == bool(steps_file):
        raise typer.BadParameter("give either --step (one or more) or --steps-file")
    checks = _validations(validation or [])
    client = client_of(ctx)
    carried = _step_numbers(result_steps) if result_steps else []
    if steps_file:
        try:
            specs, in_file = version_from_json(json.loads(steps_file.read_text()))
        except json.JSONDecodeError as exc:
            raise InferstreamError(f"{steps_file} is not JSON: {exc}") from exc
        carried = carried or in_file
    else:
        registry, ws = client.registry(), client._ws(None)

        def latest(model: str) -> int:
            found = registry.models.get((ws, model))
            if found is None:
                raise InferstreamError(f"unknown model {model!r} in workspace {ws!r}")
            return found.latest.version

        specs = [parse_model_ref(s, latest) for s in step or []]
    v = client.create_pipeline_version(name, specs, result_steps=carried, validations=checks)
    carries = ("" if v.returned_steps == (len(v.steps),)
               else f"; results carry steps {list(v.returned_steps)}")
    checked = f"; checks {_checks(v.validations)}" if v.validations else ""
    show(v, json_out, message=f"pipeline [bold]{name}[/] version [bold]{v.version}[/]: "
         + " → ".join(json.dumps(step_to_json(s)) for s in v.steps) + carries + checked)


def _validations(given: list[str]) -> dict[str, str]:
    """--validation NAME=EXPR options by name, in order; the registry judges the rest."""
    checks: dict[str, str] = {}
    for text in given:
        name, sep, expression = text.partition("=")
        if not sep or not name.strip() or not expression.strip():
            raise typer.BadParameter(f"--validation {text!r}: give NAME=EXPR, e.g. "
                                     "'high-risk=risk > 0.95'")
        if name.strip() in checks:
            raise typer.BadParameter(f"--validation {name.strip()!r} is given twice")
        checks[name.strip()] = expression.strip()
    return checks


def _checks(validations: tuple[Validation, ...]) -> str:
    # Escaped: an expression's text (e.g. '"[red]"') is the user's, not Rich markup.
    return escape("; ".join(f"{v.name}: {v.expression}" for v in validations))


def _step_numbers(text: str) -> list[int]:
    try:
        return [int(n) for n in text.split(",")]
    except ValueError:
        raise typer.BadParameter(f"--result-steps {text!r}: give step numbers like 1,3"
                                 ) from None


@pipelines.command("input-schema")
def pipelines_input_schema(
    ctx: typer.Context, name: str,
    version: Annotated[int | None, typer.Option(help="Pipeline version (default: deployed)")
                       ] = None,
) -> None:
    """Print the Avro schema of the pipeline's input records (for Avro producers)."""
    print(json.dumps(client_of(ctx).input_schema(name, version), indent=2))


@pipelines.command("list")
def pipelines_list(ctx: typer.Context, json_out: JsonFlag = False) -> None:
    """List pipelines with their versions and what is deployed."""
    client = client_of(ctx)
    rows, deployed = client.pipelines(), {d.pipeline: d for d in client.deployments()}
    show(rows, json_out, lambda: rows_table(
        "pipelines", ["name", "versions", "deployed", "created"],
        [(p.name, len(p.versions), _deployed(deployed.get(p.name)), when(p.created_at))
         for p in rows]))


def _deployed(d: Deployment | None) -> str:
    return f"v{d.version}" if d and d.active else "-"


@pipelines.command("get")
def pipelines_get(ctx: typer.Context, name: str, json_out: JsonFlag = False) -> None:
    """Show a pipeline's versions and steps, what is deployed, its paused routes and where
    its canary stands (--json: the pipeline, with its deployment and canary)."""
    client = client_of(ctx)
    p = client.pipeline(name)
    d = next((d for d in client.deployments() if d.pipeline == name), None)
    if json_out:
        print(json.dumps({**to_json(p), "deployment": to_json(d)}, indent=2))
        return
    show(p, False, lambda: rows_table(
        f"pipeline {name}", ["version", "steps", "results from steps", "validations", "by",
                             "created"],
        [(v.version, " → ".join(json.dumps(step_to_json(s)) for s in v.steps),
          ", ".join(map(str, v.returned_steps)), _checks(v.validations) or "-", v.created_by,
          when(v.created_at))
         for v in p.versions]))
    if d is not None and d.active:
        paused = routes_text(d.paused_routes)
        out.print(f"deployed: v{d.version}"
                  + (f"; paused routes (step:route): {paused}" if paused else ""))
    if d is not None and d.canary is not None:
        out.print(escape(canary_line(d.canary)), highlight=False)


@pipelines.command("pause-route")
def pipelines_pause_route(
    ctx: typer.Context, name: str,
    route: Annotated[str, typer.Argument(help="STEP:ROUTE, e.g. 2:1: route 1 of split step 2")],
) -> None:
    """Send no records to one route of a split step of the deployed version; the other routes
    share its weight (a key split's paused values take its default). A new deploy or rollback
    opens every route again."""
    step, number = step_route(route)
    d = client_of(ctx).pause_route(name, step, number)
    paused = routes_text(d.paused_routes)
    out.print(f"pipeline [bold]{name}[/] v{d.version}: paused routes {paused}")


@pipelines.command("resume-route")
def pipelines_resume_route(
    ctx: typer.Context, name: str,
    route: Annotated[str, typer.Argument(help="STEP:ROUTE of a paused route")],
) -> None:
    """Send records to a paused route again."""
    step, number = step_route(route)
    d = client_of(ctx).resume_route(name, step, number)
    paused = routes_text(d.paused_routes) or "none"
    out.print(f"pipeline [bold]{name}[/] v{d.version}: paused routes {paused}")


@pipelines.command("deploy")
def pipelines_deploy(
    ctx: typer.Context, name: str,
    version: Annotated[int | None, typer.Option(help="Version to deploy (default: latest)")] = None,
    batch_size: Annotated[int, typer.Option(help="Most records per micro-batch")] = 64,
    batch_wait_ms: Annotated[int, typer.Option(help="Longest wait to fill a batch (ms)")] = 20,
    wait_workers: WaitWorkers = 15.0,
    json_out: JsonFlag = False,
) -> None:
    """Deploy a pipeline version; running workers switch to it between batches.

    Exit code 0 when a worker serves it (or --wait-workers 0), 1 when rejected or a worker
    cannot load it, 3 when deployed but no worker confirmed within --wait-workers.
    """
    client = client_of(ctx)
    status = client.send("Deploy", {"pipeline": name, "version": version,
                                    "batch_size": batch_size, "batch_wait_ms": batch_wait_ms,
                                    "rules": RULES},
                         worker_wait=wait_workers)
    d = client.registry().deployments[(client._ws(None), name)]
    show(d, json_out, message=f"deployed pipeline [bold]{name}[/] version [bold]{d.version}[/]"
         + _served_by(status, wait_workers))
    _exit_unless_served(status, wait_workers)


def _served_by(status: ControlStatus, waited: float) -> str:
    if waited and status.result.get("worker"):
        return f"; worker {status.result['worker']} serves it"
    return ""


def _exit_unless_served(status: ControlStatus, waited: float) -> None:
    """A script must tell a deploy no worker took from one that is served: exit UNCONFIRMED."""
    if waited and not status.result.get("worker"):
        err.print(f"[yellow]warning:[/] deployed, but no worker confirmed within {waited:g}s; "
                  "is one running (`inferstream worker`)? (exit code "
                  f"{UNCONFIRMED})", highlight=False)
        raise typer.Exit(UNCONFIRMED)


@pipelines.command("undeploy")
def pipelines_undeploy(ctx: typer.Context, name: str, json_out: JsonFlag = False) -> None:
    """Stop serving a pipeline; records on its input topic wait for the next deploy."""
    d = client_of(ctx).undeploy(name)
    show(d, json_out, message=f"undeployed pipeline [bold]{name}[/]")


@pipelines.command("rollback")
def pipelines_rollback(
    ctx: typer.Context, name: str,
    version: Annotated[int | None, typer.Option(
        help="Version to go back to (default: the one deployed before)")] = None,
    wait_workers: WaitWorkers = 15.0,
    json_out: JsonFlag = False,
) -> None:
    """Deploy an earlier version again.

    Exit codes as for `deploy`: 3 when no worker confirmed within --wait-workers.
    """
    client = client_of(ctx)
    status = client.send("Rollback", {"pipeline": name, "version": version, "rules": RULES},
                         worker_wait=wait_workers)
    d = client.registry().deployments[(client._ws(None), name)]
    show(d, json_out, message=f"rolled pipeline [bold]{name}[/] back to version "
         f"[bold]{d.version}[/]" + _served_by(status, wait_workers))
    _exit_unless_served(status, wait_workers)
