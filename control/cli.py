"""The operator CLI: a thin layer over control.client.Client.

Exit codes: 0 done, 1 rejected or failed (the reason is printed), 2 bad usage.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from control.cli_assays import assays
from control.cli_base import JsonFlag, client_of, err, rows_table, show, when
from control.cli_logs import logs
from control.cli_platform import infer, registrar, up, worker
from control.cli_workloads import connections, orchestrations, tasks
from control.config import Settings
from control.events import ControlStatus
from control.state import Deployment, Model, ModelVersion
from control.steps import parse_model_ref, step_to_json
from schemas.errors import InferstreamError

app = typer.Typer(help="inferstream: streaming inference on Kafka and ClickHouse.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
users = typer.Typer(help="Create, list and deactivate users.", no_args_is_help=True)
workspaces = typer.Typer(help="Create workspaces and manage their members.", no_args_is_help=True)
models = typer.Typer(help="Upload models and their versions.", no_args_is_help=True)
pipelines = typer.Typer(help="Create, version, deploy, undeploy and roll back pipelines.",
                        no_args_is_help=True)
app.add_typer(users, name="users")
app.add_typer(workspaces, name="workspaces")
app.add_typer(models, name="models")
app.add_typer(pipelines, name="pipelines")
app.add_typer(assays, name="assays")
app.add_typer(connections, name="connections")
app.add_typer(orchestrations, name="orchestrations")
app.add_typer(tasks, name="tasks")
app.command("logs")(logs)
for command in (up, registrar, worker, infer):
    app.command()(command)

WaitWorkers = Annotated[float, typer.Option(
    help="Seconds to wait for a worker to serve it (or refuse); 0: don't wait")]


class Role(StrEnum):
    owner = "owner"
    collaborator = "collaborator"


@app.callback()
def options(
    ctx: typer.Context,
    bootstrap_servers: Annotated[str | None, typer.Option(
        help="Kafka bootstrap servers (env INFERSTREAM_BOOTSTRAP_SERVERS)")] = None,
    namespace: Annotated[str | None, typer.Option(
        help="Topic name prefix (env INFERSTREAM_NAMESPACE)")] = None,
    user: Annotated[str | None, typer.Option(
        "--user", "-u", help="Act as this user (env INFERSTREAM_USER)")] = None,
    workspace: Annotated[str | None, typer.Option(
        "--workspace", "-w", help="Workspace to act in (env INFERSTREAM_WORKSPACE)")] = None,
    data_dir: Annotated[Path | None, typer.Option(
        help="Local data folder (env INFERSTREAM_DATA_DIR)")] = None,
    timeout: Annotated[float | None, typer.Option(
        help="Seconds to wait for a control status (env INFERSTREAM_STATUS_TIMEOUT_S)")] = None,
) -> None:
    """Flags override INFERSTREAM_* environment variables, which override defaults."""
    flags = {"bootstrap_servers": bootstrap_servers, "namespace": namespace, "user": user,
             "workspace": workspace, "data_dir": data_dir, "status_timeout_s": timeout}
    ctx.obj = Settings(**{k: v for k, v in flags.items() if v is not None})


# -- output ------------------------------------------------------------------------------------


def _specs(specs: Iterable[Any]) -> str:
    return ", ".join(f"{s.name}:{s.dtype}{list(s.shape)}" for s in specs)


# -- users -------------------------------------------------------------------------------------


@users.command("create")
def users_create(
    ctx: typer.Context, name: str, email: Annotated[str | None, typer.Option()] = None,
    admin: Annotated[bool, typer.Option(help="Make a platform administrator.")] = False,
    json_out: JsonFlag = False,
) -> None:
    """Create a user. The very first user creates itself (--user NAME) and is an administrator."""
    u = client_of(ctx).create_user(name, email, admin)
    show(u, json_out, message=f"created user [bold]{u.name}[/]{' (admin)' if u.admin else ''}")


@users.command("list")
def users_list(ctx: typer.Context, json_out: JsonFlag = False) -> None:
    """List users."""
    rows = client_of(ctx).users()
    show(rows, json_out, lambda: rows_table(
        "users", ["name", "email", "admin", "active", "created"],
        [(u.name, u.email, u.admin, u.active, when(u.created_at)) for u in rows]))


@users.command("get")
def users_get(ctx: typer.Context, name: str, json_out: JsonFlag = False) -> None:
    """Show one user."""
    user = client_of(ctx).registry().users.get(name)
    if user is None:
        raise InferstreamError(f"unknown user {name!r}")
    show(user, json_out, message=f"{user.name} email={user.email} admin={user.admin} "
         f"active={user.active} created={when(user.created_at)}")


@users.command("deactivate")
def users_deactivate(ctx: typer.Context, name: str, json_out: JsonFlag = False) -> None:
    """Deactivate a user: they can no longer act."""
    status = client_of(ctx).deactivate_user(name)
    show(status, json_out, message=f"deactivated user [bold]{name}[/]")


# -- workspaces --------------------------------------------------------------------------------


@workspaces.command("create")
def workspaces_create(ctx: typer.Context, name: str, json_out: JsonFlag = False) -> None:
    """Create a workspace; you become its owner."""
    ws = client_of(ctx).create_workspace(name)
    show(ws, json_out, message=f"created workspace [bold]{ws.name}[/]")


@workspaces.command("list")
def workspaces_list(ctx: typer.Context, json_out: JsonFlag = False) -> None:
    """List workspaces and their members."""
    rows = client_of(ctx).workspaces()
    show(rows, json_out, lambda: rows_table(
        "workspaces", ["name", "members", "created by", "created"],
        [(w.name, ", ".join(f"{u} ({r})" for u, r in sorted(w.members.items())), w.created_by,
          when(w.created_at)) for w in rows]))


@workspaces.command("get")
def workspaces_get(ctx: typer.Context, name: str, json_out: JsonFlag = False) -> None:
    """Show one workspace."""
    ws = client_of(ctx).registry().workspaces.get(name)
    if ws is None:
        raise InferstreamError(f"unknown workspace {name!r}")
    show(ws, json_out, lambda: rows_table(f"workspace {name}", ["member", "role"],
         sorted(ws.members.items())))


@workspaces.command("add-member")
def workspaces_add_member(ctx: typer.Context, user: str,
                          role: Annotated[Role, typer.Option()] = Role.collaborator,
                          json_out: JsonFlag = False) -> None:
    """Add a user to the workspace (--workspace), or change their role."""
    status = client_of(ctx).add_member(user, role.value)
    show(status, json_out, message=f"{user} is now {role.value} of {status.workspace}")


@workspaces.command("remove-member")
def workspaces_remove_member(ctx: typer.Context, user: str, json_out: JsonFlag = False) -> None:
    """Remove a user from the workspace (--workspace)."""
    status = client_of(ctx).remove_member(user)
    show(status, json_out, message=f"removed {user} from {status.workspace}")


# -- models ------------------------------------------------------------------------------------


@models.command("upload")
def models_upload(
    ctx: typer.Context, name: str,
    path: Annotated[Path, typer.Argument(exists=True, help=".onnx, .keras or a SavedModel dir")],
    framework: Annotated[str | None, typer.Option(help="onnx or tensorflow (default: guessed)")
                         ] = None,
    file: Annotated[list[Path] | None, typer.Option(
        "--file", exists=True, help="Extra file (pre/post-processing), repeatable")] = None,
    description: Annotated[str | None, typer.Option()] = None,
    json_out: JsonFlag = False,
) -> None:
    """Upload a model: a new model, or a new version when NAME exists."""
    columns = (*Progress.get_default_columns()[:2], BarColumn(), DownloadColumn(),
               TransferSpeedColumn())
    with Progress(*columns, console=err, transient=True, disable=json_out) as bar:
        task = bar.add_task(f"uploading {path.name}", total=None)
        version = client_of(ctx).upload_model(
            name, path, framework=framework, files=file or (), description=description,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    show(version, json_out, message=_version_line(version))


def _version_line(v: ModelVersion) -> str:
    return (f"model [bold]{v.model}[/] version [bold]{v.version}[/] ({v.framework}, "
            f"{v.artifact.size} bytes, sha256 {v.artifact.sha256[:12]}…)\n"
            f"  inputs  {_specs(v.inputs)}\n  outputs {_specs(v.outputs)}")


@models.command("list")
def models_list(ctx: typer.Context, json_out: JsonFlag = False) -> None:
    """List the models of the workspace with their latest version."""
    rows = client_of(ctx).models()
    show(rows, json_out, lambda: rows_table(
        "models", ["name", "versions", "framework", "latest sha256", "inputs", "outputs"],
        [(m.name, len(m.versions), m.latest.framework, m.latest.artifact.sha256[:12],
          _specs(m.latest.inputs), _specs(m.latest.outputs)) for m in rows]))


@models.command("get")
def models_get(ctx: typer.Context, name: str,
               version: Annotated[int | None, typer.Option(help="Only this version")] = None,
               json_out: JsonFlag = False) -> None:
    """Show a model and its versions."""
    model: Model = client_of(ctx).model(name)
    chosen = [v for v in model.versions if version in (None, v.version)]
    if not chosen:
        raise InferstreamError(f"model {name!r} has no version {version}")
    show(chosen if version is None else chosen[0], json_out, lambda: rows_table(
        f"model {name}", ["version", "framework", "size", "sha256", "files", "by", "created"],
        [(v.version, v.framework, v.artifact.size, v.artifact.sha256[:12],
          ", ".join(n for n, _ in v.files), v.created_by, when(v.created_at)) for v in chosen]))


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
        exists=True, help="JSON list of steps (splits, shadows): see README")] = None,
    json_out: JsonFlag = False,
) -> None:
    """Create a new immutable version of a pipeline from its steps."""
    if bool(step) == bool(steps_file):
        raise typer.BadParameter("give either --step (one or more) or --steps-file")
    client = client_of(ctx)
    if steps_file:
        try:
            specs = json.loads(steps_file.read_text())
        except json.JSONDecodeError as exc:
            raise InferstreamError(f"{steps_file} is not JSON: {exc}") from exc
    else:
        registry, ws = client.registry(), client._ws(None)

        def latest(model: str) -> int:
            found = registry.models.get((ws, model))
            if found is None:
                raise InferstreamError(f"unknown model {model!r} in workspace {ws!r}")
            return found.latest.version

        specs = [parse_model_ref(s, latest) for s in step or []]
    v = client.create_pipeline_version(name, specs)
    show(v, json_out, message=f"pipeline [bold]{name}[/] version [bold]{v.version}[/]: "
         + " → ".join(json.dumps(step_to_json(s)) for s in v.steps))


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
    """Show a pipeline's versions and steps."""
    p = client_of(ctx).pipeline(name)
    show(p, json_out, lambda: rows_table(f"pipeline {name}", ["version", "steps", "by", "created"],
         [(v.version, " → ".join(json.dumps(step_to_json(s)) for s in v.steps), v.created_by,
           when(v.created_at)) for v in p.versions]))


