"""TensorFlow: a SavedModel directory (its serving_default signature) or a Keras 3 .keras file."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from agents.runtimes.base import ModelRuntime
from control.registry.tensors import TensorSpec
from schemas.errors import ArtifactError

SIGNATURE = "serving_default"


class TensorflowRuntime(ModelRuntime):
    """A TensorFlow model; the whole batch goes through one graph call."""

    framework = "tensorflow"

    def __init__(
        self,
        inputs: tuple[TensorSpec, ...],
        outputs: tuple[TensorSpec, ...],
        run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
        keep: Any,
    ) -> None:
        super().__init__(inputs, outputs)
        self._run = run
        self._keep = keep  # a SavedModel signature needs its loaded object alive

    @classmethod
    def load(cls, path: Path) -> TensorflowRuntime:
        """Load a SavedModel directory or a .keras file."""
        path = Path(path)
        try:
            if path.is_dir():
                return _load_savedmodel(path)
            if path.suffix == ".keras" and path.is_file():
                return _load_keras(path)
        except ArtifactError:
            raise
        except Exception as e:  # TF and Keras raise many unrelated types for a bad artifact
            raise ArtifactError(f"cannot load TensorFlow model {str(path)!r}: {e}") from e
        raise ArtifactError(
            f"{str(path)!r} is neither a SavedModel directory nor a .keras file; export with "
            "keras model.export(dir) or save with model.save('name.keras')"
        )

    def _predict(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._run(arrays)


def _load_savedmodel(path: Path) -> TensorflowRuntime:
    loaded = tf.saved_model.load(str(path))
    signature = loaded.signatures.get(SIGNATURE)
    if signature is None:
        raise ArtifactError(
            f"SavedModel {str(path)!r} has no {SIGNATURE!r} signature (it has "
            f"{sorted(loaded.signatures)}); export it with keras model.export(dir)"
        )
    _, kwargs = signature.structured_input_signature
    # Signature dicts come back in no stable order (output_1 before output_0); sort by name
    # so that describing the same artifact always gives the same schema.
    inputs = tuple(_tf_spec(name, kwargs[name]) for name in sorted(kwargs))
    returned = signature.structured_outputs
    outputs = tuple(_tf_spec(name, returned[name]) for name in sorted(returned))

    def run(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = signature(**{name: tf.constant(a) for name, a in arrays.items()})
        return {name: t.numpy() for name, t in results.items()}

    return TensorflowRuntime(inputs, outputs, run, loaded)


def _load_keras(path: Path) -> TensorflowRuntime:
    # safe_mode (the default) refuses Lambda layers: an uploaded artifact must not run code.
    model = keras.models.load_model(path, compile=False)
    if not getattr(model, "inputs", None):
        raise ArtifactError(
            f"Keras model {str(path)!r} has no defined inputs; build it with keras.Input(...)"
        )
    inputs = tuple(_keras_spec(t.name, t) for t in model.inputs)
    names = _output_names(model)
    outputs = tuple(_keras_spec(n, t) for n, t in zip(names, model.outputs, strict=True))

    def run(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = arrays[inputs[0].name] if len(inputs) == 1 else arrays
        # predict_on_batch runs the batch once through a traced graph (about twice as fast
        # as an eager call) without predict()'s splitting into batches of 32.
        y = model.predict_on_batch(x)
        if isinstance(y, dict):
            return {n: np.asarray(y[n]) for n in names}
        if isinstance(y, list | tuple):
            return {n: np.asarray(v) for n, v in zip(names, y, strict=True)}
        return {names[0]: np.asarray(y)}

    return TensorflowRuntime(inputs, outputs, run, model)


def _output_names(model: Any) -> list[str]:
    names: Sequence[str] | None = getattr(model, "output_names", None)  # functional models
    if names and len(names) == len(model.outputs):
        return list(names)
    if len(model.outputs) == 1:  # Sequential has no output_names; its last layer is the output
        return [model.layers[-1].name]
    return [f"output_{i}" for i in range(len(model.outputs))]


def _tf_spec(name: str, spec: tf.TensorSpec) -> TensorSpec:
    if spec.shape.rank is None:
        raise ArtifactError(
            f"tensor {name!r} has unknown rank; export the model with a fixed-rank input signature"
        )
    return TensorSpec(name, spec.dtype.name, tuple(-1 if d is None else d for d in spec.shape))


def _keras_spec(name: str, tensor: Any) -> TensorSpec:
    dtype = tf.as_dtype(tensor.dtype).name  # Keras names match numpy's but normalise anyway
    return TensorSpec(name, dtype, tuple(-1 if d is None else int(d) for d in tensor.shape))
