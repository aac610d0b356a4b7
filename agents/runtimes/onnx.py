"""ONNX Runtime: one InferenceSession per model, tuned for throughput on a small machine."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort

from agents.runtimes.base import ModelRuntime
from control.registry.tensors import STRING, TensorSpec
from schemas.errors import ArtifactError

_DTYPES = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(int8)": "int8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(uint8)": "uint8",
    "tensor(uint16)": "uint16",
    "tensor(uint32)": "uint32",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
    "tensor(string)": STRING,
}


def default_threads() -> int:
    """Threads per session: 1 on a machine of 1 or 2 cores, else 2.

    A worker's event loop (fetching, decoding, encoding) keeps one core busy, and on a small
    machine the broker often shares it: a second ORT thread there only fights them for the CPU
    (measured on 2 cores: 0.87M GBT rows/s per core with one thread, the same with two, and
    the loop and the broker slowed down).
    """
    cores = os.cpu_count() or 1
    return 1 if cores <= 2 else 2


class OnnxRuntime(ModelRuntime):
    """An ONNX model run by ONNX Runtime on the CPU."""

    framework = "onnx"

    def __init__(self, session: ort.InferenceSession) -> None:
        super().__init__(
            tuple(_spec(arg) for arg in session.get_inputs()),
            tuple(_spec(arg) for arg in session.get_outputs()),
        )
        self._session = session
        self._output_names = [spec.name for spec in self.outputs]

    @classmethod
    def load(cls, path: Path, intra_op_threads: int | None = None) -> OnnxRuntime:
        """Open an .onnx file; intra_op_threads defaults to default_threads()."""
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads or default_threads()
        # One operator at a time and no spinning: workers run several sessions on few cores,
        # and spinning threads would burn the CPU the other sessions need.
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            session = ort.InferenceSession(
                str(path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as e:  # ORT raises its own untyped pybind errors
            raise ArtifactError(
                f"cannot load ONNX model {str(path)!r}: {e}; upload a valid .onnx file"
            ) from e
        return cls(session)

    def _predict(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # ORT takes text only as object arrays, not numpy's fixed-width str arrays.
        feeds = {
            name: a.astype(object) if a.dtype.kind in "US" else a for name, a in arrays.items()
        }
        results = self._session.run(self._output_names, feeds)
        return dict(zip(self._output_names, results, strict=True))


def _spec(arg: ort.NodeArg) -> TensorSpec:
    if arg.type not in _DTYPES:
        raise ArtifactError(
            f"ONNX input/output {arg.name!r} has type {arg.type}, not a tensor; export the model "
            "with tensor outputs only (for skl2onnx: options={'zipmap': False})"
        )
    # Symbolic ("N", "batch") and unknown dimensions both mean any size.
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in arg.shape)
    return TensorSpec(arg.name, _DTYPES[arg.type], shape)
