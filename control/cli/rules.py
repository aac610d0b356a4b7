"""CLI commands for rules that act on assay alerts: create, list, pause, resume, delete, and
the actions they took."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

import typer

from control.cli.base import (
    JsonFlag,
    client_of,
    format_duration,
    out,
    parse_duration,
    rows_table,
    show,
    when,
)
from control.cli.workloads import ArgOption, _pairs
from control.registry.alert_rules import STATUSES, describe
from control.registry.state import PAUSE_ROUTE, ROLLBACK, RUN_TASK, UNDEPLOY, AlertRule

rules = typer.Typer(help="Rules that act on assay alerts: roll back, undeploy, pause a split "
                    "route or run a task, once per alert (docs/rules.md).", no_args_is_help=True)


def step_route(text: str) -> tuple[int, int]:
    """STEP:ROUTE, both numbers from 1."""
    step, sep, route = text.partition(":")
    try:
        if sep:
            return int(step), int(route)
    except ValueError:
        pass
    raise typer.BadParameter(f"{text!r} is not STEP:ROUTE, e.g. 2:1 for route 1 of step 2")


@rules.command("create")
def rules_create(
    ctx: typer.Context, name: str,
    pipeline: Annotated[str, typer.Option(help="The pipeline whose assays' alerts fire it")],
    assay: Annotated[str | None, typer.Option(
        help="Only this assay's alerts (default: any assay of the pipeline)")] = None,
    on: Annotated[str, typer.Option(
        help="Statuses that fire it: alert, warning, or warning,alert")] = "alert",
    rollback: Annotated[bool, typer.Option(
        "--rollback", help="Roll the pipeline back (to the version deployed before)")] = False,
    to_version: Annotated[int | None, typer.Option(
        help="With --rollback: the version to go back to")] = None,
    undeploy: Annotated[bool, typer.Option("--undeploy", help="Undeploy the pipeline")] = False,
    pause_route: Annotated[str | None, typer.Option(
        help="Pause route ROUTE of split step STEP (STEP:ROUTE, from 1) of the deployed "
             "version")] = None,
    run_task: Annotated[str | None, typer.Option(
        help="Run this orchestration once (a task named after the rule and the alert)")] = None,
    arg: ArgOption = None,
    cooldown: Annotated[str, typer.Option(
        help="After firing, do not fire again for this long (e.g. 30m, 1h; by event time)")
    ] = "0s",
    json_out: JsonFlag = False,
) -> None:
    """Create a rule: when an assay of the pipeline raises an alert, take one action."""
    chosen = [a for a, given in ((ROLLBACK, rollback), (UNDEPLOY, undeploy),
                                 (PAUSE_ROUTE, pause_route), (RUN_TASK, run_task)) if given]
    if len(chosen) != 1:
        raise typer.BadParameter("give one action: --rollback, --undeploy, --pause-route "
                                 "STEP:ROUTE or --run-task ORCHESTRATION")
    if to_version is not None and not rollback:
        raise typer.BadParameter("--to-version goes with --rollback")
    if arg and not run_task:
        raise typer.BadParameter("--arg goes with --run-task")
    statuses = [s.strip() for s in on.split(",") if s.strip()]
    if not statuses or set(statuses) - set(STATUSES):
        raise typer.BadParameter(f"--on {on!r}: give alert, warning or warning,alert")
    try:
        cooldown_s = int(parse_duration(cooldown).total_seconds())
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    step, route = step_route(pause_route) if pause_route else (None, None)
    rule = client_of(ctx).create_rule(
        name, pipeline, chosen[0], assay=assay, on=statuses, version=to_version, step=step,
        route=route, orchestration=run_task, arguments=_pairs(arg, "arg"),
        cooldown_s=cooldown_s)
    show(rule, json_out, message=f"created rule [bold]{rule.name}[/]: {_when(rule)} → "
         f"{_action(rule)}")


def _when(rule: AlertRule) -> str:
    source = f"assay {rule.assay}" if rule.assay else "any assay"
    return f"{' or '.join(rule.on)} of {source} of pipeline {rule.pipeline}"


def _action(rule: AlertRule) -> str:
    match rule.action:
        case "rollback":
            return f"roll back to v{rule.version}" if rule.version else "roll back"
        case "undeploy":
            return "undeploy"
        case "pause_route":
            return f"pause route {rule.step}:{rule.route}"
    args = "".join(f" {k}={v}" for k, v in sorted(rule.arguments.items()))
    return f"run {rule.orchestration}{args} once"


@rules.command("list")
def rules_list(ctx: typer.Context, json_out: JsonFlag = False) -> None:
    """List the workspace's rules: what fires them, what they do, how often they fired."""
    found = client_of(ctx).rules()
    show(found, json_out, lambda: rows_table(
        "rules", ["name", "when", "then", "cool-down", "state", "fired", "last fired"],
        [(r.name, _when(r), _action(r), format_duration_s(r.cooldown_s),
          "active" if r.active else "paused", r.fired_count,
          when(r.last_fired_at) if r.last_fired_at else "-") for r in found]))


def format_duration_s(seconds: int) -> str:
    return format_duration(timedelta(seconds=seconds)) if seconds else "-"


@rules.command("actions")
def rules_actions(ctx: typer.Context,
                  name: Annotated[str | None, typer.Argument(help="Only this rule's")] = None,
                  json_out: JsonFlag = False) -> None:
    """The actions rules published, oldest first, with the alert that caused each and whether
    the registry accepted it (the audit log of rules)."""
    client = client_of(ctx)
    actions = client.rule_actions(name)
    # By offset: a second copy of an action (a racing worker's) has the same id, another fate.
    outcome = {s.offset: s for s in client.statuses()}

    def fate(offset: int) -> str:
        status = outcome.get(offset)
        if status is None:
            return "?"
        return "accepted" if status.accepted else f"rejected: {status.reason}"

    rows = [{"time": e.time, "actor": e.actor, "type": e.type,
             "pipeline": e.payload.get("pipeline"), "event_id": e.event_id,
             "cause": e.payload["cause"], "outcome": fate(e.offset)} for e in actions]
    show(rows, json_out, lambda: rows_table(
        "rule actions", ["time", "rule", "action", "by", "why", "outcome"],
        [(when(r["time"]), r["cause"]["rule"], f"{r['type']} {r['pipeline'] or ''}".strip(),
          r["actor"], describe(r["cause"]), r["outcome"]) for r in rows]))


@rules.command("pause")
def rules_pause(ctx: typer.Context, name: str) -> None:
    """Stop a rule from firing; alerts raised meanwhile never fire it."""
    client_of(ctx).pause_rule(name)
    out.print(f"paused rule [bold]{name}[/]")


@rules.command("resume")
def rules_resume(ctx: typer.Context, name: str) -> None:
    """Let a paused rule fire again, on alerts read from now on."""
    client_of(ctx).resume_rule(name)
    out.print(f"resumed rule [bold]{name}[/]")


@rules.command("delete")
def rules_delete(ctx: typer.Context, name: str) -> None:
    """Delete a rule; the actions it took stay on the control topic (`rules actions`)."""
    client_of(ctx).delete_rule(name)
    out.print(f"deleted rule [bold]{name}[/]")
