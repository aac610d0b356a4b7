"""The benchmark's models and records: tabular scoring over 30 float features.

A gradient-boosted tree ensemble (the single-model pipeline) and a small MLP, trained with
scikit-learn on make_classification data and exported with skl2onnx (no ZipMap). The
three-model chain is GBT → MLP → logistic regression; a step reads only what the step before
returned, so the first two pass the features through (an ONNX Identity output "features").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import make_classification
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier

from control.local.demo_models import TARGET_OPSET

N_FEATURES = 30
INPUT = "float_input"
PASSTHROUGH = "features"


@dataclass(frozen=True)
class BenchModels:
    """Paths of the exported models and the feature rows records are made of."""

    gbt: Path  # the single-model pipeline
    chain: tuple[Path, Path, Path]  # GBT (+features) → MLP (+features) → logistic regression
    rows: np.ndarray  # float32 [n, 30], held-out rows


def dataset(n: int = 6000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """make_classification rows (float32, 30 features, 10 informative) and binary labels."""
    x, y = make_classification(n_samples=n, n_features=N_FEATURES, n_informative=10,
                               n_redundant=5, random_state=seed)
    return x.astype(np.float32), y


def build(folder: Path) -> BenchModels:
    """Train the three models and write their ONNX files under folder (a few seconds)."""
    folder.mkdir(parents=True, exist_ok=True)
    x, y = dataset()
    train, held_out = slice(0, 5000), slice(5000, None)
    gbt = GradientBoostingClassifier(n_estimators=100, max_depth=3, random_state=0)
    gbt.fit(x[train], y[train])
    mlp = MLPClassifier(hidden_layer_sizes=(32, 16), max_iter=300, random_state=0)
    mlp.fit(x[train], y[train])
    linear = LogisticRegression(max_iter=1000).fit(x[train], y[train])
    single = _export(gbt, folder / "gbt.onnx", "bench_gbt")
    chain = (
        _export(gbt, folder / "chain-gbt.onnx", "bench_chain_gbt", passthrough=True),
        _export(mlp, folder / "chain-mlp.onnx", "bench_chain_mlp", passthrough=True),
        _export(linear, folder / "chain-linear.onnx", "bench_chain_linear"),
    )
    return BenchModels(single, chain, x[held_out])


def chain_steps(names: tuple[str, str, str]) -> list[dict[str, Any]]:
    """The chain's pipeline steps: steps 2 and 3 read the features step 1 and 2 passed on."""
    first, second, third = names
    feed = {INPUT: PASSTHROUGH}
    return [{"model": first, "version": 1},
            {"model": second, "version": 1, "input_map": feed},
            {"model": third, "version": 1, "input_map": feed}]


def _export(model: Any, path: Path, name: str, passthrough: bool = False) -> Path:
    onx = convert_sklearn(model, initial_types=[(INPUT, FloatTensorType([None, N_FEATURES]))],
                          options={id(model): {"zipmap": False}}, target_opset=TARGET_OPSET)
    onx.graph.name = name  # skl2onnx names graphs with a random uuid: same model, new sha256
    if passthrough:
        onx.graph.node.append(helper.make_node("Identity", [INPUT], [PASSTHROUGH]))
        onx.graph.output.append(helper.make_tensor_value_info(
            PASSTHROUGH, TensorProto.FLOAT, [None, N_FEATURES]))
        onnx.checker.check_model(onx)
    path.write_bytes(onx.SerializeToString())
    return path
