"""The operator CLI: a thin layer over control.client.Client.

Exit codes: 0 done, 1 rejected or failed (the reason is printed), 2 bad usage.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from control.cli.api_keys import api_keys
from control.cli.assays import assays
from control.cli.base import err
from control.cli.canary import pipelines_canary  # noqa: F401 - registers the canary commands
from control.cli.console import console
from control.cli.logs import logs
from control.cli.models import models
from control.cli.pipelines import pipelines
from control.cli.platform import acls, broker, infer, registrar, up, worker
from control.cli.redrive import pipelines_redrive  # noqa: F401 - registers its commands
from control.cli.replays import replays
from control.cli.rules import rules
from control.cli.status import status
from control.cli.users import bootstrap, login, users, whoami, workspaces
from control.cli.workloads import connections, orchestrations, tasks
from control.config import Settings
from schemas.errors import ConfigError, InferstreamError

app = typer.Typer(help="inferstream: streaming inference on Kafka and ClickHouse.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
app.add_typer(users, name="users")
app.add_typer(workspaces, name="workspaces")
app.add_typer(models, name="models")
app.add_typer(pipelines, name="pipelines")
app.add_typer(assays, name="assays")
app.add_typer(connections, name="connections")
app.add_typer(orchestrations, name="orchestrations")
app.add_typer(tasks, name="tasks")
app.add_typer(rules, name="rules")
app.add_typer(replays, name="replays")
app.add_typer(api_keys, name="api-keys")
app.add_typer(broker, name="broker")
app.command("logs")(logs)
for command in (up, registrar, worker, infer, status, bootstrap, login, whoami, acls, console):
    app.command()(command)

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

