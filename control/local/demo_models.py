"""Real small models for the demo and the tests, trained on data sets that ship with scikit-learn.

A different seed (or C) always gives different weights, hence different bytes, so tests can
upload "a changed file under the same name". The ONNX builders are also byte-deterministic
(same arguments, same sha256); Keras ones are not: a .keras file records the second it was
saved, and a SavedModel export differs on every export even with identical weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_diabetes, load_iris
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.model_selection import train_test_split

if TYPE_CHECKING:
    import keras

# Pinned so that artifacts do not change with the skl2onnx version and older ORTs load them.
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}


def iris_rows(n: int = 150) -> np.ndarray:
    """The first n iris feature rows as float32, the classifier's input."""
    return load_iris().data[:n].astype(np.float32)


def diabetes_rows(n: int = 442) -> np.ndarray:
    """The first n diabetes feature rows as float32, the regressor's input."""
    return load_diabetes().data[:n].astype(np.float32)


def train_iris_classifier(seed: int = 0, C: float = 1.0) -> LogisticRegression:
    """Logistic regression on a seeded 80% of iris (the seed picks the rows, so it matters)."""
    x, y = load_iris(return_X_y=True)
    x_train, _, y_train, _ = train_test_split(x, y, train_size=0.8, random_state=seed, stratify=y)
    return LogisticRegression(C=C, max_iter=1000).fit(x_train, y_train)


def train_diabetes_regressor(seed: int = 0) -> LinearRegression:
    """Linear regression on a seeded 80% of the diabetes data set."""
    x, y = load_diabetes(return_X_y=True)
    x_train, _, y_train, _ = train_test_split(x, y, train_size=0.8, random_state=seed)
    return LinearRegression().fit(x_train, y_train)


def build_onnx_classifier(path: Path, seed: int = 0, C: float = 1.0) -> Path:
    """Iris classifier: input "float_input" [N, 4]; outputs "label" [N], "probabilities" [N, 3]."""
    model = train_iris_classifier(seed, C)
    return _write_onnx(model, path, n_features=4, name="iris_classifier", zipmap=False)


def build_sklearn_trees(path: Path, seed: int = 0) -> Path:
    """Gradient-boosted trees on iris, saved with joblib as a data scientist would: the file
    `models upload` converts to ONNX (input "features" [N, 4]; "label", "probabilities")."""
    import joblib
    from sklearn.ensemble import GradientBoostingClassifier

    x, y = load_iris(return_X_y=True)
    model = GradientBoostingClassifier(n_estimators=40, max_depth=2, random_state=seed)
    model.fit(x.astype(np.float32), y)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, path)
    return path


def demo_step(name: str) -> Path:
    """A Python step the demo uploads: "iris_features" (pre-) or "iris_decision" (post-)."""
    return Path(__file__).with_name("demo_steps") / f"{name}.py"


def build_onnx_regressor(path: Path, seed: int = 0) -> Path:
    """Diabetes regressor: input "float_input" [N, 10]; output "variable" [N, 1]."""
    model = train_diabetes_regressor(seed)
    return _write_onnx(model, path, n_features=10, name="diabetes_regressor")


def _write_onnx(model: Any, path: Path, n_features: int, name: str, **options: Any) -> Path:
    onx = convert_sklearn(
        model,
        initial_types=[("float_input", FloatTensorType([None, n_features]))],
        options={id(model): options} if options else None,
        target_opset=TARGET_OPSET,
    )
    # skl2onnx names the graph with a random uuid, which would give the same model a new
    # sha256 on every build.
    onx.graph.name = name
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(onx.SerializeToString())
    return path


def keras_scorer(n_inputs: int = 3, seed: int = 0) -> keras.Model:
    """A tiny untrained Dense model: "probabilities" [N, n_inputs] -> "score" [N, 1] in (0, 1).

    Weights come from seeded initialisers, not training: fast and deterministic.
    """
    import keras  # TensorFlow takes seconds to import; only tests that need it pay

    inputs = keras.Input(shape=(n_inputs,), name="probabilities", dtype="float32")
    hidden = keras.layers.Dense(
        8,
        activation="relu",
        name="hidden",
        kernel_initializer=keras.initializers.GlorotUniform(seed=seed),
        bias_initializer=keras.initializers.RandomUniform(-0.1, 0.1, seed=seed + 1),
    )(inputs)
    score = keras.layers.Dense(
        1,
        activation="sigmoid",
        name="score",
        kernel_initializer=keras.initializers.GlorotUniform(seed=seed + 2),
    )(hidden)
    # A dict output names the SavedModel signature's output "score"; a plain tensor output
    # would be exported as "output_0" while the .keras file calls it "score".
    return keras.Model(inputs, {"score": score}, name="scorer")


def build_keras_model(
    dir_or_file: Path, kind: str = "savedmodel", n_inputs: int = 3, seed: int = 0
) -> Path:
    """Save keras_scorer(n_inputs, seed) as a SavedModel directory or a .keras file."""
    model = keras_scorer(n_inputs, seed)
    path = Path(dir_or_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "savedmodel":
        model.export(str(path), verbose=False)
    elif kind == "keras":
        if path.suffix != ".keras":
            raise ValueError(f"a Keras file must end in .keras, got {str(path)!r}")
        model.save(path)
    else:
        raise ValueError(f"kind must be 'savedmodel' or 'keras', got {kind!r}")
    return path


def build_trained_scorer(path: Path, classifier: Path, epochs: int = 40, seed: int = 0) -> Path:
    """Train keras_scorer on the classifier's iris probabilities to score "is virginica".

    The demo's TensorFlow model: trained at start, in about a second, from bundled data.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(classifier), providers=["CPUExecutionProvider"])
    probabilities = session.run(["probabilities"], {"float_input": iris_rows()})[0]
    target = (load_iris().target == 2).astype(np.float32).reshape(-1, 1)
    model = keras_scorer(probabilities.shape[1], seed)
    import keras

    model.compile(optimizer=keras.optimizers.Adam(0.05), loss={"score": "binary_crossentropy"})
    model.fit(probabilities, {"score": target}, epochs=epochs, batch_size=32, verbose=0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.export(str(path), verbose=False)
    return path
