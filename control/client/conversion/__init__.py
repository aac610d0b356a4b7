"""Scikit-learn models, XGBoost and LightGBM models converted to ONNX on the uploading machine.

`convert_model(path)` loads the model (unpickling a scikit-learn file: the uploader's own file,
in the uploader's own process), converts it with skl2onnx or onnxmltools, runs the ONNX with
the runtime workers use, and refuses the conversion unless it predicts what the original does
on sample rows. Workers only ever receive the ONNX.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from agents.runtimes import load_model
from control.client.conversion.checks import (
    DEFAULT_TOLERANCE,
    SAMPLE_ROWS,
    Agreement,
    compare,
    read_sample,
    sample_rows,
)
from control.client.conversion.originals import (
    INPUT_NAME,
    ConversionError,
    Original,
    load_original,
)
from control.registry.tensors import TensorSpec

KINDS = ("sklearn", "xgboost", "lightgbm")
_SUFFIXES = {".pkl": "sklearn", ".pickle": "sklearn", ".joblib": "sklearn", ".ubj": "xgboost"}


@dataclass(frozen=True)
class Conversion:
    """A model converted to ONNX, with what the check on sample rows found."""

    kind: str
    estimator: str
    onnx: bytes
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    agreement: Agreement
    tolerance: float
    original_name: str  # the name the original file is attached under

    def summary(self) -> str:
        """One line: what was converted and how closely it agrees."""
        a = self.agreement
        return (f"converted {self.kind} {self.estimator} to ONNX; on {a.rows} sample rows the "
                f"largest difference was {a.largest_difference:.3g} ({a.output}), tolerance "
                f"{self.tolerance:g}; original kept as {self.original_name}")


def kind_of(path: Path) -> str | None:
    """"sklearn", "xgboost" or "lightgbm" when path looks like such a model file, else None."""
    path = Path(path)
    if not path.is_file():
        return None
    if path.suffix in _SUFFIXES:
        return _SUFFIXES[path.suffix]
    with path.open("rb") as f:
        head = f.read(4096)
    if head.startswith(b"tree\n"):  # LightGBM's text format, whatever the file is called
        return "lightgbm"
    if path.suffix == ".json" and b'"learner"' in head:
        return "xgboost"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "sklearn"  # a pickle by another name
    return None


def convert_model(path: Path, kind: str | None = None, *,
                  sample: Path | np.ndarray | None = None,
                  tolerance: float = DEFAULT_TOLERANCE) -> Conversion:
    """Convert the model at path to ONNX, checked on sample rows (a file, an array, or made up
    from the model); ConversionError says why a model could not be converted faithfully."""
    path = Path(path)
    kind = kind or kind_of(path)
    if kind not in KINDS:
        raise ConversionError(
            f"{str(path)!r} is not a model file to convert; give a scikit-learn pickle or joblib "
            "file (.pkl, .joblib), an XGBoost model (.json, .ubj) or a LightGBM text model "
            "(.txt), or say which with --framework sklearn|xgboost|lightgbm"
        )
    if not tolerance > 0:
        raise ConversionError(f"tolerance {tolerance} must be above 0, e.g. {DEFAULT_TOLERANCE}")
    original = load_original(path, kind)
    rows = sample_rows(original, read_sample(sample) if isinstance(sample, str | Path)
                       else sample)
    proto = original.to_onnx()
    _finish(proto, original, path)
    blob = proto.SerializeToString()
    with tempfile.TemporaryDirectory(prefix="inferstream-convert-") as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        onnx_path.write_bytes(blob)
        # The runtime workers use, with their session options: what is checked is what runs.
        runtime = load_model("onnx", onnx_path)
        names = [spec.name for spec in runtime.outputs]
        try:
            results = runtime.predict({INPUT_NAME: rows})
        except Exception as exc:
            raise ConversionError(
                f"the ONNX conversion of the {original.estimator} in {str(path)!r} does not "
                f"run: {exc}; export ONNX yourself and upload the .onnx"
            ) from None
    agreement = compare(original, rows, names, [results[n] for n in names], tolerance)
    return Conversion(kind, original.estimator, blob, runtime.inputs, runtime.outputs,
                      agreement, tolerance, f"original{path.suffix or '.bin'}")


def _finish(proto: onnx.ModelProto, original: Original, path: Path) -> None:
    """Name the graph and batch dimension deterministically and record where it came from."""
    # skl2onnx names the graph with a random uuid, which would give the same model a new
    # sha256 on every upload.
    proto.graph.name = f"{original.kind}_model"
    for value in (*proto.graph.input, *proto.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims:
            # The batch dimension is any size; onnxmltools declares a LightGBM label as [1].
            dims[0].Clear()
            dims[0].dim_param = "N"
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    for key, value in (("inferstream.converted_from", f"{original.kind} {original.estimator}"),
                       ("inferstream.original_sha256", digest)):
        prop = proto.metadata_props.add()
        prop.key, prop.value = key, value


__all__ = [
    "DEFAULT_TOLERANCE",
    "KINDS",
    "SAMPLE_ROWS",
    "Conversion",
    "ConversionError",
    "convert_model",
    "kind_of",
    "read_sample",
]