@pipelines.command("deploy")
def pipelines_deploy(
    ctx: typer.Context, name: str,
    version: Annotated[int | None, typer.Option(help="Version to deploy (default: latest)")] = None,
    batch_size: Annotated[int, typer.Option(help="Most records per micro-batch")] = 64,
    batch_wait_ms: Annotated[int, typer.Option(help="Longest wait to fill a batch (ms)")] = 20,
    wait_workers: WaitWorkers = 15.0,
    json_out: JsonFlag = False,
) -> None:
    """Deploy a pipeline version; running workers switch to it between batches."""
    client = client_of(ctx)
    status = client.send("Deploy", {"pipeline": name, "version": version,
                                    "batch_size": batch_size, "batch_wait_ms": batch_wait_ms},
                         worker_wait=wait_workers)
    d = client.registry().deployments[(client._ws(None), name)]
    show(d, json_out, message=f"deployed pipeline [bold]{name}[/] version [bold]{d.version}[/]"
         + _served_by(status, wait_workers))


def _served_by(status: ControlStatus, waited: float) -> str:
    if not waited:
        return ""
    if status.result.get("worker"):
        return f"; worker {status.result['worker']} serves it"
    return (f"\n[yellow]warning:[/] no worker confirmed within {waited:g}s; "
            "is one running (`inferstream worker`)?")


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
    """Deploy an earlier version again."""
    client = client_of(ctx)
    status = client.send("Rollback", {"pipeline": name, "version": version},
                         worker_wait=wait_workers)
    d = client.registry().deployments[(client._ws(None), name)]
    show(d, json_out, message=f"rolled pipeline [bold]{name}[/] back to version "
         f"[bold]{d.version}[/]" + _served_by(status, wait_workers))


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `inferstream` command."""
    try:
        app(args=argv, standalone_mode=False)
    except InferstreamError as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        err.print("aborted")
        sys.exit(130)
    except Exception as exc:
        # Usage errors: click's, or the copy of click that newer typers carry (typer._click).
        if callable(getattr(exc, "show", None)) and isinstance(getattr(exc, "exit_code", None),
                                                                 int):
            exc.show()
            sys.exit(exc.exit_code)
        raise


if __name__ == "__main__":
    main()
