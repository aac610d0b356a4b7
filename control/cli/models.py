"""CLI commands for models: upload versions, list, show."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from control.cli.base import JsonFlag, client_of, err, rows_table, show, when
from control.registry.state import Model, ModelVersion
from schemas.errors import InferstreamError

models = typer.Typer(help="Upload models and their versions.", no_args_is_help=True)


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
