"""CLI commands for models: upload versions, list, show."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from agents.runtimes.packing import framework_of
from control.cli.base import JsonFlag, client_of, err, rows_table, show, when
from control.client.conversion import DEFAULT_TOLERANCE, SAMPLE_ROWS, Conversion
from control.registry.state import Model, ModelVersion
from schemas.errors import InferstreamError

models = typer.Typer(help="Upload models and their versions.", no_args_is_help=True)


# -- output ------------------------------------------------------------------------------------


def _specs(specs: Iterable[Any]) -> str:
    return ", ".join(f"{s.name}:{s.dtype}{list(s.shape)}" for s in specs)


# -- models ------------------------------------------------------------------------------------


_UPLOAD_HELP = (
    "Upload a model: a new model, or a new version when NAME exists.\n\n"
    "A scikit-learn, XGBoost or LightGBM model is converted to ONNX on this machine and "
    "checked against the original on sample rows; the ONNX is uploaded with the original "
    "attached, and workers never load the original.\n\n"
    "Reading a pickle or joblib file runs code from it: never upload one you do not trust."
)


@models.command("upload", help=_UPLOAD_HELP)
def models_upload(
    ctx: typer.Context, name: str,
    path: Annotated[Path, typer.Argument(exists=True, help=(
        ".onnx, .keras, a SavedModel dir, a Python step, or a model converted to ONNX here: "
        "a scikit-learn .pkl/.joblib, an XGBoost .json/.ubj, a LightGBM .txt"))],
    framework: Annotated[str | None, typer.Option(help=(
        "onnx, tensorflow, python, sklearn, xgboost or lightgbm (default: guessed from the "
        "file); sklearn, xgboost and lightgbm are converted to ONNX before upload"))] = None,
    file: Annotated[list[Path] | None, typer.Option(
        "--file", exists=True, help="Extra file (pre/post-processing), repeatable")] = None,
    description: Annotated[str | None, typer.Option()] = None,
    sample: Annotated[Path | None, typer.Option(
        exists=True, dir_okay=False, metavar="FILE",
        help=("Rows to check a conversion on: .npy, .csv or a JSON list of rows (default: "
              f"{SAMPLE_ROWS} rows made from the model's statistics)"))] = None,
    tolerance: Annotated[float, typer.Option(help=(
        "Largest accepted difference between ONNX and the original, times (1 + |value|); "
        "labels must match exactly"))] = DEFAULT_TOLERANCE,
    allow_interface_change: Annotated[bool, typer.Option(
        "--allow-interface-change",
        help="Accept a version whose inputs or outputs differ from the previous version's")
    ] = False,
    json_out: JsonFlag = False,
) -> None:
    """Upload a model: a new model, or a new version when NAME exists."""
    columns = (*Progress.get_default_columns()[:2], BarColumn(), DownloadColumn(),
               TransferSpeedColumn())
    conversions: list[Conversion] = []

    def converted(conversion: Conversion) -> None:
        conversions.append(conversion)
        bar.update(task, description=f"uploading {path.name} as ONNX")

    with Progress(*columns, console=err, transient=True, disable=json_out) as bar:
        task = bar.add_task(_first_step(path, framework), total=None)
        version = client_of(ctx).upload_model(
            name, path, framework=framework, files=file or (), description=description,
            progress=lambda done, total: bar.update(
                task, completed=done, total=total, description=f"uploading {path.name}"),
            sample=sample, tolerance=tolerance, allow_interface_change=allow_interface_change,
            converted=converted,
        )
    line = _version_line(version)
    if conversions:
        line = f"{conversions[0].summary()}\n{line}"
    show(version, json_out, message=line)


def _first_step(path: Path, framework: str | None) -> str:
    """What the spinner says before bytes flow: for TensorFlow, why it takes seconds."""
    try:
        guessed = framework or framework_of(path)
    except (InferstreamError, KeyError):  # a converted model, or a bad path: said later
        guessed = None
    if guessed == "tensorflow":  # the signature is read by loading the model (it must load)
        return f"reading {path.name}'s signature (importing TensorFlow, about 10 s)…"
    return f"preparing {path.name}"


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
        f"model {name}", ["version", "framework", "inputs", "outputs", "size", "sha256",
                          "files", "by", "created"],
        [(v.version, v.framework, _specs(v.inputs), _specs(v.outputs), v.artifact.size,
          v.artifact.sha256[:12], ", ".join(n for n, _ in v.files), v.created_by,
          when(v.created_at)) for v in chosen]))
