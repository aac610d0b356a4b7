"""Scikit-learn, XGBoost and LightGBM models loaded on the uploading machine, and converted.

Each loader gives an Original: how the model predicts (the reference the ONNX must match), how
it converts, and what it knows of its inputs' scale. Only the uploader's own process ever loads
these files; workers receive the ONNX.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import onnx

from schemas.errors import ArtifactError

INPUT_NAME = "features"
# Pinned so that a model converts to the same bytes whatever the skl2onnx version, and older
# ONNX Runtimes load it (the demo's models use the same opsets).
SKLEARN_OPSET = {"": 17, "ai.onnx.ml": 3}
# onnxmltools 1.16 converts trees up to opset 15.
ONNXMLTOOLS_OPSET = 15

# The packages a kind needs beyond the base install, and the extra that brings them.
EXTRAS = {"xgboost": ("xgboost", "onnxmltools"), "lightgbm": ("lightgbm", "onnxmltools")}


class ConversionError(ArtifactError):
    """A model could not be converted to ONNX, or its ONNX does not predict what it does."""


@dataclass(frozen=True)
class Expected:
    """One output of the original model on the sample rows; labels must match exactly."""

    values: np.ndarray
    exact: bool


@dataclass(frozen=True)
class Original:
    """A model loaded from the uploader's file: its predictions and its conversion to ONNX."""

    kind: str
    estimator: str
    n_features: int
    predict: Callable[[np.ndarray], list[Expected]]
    to_onnx: Callable[[], onnx.ModelProto]
    # Centre and spread of each feature where the model records them (scaler statistics,
    # split thresholds): sample rows made there exercise the model where it decides.
    statistics: tuple[np.ndarray, np.ndarray] | None
    # The labels in the order of the probability columns, for classifiers.
    classes: np.ndarray | None = None


def load_original(path: Path, kind: str) -> Original:
    """Load the model at path as kind ("sklearn", "xgboost" or "lightgbm")."""
    loaders = {"sklearn": _sklearn_file, "xgboost": _xgboost_file, "lightgbm": _lightgbm_file}
    return loaders[kind](Path(path))


def require(kind: str) -> tuple[ModuleType, ...]:
    """The modules kind needs, or a ConversionError naming the extra to install."""
    try:
        return tuple(import_module(name) for name in EXTRAS[kind])
    except ImportError as exc:
        raise ConversionError(
            f"converting a {kind} model needs {' and '.join(EXTRAS[kind])}, which the base "
            f"install leaves out ({exc.name} is missing): pip install 'inferstream[{kind}]'"
        ) from None


# -- scikit-learn ------------------------------------------------------------------------------


def _sklearn_file(path: Path) -> Original:
    import joblib

    try:
        # The uploader's own file on the uploader's machine: unpickling runs its code, which is
        # why only this process ever does it (the help text says so).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = joblib.load(path)
    except ModuleNotFoundError as exc:
        top = (exc.name or "").split(".")[0]
        if top in EXTRAS:
            require(top)
        raise ConversionError(
            f"{str(path)!r} needs the module {exc.name!r} to unpickle; install it where you "
            "upload from"
        ) from None
    except Exception as exc:
        raise ConversionError(
            f"{str(path)!r} is not a readable pickle or joblib file ({type(exc).__name__}: "
            f"{_first_line(exc)}); save the model with joblib.dump(model, path)"
        ) from None
    module = type(model).__module__.split(".")[0]
    if module == "xgboost" and hasattr(model, "get_booster"):
        return _xgboost_booster(model.get_booster(), path)
    if module == "lightgbm" and hasattr(model, "booster_"):
        return _lightgbm_booster(model.booster_, path)
    if module != "sklearn" or not hasattr(model, "fit"):
        raise ConversionError(
            f"{str(path)!r} holds a {type(model).__module__}.{type(model).__name__}, not a "
            "scikit-learn estimator or Pipeline; pickle the fitted estimator itself"
        )
    return _sklearn_model(model, path)


