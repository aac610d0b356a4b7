"""The operator CLI: a thin layer over control.client.Client.

Exit codes: 0 done, 1 rejected or failed (the reason is printed), 2 bad usage.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from control.cli_api_keys import api_keys
from control.cli_assays import assays
from control.cli_base import JsonFlag, client_of, err, rows_table, show, when
from control.cli_logs import logs
from control.cli_platform import acls, infer, registrar, up, worker
from control.cli_status import status
from control.cli_users import bootstrap, login, users, whoami, workspaces
from control.cli_workloads import connections, orchestrations, tasks
from control.config import Settings
from control.events import ControlStatus
from control.state import Deployment, Model, ModelVersion
from control.steps import parse_model_ref, step_to_json
from schemas.errors import ConfigError, InferstreamError

app = typer.Typer(help="inferstream: streaming inference on Kafka and ClickHouse.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
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
app.add_typer(api_keys, name="api-keys")
app.command("logs")(logs)
for command in (up, registrar, worker, infer, status, bootstrap, login, whoami, acls):
    app.command()(command)

WaitWorkers = Annotated[float, typer.Option(
    help="Seconds to wait for a worker to serve it (or refuse); 0: don't wait")]


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
    key_file: Annotated[Path | None, typer.Option(
        help="Private key that signs your events (env INFERSTREAM_KEY_FILE; default: the "
        "one `login` recorded)")] = None,
    credentials: Annotated[Path | None, typer.Option(
        help="Credentials file of `login` (env INFERSTREAM_CREDENTIALS_FILE)")] = None,
) -> None:
    """Flags override INFERSTREAM_* environment variables, which override defaults.

    Kafka SASL/TLS settings come from the environment only (INFERSTREAM_SECURITY_PROTOCOL,
    INFERSTREAM_SASL_*, INFERSTREAM_SSL_*), so that no password is typed on a command line.
    """
    flags = {"bootstrap_servers": bootstrap_servers, "namespace": namespace, "user": user,
             "workspace": workspace, "data_dir": data_dir, "status_timeout_s": timeout,
             "key_file": key_file, "credentials_file": credentials}
    ctx.obj = settings_of({k: v for k, v in flags.items() if v is not None})


def settings_of(flags: dict[str, Any]) -> Settings:
    """Settings from flags and environment; a bad value is a ConfigError without its value."""
    try:
        return Settings(**flags)
    except ValidationError as exc:
        # pydantic's message quotes the value, which may be a secret: name the setting only.
        problems = "; ".join(
            f"INFERSTREAM_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
            for e in exc.errors())
        raise ConfigError(f"bad settings: {problems}") from None


# -- output ------------------------------------------------------------------------------------


def _specs(specs: Iterable[Any]) -> str:
    return ", ".join(f"{s.name}:{s.dtype}{list(s.shape)}" for s in specs)


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
        # Without standalone mode click returns a command's typer.Exit code instead of exiting.
        code = app(args=argv, standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
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
