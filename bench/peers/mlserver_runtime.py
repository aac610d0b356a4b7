"""The MLServer peer: a custom runtime serving the bench's ONNX model.

MLServer has no official ONNX runtime; its docs show a custom runtime as a small MLModel
subclass with `load()` and `predict()`, decoding and encoding tensors with NumpyCodec. The
driver writes model-settings.json (adaptive batching: max_batch_size 512, max_batch_time
10 ms) and settings.json (Kafka mode on) beside a copy of this file, then runs
`mlserver start <folder>` in the MLServer venv.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri

INPUT = "float_input"


class OnnxRuntime(MLModel):
    """One ONNX Runtime session, opened as inferstream opens it (one thread, no spinning)."""

    async def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(await get_model_uri(self._settings), options,
                                             providers=["CPUExecutionProvider"])
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        rows = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32, copy=False)
        label, probabilities = self._session.run(None, {INPUT: rows.reshape(-1, 30)})
        return InferenceResponse(model_name=self.name, id=payload.id, outputs=[
            NumpyCodec.encode_output("label", label),
            NumpyCodec.encode_output("probabilities", probabilities)])
