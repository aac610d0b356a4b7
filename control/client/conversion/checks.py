"""Sample rows for a conversion check, and the check itself: ONNX outputs against the original's."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from control.client.conversion.originals import ConversionError, Expected, Original

DEFAULT_TOLERANCE = 1e-4
SAMPLE_ROWS = 256


@dataclass(frozen=True)
class Agreement:
    """How closely the ONNX model followed the original on the sample rows."""

    rows: int
    largest_difference: float
    output: str  # the output where the largest difference was seen


def read_sample(path: Path) -> np.ndarray:
    """Rows from a .npy file, a .csv file (a header line is skipped) or a JSON list of rows."""
    path = Path(path)
    try:
        if path.suffix == ".npy":
            rows = np.load(path, allow_pickle=False)
        elif path.suffix == ".csv":
            lines = path.read_text().splitlines()
            header = 1 if lines and not _numeric(lines[0].split(",")[0]) else 0
            rows = np.loadtxt(path, delimiter=",", skiprows=header, ndmin=2, dtype=np.float64)
        elif path.suffix == ".json":
            rows = np.asarray(json.loads(path.read_text()), dtype=np.float64)
        else:
            raise ConversionError(
                f"sample file {str(path)!r} is not .npy, .csv or .json; give rows in one of those"
            )
    except ConversionError:
        raise
    except Exception as exc:
        raise ConversionError(
            f"sample file {str(path)!r} does not hold a table of numbers: {exc}"
        ) from None
    return np.asarray(rows)


def sample_rows(original: Original, sample: np.ndarray | None) -> np.ndarray:
    """The rows to compare on, as float32 (the ONNX input's type): given, or made up."""
    if sample is not None:
        rows = np.asarray(sample)
        if rows.ndim == 1 and rows.size == original.n_features:
            rows = rows.reshape(1, -1)
        if rows.ndim != 2 or rows.shape[1] != original.n_features or not rows.size:
            raise ConversionError(
                f"sample rows have shape {list(rows.shape)}, but the {original.estimator} "
                f"takes {original.n_features} features; give rows of {original.n_features} "
                "numbers"
            )
        if not np.issubdtype(rows.dtype, np.number):
            raise ConversionError(
                f"sample rows are {rows.dtype}, not numbers; the ONNX input is float32"
            )
        return rows.astype(np.float32)
    rng = np.random.default_rng(0)
    # Around zero for any model; around the scaler's statistics or the split thresholds where
    # the model keeps them, which is where a tree or a scaler decides.
    rows = rng.standard_normal((SAMPLE_ROWS, original.n_features))
    if original.statistics is not None:
        centre, spread = original.statistics
        half = SAMPLE_ROWS // 2
        rows[half:] = centre + spread * rows[half:]
    return rows.astype(np.float32)


def compare(original: Original, rows: np.ndarray, names: list[str],
            outputs: list[np.ndarray], tolerance: float) -> Agreement:
    """Compare the ONNX outputs with the original's on rows; ConversionError if they differ.

    Labels must be equal; numbers within tolerance * (1 + |original|), i.e. the tolerance
    absolute near zero and relative for large values.
    """
    expected = original.predict(rows)
    largest, where = 0.0, names[0]
    for want, name, got in zip(expected, names, outputs, strict=False):
        got = _shaped(got, want.values, name, original)
        if want.exact:
            _same_labels(want, got, name, rows, original, _ties(original, expected, tolerance))
            continue
        diff = np.abs(got.astype(np.float64) - want.values.astype(np.float64))
        # NaN where both are NaN (a missing value the model passes on) is agreement.
        diff = np.where(np.isnan(got) & np.isnan(want.values), 0.0, diff)
        diff = np.where(np.isnan(diff), np.inf, diff)
        if diff.size and diff.max() > largest:
            largest, where = float(diff.max()), name
        excess = diff / (tolerance * (1 + np.abs(want.values)))
        if excess.size and excess.max() > 1:
            at = np.unravel_index(int(np.argmax(excess)), excess.shape)
            raise ConversionError(
                f"the ONNX conversion of the {original.estimator} does not predict what the "
                f"original does: output {name!r} of sample row {at[0]} ({_row(rows, at[0])}) is "
                f"{float(got[at]):.9g} in ONNX and {float(want.values[at]):.9g} in the original, "
                f"a difference of {float(diff[at]):.3g} (largest absolute difference "
                f"{float(diff.max()):.3g}), over the tolerance of {tolerance:g} x (1 + |value|). "
                "Float32 ONNX cannot follow this model here (large or finely spaced feature "
                "values are the usual cause); if the drift is acceptable raise --tolerance, else "
                "rescale the features before training or export ONNX yourself"
            )
    return Agreement(len(rows), largest, where)


def _shaped(got: np.ndarray, want: np.ndarray, name: str, original: Original) -> np.ndarray:
    if got.size != want.size:
        raise ConversionError(
            f"the ONNX output {name!r} of the {original.estimator} has shape {list(got.shape)}, "
            f"the original's {list(want.shape)}; the converter does not support this model's "
            "output; export ONNX yourself"
        )
    return got.reshape(want.shape)


def _ties(original: Original, expected: list[Expected], tolerance: float
          ) -> Callable[[int, object], bool]:
    """Whether the original gives a label the same probability as its own, within tolerance:
    a tie (ten trees of twenty for each class) that float32 may break the other way."""
    probabilities = expected[1].values if len(expected) > 1 else None
    if original.classes is None or probabilities is None or probabilities.ndim != 2:
        return lambda row, label: False
    classes = [str(c) for c in original.classes]

    def tied(row: int, label: object) -> bool:
        if str(label) not in classes:
            return False
        p, top = probabilities[row], float(probabilities[row].max())
        return top - float(p[classes.index(str(label))]) <= tolerance * (1 + top)

    return tied


def _same_labels(want: Expected, got: np.ndarray, name: str, rows: np.ndarray,
                 original: Original, tied: Callable[[int, object], bool]) -> None:
    numeric = all(np.issubdtype(a.dtype, np.number) or a.dtype == bool
                  for a in (want.values, got))
    same = (want.values == got) if numeric else (want.values.astype(str) == got.astype(str))
    same = np.array([ok or tied(i, got[i]) for i, ok in enumerate(same.tolist())], dtype=bool)
    if not np.all(same):
        row = int(np.argwhere(~np.asarray(same))[0][0])
        raise ConversionError(
            f"the ONNX conversion of the {original.estimator} does not predict what the "
            f"original does: {int(np.sum(~same))} of {len(rows)} sample rows get another "
            f"{name!r}, first row {row} ({_row(rows, row)}): {want.values[row]} in the "
            f"original, {got[row]} in ONNX; labels must match exactly. Float32 ONNX cannot "
            "follow this model here; export ONNX yourself or retrain on rescaled features"
        )


def _row(rows: np.ndarray, i: int) -> str:
    values = ", ".join(f"{v:.8g}" for v in rows[i][:6])
    return f"[{values}{', ...' if rows.shape[1] > 6 else ''}]"


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