def _sklearn_model(model: Any, path: Path) -> Original:
    from sklearn.base import is_classifier
    from sklearn.utils.validation import check_is_fitted

    try:
        check_is_fitted(model)
        n_features = int(model.n_features_in_)
    except Exception:
        raise ConversionError(
            f"{str(path)!r} holds a {type(model).__name__} that is not fitted, or does not say "
            "how many features it takes; fit it on a numeric feature matrix before saving"
        ) from None
    final = _final_step(model)

    def predict(rows: np.ndarray) -> list[Expected]:
        x = rows.astype(np.float64)
        with warnings.catch_warnings():  # fitted on a DataFrame, predicting on an array
            warnings.simplefilter("ignore")
            if not hasattr(model, "predict"):
                return [Expected(np.asarray(model.transform(x)), exact=False)]
            labels = np.asarray(model.predict(x))
            # Classes and cluster ids must match exactly; regressed values within tolerance.
            exact = is_classifier(final) or not np.issubdtype(labels.dtype, np.floating)
            out = [Expected(labels, exact=exact)]
            if is_classifier(final) and hasattr(model, "predict_proba"):
                out.append(Expected(np.asarray(model.predict_proba(x)), exact=False))
            return out

    def to_onnx() -> onnx.ModelProto:
        from skl2onnx import convert_sklearn
        from skl2onnx.common.data_types import FloatTensorType

        # Tensors, not a list of maps: workers serve tensor outputs only.
        options = {id(final): {"zipmap": False}} if is_classifier(final) else None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return convert_sklearn(
                    model, initial_types=[(INPUT_NAME, FloatTensorType([None, n_features]))],
                    options=options, target_opset=SKLEARN_OPSET)
        except Exception as exc:
            raise ConversionError(
                f"skl2onnx cannot convert the {_describe(model)} in {str(path)!r}: "
                f"{_first_line(exc)}; replace the unsupported step, or export ONNX yourself "
                "and upload the .onnx"
            ) from None

    return Original("sklearn", _describe(model), n_features, predict, to_onnx,
                    _sklearn_statistics(model, n_features), getattr(final, "classes_", None))


def _final_step(model: Any) -> Any:
    while hasattr(model, "steps"):
        model = model.steps[-1][1]
    return model


def _describe(model: Any) -> str:
    if hasattr(model, "steps"):
        return "Pipeline(" + ", ".join(type(s).__name__ for _, s in model.steps) + ")"
    return type(model).__name__


def _sklearn_statistics(model: Any, n: int) -> tuple[np.ndarray, np.ndarray] | None:
    first = model.steps[0][1] if hasattr(model, "steps") else model
    if hasattr(first, "mean_") and hasattr(first, "scale_"):  # StandardScaler
        mean = np.asarray(first.mean_, dtype=np.float64)
        scale = np.asarray(first.scale_, dtype=np.float64)
        if mean.shape == (n,) and scale.shape == (n,):
            return mean, scale
    if hasattr(first, "data_min_") and hasattr(first, "data_max_"):  # MinMaxScaler
        low, high = np.asarray(first.data_min_), np.asarray(first.data_max_)
        return (low + high) / 2, (high - low) / 2
    splits: list[tuple[int, float]] = []
    for tree in _trees(first):
        inner = tree.feature >= 0  # leaves have feature -2
        splits += zip(tree.feature[inner].tolist(), tree.threshold[inner].tolist(), strict=True)
    return _spread(splits, n)


def _trees(model: Any) -> Iterator[Any]:
    if hasattr(model, "tree_"):
        yield model.tree_
    for sub in np.ravel(np.asarray(getattr(model, "estimators_", []), dtype=object)):
        yield from _trees(sub)


# -- XGBoost -----------------------------------------------------------------------------------


def _xgboost_file(path: Path) -> Original:
    xgboost, _ = require("xgboost")
    booster = xgboost.Booster()
    try:
        booster.load_model(str(path))
    except Exception as exc:
        raise ConversionError(
            f"{str(path)!r} is not an XGBoost model file ({_first_line(exc)}); save one with "
            "model.save_model('model.json') or '.ubj'"
        ) from None
    return _xgboost_booster(booster, path)


def _xgboost_booster(booster: Any, path: Path) -> Original:
    xgboost, onnxmltools = require("xgboost")
    # onnxmltools names features f0, f1, ...: forget the names the model was trained with.
    booster.feature_names, booster.feature_types = None, None
    objective = json.loads(booster.save_config())["learner"]["objective"]["name"]
    n_features = int(booster.num_features())

    def predict(rows: np.ndarray) -> list[Expected]:
        p = np.asarray(booster.predict(xgboost.DMatrix(rows)))
        if objective == "multi:softmax":
            return [Expected(p.astype(np.int64), exact=True)]
        if objective.startswith(("binary:logistic", "multi:softprob")):
            return _class_outputs(p)
        return [Expected(p, exact=False)]

    def to_onnx() -> onnx.ModelProto:
        from onnxmltools.convert.common.data_types import FloatTensorType

        return _convert(lambda: onnxmltools.convert_xgboost(
            booster, initial_types=[(INPUT_NAME, FloatTensorType([None, n_features]))],
            target_opset=ONNXMLTOOLS_OPSET), f"XGBoost {objective}", path)

    splits: list[tuple[int, float]] = []
    for tree in booster.get_dump(dump_format="json"):
        splits += _xgboost_splits(json.loads(tree))
    return Original("xgboost", f"XGBoost {objective}", n_features, predict, to_onnx,
                    _spread(splits, n_features), _class_indices(booster.predict(
                        xgboost.DMatrix(np.zeros((1, n_features))))))


def _xgboost_splits(node: dict[str, Any]) -> Iterator[tuple[int, float]]:
    if "split" in node and str(node["split"]).startswith("f"):
        yield int(str(node["split"])[1:]), float(node["split_condition"])
    for child in node.get("children", []):
        yield from _xgboost_splits(child)


# -- LightGBM ----------------------------------------------------------------------------------


def _lightgbm_file(path: Path) -> Original:
    lightgbm, _ = require("lightgbm")
    try:
        booster = lightgbm.Booster(model_file=str(path))
    except Exception as exc:
        raise ConversionError(
            f"{str(path)!r} is not a LightGBM text model ({_first_line(exc)}); save one with "
            "booster.save_model('model.txt')"
        ) from None
    return _lightgbm_booster(booster, path)


def _lightgbm_booster(booster: Any, path: Path) -> Original:
    _, onnxmltools = require("lightgbm")
    dump = booster.dump_model()
    objective = str(dump.get("objective", "")).split(" ")[0]
    n_features = int(booster.num_feature())

    def predict(rows: np.ndarray) -> list[Expected]:
        p = np.asarray(booster.predict(rows.astype(np.float64)))
        if objective in ("binary", "multiclass", "multiclassova"):
            return _class_outputs(p)
        return [Expected(p, exact=False)]

    def to_onnx() -> onnx.ModelProto:
        from onnxmltools.convert.common.data_types import FloatTensorType

        return _convert(lambda: onnxmltools.convert_lightgbm(
            booster, initial_types=[(INPUT_NAME, FloatTensorType([None, n_features]))],
            target_opset=ONNXMLTOOLS_OPSET, zipmap=False), f"LightGBM {objective}", path)

    splits: list[tuple[int, float]] = []
    for tree in dump.get("tree_info", []):
        splits += _lightgbm_splits(tree.get("tree_structure", {}))
    return Original("lightgbm", f"LightGBM {objective}", n_features, predict, to_onnx,
                    _spread(splits, n_features),
                    _class_indices(booster.predict(np.zeros((1, n_features)))))


def _lightgbm_splits(node: dict[str, Any]) -> Iterator[tuple[int, float]]:
    if "split_feature" in node and isinstance(node.get("threshold"), int | float):
        yield int(node["split_feature"]), float(node["threshold"])
    for side in ("left_child", "right_child"):
        if side in node:
            yield from _lightgbm_splits(node[side])


# -- shared ------------------------------------------------------------------------------------


def _class_outputs(p: np.ndarray) -> list[Expected]:
    """Label and probabilities from a booster's probabilities: (N,) for binary, (N, k)."""
    probabilities = np.stack([1 - p, p], axis=1) if p.ndim == 1 else p
    return [Expected(probabilities.argmax(axis=1).astype(np.int64), exact=True),
            Expected(probabilities, exact=False)]


def _class_indices(probabilities: np.ndarray) -> np.ndarray:
    """Labels 0..k-1 of a booster whose one-row prediction has k columns (2 when binary)."""
    p = np.asarray(probabilities)
    return np.arange(p.shape[1] if p.ndim == 2 else 2)


def _convert(convert: Callable[[], onnx.ModelProto], what: str, path: Path) -> onnx.ModelProto:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return convert()
    except Exception as exc:
        raise ConversionError(
            f"onnxmltools cannot convert the {what} model in {str(path)!r}: "
            f"{_first_line(exc)}; export ONNX yourself and upload the .onnx"
        ) from None


def _spread(splits: list[tuple[int, float]], n: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Per feature, the middle and spread of the split thresholds (0 and 1 where none)."""
    if not splits:
        return None
    features, thresholds = (np.array(column) for column in zip(*splits, strict=True))
    keep = np.abs(thresholds) < 1e30  # a huge threshold says nothing of a feature's scale
    features, thresholds = features[keep], thresholds[keep]
    centre, spread = np.zeros(n), np.ones(n)
    for feature in range(n):
        values = thresholds[features == feature]
        if values.size:
            low, mid, high = np.percentile(values, [10, 50, 90])
            centre[feature] = mid
            spread[feature] = (high - low) / 2 or max(abs(mid) * 0.1, 1.0)
    return centre, spread


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
